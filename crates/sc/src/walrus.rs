//! Moving a snapshot's compressed copy to and from Walrus with presigned
//! URLs: one streamed PUT with `Content-MD5` (Walrus refuses a body that
//! does not match, so an object that exists is whole; the SC still checks
//! that the answered ETag is that MD5), and a streamed GET hashed on the
//! way to disk.
//!
//! Plain `http://` through hyper, as the NC's image downloads: URLs stay
//! inside the cloud. Signatures live in the query, so errors name only
//! the path.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::ScError;

type Body = BoxBody<Bytes, std::io::Error>;
pub type HttpClient = Client<HttpConnector, Body>;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The URL without its query (which holds the signature).
pub fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

fn parse(url: &str) -> Result<hyper::Uri, ScError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| ScError::Invalid(format!("{}: not a URL: {e}", redact(url))))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ScError::Invalid(format!(
            "{}: only http:// URLs are supported",
            redact(url)
        )));
    }
    Ok(uri)
}

/// PUTs the file at `path` to `url`; `md5` is the file's MD5.
pub async fn put_file(
    http: &HttpClient,
    url: &str,
    path: &Path,
    md5: &[u8; 16],
) -> Result<(), ScError> {
    let uri = parse(url)?;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ScError::io(path.display(), e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ScError::io(path.display(), e))?
        .len();
    let chunks = futures_util::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok::<_, std::io::Error>(Some((Frame::data(Bytes::from(buf)), f)))
    });
    let body: Body = StreamBody::new(chunks).boxed();
    let request = hyper::Request::put(uri)
        .header(hyper::header::CONTENT_LENGTH, len)
        .header(
            "content-md5",
            base64::engine::general_purpose::STANDARD.encode(md5),
        )
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .map_err(|e| ScError::io("building the upload", e))?;
    let what = format!("PUT {}", redact(url));
    let response = http
        .request(request)
        .await
        .map_err(|e| ScError::io(&what, e))?;
    let status = response.status();
    let etag = response
        .headers()
        .get(hyper::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_ascii_lowercase());
    let body = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(ScError::Io(format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        )));
    }
    let want = hex::encode(md5);
    if etag.as_deref() != Some(want.as_str()) {
        return Err(ScError::Io(format!(
            "{what}: the stored object's ETag {etag:?} is not the upload's MD5 {want}"
        )));
    }
    Ok(())
}

/// GETs `url` into a new file at `path`; returns its hex SHA-256.
pub async fn get_file(http: &HttpClient, url: &str, path: &Path) -> Result<String, ScError> {
    let uri = parse(url)?;
    let what = format!("GET {}", redact(url));
    let request = hyper::Request::get(uri)
        .body(Body::default())
        .map_err(|e| ScError::io("building the download", e))?;
    let response = http
        .request(request)
        .await
        .map_err(|e| ScError::io(&what, e))?;
    if !response.status().is_success() {
        return Err(ScError::Io(format!("{what}: HTTP {}", response.status())));
    }
    let mut out = tokio::fs::File::create(path)
        .await
        .map_err(|e| ScError::io(path.display(), e))?;
    let mut sha = Sha256::new();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ScError::io(&what, e))?;
        if let Ok(data) = frame.into_data() {
            sha.update(&data);
            out.write_all(&data)
                .await
                .map_err(|e| ScError::io(path.display(), e))?;
        }
    }
    out.sync_all()
        .await
        .map_err(|e| ScError::io(path.display(), e))?;
    Ok(hex::encode(sha.finalize()))
}
