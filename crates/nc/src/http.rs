//! The one HTTP/1 client the NC uses for everything it fetches or sends:
//! image downloads ([`crate::cache`]), events to the CC ([`crate::node`])
//! and the CC's [`crate::client::NodeClient`].
//!
//! hyper's pooled client over plain TCP: internal URLs (presigned Walrus
//! URLs, the CC, NCs) are `http://` inside the cloud, and a TLS stack would
//! double this crate's build time for nothing it needs today.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled client whose TCP connects give up after `connect_timeout`, so an
/// unreachable host fails fast instead of waiting for the kernel's SYN
/// retries.
pub(crate) fn client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        // Idle pooled connections to an NC or Walrus are cheap to re-open;
        // keeping them short avoids reusing one the peer already closed.
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Parses an `http://` URL; anything else is refused with a reason.
pub(crate) fn parse_http_uri(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(format!("scheme {other} is not supported (only http)")),
        None => return Err("the URL has no scheme".into()),
    }
    if uri.host().is_none() {
        return Err("the URL has no host".into());
    }
    Ok(uri)
}

/// The URL without its query: presigned URLs carry signatures in the query,
/// and error messages end up in reports that users may see.
pub(crate) fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, String> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading the response body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls() {
        assert!(parse_http_uri("http://127.0.0.1:8775/v1").is_ok());
        assert!(parse_http_uri("https://example.com/").is_err());
        assert!(parse_http_uri("/relative").is_err());
    }

    #[test]
    fn redaction_drops_the_query() {
        assert_eq!(redact("http://w/b/k?X-Amz-Signature=s"), "http://w/b/k");
        assert_eq!(redact("http://w/b/k"), "http://w/b/k");
    }
}
