//! An in-process stand-in for Walrus' side of a snapshot upload, for the
//! SC's tests and the `snapbench` bench: it runs without the CLC, its
//! accounts or a disk, yet does the work Walrus does for a multipart
//! upload, so the bench stays honest and the tests check the protocol.
//!
//! - `PUT /bucket/key?partNumber=N&uploadId=U`: the body streams to one
//!   blocking thread that computes the MD5 (the part's ETag) and the
//!   CRC-32, as Walrus' blob writer does; a CRC-32 that does not match
//!   `x-amz-checksum-crc32` is refused (`BadDigest`), a matching one
//!   echoed. A part sent again replaces the earlier one.
//! - `POST /bucket/key?uploadId=U`: the parts listed must exist with the
//!   ETags and CRC-32s given, in ascending order, every one but the last
//!   at least 5 MiB; the object's CRC-32 is combined from the parts' and
//!   compared with `x-amz-checksum-crc32`; the answer carries the
//!   multipart ETag (MD5 of the parts' MD5s, `-N`) and the CRC-32. The
//!   upload is gone afterwards, as in S3.
//! - `GET /bucket/key`: the object, when kept ([`StandIn::keep_objects`]).
//!
//! [`Mode`] makes it misbehave, and [`StandIn::log`] keeps when each part
//! and the completion arrived, for the bench's overlap figures.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use futures_util::StreamExt;
use ironbark_sc_api::{MIN_PART_SIZE, WalrusTarget, plan_parts};
use md5::Digest as _;

use crate::multipart::xml_field;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// What Walrus does.
    Walrus,
    /// Stores whatever comes and confirms no checksum.
    Careless,
    /// Fails the third part after reading some of it: a store or network
    /// dying mid-upload.
    DiesMidway,
    /// Completes the upload but its answer is lost (a 500 instead): as if
    /// the SC had died right after sending the completion.
    LosesCompletion,
}

struct StoredPart {
    md5: [u8; 16],
    crc: crc32fast::Hasher,
    size: u64,
    data: Option<Vec<u8>>,
}

/// What arrived when.
#[derive(Clone, Debug)]
pub enum Event {
    /// Part N fully received and checked.
    Part(u32, Instant),
    Completed(Instant),
}

#[derive(Default)]
struct Inner {
    uploads: HashMap<String, BTreeMap<u32, StoredPart>>,
    objects: HashMap<String, (Vec<u8>, String)>,
    log: Vec<Event>,
    next_id: u64,
}

