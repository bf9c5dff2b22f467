//! The SC's control API over HTTP (axum), for the CLC.
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `PUT /v1/storage` | [`DesiredStorage`] | [`StorageReport`] |
//! | `GET /v1/storage` | | [`StorageReport`] |
//!
//! Every request needs `Authorization: Bearer <token>` (401 otherwise).
//! Errors come as `{"error": "..."}`. All behaviour is in [`Storage`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use ironbark_sc_api::{DesiredStorage, StorageReport};
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::ScError;
use crate::storage::Storage;

pub fn router(storage: Arc<Storage>) -> Router {
    Router::new()
        .route("/v1/storage", put(put_storage).get(get_storage))
        .layer(middleware::from_fn_with_state(
            storage.clone(),
            require_token,
        ))
        .with_state(storage)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(storage: Arc<Storage>, listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(storage)).await
}

async fn require_token(State(s): State<Arc<Storage>>, request: Request, next: Next) -> Response {
    if token_matches(request.headers(), &s.config().token) {
        return next.run(request).await;
    }
    let mut response = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn token_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Every byte compared, so the time taken does not tell how much matched.
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    !token.is_empty() && a.len() == b.len() && diff == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for ScError {
    fn into_response(self) -> Response {
        let status = match self {
            ScError::Invalid(_) => StatusCode::BAD_REQUEST,
            ScError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, &self.to_string())
    }
}

async fn put_storage(
    State(s): State<Arc<Storage>>,
    Json(desired): Json<DesiredStorage>,
) -> Result<Json<StorageReport>, ScError> {
    s.apply(desired).await.map(Json)
}

async fn get_storage(State(s): State<Arc<Storage>>) -> Json<StorageReport> {
    Json(s.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!token_matches(&h, "t"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(token_matches(&h, "t0k"));
        assert!(!token_matches(&h, "t0"));
        assert!(!token_matches(&h, ""));
    }
}
