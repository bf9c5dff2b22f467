//! The typed client of the NC's control API, for the CC.
//!
//! Errors separate "the NC did not answer" ([`ClientError::Unreachable`],
//! [`ClientError::Timeout`]; see [`ClientError::is_unreachable`]), which is
//! when the CC falls back to broadcasting a terminate to every NC, from "the
//! NC answered no" ([`ClientError::Status`]).
//!
//! Each call is bounded by the client's timeout (connect, request and the
//! whole answer); [`NodeClient::with_timeout`] gives a copy with another one
//! for a single call, sharing the connection pool.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode, header};
use ironbark_node_api::{DesiredInstances, NodeReport, TerminateAck};
use serde::de::DeserializeOwned;

use crate::http::{self, HttpClient};

/// Largest answer accepted (a report of many instances, a console tail).
const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, or it broke before an answer came.
    #[error("NC {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("NC {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The NC answered with an error status.
    #[error("NC refused {method} {url}: HTTP {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// The NC answered something that is not the expected JSON.
    #[error("NC {url}: bad answer: {reason}")]
    Protocol { url: String, reason: String },
    #[error("invalid NC URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

impl ClientError {
    /// The NC may be down or cut off (as opposed to having said no).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        )
    }

    /// The HTTP status the NC refused with, if it did.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct NodeClient {
    base: String,
    token: String,
    timeout: Duration,
    http: HttpClient,
}

impl NodeClient {
    /// A client of the NC at `base_url` (`http://host:port`), with a 10 s
    /// timeout per call.
    pub fn new(base_url: &str, token: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        http::parse_http_uri(&base).map_err(|reason| ClientError::InvalidUrl {
            url: base.clone(),
            reason,
        })?;
        let timeout = Duration::from_secs(10);
        Ok(NodeClient {
            base,
            token: token.to_string(),
            timeout,
            http: http::client(timeout),
        })
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        NodeClient {
            timeout,
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `PUT /v1/instances`.
    pub async fn apply(&self, desired: &DesiredInstances) -> Result<NodeReport, ClientError> {
        let body = serde_json::to_vec(desired).expect("serializable");
        self.json(Method::PUT, "/v1/instances".into(), Some(body))
            .await
    }

    /// `PUT /v1/volumes`.
    pub async fn apply_volumes(
        &self,
        desired: &ironbark_node_api::DesiredVolumes,
    ) -> Result<ironbark_node_api::VolumesReport, ClientError> {
        let body = serde_json::to_vec(desired).expect("serializable");
        self.json(Method::PUT, "/v1/volumes".into(), Some(body))
            .await
    }

    /// `GET /v1/volumes`.
    pub async fn volumes(&self) -> Result<ironbark_node_api::VolumesReport, ClientError> {
        self.json(Method::GET, "/v1/volumes".into(), None).await
    }

    /// `GET /v1/instances`.
    pub async fn report(&self) -> Result<NodeReport, ClientError> {
        self.json(Method::GET, "/v1/instances".into(), None).await
    }

    /// `POST /v1/instances/{id}/terminate`.
    pub async fn terminate(&self, instance_id: &str) -> Result<TerminateAck, ClientError> {
        let path = format!("/v1/instances/{}/terminate", encode(instance_id));
        self.json(Method::POST, path, None).await
    }

    /// `POST /v1/instances/{id}/reboot`.
    pub async fn reboot(&self, instance_id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/instances/{}/reboot", encode(instance_id));
        self.call(Method::POST, path, None).await.map(|_| ())
    }

    /// `GET /v1/instances/{id}/console`.
    pub async fn console(&self, instance_id: &str) -> Result<String, ClientError> {
        let path = format!("/v1/instances/{}/console", encode(instance_id));
        let body = self.call(Method::GET, path, None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url,
            reason: e.to_string(),
        })
    }

    /// One request; the answer's body if its status is a success.
    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|e| ClientError::Unreachable {
                        url: url.clone(),
                        reason: error_chain(&e),
                    })?;
            let status = response.status();
            let body = http::read_body(response.into_body(), MAX_ANSWER)
                .await
                .map_err(|reason| ClientError::Unreachable {
                    url: url.clone(),
                    reason,
                })?;
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })??;
        if status.is_success() {
            return Ok(body);
        }
        Err(ClientError::Status {
            method: method.to_string(),
            url,
            status: status.as_u16(),
            message: error_message(status, &body),
        })
    }
}

/// The `error` of a JSON error body, else the body, else the reason phrase.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            (!text.is_empty()).then_some(text)
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string())
}

/// hyper's errors say little at the top level; the cause says "connection
/// refused".
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

/// Percent-encodes a path segment (instance ids are plain, but a caller's
/// mistake must not turn into another path).
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        // '.' is encoded too, so no segment can be `.` or `..`.
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
    fn segments_are_encoded() {
        assert_eq!(encode("i-0123abc"), "i-0123abc");
        assert_eq!(encode("../x y"), "%2E%2E%2Fx%20y");
    }

    #[test]
    fn error_messages_prefer_the_json_error() {
        assert_eq!(
            error_message(StatusCode::CONFLICT, br#"{"error":"busy"}"#),
            "busy"
        );
        assert_eq!(error_message(StatusCode::NOT_FOUND, b"gone"), "gone");
        assert_eq!(error_message(StatusCode::NOT_FOUND, b""), "Not Found");
    }

    #[test]
    fn only_http_base_urls() {
        assert!(NodeClient::new("http://127.0.0.1:8775/", "t").is_ok());
        assert!(NodeClient::new("https://nc:8775", "t").is_err());
    }
}
