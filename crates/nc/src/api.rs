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
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ironbark_node_api::{
    DesiredInstances, DesiredVolumes, NodeReport, TerminateAck, VolumesReport,
};
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
        .layer(middleware::from_fn_with_state(
            std::sync::Arc::<str>::from(node.config().token.as_str()),
            ironbark_rpc::require_bearer,
        ))
        .with_state(node)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(node: Arc<Node>, listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(node)).await
}

use ironbark_rpc::json_error as error;

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
