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
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use ironbark_sc_api::{DesiredStorage, StorageReport};
use tokio::net::TcpListener;

use crate::error::ScError;
use crate::storage::Storage;

pub fn router(storage: Arc<Storage>) -> Router {
    Router::new()
        .route("/v1/storage", put(put_storage).get(get_storage))
        .layer(middleware::from_fn_with_state(
            std::sync::Arc::<str>::from(storage.config().token.as_str()),
            ironbark_rpc::require_bearer,
        ))
        .with_state(storage)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(storage: Arc<Storage>, listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(storage)).await
}

use ironbark_rpc::json_error as error;

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
