//! The S3 operations, on top of [`Meta`] (what exists) and [`FsBlobs`]
//! (the bytes). `s3s` has already routed the request, verified its
//! signature and decoded its input; each operation here decides access from
//! the bucket or object ACL, changes metadata in one transaction, and only
//! deletes blobs after the transaction that stopped referencing them.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::acl::{self, Acl, Grantee, Permission as Perm, Requester};
use crate::blob::{BlobError, FsBlobs};
use crate::checksum::{self, Algo, Requested};
use crate::meta::{self, Meta, MetaError, Piece, StoredChecksum, StoredHeaders};
use crate::{Identities, WalrusConfig};

/// Cheap to clone: the process keeps a handle beside the one `s3s` owns.
#[derive(Clone)]
pub struct Walrus {
    pub(crate) meta: Arc<Meta>,
    pub(crate) blobs: FsBlobs,
    pub(crate) ids: Arc<dyn Identities>,
    pub(crate) config: WalrusConfig,
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    tracing::error!(error = %e, "walrus internal error");
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

fn meta_err(e: MetaError) -> S3Error {
    match e {
        MetaError::BucketExists { owned_by_you: true } => s3_error!(
            BucketAlreadyOwnedByYou,
            "Your previous request to create the named bucket succeeded and you already own it."
        ),
        MetaError::BucketExists {
            owned_by_you: false,
        } => s3_error!(
            BucketAlreadyExists,
            "The requested bucket name is not available. The bucket namespace is shared by all users of the system."
        ),
        MetaError::NoSuchBucket => s3_error!(NoSuchBucket, "The specified bucket does not exist"),
        MetaError::BucketNotEmpty => s3_error!(
            BucketNotEmpty,
            "The bucket you tried to delete is not empty"
        ),
        MetaError::NoSuchUpload => s3_error!(
            NoSuchUpload,
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
        ),
        MetaError::Db(m) => internal(m),
    }
}

/// An error answered before the request body was read. hyper then closes
/// the connection once the response is out; `Connection: close` says so (as
/// S3 does), or a client reusing the connection sees its next request fail.
fn closing(mut e: S3Error) -> S3Error {
    let mut h = e.headers().cloned().unwrap_or_default();
    h.insert("connection", "close".parse().expect("a valid header value"));
    e.set_headers(h);
    e
}

fn blob_err(e: BlobError) -> S3Error {
    match e {
        BlobError::Incomplete(m) => S3Error::with_message(S3ErrorCode::IncompleteBody, m),
        BlobError::TooLong => s3_error!(InvalidRequest, "body longer than Content-Length"),
        other => internal(other),
    }
}

fn now_ms() -> i64 {
    ironbark_types::now_ms()
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

fn ts_ms(t: &Timestamp) -> i64 {
    let odt: time::OffsetDateTime = t.clone().into();
    (odt.unix_timestamp_nanos() / 1_000_000) as i64
}

fn quoted(etag: &str) -> ETag {
    ETag::Strong(etag.to_string())
}

fn owner(id: &str, name: &str) -> Owner {
    Owner {
        id: Some(id.to_string()),
        display_name: Some(name.to_string()),
    }
}

/// S3's `encoding-type=url`: keys are percent-encoded in listings (the AWS
/// CLI always asks for it and decodes).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encoder(t: &Option<EncodingType>) -> impl Fn(&str) -> String {
    let url = t.as_ref().is_some_and(|e| e.as_str() == "url");
    move |s: &str| if url { url_encode(s) } else { s.to_string() }
}

/// One entry of a listing: an object, or a common prefix under a delimiter.
enum Entry {
    Object(Box<meta::Object>),
    Prefix(String),
}

/// The next string after every string that starts with `p`.
fn skip_past(p: &str) -> String {
    let mut s = p.to_string();
    s.push(char::MAX);
    s
}

/// Where a listing resumes after a marker, start-after or continuation
/// token: past every key under it when it is itself a common prefix of
/// this listing (the NextMarker or token of a page that ended on a rolled-up
/// prefix), else right after it. A key equal to `prefix` (a "folder"
/// object) is an ordinary key, even when it ends with the delimiter.
fn resume_after(after: &str, prefix: &str, delimiter: Option<&str>) -> String {
    if let Some(d) = delimiter.filter(|d| !d.is_empty())
        && let Some(rest) = after.strip_prefix(prefix)
        && rest.find(d).is_some_and(|i| i + d.len() == rest.len())
    {
        return skip_past(after);
    }
    after.to_string()
}

/// The Content-Encoding to keep with an object: `aws-chunked` names how a
/// streaming upload was framed on the wire, not the object's encoding, so
/// S3 drops it (and keeps any other coding listed with it).
fn object_encoding(e: Option<String>) -> Option<String> {
    let e = e?;
    let kept: Vec<&str> = e
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

fn stored_headers(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<Timestamp>,
    metadata: Option<Metadata>,
) -> StoredHeaders {
    StoredHeaders {
        content_type,
        content_encoding: object_encoding(content_encoding),
        content_disposition,
        content_language,
        cache_control,
        expires: expires.map(|t| ts_ms(&t).to_string()),
        user_meta: metadata.unwrap_or_default().into_iter().collect(),
    }
}

impl Walrus {
    async fn requester<T>(&self, req: &S3Request<T>) -> S3Result<Requester> {
        match &req.credentials {
            None => Ok(Requester::Anonymous),
            Some(c) => match self.ids.lookup(&c.access_key).await {
                Some(i) => Ok(Requester::Account {
                    id: i.account_id,
                    name: i.account_name,
                }),
                None => Err(s3_error!(
                    InvalidAccessKeyId,
                    "The AWS Access Key Id you provided does not exist in our records."
                )),
            },
        }
    }

    async fn bucket_for(&self, name: &str, who: &Requester, want: Perm) -> S3Result<meta::Bucket> {
        let b = self.meta.bucket(name).await.map_err(meta_err)?;
        if !b.acl.allows(who, want) && !self.is_superuser(who).await {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        Ok(b)
    }

    async fn object_for(
        &self,
        bucket: &str,
        key: &str,
        who: &Requester,
        want: Perm,
    ) -> S3Result<meta::Object> {
        let b = self.meta.bucket(bucket).await.map_err(meta_err)?;
        let o = match self.meta.object(bucket, key).await.map_err(meta_err)? {
            Some(o) => o,
            // Without READ on the bucket, a missing key must not be told apart from a forbidden one.
            None if b.acl.allows(who, Perm::Read) => {
                return Err(s3_error!(NoSuchKey, "The specified key does not exist."));
            }
            None => return Err(s3_error!(AccessDenied, "Access Denied")),
        };
        if !o.acl.allows(who, want) && !self.is_superuser(who).await {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        Ok(o)
    }

    /// The cloud administrator reads and writes every bucket, as
    /// Eucalyptus' did: it is how the cloud itself fetches users' images.
    async fn is_superuser(&self, who: &Requester) -> bool {
        match who.account_id() {
            Some(id) => self.ids.is_superuser(id).await,
            None => false,
        }
    }

    /// Creates `owner`'s private bucket if it does not exist; fails if
    /// another account holds the name. For buckets the cloud itself fills
    /// (images, snapshots).
    pub async fn ensure_bucket(
        &self,
        owner_id: &str,
        owner_name: &str,
        bucket: &str,
    ) -> Result<(), String> {
        match self.meta.bucket(bucket).await {
            Ok(b) if b.owner_id != owner_id => {
                Err(format!("bucket {bucket} belongs to another account"))
            }
            Ok(_) => Ok(()),
            Err(MetaError::NoSuchBucket) => {
                let b = meta::Bucket {
                    name: bucket.to_string(),
                    owner_id: owner_id.to_string(),
                    created_ms: now_ms(),
                    location: String::new(),
                    acl: Acl::private(owner_id, owner_name),
                };
                match self.meta.create_bucket(&b).await {
                    Ok(()) | Err(MetaError::BucketExists { owned_by_you: true }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Deletes an object the cloud itself manages (a deleted snapshot's
    /// copy); a missing one is not an error.
    pub async fn remove_object(&self, bucket: &str, key: &str) -> Result<(), String> {
        match self.meta.delete_object(bucket, key).await {
            Ok(dead) => {
                self.delete_blobs(dead).await;
                Ok(())
            }
            Err(MetaError::NoSuchBucket) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Size and ETag (unquoted) of an object of the cloud's own, if it
    /// exists.
    pub async fn system_head(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(u64, String)>, String> {
        match self.meta.object(bucket, key).await {
            Ok(o) => Ok(o.map(|o| (o.size, o.etag))),
            Err(MetaError::NoSuchBucket) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// What one of the cloud's own buckets holds: the keys of its objects,
    /// and (key, upload id) of its open multipart uploads, in key order.
    /// A missing bucket holds nothing.
    pub async fn system_listing(
        &self,
        bucket: &str,
    ) -> Result<(Vec<String>, Vec<(String, String)>), String> {
        const PAGE: usize = 1000;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let after = keys.last().cloned().unwrap_or_default();
            let page = match self.meta.list_objects(bucket, "", &after, PAGE).await {
                Ok(p) => p,
                Err(MetaError::NoSuchBucket) => return Ok(Default::default()),
                Err(e) => return Err(e.to_string()),
            };
            let n = page.len();
            keys.extend(page.into_iter().map(|o| o.key));
            if n < PAGE {
                break;
            }
        }
        let mut uploads: Vec<(String, String)> = Vec::new();
        loop {
            let (k, u) = uploads.last().cloned().unwrap_or_default();
            let page = match self.meta.list_uploads(bucket, "", &k, &u, PAGE).await {
                Ok(p) => p,
                Err(MetaError::NoSuchBucket) => break,
                Err(e) => return Err(e.to_string()),
            };
            let n = page.len();
            uploads.extend(page.into_iter().map(|u| (u.key, u.upload_id)));
            if n < PAGE {
                break;
            }
        }
        Ok((keys, uploads))
    }

    /// Starts a multipart upload of an object of the cloud's own (a volume
    /// snapshot, which the SC fills through presigned part URLs), its parts
    /// to carry CRC-32s that combine into the whole object's. Returns the
    /// upload id.
    pub async fn create_system_upload(
        &self,
        owner_id: &str,
        owner_name: &str,
        bucket: &str,
        key: &str,
    ) -> Result<String, String> {
        self.ensure_bucket(owner_id, owner_name, bucket).await?;
        let declared = checksum::declared(Some("CRC32"), Some(checksum::FULL_OBJECT))
            .map_err(|e| e.to_string())?;
        let u = meta::Upload {
            upload_id: ironbark_types::generate_request_id().replace('-', ""),
            bucket: bucket.to_string(),
            key: key.to_string(),
            initiated_ms: now_ms(),
            headers: StoredHeaders::default(),
            acl: Acl::private(owner_id, owner_name),
            checksum: declared,
        };
        self.meta
            .create_upload(&u)
            .await
            .map_err(|e| e.to_string())?;
        Ok(u.upload_id)
    }

    /// Aborts an upload [`Walrus::create_system_upload`] started, removing
    /// its parts; one already gone (completed or aborted) is not an error.
    pub async fn abort_system_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), String> {
        match self.meta.upload(bucket, key, upload_id).await {
            Ok(_) => {}
            Err(MetaError::NoSuchUpload | MetaError::NoSuchBucket) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        match self.meta.abort_upload(upload_id).await {
            Ok(dead) => {
                self.delete_blobs(dead).await;
                Ok(())
            }
            Err(MetaError::NoSuchUpload) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Size and hex SHA-256 of an object, read as `account_id` (the CLC
    /// records them when an image is registered).
    pub async fn object_digest(
        &self,
        account_id: &str,
        bucket: &str,
        key: &str,
    ) -> Result<(u64, String), String> {
        use sha2::Digest as _;
        let name = self.ids.account_name(account_id).await.unwrap_or_default();
        let who = Requester::Account {
            id: account_id.to_string(),
            name,
        };
        let o = self
            .object_for(bucket, key, &who, Perm::Read)
            .await
            .map_err(|e| format!("{bucket}/{key}: {}", e.message().unwrap_or("not readable")))?;
        let mut h = sha2::Sha256::new();
        let mut s = Box::pin(self.object_stream(&o, 0, o.size));
        while let Some(chunk) = s.next().await {
            h.update(&chunk.map_err(|e| e.to_string())?);
        }
        Ok((o.size, hex::encode(h.finalize())))
    }

    /// Stores a local file as an object of `owner`'s, creating the
    /// (private) bucket if needed: how the admin tool imports images.
    pub async fn put_local_file(
        &self,
        owner_id: &str,
        owner_name: &str,
        bucket: &str,
        key: &str,
        path: &std::path::Path,
    ) -> Result<String, String> {
        self.ensure_bucket(owner_id, owner_name, bucket).await?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file.metadata().await.map_err(|e| e.to_string())?.len();
        let body = file_chunks(file);
        let info = self
            .blobs
            .put(body, Some(len))
            .await
            .map_err(|e| e.to_string())?;
        let etag = hex::encode(info.md5);
        let o = meta::Object {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: info.size,
            etag: etag.clone(),
            headers: StoredHeaders::default(),
            pieces: vec![Piece {
                blob: info.id.clone(),
                size: info.size,
            }],
            modified_ms: now_ms(),
            acl: Acl::private(owner_id, owner_name),
            checksum: None,
        };
        self.commit_object(&o, &info.id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(etag)
    }

    /// Makes `o` visible; the blob it was written to is removed if the
    /// commit fails, the blobs it replaced once it succeeds.
    async fn commit_object(&self, o: &meta::Object, new_blob: &str) -> Result<(), MetaError> {
        match self.meta.put_object(o).await {
            Ok(dead) => {
                self.delete_blobs(dead).await;
                Ok(())
            }
            Err(e) => {
                self.blobs.delete(new_blob).await;
                Err(e)
            }
        }
    }

    /// The same for one part of a multipart upload.
    async fn commit_part(&self, upload_id: &str, part: &meta::Part) -> Result<(), MetaError> {
        match self.meta.put_part(upload_id, part).await {
            Ok(old) => {
                self.delete_blobs(old.into_iter().collect()).await;
                Ok(())
            }
            Err(e) => {
                self.blobs.delete(&part.blob).await;
                Err(e)
            }
        }
    }

    /// The ACL a write asks for on an object: a canned name or grant
    /// headers (READ, READ_ACP, FULL_CONTROL; objects take no WRITE grant).
    async fn object_acl(
        &self,
        canned: Option<&ObjectCannedACL>,
        [read, read_acp, full]: [Option<&String>; 3],
        (owner_id, owner_name): (&str, &str),
        bucket: &meta::Bucket,
    ) -> S3Result<Acl> {
        self.requested_acl(
            canned.map(|a| a.as_str()),
            [
                (read, Perm::Read),
                (None, Perm::Write),
                (read_acp, Perm::ReadAcp),
                (full, Perm::FullControl),
            ],
            owner_id,
            owner_name,
            Some((&bucket.acl.owner_id, &bucket.acl.owner_name)),
        )
        .await
    }

    fn writer_of(&self, who: &Requester, bucket: &meta::Bucket) -> (String, String) {
        match who {
            Requester::Account { id, name } => (id.clone(), name.clone()),
            // Anonymous writes (public-read-write buckets) belong to the bucket owner.
            Requester::Anonymous => (bucket.acl.owner_id.clone(), bucket.acl.owner_name.clone()),
        }
    }

    /// The ACL a request asks for: a canned name, explicit grant headers, or private.
    async fn requested_acl(
        &self,
        canned: Option<&str>,
        grants: [(Option<&String>, Perm); 4],
        owner_id: &str,
        owner_name: &str,
        bucket_owner: Option<(&str, &str)>,
    ) -> S3Result<Acl> {
        let explicit: Vec<_> = grants.iter().filter(|(g, _)| g.is_some()).collect();
        if canned.is_some() && !explicit.is_empty() {
            return Err(s3_error!(
                InvalidRequest,
                "Specifying both Canned ACLs and Header Grants is not allowed"
            ));
        }
        if let Some(c) = canned {
            return Acl::canned(c, owner_id, owner_name, bucket_owner)
                .ok_or_else(|| s3_error!(InvalidArgument, "unknown canned ACL {c}"));
        }
        let mut acl = Acl::private(owner_id, owner_name);
        if !explicit.is_empty() {
            acl.grants.clear();
        }
        for (header, perm) in explicit {
            for g in header.expect("filtered").split(',') {
                acl.grants.push(acl::Grant {
                    grantee: self.parse_grantee(g.trim()).await?,
                    permission: *perm,
                });
            }
        }
        Ok(acl)
    }

    async fn parse_grantee(&self, g: &str) -> S3Result<Grantee> {
        let (k, v) = g
            .split_once('=')
            .ok_or_else(|| s3_error!(InvalidArgument, "bad grant {g}"))?;
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "id" => {
                let name = self
                    .ids
                    .account_name(v)
                    .await
                    .ok_or_else(|| s3_error!(InvalidArgument, "Invalid id {v}"))?;
                Ok(Grantee::Account { id: v.into(), name })
            }
            "uri" if v == acl::ALL_USERS || v == acl::AUTHENTICATED_USERS => {
                Ok(Grantee::Group(v.into()))
            }
            "emailAddress" => Err(s3_error!(UnresolvableGrantByEmailAddress)),
            _ => Err(s3_error!(InvalidArgument, "bad grant {g}")),
        }
    }

    async fn acl_from_policy(&self, p: AccessControlPolicy, current: &Acl) -> S3Result<Acl> {
        let mut acl = Acl {
            owner_id: current.owner_id.clone(),
            owner_name: current.owner_name.clone(),
            grants: vec![],
        };
        for g in p.grants.unwrap_or_default() {
            let perm = g
                .permission
                .as_ref()
                .and_then(|p| Perm::parse(p.as_str()))
                .ok_or_else(|| s3_error!(MalformedACLError))?;
            let grantee = g.grantee.ok_or_else(|| s3_error!(MalformedACLError))?;
            let who = match (grantee.type_.as_str(), grantee.id, grantee.uri) {
                ("CanonicalUser", Some(id), _) => {
                    let name = self
                        .ids
                        .account_name(&id)
                        .await
                        .ok_or_else(|| s3_error!(InvalidArgument, "Invalid id {id}"))?;
                    Grantee::Account { id, name }
                }
                ("Group", _, Some(uri))
                    if uri == acl::ALL_USERS || uri == acl::AUTHENTICATED_USERS =>
                {
                    Grantee::Group(uri)
                }
                ("AmazonCustomerByEmail", _, _) => {
                    return Err(s3_error!(UnresolvableGrantByEmailAddress));
                }
                _ => return Err(s3_error!(MalformedACLError)),
            };
            acl.grants.push(acl::Grant {
                grantee: who,
                permission: perm,
            });
        }
        Ok(acl)
    }

    async fn delete_blobs(&self, blobs: Vec<String>) {
        for b in blobs {
            self.blobs.delete(&b).await;
        }
    }

    /// The bytes `[start, end)` of an object, across its pieces.
    fn object_stream(
        &self,
        o: &meta::Object,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + Sync + 'static + use<> {
        let mut parts = Vec::new();
        let mut at = 0u64;
        for p in &o.pieces {
            let (lo, hi) = (at, at + p.size);
            if hi > start && lo < end {
                parts.push((p.blob.clone(), start.max(lo) - lo, end.min(hi) - lo));
            }
            at = hi;
        }
        let blobs = self.blobs.clone();
        futures::stream::iter(parts).flat_map(move |(id, s, e)| blobs.read(&id, s, e))
    }

    /// Streams a body into a blob, checking Content-MD5 and the flexible
    /// checksum the client asked for (see [`checksum`]) when given. On a
    /// mismatch the blob is removed before anything refers to it. Returns
    /// the checksum to keep and echo back: the one asked for, else one of
    /// `otherwise` (a multipart upload's declared algorithm), else none.
    async fn store_body(
        &self,
        body: Option<StreamingBlob>,
        len: Option<i64>,
        content_md5: Option<&String>,
        wanted: Option<(Requested, Option<s3s::TrailingHeaders>)>,
        otherwise: Option<Algo>,
    ) -> S3Result<(crate::blob::BlobInfo, Option<StoredChecksum>)> {
        let len = len.map(|n| n.max(0) as u64);
        let tap = match (&wanted, otherwise) {
            (Some((r, _)), _) => r.hasher(),
            (None, Some(a)) => a.hasher(),
            (None, None) => Default::default(),
        };
        let (info, hashed) = match body {
            Some(b) => self.blobs.put_tapped(b, len, tap).await,
            None => {
                self.blobs
                    .put_tapped(
                        futures::stream::empty::<Result<Bytes, std::io::Error>>(),
                        len.or(Some(0)),
                        tap,
                    )
                    .await
            }
        }
        .map_err(blob_err)?;
        if let Some(want) = content_md5 {
            use base64::Engine;
            let ok = base64::engine::general_purpose::STANDARD
                .decode(want.trim())
                .map(|d| d == info.md5)
                .unwrap_or(false);
            if !ok {
                self.blobs.delete(&info.id).await;
                return Err(s3_error!(
                    BadDigest,
                    "The Content-MD5 you specified did not match what we received."
                ));
            }
        }
        let kept = match &wanted {
            None => otherwise.and_then(|a| hashed.stored(a)),
            Some((r, trailers)) => match r.verify(hashed, trailers.as_ref()) {
                Ok(c) => checksum::stored(r.algo(), &c),
                Err(e) => {
                    self.blobs.delete(&info.id).await;
                    return Err(e);
                }
            },
        };
        Ok((info, kept))
    }

    /// Copies a byte range of an object into a new blob, computing `algo`'s
    /// checksum of it on the way when given.
    async fn copy_range(
        &self,
        src: &meta::Object,
        start: u64,
        end: u64,
        algo: Option<Algo>,
    ) -> S3Result<(crate::blob::BlobInfo, Option<StoredChecksum>)> {
        let stream = Box::pin(self.object_stream(src, start, end));
        let tap = algo.map(Algo::hasher).unwrap_or_default();
        let (info, hashed) = self
            .blobs
            .put_tapped(stream, Some(end - start), tap)
            .await
            .map_err(blob_err)?;
        Ok((info, algo.and_then(|a| hashed.stored(a))))
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: &str,
        max: usize,
    ) -> S3Result<(Vec<Entry>, bool)> {
        let mut out: Vec<Entry> = Vec::new();
        let mut cursor = resume_after(after, prefix, delimiter);
        loop {
            let batch = self
                .meta
                .list_objects(bucket, prefix, &cursor, max + 1)
                .await
                .map_err(meta_err)?;
            let fetched = batch.len();
            let mut rolled_up = false;
            for o in batch {
                if out.len() == max {
                    return Ok((out, true));
                }
                let rest = &o.key[prefix.len()..];
                match delimiter
                    .filter(|d| !d.is_empty())
                    .and_then(|d| rest.find(d).map(|i| i + d.len()))
                {
                    Some(end) => {
                        let p = format!("{prefix}{}", &rest[..end]);
                        cursor = skip_past(&p);
                        out.push(Entry::Prefix(p));
                        // Every key under this prefix is rolled into it: scan on after them.
                        rolled_up = true;
                        break;
                    }
                    None => {
                        cursor = o.key.clone();
                        out.push(Entry::Object(Box::new(o)));
                    }
                }
            }
            if !rolled_up && fetched < max + 1 {
                return Ok((out, false));
            }
            if out.len() == max {
                let more = !self
                    .meta
                    .list_objects(bucket, prefix, &cursor, 1)
                    .await
                    .map_err(meta_err)?
                    .is_empty();
                return Ok((out, more));
            }
        }
    }

    fn object_entry(
        &self,
        o: &meta::Object,
        enc: &impl Fn(&str) -> String,
        with_owner: bool,
    ) -> Object {
        Object {
            key: Some(enc(&o.key)),
            e_tag: Some(quoted(&o.etag)),
            size: Some(o.size as i64),
            last_modified: Some(ts(o.modified_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            owner: with_owner.then(|| owner(&o.acl.owner_id, &o.acl.owner_name)),
            ..Default::default()
        }
    }

    fn check_conditions(
        &self,
        o: &meta::Object,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        if_modified_since: Option<&Timestamp>,
        if_unmodified_since: Option<&Timestamp>,
    ) -> S3Result<()> {
        let matches = |c: &ETagCondition| match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(e) => e.value() == o.etag,
        };
        // HTTP dates have whole seconds; compare at that precision.
        let modified = o.modified_ms / 1000;
        if let Some(c) = if_match {
            if !matches(c) {
                return Err(s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                ));
            }
        } else if let Some(t) = if_unmodified_since
            && modified > ts_ms(t) / 1000
        {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        if let Some(c) = if_none_match {
            if matches(c) {
                return Err(s3_error!(NotModified));
            }
        } else if let Some(t) = if_modified_since
            && modified <= ts_ms(t) / 1000
        {
            return Err(s3_error!(NotModified));
        }
        Ok(())
    }
}

/// Content-Type, -Encoding, -Disposition, -Language, Cache-Control, Expires, user metadata.
type HeadersOut = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Timestamp>,
    Option<Metadata>,
);

fn headers_out(h: &StoredHeaders) -> HeadersOut {
    (
        h.content_type.clone(),
        h.content_encoding.clone(),
        h.content_disposition.clone(),
        h.content_language.clone(),
        h.cache_control.clone(),
        h.expires
            .as_ref()
            .and_then(|e| e.parse::<i64>().ok())
            .map(ts),
        (!h.user_meta.is_empty()).then(|| h.user_meta.clone().into_iter().collect()),
    )
}

/// A file as a stream of 1 MiB chunks, without pulling in tokio-util.
fn file_chunks(file: tokio::fs::File) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    use tokio::io::AsyncReadExt;
    Box::pin(futures::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    }))
}

/// The response fields for a kept checksum (all empty without one).
/// A struct literal of the s3s type `$ty` whose five `checksum_*` fields
/// come from `$sum` (a [`Checksum`]): s3s gives every output and result
/// type its own copy of them.
macro_rules! with_checksum {
    ($sum:expr, $ty:ident { $($body:tt)* }) => {{
        let s: Checksum = $sum;
        $ty {
            checksum_crc32: s.checksum_crc32,
            checksum_crc32c: s.checksum_crc32c,
            checksum_crc64nvme: s.checksum_crc64nvme,
            checksum_sha1: s.checksum_sha1,
            checksum_sha256: s.checksum_sha256,
            $($body)*
        }
    }};
}

fn echo(c: Option<&StoredChecksum>) -> (Checksum, Option<ChecksumType>) {
    c.map(checksum::to_dto).unwrap_or_default()
}

fn mode_enabled(m: &Option<ChecksumMode>) -> bool {
    m.as_ref()
        .is_some_and(|m| m.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED))
}

/// The algorithm an upload's parts are to be checksummed with.
fn declared_algo(u: &meta::Upload) -> Option<Algo> {
    u.checksum
        .as_ref()
        .and_then(|c| Algo::by_name(&c.algorithm))
}

fn multipart_etag(md5s: &[Vec<u8>]) -> String {
    let mut h = Md5::new();
    for m in md5s {
        h.update(m);
    }
    format!("{}-{}", hex::encode(h.finalize()), md5s.len())
}

fn part_number_ok(n: i32) -> S3Result<()> {
    if (1..=10_000).contains(&n) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ))
    }
}

const MIN_PART: u64 = 5 * 1024 * 1024;

fn copy_source(src: &CopySource) -> S3Result<(String, String)> {
    match src {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket.to_string(), key.to_string())),
        _ => Err(s3_error!(NotImplemented, "access points are not supported")),
    }
}

fn parse_copy_range(r: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last"
        )
    };
    let (a, b) = r
        .strip_prefix("bytes=")
        .and_then(|s| s.split_once('-'))
        .ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b || b >= size {
        return Err(s3_error!(
            InvalidRange,
            "The requested range is not satisfiable"
        ));
    }
    Ok((a, b + 1))
}

#[async_trait::async_trait]
impl S3 for Walrus {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let who = self.requester(&req).await?;
        let Requester::Account { id, name } = &who else {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        };
        let buckets = self.meta.buckets_of(id).await.map_err(meta_err)?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|b| Bucket {
                        name: Some(b.name),
                        creation_date: Some(ts(b.created_ms)),
                        bucket_region: None,
                    })
                    .collect(),
            ),
            owner: Some(owner(id, name)),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let who = self.requester(&req).await?;
        let Requester::Account { id, name } = &who else {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        };
        let i = &req.input;
        let location = i
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref())
            .map(|l| l.as_str().to_string())
            .unwrap_or_default();
        if !location.is_empty() && !self.config.locations.contains(&location) {
            return Err(s3_error!(
                InvalidLocationConstraint,
                "The specified location-constraint is not valid: {location}"
            ));
        }
        let acl = self
            .requested_acl(
                i.acl.as_ref().map(|a| a.as_str()),
                [
                    (i.grant_read.as_ref(), Perm::Read),
                    (i.grant_write.as_ref(), Perm::Write),
                    (i.grant_read_acp.as_ref(), Perm::ReadAcp),
                    (i.grant_full_control.as_ref(), Perm::FullControl),
                ],
                id,
                name,
                None,
            )
            .await?;
        let b = meta::Bucket {
            name: i.bucket.clone(),
            owner_id: id.clone(),
            created_ms: now_ms(),
            location,
            acl,
        };
        self.meta.create_bucket(&b).await.map_err(meta_err)?;
        tracing::info!(bucket = %b.name, owner = %id, "bucket created");
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", b.name)),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let who = self.requester(&req).await?;
        let b = self
            .meta
            .bucket(&req.input.bucket)
            .await
            .map_err(meta_err)?;
        if who.account_id() != Some(b.owner_id.as_str()) {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        self.meta.delete_bucket(&b.name).await.map_err(meta_err)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let who = self.requester(&req).await?;
        self.bucket_for(&req.input.bucket, &who, Perm::Read).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.config.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let who = self.requester(&req).await?;
        let b = self
            .meta
            .bucket(&req.input.bucket)
            .await
            .map_err(meta_err)?;
        if who.account_id() != Some(b.owner_id.as_str()) {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        let loc =
            (!b.location.is_empty()).then(|| BucketLocationConstraint::from(b.location.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: loc,
        }))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let who = self.requester(&req).await?;
        let b = self
            .bucket_for(&req.input.bucket, &who, Perm::ReadAcp)
            .await?;
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(render_grants(&b.acl)),
            owner: Some(owner(&b.acl.owner_id, &b.acl.owner_name)),
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let who = self.requester(&req).await?;
        let b = self
            .bucket_for(&req.input.bucket, &who, Perm::WriteAcp)
            .await?;
        let i = req.input;
        let acl = match i.access_control_policy {
            Some(p) => self.acl_from_policy(p, &b.acl).await?,
            None => {
                self.requested_acl(
                    i.acl.as_ref().map(|a| a.as_str()),
                    [
                        (i.grant_read.as_ref(), Perm::Read),
                        (i.grant_write.as_ref(), Perm::Write),
                        (i.grant_read_acp.as_ref(), Perm::ReadAcp),
                        (i.grant_full_control.as_ref(), Perm::FullControl),
                    ],
                    &b.acl.owner_id,
                    &b.acl.owner_name,
                    None,
                )
                .await?
            }
        };
        self.meta
            .set_bucket_acl(&b.name, &acl)
            .await
            .map_err(meta_err)?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let who = self.requester(&req).await.map_err(closing)?;
        let wanted = Requested::from_headers(&req)
            .map_err(closing)?
            .map(|r| (r, req.trailing_headers.clone()));
        let b = self
            .bucket_for(&req.input.bucket, &who, Perm::Write)
            .await
            .map_err(closing)?;
        let (oid, oname) = self.writer_of(&who, &b);
        let i = req.input;
        let acl = self
            .object_acl(
                i.acl.as_ref(),
                [
                    i.grant_read.as_ref(),
                    i.grant_read_acp.as_ref(),
                    i.grant_full_control.as_ref(),
                ],
                (&oid, &oname),
                &b,
            )
            .await
            .map_err(closing)?;
        let (info, sum) = self
            .store_body(
                i.body,
                i.content_length,
                i.content_md5.as_ref(),
                wanted,
                None,
            )
            .await?;
        let etag = hex::encode(info.md5);
        let o = meta::Object {
            bucket: b.name.clone(),
            key: i.key,
            size: info.size,
            etag: etag.clone(),
            headers: stored_headers(
                i.content_type,
                i.content_encoding,
                i.content_disposition,
                i.content_language,
                i.cache_control,
                i.expires,
                i.metadata,
            ),
            pieces: vec![Piece {
                blob: info.id.clone(),
                size: info.size,
            }],
            modified_ms: now_ms(),
            acl,
            checksum: sum,
        };
        self.commit_object(&o, &info.id).await.map_err(meta_err)?;
        let (sum, kind) = echo(o.checksum.as_ref());
        Ok(S3Response::new(with_checksum!(
            sum,
            PutObjectOutput {
                e_tag: Some(quoted(&etag)),
                size: Some(info.size as i64),
                checksum_type: kind,
                ..Default::default()
            }
        )))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let who = self.requester(&req).await?;
        let i = &req.input;
        let o = self.object_for(&i.bucket, &i.key, &who, Perm::Read).await?;
        self.check_conditions(
            &o,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        let (range, content_range) = match (&i.range, i.part_number) {
            (Some(_), Some(_)) => {
                return Err(s3_error!(
                    InvalidRequest,
                    "Cannot specify both Range header and partNumber query parameter"
                ));
            }
            (Some(r), None) => {
                let r = r.check(o.size).map_err(|_| {
                    s3_error!(InvalidRange, "The requested range is not satisfiable")
                })?;
                let cr = format!("bytes {}-{}/{}", r.start, r.end.saturating_sub(1), o.size);
                (r, Some(cr))
            }
            (None, Some(n)) => {
                part_number_ok(n)?;
                let idx = (n - 1) as usize;
                if idx >= o.pieces.len() {
                    return Err(s3_error!(
                        InvalidArgument,
                        "The requested partnumber is not satisfiable"
                    ));
                }
                let start: u64 = o.pieces[..idx].iter().map(|p| p.size).sum();
                let end = start + o.pieces[idx].size;
                let cr = format!("bytes {}-{}/{}", start, end.saturating_sub(1), o.size);
                (start..end, Some(cr))
            }
            (None, None) => (0..o.size, None),
        };
        let body = self.object_stream(&o, range.start, range.end);
        let (ct, ce, cd, cl, cc, ex, md) = headers_out(&o.headers);
        // S3 gives the checksum only with the whole object: a range or a
        // part would not match it.
        let whole = content_range.is_none();
        let (sum, kind) = echo(
            o.checksum
                .as_ref()
                .filter(|_| whole && mode_enabled(&i.checksum_mode)),
        );
        Ok(S3Response::new(with_checksum!(
            sum,
            GetObjectOutput {
                body: Some(StreamingBlob::wrap(body)),
                content_length: Some((range.end - range.start) as i64),
                content_range,
                accept_ranges: Some("bytes".into()),
                e_tag: Some(quoted(&o.etag)),
                last_modified: Some(ts(o.modified_ms)),
                content_type: i.response_content_type.clone().or(ct),
                content_encoding: i.response_content_encoding.clone().or(ce),
                content_disposition: i.response_content_disposition.clone().or(cd),
                content_language: i.response_content_language.clone().or(cl),
                cache_control: i.response_cache_control.clone().or(cc),
                expires: i.response_expires.clone().or(ex),
                metadata: md,
                parts_count: i.part_number.map(|_| o.pieces.len() as i32),
                checksum_type: kind,
                ..Default::default()
            }
        )))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let who = self.requester(&req).await?;
        let i = &req.input;
        let o = self.object_for(&i.bucket, &i.key, &who, Perm::Read).await?;
        self.check_conditions(
            &o,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        let (ct, ce, cd, cl, cc, ex, md) = headers_out(&o.headers);
        let (len, content_range) = match &i.range {
            Some(r) => {
                let r = r.check(o.size).map_err(|_| {
                    s3_error!(InvalidRange, "The requested range is not satisfiable")
                })?;
                (
                    r.end - r.start,
                    Some(format!(
                        "bytes {}-{}/{}",
                        r.start,
                        r.end.saturating_sub(1),
                        o.size
                    )),
                )
            }
            None => (o.size, None),
        };
        let whole = content_range.is_none() && i.part_number.is_none();
        let (sum, kind) = echo(
            o.checksum
                .as_ref()
                .filter(|_| whole && mode_enabled(&i.checksum_mode)),
        );
        Ok(S3Response::new(with_checksum!(
            sum,
            HeadObjectOutput {
                content_length: Some(len as i64),
                content_range,
                accept_ranges: Some("bytes".into()),
                e_tag: Some(quoted(&o.etag)),
                last_modified: Some(ts(o.modified_ms)),
                content_type: ct,
                content_encoding: ce,
                content_disposition: cd,
                content_language: cl,
                cache_control: cc,
                expires: ex,
                metadata: md,
                checksum_type: kind,
                ..Default::default()
            }
        )))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let who = self.requester(&req).await?;
        let b = self
            .bucket_for(&req.input.bucket, &who, Perm::Write)
            .await?;
        let dead = self
            .meta
            .delete_object(&b.name, &req.input.key)
            .await
            .map_err(meta_err)?;
        self.delete_blobs(dead).await;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let who = self.requester(&req).await?;
        let b = self
            .bucket_for(&req.input.bucket, &who, Perm::Write)
            .await?;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        if req.input.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per request"));
        }
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for id in &req.input.delete.objects {
            match self.meta.delete_object(&b.name, &id.key).await {
                Ok(dead) => {
                    self.delete_blobs(dead).await;
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(id.key.clone()),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(Error {
                    key: Some(id.key.clone()),
                    code: Some("InternalError".into()),
                    message: Some(e.to_string()),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let who = self.requester(&req).await?;
        let i = req.input;
        let (sb, sk) = copy_source(&i.copy_source)?;
        let src = self.object_for(&sb, &sk, &who, Perm::Read).await?;
        self.check_conditions(
            &src,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| {
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                )
            } else {
                e
            }
        })?;
        let b = self.bucket_for(&i.bucket, &who, Perm::Write).await?;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == "REPLACE");
        if sb == i.bucket && sk == i.key && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let headers = if replace {
            stored_headers(
                i.content_type,
                i.content_encoding,
                i.content_disposition,
                i.content_language,
                i.cache_control,
                i.expires,
                i.metadata,
            )
        } else {
            src.headers.clone()
        };
        let (oid, oname) = self.writer_of(&who, &b);
        let acl = self
            .object_acl(
                i.acl.as_ref(),
                [
                    i.grant_read.as_ref(),
                    i.grant_read_acp.as_ref(),
                    i.grant_full_control.as_ref(),
                ],
                (&oid, &oname),
                &b,
            )
            .await?;
        // The source's whole-object checksum still holds for the copy; a
        // composite one does not (the copy is one piece), so it is
        // recomputed with the same algorithm, as is any other algorithm
        // the request names.
        let asked = match &i.checksum_algorithm {
            Some(a) => Some(Algo::by_name(a.as_str()).ok_or_else(|| {
                s3_error!(
                    InvalidRequest,
                    "Checksum algorithm {} is not supported",
                    a.as_str()
                )
            })?),
            None => None,
        };
        let carried = src.checksum.clone().filter(|c| {
            c.kind == checksum::FULL_OBJECT && asked.is_none_or(|a| a.name() == c.algorithm)
        });
        let recompute = match (&carried, asked) {
            (Some(_), _) => None,
            (None, Some(a)) => Some(a),
            (None, None) => src
                .checksum
                .as_ref()
                .and_then(|c| Algo::by_name(&c.algorithm)),
        };
        let (info, computed) = self.copy_range(&src, 0, src.size, recompute).await?;
        let etag = hex::encode(info.md5);
        let modified = now_ms();
        let o = meta::Object {
            bucket: b.name.clone(),
            key: i.key,
            size: info.size,
            etag: etag.clone(),
            headers,
            pieces: vec![Piece {
                blob: info.id.clone(),
                size: info.size,
            }],
            modified_ms: modified,
            acl,
            checksum: carried.or(computed),
        };
        self.commit_object(&o, &info.id).await.map_err(meta_err)?;
        let (sum, kind) = echo(o.checksum.as_ref());
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(with_checksum!(
                sum,
                CopyObjectResult {
                    e_tag: Some(quoted(&etag)),
                    last_modified: Some(ts(modified)),
                    checksum_type: kind,
                }
            )),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let who = self.requester(&req).await?;
        let i = &req.input;
        self.bucket_for(&i.bucket, &who, Perm::Read).await?;
        let max = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = i.prefix.clone().unwrap_or_default();
        let marker = i.marker.clone().unwrap_or_default();
        let (entries, truncated) = self
            .list(&i.bucket, &prefix, i.delimiter.as_deref(), &marker, max)
            .await?;
        let enc = encoder(&i.encoding_type);
        let next_marker = (truncated && i.delimiter.is_some()).then(|| match entries.last() {
            Some(Entry::Object(o)) => enc(&o.key),
            Some(Entry::Prefix(p)) => enc(p),
            None => String::new(),
        });
        let (contents, prefixes) = split_entries(self, entries, &enc, true);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket.clone()),
            prefix: Some(enc(&prefix)),
            marker: Some(enc(&marker)),
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            delimiter: i.delimiter.as_deref().map(&enc),
            next_marker,
            encoding_type: i.encoding_type.clone(),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        use base64::Engine;
        let who = self.requester(&req).await?;
        let i = &req.input;
        self.bucket_for(&i.bucket, &who, Perm::Read).await?;
        let max = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = i.prefix.clone().unwrap_or_default();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // The token is the last key (or prefix) returned, opaque to clients.
        let after = match &i.continuation_token {
            Some(t) => String::from_utf8(b64.decode(t).map_err(|_| {
                s3_error!(
                    InvalidArgument,
                    "The continuation token provided is incorrect"
                )
            })?)
            .map_err(|_| {
                s3_error!(
                    InvalidArgument,
                    "The continuation token provided is incorrect"
                )
            })?,
            None => i.start_after.clone().unwrap_or_default(),
        };
        let (entries, truncated) = self
            .list(&i.bucket, &prefix, i.delimiter.as_deref(), &after, max)
            .await?;
        let token = truncated.then(|| match entries.last() {
            Some(Entry::Object(o)) => b64.encode(&o.key),
            Some(Entry::Prefix(p)) => b64.encode(p),
            None => String::new(),
        });
        let enc = encoder(&i.encoding_type);
        let count = entries.len() as i32;
        let (contents, prefixes) =
            split_entries(self, entries, &enc, i.fetch_owner.unwrap_or(false));
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket.clone()),
            prefix: Some(enc(&prefix)),
            max_keys: Some(max as i32),
            key_count: Some(count),
            continuation_token: i.continuation_token.clone(),
            is_truncated: Some(truncated),
            next_continuation_token: token,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            delimiter: i.delimiter.as_deref().map(&enc),
            encoding_type: i.encoding_type.clone(),
            start_after: i.start_after.as_deref().map(&enc),
            ..Default::default()
        }))
    }

    async fn get_object_acl(
        &self,
        req: S3Request<GetObjectAclInput>,
    ) -> S3Result<S3Response<GetObjectAclOutput>> {
        let who = self.requester(&req).await?;
        let o = self
            .object_for(&req.input.bucket, &req.input.key, &who, Perm::ReadAcp)
            .await?;
        Ok(S3Response::new(GetObjectAclOutput {
            grants: Some(render_grants(&o.acl)),
            owner: Some(owner(&o.acl.owner_id, &o.acl.owner_name)),
            ..Default::default()
        }))
    }

    async fn put_object_acl(
        &self,
        req: S3Request<PutObjectAclInput>,
    ) -> S3Result<S3Response<PutObjectAclOutput>> {
        let who = self.requester(&req).await?;
        let o = self
            .object_for(&req.input.bucket, &req.input.key, &who, Perm::WriteAcp)
            .await?;
        let b = self.meta.bucket(&o.bucket).await.map_err(meta_err)?;
        let i = req.input;
        let acl = match i.access_control_policy {
            Some(p) => self.acl_from_policy(p, &o.acl).await?,
            None => {
                self.object_acl(
                    i.acl.as_ref(),
                    [
                        i.grant_read.as_ref(),
                        i.grant_read_acp.as_ref(),
                        i.grant_full_control.as_ref(),
                    ],
                    (&o.acl.owner_id, &o.acl.owner_name),
                    &b,
                )
                .await?
            }
        };
        if !self
            .meta
            .set_object_acl(&o.bucket, &o.key, &acl)
            .await
            .map_err(meta_err)?
        {
            return Err(s3_error!(NoSuchKey, "The specified key does not exist."));
        }
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let who = self.requester(&req).await?;
        let b = self
            .bucket_for(&req.input.bucket, &who, Perm::Write)
            .await?;
        let (oid, oname) = self.writer_of(&who, &b);
        let i = req.input;
        let acl = self
            .object_acl(
                i.acl.as_ref(),
                [
                    i.grant_read.as_ref(),
                    i.grant_read_acp.as_ref(),
                    i.grant_full_control.as_ref(),
                ],
                (&oid, &oname),
                &b,
            )
            .await?;
        let declared = checksum::declared(
            i.checksum_algorithm.as_ref().map(|a| a.as_str()),
            i.checksum_type.as_ref().map(|t| t.as_str()),
        )?;
        let u = meta::Upload {
            upload_id: ironbark_types::generate_request_id().replace('-', ""),
            bucket: b.name.clone(),
            key: i.key.clone(),
            initiated_ms: now_ms(),
            headers: stored_headers(
                i.content_type,
                i.content_encoding,
                i.content_disposition,
                i.content_language,
                i.cache_control,
                i.expires,
                i.metadata,
            ),
            acl,
            checksum: declared,
        };
        self.meta.create_upload(&u).await.map_err(meta_err)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(b.name),
            key: Some(i.key),
            upload_id: Some(u.upload_id),
            checksum_algorithm: u
                .checksum
                .as_ref()
                .map(|c| ChecksumAlgorithm::from(c.algorithm.clone())),
            checksum_type: u
                .checksum
                .as_ref()
                .map(|c| ChecksumType::from(c.kind.clone())),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let who = self.requester(&req).await.map_err(closing)?;
        let wanted = Requested::from_headers(&req)
            .map_err(closing)?
            .map(|r| (r, req.trailing_headers.clone()));
        let i = req.input;
        part_number_ok(i.part_number).map_err(closing)?;
        self.bucket_for(&i.bucket, &who, Perm::Write)
            .await
            .map_err(closing)?;
        let u = self
            .meta
            .upload(&i.bucket, &i.key, &i.upload_id)
            .await
            .map_err(|e| closing(meta_err(e)))?;
        let (info, sum) = self
            .store_body(
                i.body,
                i.content_length,
                i.content_md5.as_ref(),
                wanted,
                declared_algo(&u),
            )
            .await?;
        let etag = hex::encode(info.md5);
        let part = meta::Part {
            number: i.part_number,
            size: info.size,
            etag: etag.clone(),
            blob: info.id.clone(),
            modified_ms: now_ms(),
            checksum: sum,
        };
        self.commit_part(&i.upload_id, &part)
            .await
            .map_err(meta_err)?;
        let (sum, _) = echo(part.checksum.as_ref());
        Ok(S3Response::new(with_checksum!(
            sum,
            UploadPartOutput {
                e_tag: Some(quoted(&etag)),
                ..Default::default()
            }
        )))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let who = self.requester(&req).await?;
        let i = req.input;
        part_number_ok(i.part_number)?;
        let (sb, sk) = copy_source(&i.copy_source)?;
        let src = self.object_for(&sb, &sk, &who, Perm::Read).await?;
        self.check_conditions(
            &src,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| {
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                )
            } else {
                e
            }
        })?;
        self.bucket_for(&i.bucket, &who, Perm::Write).await?;
        let u = self
            .meta
            .upload(&i.bucket, &i.key, &i.upload_id)
            .await
            .map_err(meta_err)?;
        let (start, end) = match &i.copy_source_range {
            Some(r) => parse_copy_range(r, src.size)?,
            None => (0, src.size),
        };
        let (info, sum) = self.copy_range(&src, start, end, declared_algo(&u)).await?;
        let etag = hex::encode(info.md5);
        let modified = now_ms();
        let part = meta::Part {
            number: i.part_number,
            size: info.size,
            etag: etag.clone(),
            blob: info.id.clone(),
            modified_ms: modified,
            checksum: sum,
        };
        self.commit_part(&i.upload_id, &part)
            .await
            .map_err(meta_err)?;
        let (sum, _) = echo(part.checksum.as_ref());
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(with_checksum!(
                sum,
                CopyPartResult {
                    e_tag: Some(quoted(&etag)),
                    last_modified: Some(ts(modified)),
                }
            )),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let who = self.requester(&req).await?;
        let i = &req.input;
        self.bucket_for(&i.bucket, &who, Perm::Read).await?;
        let u = self
            .meta
            .upload(&i.bucket, &i.key, &i.upload_id)
            .await
            .map_err(meta_err)?;
        let max = i.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let marker = i.part_number_marker.unwrap_or(0);
        let all: Vec<meta::Part> = self
            .meta
            .parts(&u.upload_id)
            .await
            .map_err(meta_err)?
            .into_iter()
            .filter(|p| p.number > marker)
            .collect();
        let truncated = all.len() > max;
        let shown: Vec<meta::Part> = all.into_iter().take(max).collect();
        let next = shown.last().map(|p| p.number);
        let o = owner(&u.acl.owner_id, &u.acl.owner_name);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(u.bucket.clone()),
            key: Some(u.key.clone()),
            upload_id: Some(u.upload_id.clone()),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            initiator: Some(Initiator {
                id: o.id.clone(),
                display_name: o.display_name.clone(),
            }),
            owner: Some(o),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            parts: Some(
                shown
                    .into_iter()
                    .map(|p| {
                        let (sum, _) = echo(p.checksum.as_ref());
                        with_checksum!(
                            sum,
                            Part {
                                part_number: Some(p.number),
                                e_tag: Some(quoted(&p.etag)),
                                size: Some(p.size as i64),
                                last_modified: Some(ts(p.modified_ms)),
                            }
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let who = self.requester(&req).await?;
        let i = &req.input;
        self.bucket_for(&i.bucket, &who, Perm::Read).await?;
        let max = i.max_uploads.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = i.prefix.clone().unwrap_or_default();
        let key_marker = i.key_marker.clone().unwrap_or_default();
        // Without an upload-id marker, S3 resumes after every upload of the key marker.
        let id_marker = match (&i.upload_id_marker, key_marker.is_empty()) {
            (Some(m), false) => m.clone(),
            (_, false) => "\u{10FFFF}".to_string(),
            (_, true) => String::new(),
        };
        let mut ups = self
            .meta
            .list_uploads(&i.bucket, &prefix, &key_marker, &id_marker, max + 1)
            .await
            .map_err(meta_err)?;
        let truncated = ups.len() > max;
        ups.truncate(max);
        let enc = encoder(&i.encoding_type);
        let mut prefixes: Vec<String> = Vec::new();
        let mut uploads = Vec::new();
        for u in &ups {
            if let Some(d) = i.delimiter.as_deref().filter(|d| !d.is_empty())
                && let Some(pos) = u.key[prefix.len()..].find(d)
            {
                let p = format!(
                    "{prefix}{}",
                    &u.key[prefix.len()..prefix.len() + pos + d.len()]
                );
                if prefixes.last() != Some(&p) {
                    prefixes.push(p);
                }
                continue;
            }
            let o = owner(&u.acl.owner_id, &u.acl.owner_name);
            uploads.push(MultipartUpload {
                key: Some(enc(&u.key)),
                upload_id: Some(u.upload_id.clone()),
                initiated: Some(ts(u.initiated_ms)),
                initiator: Some(Initiator {
                    id: o.id.clone(),
                    display_name: o.display_name.clone(),
                }),
                owner: Some(o),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            });
        }
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket.clone()),
            prefix: Some(enc(&prefix)),
            key_marker: Some(enc(&key_marker)),
            upload_id_marker: i.upload_id_marker.clone(),
            next_key_marker: truncated.then(|| ups.last().map(|u| enc(&u.key))).flatten(),
            next_upload_id_marker: truncated
                .then(|| ups.last().map(|u| u.upload_id.clone()))
                .flatten(),
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            common_prefixes: Some(
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(&p)),
                    })
                    .collect(),
            ),
            delimiter: i.delimiter.clone(),
            encoding_type: i.encoding_type.clone(),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let who = self.requester(&req).await?;
        let i = req.input;
        self.bucket_for(&i.bucket, &who, Perm::Write).await?;
        let u = self
            .meta
            .upload(&i.bucket, &i.key, &i.upload_id)
            .await
            .map_err(meta_err)?;
        let stored = self.meta.parts(&u.upload_id).await.map_err(meta_err)?;
        let wanted = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if wanted.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema"
            ));
        }
        let mut pieces = Vec::new();
        let mut md5s = Vec::new();
        let mut sums = Vec::new();
        let mut last = 0;
        for (n, w) in wanted.iter().enumerate() {
            let num = w.part_number.ok_or_else(|| s3_error!(InvalidPart))?;
            if num <= last {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order. Parts must be ordered by part number."
                ));
            }
            last = num;
            let p = stored
                .iter()
                .find(|p| p.number == num)
                .ok_or_else(|| s3_error!(InvalidPart, "part {num} was not uploaded"))?;
            if let Some(e) = &w.e_tag
                && e.value().trim_matches('"') != p.etag
            {
                return Err(s3_error!(InvalidPart, "part {num} has another ETag"));
            }
            if let Some((algo, sent)) = checksum::sent_for_part(w)
                && p.checksum
                    .as_ref()
                    .is_none_or(|c| c.algorithm != algo.name() || c.value != *sent)
            {
                return Err(s3_error!(
                    InvalidPart,
                    "part {num}'s {} checksum is not the one it was uploaded with",
                    algo.name()
                ));
            }
            if n + 1 < wanted.len() && p.size < MIN_PART {
                return Err(s3_error!(
                    EntityTooSmall,
                    "Your proposed upload is smaller than the minimum allowed size"
                ));
            }
            md5s.push(hex::decode(&p.etag).map_err(internal)?);
            pieces.push(Piece {
                blob: p.blob.clone(),
                size: p.size,
            });
            sums.push((p.checksum.as_ref(), p.size));
        }
        let etag = multipart_etag(&md5s);
        // Without a declared algorithm, parts that all carry the same one
        // still give the object a checksum, in S3's default form for it.
        let declared = match &u.checksum {
            Some(d) => Some(d.clone()),
            None => match sums.first() {
                Some((Some(c), _)) => checksum::declared(Some(&c.algorithm), None)?,
                _ => None,
            },
        };
        let object_sum = match &declared {
            Some(d) => checksum::of_parts(d, &sums)?,
            None => None,
        };
        if let Some(sum) = &object_sum {
            let sent = Checksum {
                checksum_crc32: i.checksum_crc32.clone(),
                checksum_crc32c: i.checksum_crc32c.clone(),
                checksum_crc64nvme: i.checksum_crc64nvme.clone(),
                checksum_sha1: i.checksum_sha1.clone(),
                checksum_sha256: i.checksum_sha256.clone(),
                ..Default::default()
            };
            checksum::check_whole(sum, &sent)?;
        }
        let o = meta::Object {
            bucket: u.bucket.clone(),
            key: u.key.clone(),
            size: pieces.iter().map(|p| p.size).sum(),
            etag: etag.clone(),
            headers: u.headers.clone(),
            pieces,
            modified_ms: now_ms(),
            acl: u.acl.clone(),
            checksum: object_sum,
        };
        let dead = self
            .meta
            .complete_upload(&u.upload_id, &o)
            .await
            .map_err(meta_err)?;
        self.delete_blobs(dead).await;
        let (sum, kind) = echo(o.checksum.as_ref());
        Ok(S3Response::new(with_checksum!(
            sum,
            CompleteMultipartUploadOutput {
                bucket: Some(u.bucket.clone()),
                key: Some(u.key.clone()),
                e_tag: Some(quoted(&etag)),
                location: Some(format!("/{}/{}", u.bucket, u.key)),
                checksum_type: kind,
                ..Default::default()
            }
        )))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let who = self.requester(&req).await?;
        let i = &req.input;
        self.bucket_for(&i.bucket, &who, Perm::Write).await?;
        self.meta
            .upload(&i.bucket, &i.key, &i.upload_id)
            .await
            .map_err(meta_err)?;
        let dead = self
            .meta
            .abort_upload(&i.upload_id)
            .await
            .map_err(meta_err)?;
        self.delete_blobs(dead).await;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

