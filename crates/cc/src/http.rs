//! The HTTP/1 client side of the CC: one bounded request/answer exchange,
//! used by the CLC callback sender ([`crate::controller`]) and by
//! [`crate::client::ClusterClient`].
//!
//! Internal URLs are plain `http://` inside the cloud, so this is hyper's
//! pooled client over TCP with no TLS stack.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Largest answer read (a zone report of many nodes, a console tail).
const MAX_ANSWER: usize = 32 << 20;

/// A pooled client whose connects give up after `connect_timeout`, so a
/// dead host fails fast instead of after the kernel's SYN retries.
pub(crate) fn client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Checks that `url` is an absolute `http://` URL.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("http") => Err("the URL has no host".into()),
        Some(other) => Err(format!("scheme {other} is not supported (only http)")),
        None => Err("the URL has no scheme".into()),
    }
}

/// Why an exchange produced no answer.
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// Could not connect, or the connection broke.
    Unreachable(String),
    Timeout,
    /// The request could not even be built.
    Invalid(String),
}

/// One request with a bearer token and an optional JSON body; the status
/// and body of the answer, all within `timeout`.
pub(crate) async fn exchange(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: &str,
    json: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), NoAnswer> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if json.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| NoAnswer::Invalid(e.to_string()))?;
    let work = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| NoAnswer::Unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| NoAnswer::Unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| NoAnswer::Timeout)?
}

/// hyper's top-level errors say little ("client error (Connect)"); the
/// causes say "connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The `error` member of a JSON error body, else the body, else the
/// status' reason phrase.
pub(crate) fn error_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            (!text.is_empty()).then_some(text)
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string())
}

/// Percent-encodes one path segment, `.` included so no id can be `..`.
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_plain_http() {
        assert!(check_url("http://127.0.0.1:8774").is_ok());
        assert!(check_url("https://cc:8774").is_err());
        assert!(check_url("/v1/zone").is_err());
    }

    #[test]
    fn error_bodies_and_segments() {
        assert_eq!(
            error_message(StatusCode::CONFLICT, br#"{"error":"busy"}"#),
            "busy"
        );
        assert_eq!(error_message(StatusCode::NOT_FOUND, b""), "Not Found");
        assert_eq!(path_segment("i-0a1b"), "i-0a1b");
        assert_eq!(path_segment("../x"), "%2E%2E%2Fx");
    }
}
