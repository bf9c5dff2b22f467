//! Walrus, the S3-compatible object store: the buckets and objects that
//! hold machine images, bundles and volume snapshots.
//!
//! A request reaches the [`s3s`] service built by [`Walrus::service`],
//! which parses the S3 wire protocol (path- or virtual-host-style, SigV4
//! including streaming uploads and presigned URLs, SigV2) and verifies the
//! signature with the secret [`Identities`] hands it (the CLC's accounts and
//! keys). The decoded operation lands in `s3.rs`, which checks ACLs and
//! works on two stores: [`meta::Meta`], the SQLite index of buckets,
//! objects and uploads, and [`blob::FsBlobs`], the checksummed object data
//! on the local filesystem. Uploads carrying S3's flexible checksums are
//! verified against them as they stream in, and the checksums kept with
//! the object for GET/HEAD to return (`checksum.rs`). The blob layer is
//! the seam where an external S3 backend can later replace the local disk.
//!
//! `sigv2.rs` adjusts SigV2 requests before `s3s` sees them: bucket-level
//! paths signed with a trailing slash, and, for the API port's
//! `/services/objectstorage` front, requests signed over the prefixed
//! path.

pub mod acl;
pub mod blob;
mod checksum;
pub mod meta;
mod s3;
pub mod sigv2;

use std::path::PathBuf;
use std::sync::Arc;

use s3s::auth::{S3Auth, SecretKey};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3Result, s3_error};

pub use s3::Walrus;

/// An access key's secret and owner, as Walrus needs them.
#[derive(Clone, Debug)]
pub struct Identity {
    pub secret: String,
    pub account_id: String,
    pub account_name: String,
}

/// Where Walrus learns who holds which key: the CLC's account store.
#[async_trait::async_trait]
pub trait Identities: Send + Sync + 'static {
    async fn lookup(&self, access_key: &str) -> Option<Identity>;
    /// The name of an account, for ACL grants by canonical id.
    async fn account_name(&self, account_id: &str) -> Option<String>;
    /// Whether the account may read and write every bucket (the cloud's
    /// administrator).
    async fn is_superuser(&self, _account_id: &str) -> bool {
        false
    }
}

#[derive(Clone, Debug)]
pub struct WalrusConfig {
    pub data_dir: PathBuf,
    pub region: String,
    /// LocationConstraint values CreateBucket accepts (none is always fine).
    pub locations: Vec<String>,
    /// Base domains for virtual-host-style requests (`bucket.<domain>`).
    pub domains: Vec<String>,
}

struct Auth(Arc<dyn Identities>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.lookup(access_key).await {
            Some(i) => Ok(SecretKey::from(i.secret)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Anonymous requests must reach the operations, which allow them exactly
/// where an ACL grants AllUsers; the default policy would refuse them all.
struct AclDecides;

#[async_trait::async_trait]
impl s3s::access::S3Access for AclDecides {
    async fn check(&self, _cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        Ok(())
    }
}

impl Walrus {
    /// Opens Walrus' state for a tool running beside a live Walrus (the
    /// admin CLI): no garbage collection, since the server may be midway
    /// through writing a blob that no metadata names yet.
    pub async fn open_shared(
        config: WalrusConfig,
        ids: Arc<dyn Identities>,
    ) -> Result<Self, String> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let meta = meta::Meta::open(&dir.join("meta.db"))
            .await
            .map_err(|e| e.to_string())?;
        let blobs = blob::FsBlobs::open(dir.join("data")).map_err(|e| e.to_string())?;
        Ok(Walrus {
            meta: Arc::new(meta),
            blobs,
            ids,
            config,
        })
    }

    /// Opens Walrus' state and removes blobs no object or part refers to
    /// (what a crash mid-upload leaves), before anything is served.
    pub async fn open(config: WalrusConfig, ids: Arc<dyn Identities>) -> Result<Self, String> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let meta = meta::Meta::open(&dir.join("meta.db"))
            .await
            .map_err(|e| e.to_string())?;
        let blobs = blob::FsBlobs::open(dir.join("data")).map_err(|e| e.to_string())?;
        let live = meta.live_blobs().await.map_err(|e| e.to_string())?;
        let removed = blobs.collect_garbage(&live).map_err(|e| e.to_string())?;
        if removed > 0 {
            tracing::info!(
                removed,
                "walrus removed unreferenced data left by an interrupted write"
            );
        }
        Ok(Walrus {
            meta: Arc::new(meta),
            blobs,
            ids,
            config,
        })
    }

    /// The HTTP service answering S3 requests.
    pub fn service(self) -> Result<S3Service, String> {
        let ids = self.ids.clone();
        let domains = self.config.domains.clone();
        let mut b = S3ServiceBuilder::new(self);
        b.set_auth(Auth(ids));
        b.set_access(AclDecides);
        if !domains.is_empty() {
            let inner = s3s::host::MultiDomain::new(&domains).map_err(|e| e.to_string())?;
            b.set_host(Domains { inner, domains });
        }
        Ok(b.build())
    }
}

/// The base domains of virtual-host-style requests, matched whatever port
/// the Host header carries: clients address `bucket.<domain>:8780`, and
/// `s3s` alone would only match a domain configured with that very port.
struct Domains {
    inner: s3s::host::MultiDomain,
    domains: Vec<String>,
}

impl s3s::host::S3Host for Domains {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<s3s::host::VirtualHost<'a>> {
        let bare = match host.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let ours = self.domains.iter().any(|d| {
            bare == d
                || bare
                    .strip_suffix(d.as_str())
                    .is_some_and(|b| b.ends_with('.'))
        });
        self.inner.parse_host_header(if ours { bare } else { host })
    }
}

#[cfg(test)]
mod tests {
    use s3s::host::S3Host;

    #[test]
    fn virtual_hosts_match_with_or_without_a_port() {
        let d = super::Domains {
            inner: s3s::host::MultiDomain::new(&["s3.test"]).unwrap(),
            domains: vec!["s3.test".into()],
        };
        for host in ["b1.s3.test", "b1.s3.test:8780"] {
            let vh = d.parse_host_header(host).unwrap();
            assert_eq!(vh.bucket(), Some("b1"), "{host}");
            assert_eq!(vh.domain(), "s3.test");
        }
        assert_eq!(d.parse_host_header("s3.test:8780").unwrap().bucket(), None);
        // Other hosts keep s3s' meaning (a CNAME naming the bucket).
        assert_eq!(
            d.parse_host_header("images.example.com").unwrap().bucket(),
            Some("images.example.com")
        );
    }
}
