//! The shared edge of the internal control APIs.
//!
//! The CC, NC and SC each serve a small JSON API to the roles above them,
//! all guarded by the per-cloud cluster token (`Authorization: Bearer
//! <token>`) and all answering errors as `{"error": "..."}`. The check and
//! the error shape live here once, so the three APIs cannot drift apart;
//! each router adds [`require_bearer`] as a layer with its token as the
//! layer's state.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Whether `headers` carry `Authorization: Bearer <token>`. Every byte is
/// compared, so the time taken does not tell how much of a guess matched;
/// an empty token matches nothing.
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    !token.is_empty() && a.len() == b.len() && diff == 0
}

/// `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Middleware: passes requests that carry the token, answers 401 (with
/// `WWW-Authenticate: Bearer`) to the rest.
pub async fn require_bearer(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    if bearer_matches(request.headers(), &token) {
        return next.run(request).await;
    }
    let mut response = json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn only_the_exact_token_passes() {
        assert!(bearer_matches(&with("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(&with("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&with("Bearer s3cretX"), "s3cret"));
        assert!(!bearer_matches(&with("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
        assert!(
            !bearer_matches(&with("Bearer "), ""),
            "an empty token matches nothing"
        );
    }
}
