//! The CC's control API over HTTP (axum), for the CLC and the NCs.
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `PUT /v1/zone` | [`ZoneDesired`] | [`ZoneReport`] |
//! | `GET /v1/zone` | | [`ZoneReport`] |
//! | `POST /v1/instances/{id}/terminate` | | [`TerminateOutcome`] |
//! | `POST /v1/instances/{id}/reboot` | | 204 |
//! | `GET /v1/instances/{id}/console` | | `text/plain` |
//! | `POST /v1/events` | [`NodeReport`] (from an NC) | 204 |
//!
//! Every request needs `Authorization: Bearer <cluster token>` (401
//! otherwise). Errors come as `{"error": "..."}`: 404 for an instance no
//! node is known to run (or that its node does not have), 409 when its node
//! says it cannot do that now, 503 when the node does not answer, 502 for
//! other node failures, 500 when the host network could not be applied
//! (the nodes still got their desired sets). The handlers only translate:
//! the behaviour is in [`ClusterController`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ironbark_cluster_api::{TerminateOutcome, ZoneDesired, ZoneReport};
use ironbark_node_api::NodeReport;
use tokio::net::TcpListener;

use crate::config::CcConfig;
use crate::controller::{CcError, ClusterController};
use crate::{metadata, netns};

/// A whole zone (every instance's metadata and user data) can be large.
const MAX_BODY: usize = 64 << 20;

/// The API's routes over `cc`.
pub fn router(cc: Arc<ClusterController>) -> Router {
    Router::new()
        .route("/v1/zone", put(put_zone).get(get_zone))
        .route("/v1/instances/{id}/terminate", post(terminate))
        .route("/v1/instances/{id}/reboot", post(reboot))
        .route("/v1/instances/{id}/console", get(console))
        .route("/v1/events", post(event))
        .route("/v1/network/rebuild", post(rebuild_network))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            std::sync::Arc::<str>::from(cc.config().token.as_str()),
            ironbark_rpc::require_bearer,
        ))
        .with_state(cc)
}

/// Runs the CC: the poll loop, the control API on `api` and the metadata
/// service on `metadata_listener` (bind it with [`crate::netns::bind_tokio`]
/// when the CC manages a namespace). Returns when either server fails.
pub async fn serve(
    cc: Arc<ClusterController>,
    api: TcpListener,
    metadata_listener: TcpListener,
) -> std::io::Result<()> {
    let poller = cc.spawn_poller();
    let meta = metadata::serve(cc.metadata(), metadata_listener);
    let control = axum::serve(api, router(cc));
    let result = tokio::select! {
        r = control => r,
        r = meta => r,
    };
    poller.abort();
    result
}

/// Everything `ironbark cc` runs, from `cfg` alone: the real host network
/// and NC clients ([`ClusterController::start`]), the control API on
/// `cfg.listen` (in the caller's namespace) and the metadata service on
/// `cfg.metadata_listen` (inside `cfg.netns` when set, where the redirect
/// points).
pub async fn run(cfg: CcConfig) -> std::io::Result<()> {
    let api = TcpListener::bind(cfg.listen).await?;
    let meta = netns::bind_tokio(cfg.netns.as_deref(), cfg.metadata_listen)?;
    let cc = ClusterController::start(cfg)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    serve(cc, api, meta).await
}

use ironbark_rpc::json_error as error;

impl IntoResponse for CcError {
    fn into_response(self) -> Response {
        let status = match &self {
            CcError::NotFound(_) => StatusCode::NOT_FOUND,
            CcError::NodeRefused { status: 404, .. } => StatusCode::NOT_FOUND,
            CcError::NodeRefused { status: 409, .. } => StatusCode::CONFLICT,
            CcError::NodeRefused { .. } => StatusCode::BAD_GATEWAY,
            CcError::NodeUnreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            CcError::UnknownNode(_) => StatusCode::FORBIDDEN,
            CcError::Network(_) | CcError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, &self.to_string())
    }
}

async fn put_zone(
    State(cc): State<Arc<ClusterController>>,
    Json(zone): Json<ZoneDesired>,
) -> Result<Json<ZoneReport>, CcError> {
    cc.apply(zone).await.map(Json)
}

async fn rebuild_network(
    State(cc): State<Arc<ClusterController>>,
) -> Result<Json<Vec<String>>, CcError> {
    cc.rebuild_network().await.map(Json)
}

async fn get_zone(State(cc): State<Arc<ClusterController>>) -> Json<ZoneReport> {
    Json(cc.report())
}

async fn terminate(
    State(cc): State<Arc<ClusterController>>,
    Path(id): Path<String>,
) -> Result<Json<TerminateOutcome>, CcError> {
    cc.terminate(&id).await.map(Json)
}

async fn reboot(
    State(cc): State<Arc<ClusterController>>,
    Path(id): Path<String>,
) -> Result<StatusCode, CcError> {
    cc.reboot(&id).await.map(|()| StatusCode::NO_CONTENT)
}

async fn console(
    State(cc): State<Arc<ClusterController>>,
    Path(id): Path<String>,
) -> Result<Response, CcError> {
    let text = cc.console(&id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn event(
    State(cc): State<Arc<ClusterController>>,
    Json(report): Json<NodeReport>,
) -> Result<StatusCode, CcError> {
    cc.node_event(report).map(|()| StatusCode::NO_CONTENT)
}
