//! A stand-in (a fake) for Walrus' side of the SC's multipart snapshot
//! upload. Test support only: nothing in a product crate uses it.
//!
//! # Why it exists
//!
//! The SC uploads each compressed snapshot to Walrus as an S3 multipart
//! upload through URLs the CLC presigned ([`WalrusTarget`]). The SC's
//! tests (`crates/sc/tests/upload.rs`, `real.rs`), the NC's end-to-end
//! volume test (`crates/nc/tests/volumes_qemu.rs`) and the SC's
//! `snapbench` bench need the other end of that upload without a CLC, its
//! accounts or a disk. This in-process server is that end: it does the
//! work Walrus does for a multipart upload, so the bench stays honest and
//! the tests check the protocol. It is a crate of its own, a
//! dev-dependency of the crates that use it, so the SC's library does not
//! carry it; it needs only the SC's control API (ironbark-sc-api), not
//! the SC.
//!
//! # How data flows through it
//!
//! [`StandIn::start`] serves on a loopback port; [`StandIn::target`]
//! creates an upload and gives the [`WalrusTarget`] an SC gets for it
//! (part URLs and the completion URL point at this server). Then:
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
//! - `GET /bucket/key`: the object, when kept ([`StandIn::keep_objects`]);
//!   a test reads it back with [`StandIn::object`] or, as a volume's
//!   source, through that URL.
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

/// The text of the first `<name>` element (the completion bodies are flat
/// and carry no markup inside their values, apart from `&quot;`). The
/// stand-in's own reading of the XML, not the SC's, so a test does not
/// check the SC's requests with the SC's parser.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let (_, after) = xml.split_once(&format!("<{name}>"))?;
    let (value, _) = after.split_once(&format!("</{name}>"))?;
    Some(value.trim().replace("&quot;", "\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 exchange on its own connection: status, head, body.
    async fn send(
        store: &StandIn,
        method: &str,
        url: &str,
        crc: Option<&str>,
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let target = url
            .strip_prefix(&format!("http://{}", store.addr()))
            .expect("a URL of the stand-in");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
            store.addr(),
            body.len()
        );
        if let Some(c) = crc {
            head.push_str(&format!("x-amz-checksum-crc32: {c}\r\n"));
        }
        head.push_str("\r\n");
        let mut s = tokio::net::TcpStream::connect(store.addr()).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        (status, head, answer[split + 4..].to_vec())
    }

    fn crc(d: &[u8]) -> String {
        b64(&crc32fast::hash(d).to_be_bytes())
    }

    fn md5_hex(d: &[u8]) -> String {
        hex::encode(md5::Md5::digest(d))
    }

    fn part_xml(n: u32, d: &[u8]) -> String {
        format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>&quot;{}&quot;</ETag><ChecksumCRC32>{}</ChecksumCRC32></Part>",
            md5_hex(d),
            crc(d)
        )
    }

    #[tokio::test]
    async fn an_upload_is_checked_completed_and_kept() {
        let store = StandIn::start(Mode::Walrus, true).await;
        let t = store.target("bucket/snap", 1 << 20);
        assert_eq!(t.part_urls.len(), 1);
        assert_eq!(store.open_uploads(), 1);
        let data = b"a volume's compressed bytes";

        // A part whose CRC-32 is not the one sent is refused.
        let (status, _, body) = send(&store, "PUT", &t.part_urls[0], Some(&crc(b"x")), data).await;
        assert_eq!(status, 400);
        assert!(String::from_utf8_lossy(&body).contains("BadDigest"));

        // The right one is echoed, with the MD5 as the ETag.
        let (status, head, _) = send(&store, "PUT", &t.part_urls[0], Some(&crc(data)), data).await;
        assert_eq!(status, 200);
        assert!(head.contains(&format!("etag: \"{}\"", md5_hex(data))));
        assert!(head.contains(&format!(
            "x-amz-checksum-crc32: {}",
            crc(data).to_lowercase()
        )));

        let xml = format!(
            "<CompleteMultipartUpload>{}</CompleteMultipartUpload>",
            part_xml(1, data)
        );
        let (status, _, body) = send(
            &store,
            "POST",
            &t.complete_url,
            Some(&crc(data)),
            xml.as_bytes(),
        )
        .await;
        assert_eq!(status, 200);
        let answer = String::from_utf8_lossy(&body).into_owned();
        let etag = format!(
            "{}-1",
            hex::encode(md5::Md5::digest(md5::Md5::digest(data)))
        );
        assert_eq!(xml_field(&answer, "ETag"), Some(format!("\"{etag}\"")));
        assert_eq!(xml_field(&answer, "ChecksumCRC32"), Some(crc(data)));
        assert_eq!(store.open_uploads(), 0);
        assert_eq!(store.object("bucket/snap"), Some((data.to_vec(), etag)));
        let url = format!("http://{}/bucket/snap", store.addr());
        let (status, _, body) = send(&store, "GET", &url, None, b"").await;
        assert_eq!((status, body.as_slice()), (200, &data[..]));
        assert!(matches!(
            store.log().as_slice(),
            [Event::Part(1, _), Event::Completed(_)]
        ));
    }

    #[tokio::test]
    async fn a_completion_breaking_s3s_rules_is_refused() {
        let store = StandIn::start(Mode::Walrus, false).await;
        let t = store.target("bucket/snap", 64 << 30);
        // Part 1 as large as a part but the last may be; 2 and 3 smaller.
        let a = vec![7u8; MIN_PART_SIZE as usize];
        let (a, b, c) = (a.as_slice(), b"second".as_slice(), b"third".as_slice());
        for (url, d) in t.part_urls.iter().zip([a, b, c]) {
            let (status, _, _) = send(&store, "PUT", url, Some(&crc(d)), d).await;
            assert_eq!(status, 200);
        }
        let complete = |parts: &[(u32, &[u8])]| {
            let parts: String = parts.iter().map(|(n, d)| part_xml(*n, d)).collect();
            format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>")
        };
        for (xml, code) in [
            // Every part but the last must be at least 5 MiB.
            (complete(&[(1, a), (2, b), (3, c)]), "EntityTooSmall"),
            (complete(&[(1, a), (1, a)]), "InvalidPartOrder"),
            // An ETag that is not the part's, a part never sent.
            (complete(&[(1, b)]), "InvalidPart"),
            (complete(&[(1, a), (4, c)]), "InvalidPart"),
            (String::from("<CompleteMultipartUpload/>"), "MalformedXML"),
        ] {
            let (status, _, body) =
                send(&store, "POST", &t.complete_url, None, xml.as_bytes()).await;
            assert_eq!(status, 400, "{code}");
            assert!(String::from_utf8_lossy(&body).contains(code), "{code}");
        }
        // Refused completions leave the upload open; a valid one closes it.
        assert_eq!(store.open_uploads(), 1);
        let xml = complete(&[(1, a), (3, c)]);
        let (status, _, _) = send(&store, "POST", &t.complete_url, None, xml.as_bytes()).await;
        assert_eq!(status, 200);
        assert_eq!(store.open_uploads(), 0);
    }
}