fn split_entries(
    w: &Walrus,
    entries: Vec<Entry>,
    enc: &impl Fn(&str) -> String,
    with_owner: bool,
) -> (Vec<Object>, Vec<CommonPrefix>) {
    let mut contents = Vec::new();
    let mut prefixes = Vec::new();
    for e in entries {
        match e {
            Entry::Object(o) => contents.push(w.object_entry(&o, enc, with_owner)),
            Entry::Prefix(p) => prefixes.push(CommonPrefix {
                prefix: Some(enc(&p)),
            }),
        }
    }
    (contents, prefixes)
}

fn render_grants(acl: &Acl) -> Vec<Grant> {
    acl.grants
        .iter()
        .map(|g| Grant {
            grantee: Some(match &g.grantee {
                Grantee::Account { id, name } => s3s::dto::Grantee {
                    type_: Type::from_static(Type::CANONICAL_USER),
                    id: Some(id.clone()),
                    display_name: Some(name.clone()),
                    email_address: None,
                    uri: None,
                },
                Grantee::Group(uri) => s3s::dto::Grantee {
                    type_: Type::from_static(Type::GROUP),
                    id: None,
                    display_name: None,
                    email_address: None,
                    uri: Some(uri.clone()),
                },
            }),
            permission: Some(Permission::from(g.permission.as_str().to_string())),
        })
        .collect()
}
