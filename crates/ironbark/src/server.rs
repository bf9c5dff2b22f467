//! The HTTP front of the CLC. Every request to an EC2 path is turned into
//! an undecoded `HttpRequest` for signature verification, then into Query
//! parameters for `ironbark-ec2-query`; whatever happens, the client gets
//! EC2's XML (a result or an error document) with a request id that also
//! appears in the log line for that request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use ironbark_clc::Cloud;
use ironbark_ec2_query::{Params, parse_form, render_error};
use ironbark_types::{Error, ErrorKind, generate_request_id};

/// Paths the EC2 Query API is served at: the root (what the AWS CLI uses
/// with an endpoint URL), Eucalyptus' `/services/compute`, and its legacy
/// `/services/Eucalyptus`.
const EC2_PATHS: &[&str] = &[
    "/",
    "/services/compute",
    "/services/compute/",
    "/services/Eucalyptus",
    "/services/Eucalyptus/",
];

/// Where the CC pushes its zone report when a node's state changes.
pub const ZONE_REPORT_PATH: &str = "/internal/v1/zone-report";

/// A CC's report, pushed as things happen: the fast path to `terminated`.
async fn zone_report(app: &App, req: axum::extract::Request) -> Response {
    let plain = |status: StatusCode, text: &str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(text.to_string()))
            .expect("static response parts are valid")
    };
    if !ironbark_rpc::bearer_matches(req.headers(), &app.token) {
        return plain(StatusCode::UNAUTHORIZED, "cluster token required");
    }
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST a ZoneReport");
    }
    let body = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "report too large"),
    };
    let report: ironbark_cluster_api::ZoneReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("bad report: {e}")),
    };
    match app.cloud.observe(&report).await {
        Ok(()) => plain(StatusCode::NO_CONTENT, ""),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Largest Query API request body accepted; real ones are a few KiB.
const MAX_QUERY_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct App {
    pub cloud: Arc<Cloud>,
    /// Walrus, served under `/services/objectstorage` as well as on its own port.
    pub s3: Option<s3s::service::S3Service>,
    /// The cluster token the CC's reports to the CLC carry.
    pub token: String,
}

pub fn router(app: App) -> Router {
    Router::new().fallback(dispatch).with_state(app)
}

async fn dispatch(State(app): State<App>, req: axum::extract::Request) -> Response {
    let path = req.uri().path();
    if path == ZONE_REPORT_PATH {
        return zone_report(&app, req).await;
    }
    if (path == crate::objectstorage::PREFIX
        || path.starts_with(&format!("{}/", crate::objectstorage::PREFIX)))
        && let Some(s3) = &app.s3
    {
        return crate::objectstorage::forward(&app.cloud, s3, req).await;
    }
    let (parts, body) = req.into_parts();
    let request_id = generate_request_id();
    let body = match axum::body::to_bytes(body, MAX_QUERY_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let e = Error::invalid_value(format!(
                "The request body is larger than {MAX_QUERY_BODY} bytes or could not be read"
            ));
            return xml(StatusCode::PAYLOAD_TOO_LARGE, render_error(&e, &request_id));
        }
    };
    ec2_request(
        &app.cloud,
        parts.method,
        parts.uri,
        parts.headers,
        body,
        request_id,
    )
    .await
}

async fn ec2_request(
    cloud: &Cloud,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    request_id: String,
) -> Response {
    let started = Instant::now();
    if !EC2_PATHS.contains(&uri.path()) {
        let e = Error::new(
            ErrorKind::InvalidAction,
            format!("No service is served at {}", uri.path()),
        );
        return xml(StatusCode::NOT_FOUND, render_error(&e, &request_id));
    }
    if method != Method::GET && method != Method::POST {
        let e = Error::new(
            ErrorKind::UnsupportedOperation,
            format!("The EC2 Query API takes GET or POST, not {method}"),
        );
        return xml(
            StatusCode::METHOD_NOT_ALLOWED,
            render_error(&e, &request_id),
        );
    }
    let (result, account, action) = ec2(cloud, &method, &uri, &headers, &body, &request_id).await;
    let (status, text) = match result {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => {
            if e.kind == ErrorKind::Internal {
                tracing::error!(request_id, error = %e.message, "internal error");
            }
            let status =
                StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            let code = e.kind.aws_code();
            tracing::info!(request_id, action, account, code, "refused");
            (status, render_error(&e, &request_id))
        }
    };
    tracing::debug!(
        request_id,
        action,
        account,
        status = status.as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "ec2"
    );
    xml(status, text)
}

async fn ec2(
    cloud: &Cloud,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    request_id: &str,
) -> (Result<String, Error>, String, String) {
    let hdrs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let query = uri.query().unwrap_or("");
    let req = ironbark_sigv4::HttpRequest {
        method: method.as_str(),
        path: uri.path(),
        query,
        headers: &hdrs,
        body,
    };
    let mut pairs = parse_form(query.as_bytes());
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if *method == Method::POST && (is_form || !body.is_empty()) {
        pairs.extend(parse_form(body));
    }
    let params = Params::new(pairs);
    let action = params.get("Action").unwrap_or("").to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let caller = match cloud.authenticate(&req, now).await {
        Ok(c) => c,
        Err(e) => return (Err(e), String::new(), action),
    };
    let account = caller.account.id.to_string();
    let result = ironbark_ec2_query::handle(cloud, &caller, &params, request_id).await;
    (result, account, action)
}

fn xml(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/xml;charset=UTF-8")
        .body(Body::from(body))
        .expect("static response parts are valid")
}

/// Serves until SIGINT/SIGTERM, then lets in-flight requests finish.
pub async fn serve(app: App, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "EC2 API listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
