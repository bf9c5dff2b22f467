//! The NC's control API over HTTP (axum), for its CC.
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `PUT /v1/instances` | [`DesiredInstances`] | [`NodeReport`] |
//! | `GET /v1/instances` | | [`NodeReport`] |
//! | `POST /v1/instances/{id}/terminate` | | [`TerminateAck`] (also for ids not here) |
//! | `POST /v1/instances/{id}/reboot` | | 204; 404 unknown; 409 not running |
//! | `GET /v1/instances/{id}/console` | | `text/plain`, the console's last 64 KiB |
//! | `PUT /v1/volumes` | [`DesiredVolumes`] | [`VolumesReport`]; 409 malformed |
//! | `GET /v1/volumes` | | [`VolumesReport`] |
//!
//! Every request needs `Authorization: Bearer <token>` (401 otherwise).
//! Errors come as `{"error": "..."}`. The handlers only translate: all
//! behaviour is in [`Node`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ironbark_node_api::{
    DesiredInstances, DesiredVolumes, NodeReport, TerminateAck, VolumesReport,
};
use serde_json::json;
use tokio::net::TcpListener;

use crate::node::{Node, NodeError};

/// The API's routes over `node`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/instances", put(put_instances).get(get_instances))
        .route("/v1/instances/{id}/terminate", post(terminate))
        .route("/v1/instances/{id}/reboot", post(reboot))
        .route("/v1/instances/{id}/console", get(console))
        .route("/v1/volumes", put(put_volumes).get(get_volumes))
        .layer(middleware::from_fn_with_state(node.clone(), require_token))
        .with_state(node)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(node: Arc<Node>, listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(node)).await
}

async fn require_token(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    if token_matches(request.headers(), &node.config().token) {
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
    // Compare every byte so the time taken does not tell how much matched.
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    !token.is_empty() && a.len() == b.len() && diff == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status = match self {
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, &self.to_string())
    }
}

async fn put_instances(
    State(node): State<Arc<Node>>,
    Json(desired): Json<DesiredInstances>,
) -> Json<NodeReport> {
    Json(node.apply(desired).await)
}

async fn put_volumes(
    State(node): State<Arc<Node>>,
    Json(desired): Json<DesiredVolumes>,
) -> Result<Json<VolumesReport>, NodeError> {
    node.apply_volumes(desired).await.map(Json)
}

async fn get_volumes(State(node): State<Arc<Node>>) -> Json<VolumesReport> {
    Json(node.volumes_report())
}

async fn get_instances(State(node): State<Arc<Node>>) -> Json<NodeReport> {
    Json(node.report())
}

async fn terminate(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Json<TerminateAck> {
    Json(node.terminate(&id).await)
}

async fn reboot(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<StatusCode, NodeError> {
    node.reboot(&id).await.map(|()| StatusCode::NO_CONTENT)
}

async fn console(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    let text = node.console(&id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!token_matches(&h, "s3cret"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(token_matches(&h, "s3cret"));
        assert!(!token_matches(&h, "s3cre"));
        assert!(!token_matches(&h, "s3cret2"));
        assert!(!token_matches(&h, ""));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret"),
        );
        assert!(!token_matches(&h, "s3cret"));
    }
}
