//! The typed client of the CC's control API, for the CLC (and for NCs'
//! event pushes, though the NC sends those itself).
//!
//! Errors separate "the CC did not answer" ([`ClientError::Unreachable`],
//! [`ClientError::Timeout`]; see [`ClientError::is_unreachable`]) from "the
//! CC answered no" ([`ClientError::Status`], with the CC's status and
//! message), so the CLC can retry the first and report the second.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use ironbark_cluster_api::{TerminateOutcome, ZoneDesired, ZoneReport};
use ironbark_node_api::NodeReport;
use serde::de::DeserializeOwned;

use crate::http::{self, HttpClient, NoAnswer};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, or it broke before an answer came.
    #[error("CC {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("CC {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The CC answered with an error status.
    #[error("CC refused {method} {url}: HTTP {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// The CC answered something that is not the expected JSON.
    #[error("CC {url}: bad answer: {reason}")]
    Protocol { url: String, reason: String },
    #[error("invalid CC URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

impl ClientError {
    /// The CC may be down or cut off (as opposed to having said no).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        )
    }

    /// The HTTP status the CC refused with, if it did.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ClusterClient {
    base: String,
    token: String,
    timeout: Duration,
    http: HttpClient,
}

impl ClusterClient {
    /// A client of the CC at `base_url` (`http://host:port`), with a 30 s
    /// bound per call: an apply reconciles the network and waits for every
    /// node, and a broadcast terminate waits for every node too.
    pub fn new(base_url: &str, token: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        http::check_url(&base).map_err(|reason| ClientError::InvalidUrl {
            url: base.clone(),
            reason,
        })?;
        let timeout = Duration::from_secs(30);
        Ok(ClusterClient {
            base,
            token: token.to_string(),
            timeout,
            // Connecting is quick or not at all: fail fast on a dead CC.
            http: http::client(Duration::from_secs(5).min(timeout)),
        })
    }

    /// The same client with another per-call bound (sharing connections).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        ClusterClient {
            timeout,
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `PUT /v1/zone`.
    pub async fn apply(&self, zone: &ZoneDesired) -> Result<ZoneReport, ClientError> {
        let body = serde_json::to_vec(zone).expect("serializable");
        self.json(Method::PUT, "/v1/zone".into(), Some(body)).await
    }

    /// `POST /v1/network/rebuild`: the CC's clean restart; the changes made.
    pub async fn rebuild_network(&self) -> Result<Vec<String>, ClientError> {
        self.json(Method::POST, "/v1/network/rebuild".into(), None)
            .await
    }

    /// `GET /v1/zone`.
    pub async fn report(&self) -> Result<ZoneReport, ClientError> {
        self.json(Method::GET, "/v1/zone".into(), None).await
    }

    /// `POST /v1/instances/{id}/terminate`.
    pub async fn terminate(&self, instance_id: &str) -> Result<TerminateOutcome, ClientError> {
        let path = format!(
            "/v1/instances/{}/terminate",
            http::path_segment(instance_id)
        );
        self.json(Method::POST, path, None).await
    }

    /// `POST /v1/instances/{id}/reboot`.
    pub async fn reboot(&self, instance_id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/instances/{}/reboot", http::path_segment(instance_id));
        self.call(Method::POST, path, None).await.map(drop)
    }

    /// `GET /v1/instances/{id}/console`.
    pub async fn console(&self, instance_id: &str) -> Result<String, ClientError> {
        let path = format!("/v1/instances/{}/console", http::path_segment(instance_id));
        let body = self.call(Method::GET, path, None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST /v1/events`: a node's report.
    pub async fn node_event(&self, report: &NodeReport) -> Result<(), ClientError> {
        let body = serde_json::to_vec(report).expect("serializable");
        self.call(Method::POST, "/v1/events".into(), Some(body))
            .await
            .map(drop)
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
        let (status, answer) = http::exchange(
            &self.http,
            method.clone(),
            &url,
            &self.token,
            body,
            self.timeout,
        )
        .await
        .map_err(|e| match e {
            NoAnswer::Unreachable(reason) => ClientError::Unreachable {
                url: url.clone(),
                reason,
            },
            NoAnswer::Timeout => ClientError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            },
            NoAnswer::Invalid(reason) => ClientError::InvalidUrl {
                url: url.clone(),
                reason,
            },
        })?;
        if status.is_success() {
            return Ok(answer);
        }
        Err(ClientError::Status {
            method: method.to_string(),
            url,
            status: status.as_u16(),
            message: http::error_message(status, &answer),
        })
    }
}