/// See the module docs.
#[derive(Clone)]
pub struct StandIn {
    pub mode: Arc<Mutex<Mode>>,
    keep: bool,
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl StandIn {
    /// Serves on a loopback port. `keep`: hold the objects' bytes (tests);
    /// the bench only hashes them, as the stand-in for the disk write.
    pub async fn start(mode: Mode, keep: bool) -> StandIn {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = l.local_addr().expect("local address");
        let me = StandIn {
            mode: Arc::new(Mutex::new(mode)),
            keep,
            inner: Arc::default(),
            addr,
        };
        let handler = me.clone();
        let app = Router::new()
            .fallback(any(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Body| {
                    let h = handler.clone();
                    async move { h.handle(method, uri, headers, body).await }
                },
            ))
            .layer(axum::extract::DefaultBodyLimit::disable());
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        me
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it holds the objects' bytes.
    pub fn keep_objects(&self) -> bool {
        self.keep
    }

    /// Creates an upload for `key` (`bucket/name`) and the target an SC
    /// gets for a volume of `volume_size` bytes.
    pub fn target(&self, key: &str, volume_size: u64) -> WalrusTarget {
        let plan = plan_parts(volume_size);
        let id = {
            let mut st = self.inner.lock().expect("stand-in state");
            st.next_id += 1;
            let id = format!("up{}", st.next_id);
            st.uploads.insert(id.clone(), BTreeMap::new());
            id
        };
        let base = format!("http://{}/{key}", self.addr);
        WalrusTarget {
            part_size: plan.part_size,
            part_urls: (1..=plan.parts)
                .map(|n| format!("{base}?partNumber={n}&uploadId={id}&X-Amz-Signature=x"))
                .collect(),
            complete_url: format!("{base}?uploadId={id}&X-Amz-Signature=x"),
        }
    }

    /// A completed object's bytes (if kept) and ETag.
    pub fn object(&self, key: &str) -> Option<(Vec<u8>, String)> {
        let st = self.inner.lock().expect("stand-in state");
        st.objects.get(&format!("/{key}")).cloned()
    }

    /// Uploads not completed.
    pub fn open_uploads(&self) -> usize {
        self.inner.lock().expect("stand-in state").uploads.len()
    }

    pub fn log(&self) -> Vec<Event> {
        self.inner.lock().expect("stand-in state").log.clone()
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
        let query: HashMap<String, String> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let path = uri.path().to_string();
        let upload = query.get("uploadId").cloned();
        let part = query.get("partNumber").and_then(|n| n.parse::<u32>().ok());
        match (method, upload, part) {
            (Method::PUT, Some(u), Some(n)) => self.put_part(u, n, headers, body).await,
            (Method::POST, Some(u), None) => self.complete(path, u, headers, body).await,
            (Method::GET, None, None) => match self.inner.lock().expect("state").objects.get(&path)
            {
                Some((b, _)) if self.keep => b.clone().into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            },
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }

    async fn put_part(&self, upload: String, n: u32, headers: HeaderMap, body: Body) -> Response {
        let mode = *self.mode.lock().expect("mode");
        if !self
            .inner
            .lock()
            .expect("state")
            .uploads
            .contains_key(&upload)
        {
            return (
                StatusCode::NOT_FOUND,
                "<Error><Code>NoSuchUpload</Code></Error>",
            )
                .into_response();
        }
        let keep = self.keep;
        // As Walrus: one thread hashes the body as it arrives.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut md5 = md5::Md5::new();
            let mut crc = crc32fast::Hasher::new();
            let mut data = Vec::new();
            let mut size = 0u64;
            while let Some(b) = rx.blocking_recv() {
                md5.update(&b);
                crc.update(&b);
                size += b.len() as u64;
                if keep {
                    data.extend_from_slice(&b);
                }
            }
            let md5: [u8; 16] = md5.finalize().into();
            (md5, crc, size, data)
        });
        let mut stream = body.into_data_stream();
        let mut got = 0usize;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            got += chunk.len();
            if mode == Mode::DiesMidway && n == 3 && got > 1 << 20 {
                return (StatusCode::INTERNAL_SERVER_ERROR, "gone").into_response();
            }
            if tx.send(chunk).await.is_err() {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
        drop(tx);
        let Ok((md5, crc, size, data)) = hasher.await else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let value = b64(&crc.clone().finalize().to_be_bytes());
        let given = headers
            .get("x-amz-checksum-crc32")
            .and_then(|v| v.to_str().ok());
        if mode != Mode::Careless && given.is_some_and(|g| g != value) {
            return (
                StatusCode::BAD_REQUEST,
                "<Error><Code>BadDigest</Code></Error>",
            )
                .into_response();
        }
        {
            let mut st = self.inner.lock().expect("state");
            let Some(parts) = st.uploads.get_mut(&upload) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            parts.insert(
                n,
                StoredPart {
                    md5,
                    crc,
                    size,
                    data: keep.then_some(data),
                },
            );
            st.log.push(Event::Part(n, Instant::now()));
        }
        let mut r = (
            StatusCode::OK,
            [("etag", format!("\"{}\"", hex::encode(md5)))],
        )
            .into_response();
        if mode != Mode::Careless && given.is_some() {
            r.headers_mut()
                .insert("x-amz-checksum-crc32", value.parse().expect("base64"));
        }
        r
    }

    async fn complete(
        &self,
        path: String,
        upload: String,
        headers: HeaderMap,
        body: Body,
    ) -> Response {
        let mode = *self.mode.lock().expect("mode");
        let Ok(body) = axum::body::to_bytes(body, 1 << 24).await else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let xml = String::from_utf8_lossy(&body).into_owned();
        let bad = |code: &str| {
            (
                StatusCode::BAD_REQUEST,
                format!("<Error><Code>{code}</Code></Error>"),
            )
                .into_response()
        };
        let mut st = self.inner.lock().expect("state");
        let Some(parts) = st.uploads.get(&upload) else {
            return (
                StatusCode::NOT_FOUND,
                "<Error><Code>NoSuchUpload</Code></Error>",
            )
                .into_response();
        };
        let listed: Vec<&str> = xml.split("<Part>").skip(1).collect();
        if listed.is_empty() {
            return bad("MalformedXML");
        }
        let mut md5s = Vec::new();
        let mut crc = crc32fast::Hasher::new();
        let mut data = Vec::new();
        let mut last = 0;
        for (i, p) in listed.iter().enumerate() {
            let Some(n) = xml_field(p, "PartNumber").and_then(|n| n.parse::<u32>().ok()) else {
                return bad("MalformedXML");
            };
            if n <= last {
                return bad("InvalidPartOrder");
            }
            last = n;
            let Some(stored) = parts.get(&n) else {
                return bad("InvalidPart");
            };
            let etag = xml_field(p, "ETag").unwrap_or_default();
            if etag.trim_matches('"') != hex::encode(stored.md5) {
                return bad("InvalidPart");
            }
            let sum = b64(&stored.crc.clone().finalize().to_be_bytes());
            if xml_field(p, "ChecksumCRC32").is_some_and(|c| c != sum) {
                return bad("InvalidPart");
            }
            if i + 1 < listed.len() && stored.size < MIN_PART_SIZE {
                return bad("EntityTooSmall");
            }
            md5s.extend_from_slice(&stored.md5);
            crc.combine(&stored.crc);
            if let Some(d) = &stored.data {
                data.extend_from_slice(d);
            }
        }
        let whole = b64(&crc.finalize().to_be_bytes());
        let given = headers
            .get("x-amz-checksum-crc32")
            .and_then(|v| v.to_str().ok());
        if given.is_some_and(|g| g != whole) {
            return bad("BadDigest");
        }
        let etag = format!("{}-{}", hex::encode(md5::Md5::digest(&md5s)), listed.len());
        st.uploads.remove(&upload);
        st.objects.insert(path.clone(), (data, etag.clone()));
        st.log.push(Event::Completed(Instant::now()));
        if mode == Mode::LosesCompletion {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let sum = if mode == Mode::Careless {
            String::new()
        } else {
            format!(
                "<ChecksumCRC32>{whole}</ChecksumCRC32><ChecksumType>FULL_OBJECT</ChecksumType>"
            )
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult><Location>{path}</Location><ETag>&quot;{etag}&quot;</ETag>{sum}</CompleteMultipartUploadResult>"
        )
        .into_response()
    }
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}
