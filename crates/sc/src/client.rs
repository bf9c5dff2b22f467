//! The typed client of the SC's control API, for the CLC.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, header};
use ironbark_sc_api::{DesiredStorage, StorageReport};
use serde::de::DeserializeOwned;

use crate::error::ScError;
use crate::walrus::{self, HttpClient};

#[derive(Clone)]
pub struct ScClient {
    base: String,
    token: String,
    timeout: Duration,
    http: HttpClient,
}

impl ScClient {
    /// A client of the SC at `base_url` (`http://host:port`), 30 s per call
    /// (a pass may stop daemons).
    pub fn new(base_url: &str, token: &str) -> ScClient {
        ScClient {
            base: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            timeout: Duration::from_secs(30),
            http: walrus::client(),
        }
    }

    /// Sends the whole desired state; answers with the report.
    pub async fn apply(&self, desired: &DesiredStorage) -> Result<StorageReport, ScError> {
        let body = serde_json::to_vec(desired).map_err(|e| ScError::io("encoding", e))?;
        self.call(Method::PUT, Some(body)).await
    }

    pub async fn report(&self) -> Result<StorageReport, ScError> {
        self.call(Method::GET, None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        body: Option<Vec<u8>>,
    ) -> Result<T, ScError> {
        let url = format!("{}/v1/storage", self.base);
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(
                Full::new(Bytes::from(body.unwrap_or_default()))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| ScError::Invalid(format!("{url}: {e}")))?;
        let what = format!("SC {method} {url}");
        let resp = tokio::time::timeout(self.timeout, async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ScError::io(&what, e))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ScError::io(&what, e))?
                .to_bytes();
            Ok::<_, ScError>((status, bytes))
        })
        .await
        .map_err(|_| ScError::Io(format!("{what}: no answer within {:?}", self.timeout)))??;
        let (status, bytes) = resp;
        if !status.is_success() {
            return Err(ScError::Io(format!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| ScError::io(&what, e))
    }
}
