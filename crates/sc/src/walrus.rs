//! Moving a snapshot's compressed copy to and from Walrus with presigned
//! URLs: the HTTP client, the checksum header, and a streamed GET hashed on
//! the way to disk. The upload is [`crate::multipart`]'s: parts carrying
//! their CRC-32 in `x-amz-checksum-crc32` (Walrus checksums each body as it
//! arrives and refuses one that does not match, so a part that exists is
//! whole; the SC still requires the checksum echoed back, which a store
//! that ignored the header would not do). CRC-32 rather than SHA-256
//! because Walrus computes it alongside the ETag's MD5 on one thread, and a
//! SHA-256 would double that thread's work for no gain: this check is
//! against damage in transit, and the SC's own SHA-256 of the object
//! (checked on restore) is what names its content.
//!
//! Plain `http://` through hyper, as the NC's image downloads: URLs stay
//! inside the cloud. Signatures live in the query, so errors name only
//! the path.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::ScError;

pub type Body = BoxBody<Bytes, std::io::Error>;
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

pub(crate) fn parse(url: &str) -> Result<hyper::Uri, ScError> {
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

/// The header that carries (and in the answer, confirms) the checksum.
pub const CHECKSUM_HEADER: &str = "x-amz-checksum-crc32";

/// The header value for a CRC-32: base64 of its big-endian bytes, as S3.
pub fn crc32_header(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
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
