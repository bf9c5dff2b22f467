//! Walrus under `/services/objectstorage` on the cloud's API port, where
//! Eucalyptus served it and where clients given one endpoint URL look.
//!
//! The S3 library verifies signatures over the path it routes on, and a
//! client here signed `/services/objectstorage/bucket/key`. So this front
//! verifies the client's SigV4 signature itself (over the full path,
//! trusting the payload hash the client declared), strips the prefix, and
//! re-signs the request with the same key, time and declared payload hash
//! for Walrus, which then checks the streamed body against that hash as
//! for any direct request. Anonymous requests pass through unsigned.
//! SigV2 requests (euca2ools-era clients), header-signed or presigned, are
//! checked over the path as sent and signed again without the prefix
//! (`ironbark_walrus::sigv2::resign_under_prefix`); SigV2 signs no body,
//! so that is all there is to carry over. Chunk-signed streaming uploads
//! are refused here (their chunk signatures chain from the one over the
//! prefixed path); Walrus' own port takes them.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use ironbark_clc::Cloud;
use ironbark_sigv4::{AuthError, HttpRequest};
use ironbark_types::generate_request_id;
use tower::ServiceExt;

pub const PREFIX: &str = "/services/objectstorage";

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let rid = generate_request_id();
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
    ironbark_ec2_query::xml::escape_into(&mut body, code);
    body.push_str("</Code><Message>");
    ironbark_ec2_query::xml::escape_into(&mut body, message);
    body.push_str("</Message><RequestId>");
    body.push_str(&rid);
    body.push_str("</RequestId></Error>");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/xml")
        .body(Body::from(body))
        .expect("static response parts are valid")
}

fn auth_error(e: AuthError) -> Response {
    match e {
        AuthError::SignatureMismatch => s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        ),
        AuthError::Expired(m) => s3_error(StatusCode::FORBIDDEN, "RequestTimeTooSkewed", &m),
        AuthError::Incomplete(m) => {
            s3_error(StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed", &m)
        }
        AuthError::UnsupportedAlgorithm(m) => s3_error(
            StatusCode::BAD_REQUEST,
            "NotImplemented",
            &format!("{m}; use Walrus' own endpoint for this request"),
        ),
        AuthError::Missing => s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied"),
    }
}

/// Removes the presigning parameters from a raw query string, keeping the
/// rest byte for byte.
fn strip_presign_params(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("X-Amz-"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The secret of an access key, or the S3 error answering for it.
async fn secret_of(cloud: &Cloud, key: &str) -> Result<String, Response> {
    match cloud.key_owner(key).await {
        Ok(Some((secret, _account))) => Ok(secret),
        Ok(None) => Err(s3_error(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )),
        Err(e) => Err(s3_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
        )),
    }
}

pub async fn forward(cloud: &Cloud, s3: &s3s::service::S3Service, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let rest = path.strip_prefix(PREFIX).unwrap_or(&path);
    let new_path = if rest.is_empty() {
        "/".to_string()
    } else {
        rest.to_string()
    };
    let query = parts.uri.query().unwrap_or("").to_string();
    let hdrs: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let sreq = HttpRequest {
        method: parts.method.as_str(),
        path: &path,
        query: &query,
        headers: &hdrs,
        body: b"",
    };

    let v2_key = ironbark_walrus::sigv2::access_key(&parts.headers, &query);
    let (new_path, new_query, new_headers) = if let Some(key) = v2_key {
        let secret = match secret_of(cloud, &key).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        let Some(r) = ironbark_walrus::sigv2::resign_under_prefix(
            parts.method.as_str(),
            &path,
            PREFIX,
            &query,
            &parts.headers,
            &secret,
        ) else {
            return auth_error(AuthError::SignatureMismatch);
        };
        let mut h: Vec<(String, String)> = hdrs
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("authorization"))
            .cloned()
            .collect();
        if let Some(a) = r.authorization {
            h.push(("authorization".to_string(), a));
        }
        (r.path, r.query, h)
    } else {
        let (q, h) = match forward_v4(&sreq, cloud, &parts, &new_path, &query, &hdrs).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        (new_path, q, h)
    };
    send(s3, parts, body, new_path, new_query, new_headers).await
}

/// Checks a SigV4 (or anonymous) request made under the prefix and gives
/// the query and headers signed again for `new_path`.
async fn forward_v4(
    sreq: &HttpRequest<'_>,
    cloud: &Cloud,
    parts: &axum::http::request::Parts,
    new_path: &str,
    query: &str,
    hdrs: &[(String, String)],
) -> Result<(String, Vec<(String, String)>), Response> {
    let (query, hdrs) = (query.to_string(), hdrs.to_vec());
    let new_path = new_path.to_string();
    Ok(match ironbark_sigv4::claim(sreq) {
        Err(AuthError::Missing) => (query.clone(), hdrs.clone()),
        Err(e) => return Err(auth_error(e)),
        Ok(claim) => {
            let secret = secret_of(cloud, &claim.access_key_id).await?;
            let now = ironbark_types::now_ms() / 1000;
            let info = ironbark_sigv4::verify_deferring_payload(sreq, &claim, &secret, now)
                .map_err(auth_error)?;
            if info.presigned {
                let signed: Vec<(String, String)> = hdrs
                    .iter()
                    .filter(|(k, _)| {
                        info.signed_headers
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(k))
                    })
                    .cloned()
                    .collect();
                let q = ironbark_sigv4::presign_v4(
                    parts.method.as_str(),
                    &new_path,
                    &strip_presign_params(&query),
                    &signed,
                    &claim.access_key_id,
                    &secret,
                    &info.region,
                    &info.service,
                    info.timestamp,
                    info.expires.unwrap_or(900).clamp(1, 604_800) as u32,
                );
                (q, hdrs.clone())
            } else {
                let mut h: Vec<(String, String)> = hdrs
                    .iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("authorization"))
                    .cloned()
                    .collect();
                ironbark_sigv4::sign_v4_header(
                    parts.method.as_str(),
                    &new_path,
                    &query,
                    &mut h,
                    b"",
                    &claim.access_key_id,
                    &secret,
                    &info.region,
                    &info.service,
                    info.timestamp,
                );
                (query.clone(), h)
            }
        }
    })
}

/// Hands the re-signed request to Walrus.
async fn send(
    s3: &s3s::service::S3Service,
    parts: axum::http::request::Parts,
    body: Body,
    new_path: String,
    new_query: String,
    new_headers: Vec<(String, String)>,
) -> Response {
    let uri = if new_query.is_empty() {
        new_path.clone()
    } else {
        format!("{new_path}?{new_query}")
    };
    let Ok(uri) = uri.parse::<Uri>() else {
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidURI",
            "Couldn't parse the specified URI.",
        );
    };
    let mut map = HeaderMap::new();
    for (k, v) in &new_headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    let mut fwd = Request::new(body);
    *fwd.method_mut() = parts.method.clone();
    *fwd.uri_mut() = uri;
    *fwd.headers_mut() = map;
    *fwd.version_mut() = parts.version;
    match s3.clone().oneshot(fwd).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => s3_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("{e:?}"),
        ),
    }
}
