//! Signature Version 4 (`AWS4-HMAC-SHA256`), header and presigned forms.
//!
//! The signer and the verifier build the canonical request with the same
//! functions, so a round trip proves little on its own; the AWS test-suite
//! vectors in `tests/aws_v4_suite.rs` pin the canonical form itself.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::encode::{self, Pair, Plus, encode_into, parse_pairs, uri_encode};
use crate::{
    AuthError, Explanation, HttpRequest, MAX_CLOCK_SKEW_SECS, MAX_PRESIGN_EXPIRES_SECS, Scheme,
    clock, header_values, outside_skew, sha256_hex, single_header, valid_access_key,
};

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// Headers a signer leaves out: proxies and HTTP stacks rewrite them, and
/// `authorization` is where the signature itself goes.
const UNSIGNED_HEADERS: [&str; 4] = ["authorization", "user-agent", "expect", "x-amzn-trace-id"];

/// Everything the verifier needs from a SigV4 request besides the secret.
pub(crate) struct Parsed {
    pub(crate) access_key: String,
    scope_date: String,
    region: String,
    service: String,
    /// Exactly as the client sent it: it goes into the canonical request
    /// verbatim.
    signed_headers: String,
    signature: Vec<u8>,
    /// The request time in ISO 8601 basic form, as it enters the string to
    /// sign (converted when the client used an RFC 1123 `Date` header).
    amz_date: String,
    timestamp: i64,
    expires: Option<i64>,
    pub(crate) presigned: bool,
}

impl Parsed {
    pub(crate) fn info(&self) -> crate::V4Info {
        crate::V4Info {
            timestamp: self.timestamp,
            expires: self.expires,
            region: self.region.clone(),
            service: self.service.clone(),
            signed_headers: self.signed_headers.split(';').map(str::to_string).collect(),
            presigned: self.presigned,
        }
    }
}

/// Client-supplied text quoted in an error message, cut short so a hostile
/// megabyte header does not end up in logs in full.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

fn incomplete(msg: impl Into<String>) -> AuthError {
    AuthError::Incomplete(msg.into())
}

/// Reads `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
/// Signature=...` (components in any order, as AWS allows).
pub(crate) fn parse_header(req: &HttpRequest, value: &str) -> Result<Parsed, AuthError> {
    let value = value.trim();
    let (algorithm, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(if algorithm.starts_with("AWS4-") {
            AuthError::UnsupportedAlgorithm(excerpt(algorithm))
        } else if algorithm == "AWS" {
            AuthError::UnsupportedAlgorithm(
                "AWS signature version 2 header (AWS <key>:<sig>)".into(),
            )
        } else {
            incomplete("Authorization header is not an AWS4-HMAC-SHA256 signature")
        });
    }

    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in rest.split(',') {
        let component = component.trim();
        if component.is_empty() {
            continue;
        }
        let Some((key, val)) = component.split_once('=') else {
            return Err(incomplete(format!(
                "Authorization component '{}' is not key=value",
                excerpt(component)
            )));
        };
        let slot = match key.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            other => {
                return Err(incomplete(format!(
                    "unknown Authorization component '{}'",
                    excerpt(other)
                )));
            }
        };
        if slot.replace(val.trim()).is_some() {
            return Err(incomplete(format!(
                "Authorization component {} appears twice",
                key.trim()
            )));
        }
    }
    let credential =
        credential.ok_or_else(|| incomplete("Authorization header lacks Credential"))?;
    let signed_headers =
        signed_headers.ok_or_else(|| incomplete("Authorization header lacks SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("Authorization header lacks Signature"))?;

    let (amz_date, timestamp) = match single_header(req.headers, "x-amz-date")? {
        Some(raw) => {
            let raw = raw.trim();
            let t = clock::parse_amz_date(raw).ok_or_else(|| {
                incomplete(format!(
                    "X-Amz-Date '{}' is not of the form YYYYMMDDTHHMMSSZ",
                    excerpt(raw)
                ))
            })?;
            (raw.to_string(), t)
        }
        None => match single_header(req.headers, "date")? {
            Some(raw) => {
                let t = clock::parse_http_date(raw.trim()).ok_or_else(|| {
                    incomplete(format!(
                        "Date '{}' is not an RFC 1123 date",
                        excerpt(raw.trim())
                    ))
                })?;
                (clock::format_amz_date(t), t)
            }
            None => {
                return Err(incomplete(
                    "request has neither an X-Amz-Date nor a Date header",
                ));
            }
        },
    };

    finish(
        credential,
        signed_headers,
        signature,
        amz_date,
        timestamp,
        None,
        false,
    )
}

/// Reads the `X-Amz-*` parameters of a presigned URL.
pub(crate) fn parse_query(pairs: &[Pair]) -> Result<Parsed, AuthError> {
    let get = |name: &str| -> Result<Option<&str>, AuthError> {
        let mut found = pairs
            .iter()
            .filter(|(n, _)| n.as_slice() == name.as_bytes());
        let first = found.next();
        if found.next().is_some() {
            return Err(incomplete(format!("query parameter {name} appears twice")));
        }
        first
            .map(|(_, v)| {
                std::str::from_utf8(v)
                    .map_err(|_| incomplete(format!("query parameter {name} is not UTF-8")))
            })
            .transpose()
    };
    let require = |name: &str| -> Result<&str, AuthError> {
        get(name)?.ok_or_else(|| incomplete(format!("presigned request lacks {name}")))
    };

    let algorithm = require("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(AuthError::UnsupportedAlgorithm(excerpt(algorithm)));
    }
    let credential = require("X-Amz-Credential")?;
    let signed_headers = require("X-Amz-SignedHeaders")?;
    let signature = require("X-Amz-Signature")?;
    let raw_date = require("X-Amz-Date")?;
    let timestamp = clock::parse_amz_date(raw_date).ok_or_else(|| {
        incomplete(format!(
            "X-Amz-Date '{}' is not of the form YYYYMMDDTHHMMSSZ",
            excerpt(raw_date)
        ))
    })?;
    let expires = match get("X-Amz-Expires")? {
        None => None,
        Some(raw) => {
            let secs = raw
                .parse::<i64>()
                .ok()
                .filter(|s| (1..=MAX_PRESIGN_EXPIRES_SECS).contains(s))
                .ok_or_else(|| {
                    incomplete(format!(
                        "X-Amz-Expires '{}' is not a number of seconds between 1 and {}",
                        excerpt(raw),
                        MAX_PRESIGN_EXPIRES_SECS
                    ))
                })?;
            Some(secs)
        }
    };

    finish(
        credential,
        signed_headers,
        signature,
        raw_date.to_string(),
        timestamp,
        expires,
        true,
    )
}

/// Checks shared by both forms: credential scope, signed header list,
/// signature encoding, and that the scope's date is the request's date.
fn finish(
    credential: &str,
    signed_headers: &str,
    signature: &str,
    amz_date: String,
    timestamp: i64,
    expires: Option<i64>,
    presigned: bool,
) -> Result<Parsed, AuthError> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key, scope_date, region, service, terminator] = parts.as_slice() else {
        return Err(incomplete(format!(
            "Credential '{}' is not <key>/<date>/<region>/<service>/aws4_request",
            excerpt(credential)
        )));
    };
    if !valid_access_key(access_key) {
        return Err(incomplete(
            "Credential does not start with a valid access key id",
        ));
    }
    if region.is_empty() || service.is_empty() {
        return Err(incomplete("Credential has an empty region or service"));
    }
    if *terminator != TERMINATOR {
        return Err(incomplete(format!(
            "Credential scope must end in {TERMINATOR}, not '{}'",
            excerpt(terminator)
        )));
    }
    if scope_date.len() != 8 || !scope_date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(incomplete(format!(
            "Credential date '{}' is not YYYYMMDD",
            excerpt(scope_date)
        )));
    }
    // The key derivation is bound to the scope date, the string to sign to
    // the request time; AWS insists they name the same day.
    if amz_date.get(..8) != Some(*scope_date) {
        return Err(incomplete(format!(
            "Credential date {scope_date} is not the date of the request ({amz_date})"
        )));
    }

    if signed_headers.is_empty() {
        return Err(incomplete("SignedHeaders is empty"));
    }
    let mut has_host = false;
    for name in signed_headers.split(';') {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(incomplete(format!(
                "SignedHeaders '{}' is not a ;-separated list of header names",
                excerpt(signed_headers)
            )));
        }
        has_host |= name.eq_ignore_ascii_case("host");
    }
    if !has_host {
        return Err(incomplete("the host header must be signed"));
    }

    let signature = match hex::decode(signature) {
        Ok(bytes) if bytes.len() == 32 => bytes,
        _ => {
            return Err(incomplete(
                "Signature is not 64 hexadecimal digits (a SHA-256 HMAC)",
            ));
        }
    };

    Ok(Parsed {
        access_key: access_key.to_string(),
        scope_date: scope_date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed_headers.to_string(),
        signature,
        amz_date,
        timestamp,
        expires,
        presigned,
    })
}

/// The payload hashes a request may have been signed with. For presigned
/// requests the body's own hash comes first: that is what botocore and the
/// AWS test suite sign, so it is the more useful one for [`explain`].
fn payload_candidates(
    req: &HttpRequest,
    p: &Parsed,
    defer: bool,
) -> Result<Vec<String>, AuthError> {
    if let Some(declared) = single_header(req.headers, "x-amz-content-sha256")? {
        let declared = declared.trim();
        if declared == UNSIGNED_PAYLOAD {
            return Ok(vec![declared.to_string()]);
        }
        if defer && declared == STREAMING_UNSIGNED_TRAILER {
            // Unsigned chunks: nothing in the body is tied to the seed
            // signature, so a re-signed request carries the same promise.
            return Ok(vec![declared.to_string()]);
        }
        if declared.starts_with("STREAMING-") {
            return Err(AuthError::UnsupportedAlgorithm(format!(
                "x-amz-content-sha256 {}",
                excerpt(declared)
            )));
        }
        if declared.len() == 64 && declared.bytes().all(|b| b.is_ascii_hexdigit()) && defer {
            // The caller holds the streamed body to the declared hash.
            return Ok(vec![declared.to_string()]);
        }
        if declared.len() == 64 && declared.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The signature covers the declared hash, not the body, so the
            // body must be held to it or it could be swapped freely.
            if !declared.eq_ignore_ascii_case(&sha256_hex(req.body)) {
                return Err(AuthError::SignatureMismatch);
            }
            return Ok(vec![declared.to_string()]);
        }
        return Err(incomplete(
            "x-amz-content-sha256 is neither a SHA-256 hex digest nor UNSIGNED-PAYLOAD",
        ));
    }
    if defer {
        if p.presigned && p.service == "s3" {
            return Ok(vec![UNSIGNED_PAYLOAD.to_string()]);
        }
        return Err(incomplete(
            "x-amz-content-sha256 is required when the body is verified while it streams",
        ));
    }
    let body_hash = sha256_hex(req.body);
    if p.presigned && (req.body.is_empty() || p.service == "s3") {
        Ok(vec![body_hash, UNSIGNED_PAYLOAD.to_string()])
    } else {
        Ok(vec![body_hash])
    }
}

/// Canonical URI. Non-S3 services: drop empty and `.` segments, resolve
/// `..`, keep a trailing slash, and escape each segment as received (so an
/// escape on the wire is escaped again). S3: decode, escape once, keep the
/// path's shape, since object keys may legitimately contain `//` or `..`.
pub(crate) fn canonical_uri(path: &str, service: &str) -> String {
    let raw = path.as_bytes();
    let mut out = String::with_capacity(raw.len() + 1);
    if service == "s3" {
        let decoded = encode::decode(raw, Plus::Literal);
        if decoded.first() != Some(&b'/') {
            out.push('/');
        }
        for (i, segment) in decoded.split(|&b| b == b'/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            encode_into(&mut out, segment);
        }
        return out;
    }

    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in raw.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    out.push('/');
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        encode_into(&mut out, segment);
    }
    if raw.last() == Some(&b'/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// Canonical query string: every pair decoded (`+` literal) and re-escaped,
/// sorted by escaped name then escaped value. A presigned request's own
/// `X-Amz-Signature` is left out, as it cannot sign itself.
pub(crate) fn canonical_query(query: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = parse_pairs(query.as_bytes(), Plus::Literal)
        .into_iter()
        .filter(|(name, _)| !(presigned && name.as_slice() == b"X-Amz-Signature"))
        .map(|(name, value)| (uri_encode(&name), uri_encode(&value)))
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// `name:value\n` for each signed header, in the order of the signed list.
/// Repeated headers are joined with `,` in arrival order, and each value
/// has its surrounding whitespace trimmed and inner runs collapsed.
/// Fails with the name of a signed header the request does not have.
pub(crate) fn canonical_headers<'n>(
    headers: &[(String, String)],
    signed_headers: &'n str,
) -> Result<String, &'n str> {
    let mut out = String::new();
    for name in signed_headers.split(';') {
        let mut values = header_values(headers, name).peekable();
        if values.peek().is_none() {
            return Err(name);
        }
        out.push_str(&name.to_ascii_lowercase());
        out.push(':');
        for (i, value) in values.enumerate() {
            if i > 0 {
                out.push(',');
            }
            for (j, word) in value.split_ascii_whitespace().enumerate() {
                if j > 0 {
                    out.push(' ');
                }
                out.push_str(word);
            }
        }
        out.push('\n');
    }
    Ok(out)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_secret = format!("AWS4{secret}");
    let k_date = hmac_sha256(k_secret.as_bytes(), date.as_bytes()).finalize();
    let k_region = hmac_sha256(&k_date.into_bytes(), region.as_bytes()).finalize();
    let k_service = hmac_sha256(&k_region.into_bytes(), service.as_bytes()).finalize();
    hmac_sha256(&k_service.into_bytes(), TERMINATOR.as_bytes())
        .finalize()
        .into_bytes()
        .into()
}

fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{hash}")
}

/// The canonical request up to (not including) the payload hash, which is
/// the only part that can have more than one candidate.
fn canonical_prefix(req: &HttpRequest, p: &Parsed) -> Result<String, AuthError> {
    let headers = canonical_headers(req.headers, &p.signed_headers)
        .map_err(|name| incomplete(format!("signed header {} is not present", excerpt(name))))?;
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n",
        req.method,
        canonical_uri(req.path, &p.service),
        canonical_query(req.query, p.presigned),
        headers,
        p.signed_headers,
    ))
}

fn scope(p: &Parsed) -> String {
    format!("{}/{}/{}/{TERMINATOR}", p.scope_date, p.region, p.service)
}

pub(crate) fn verify(
    req: &HttpRequest,
    p: &Parsed,
    secret: &str,
    now_unix: i64,
    defer_payload: bool,
) -> Result<(), AuthError> {
    let candidates = payload_candidates(req, p, defer_payload)?;
    let prefix = canonical_prefix(req, p)?;
    let scope = scope(p);
    let key = signing_key(secret, &p.scope_date, &p.region, &p.service);

    let matched = candidates.iter().any(|payload| {
        let canonical_request = format!("{prefix}{payload}");
        let sts = string_to_sign(&p.amz_date, &scope, &canonical_request);
        // verify_slice compares in constant time.
        hmac_sha256(&key, sts.as_bytes())
            .verify_slice(&p.signature)
            .is_ok()
    });
    if !matched {
        return Err(AuthError::SignatureMismatch);
    }

    let (now, t) = (i128::from(now_unix), i128::from(p.timestamp));
    if p.presigned {
        if t - now > i128::from(MAX_CLOCK_SKEW_SECS) {
            return Err(AuthError::Expired(format!(
                "X-Amz-Date {} is more than 15 minutes in the future",
                p.amz_date
            )));
        }
        match p.expires {
            Some(expires) if now > t + i128::from(expires) => {
                return Err(AuthError::Expired(format!(
                    "presigned request from {} was valid for {expires} seconds",
                    p.amz_date
                )));
            }
            None if now - t > i128::from(MAX_CLOCK_SKEW_SECS) => {
                return Err(AuthError::Expired(format!(
                    "X-Amz-Date {} is more than 15 minutes in the past",
                    p.amz_date
                )));
            }
            _ => {}
        }
    } else if outside_skew(now_unix, p.timestamp) {
        return Err(AuthError::Expired(format!(
            "request date {} is more than 15 minutes from the server time {}",
            p.amz_date,
            clock::format_amz_date(now_unix)
        )));
    }
    Ok(())
}

pub(crate) fn explain(req: &HttpRequest, p: &Parsed) -> Result<Explanation, AuthError> {
    let candidates = payload_candidates(req, p, false)?;
    let payload = candidates.first().map(String::as_str).unwrap_or_default();
    let canonical_request = format!("{}{payload}", canonical_prefix(req, p)?);
    let string_to_sign = string_to_sign(&p.amz_date, &scope(p), &canonical_request);
    Ok(Explanation {
        scheme: if p.presigned {
            Scheme::V4Query
        } else {
            Scheme::V4Header
        },
        canonical_request: Some(canonical_request),
        string_to_sign,
    })
}

/// Lower-cased, sorted, de-duplicated names of the headers a signer covers.
fn signed_header_names(headers: &[(String, String)]) -> String {
    let mut names: Vec<String> = headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .filter(|name| !UNSIGNED_HEADERS.contains(&name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names.join(";")
}

/// `(date, amz_date)` for a signer's clock reading.
fn signing_time(now_unix: i64) -> (String, String) {
    let amz_date = clock::format_amz_date(now_unix);
    let date = amz_date
        .split_once('T')
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    (date, amz_date)
}

/// Signs a request with an `Authorization` header.
///
/// Replaces any `Authorization`/`X-Amz-Date` in `headers`, adds
/// `X-Amz-Date` (and `x-amz-content-sha256` for service `s3`, which
/// requires it), then signs every header present except `user-agent`,
/// `expect` and `x-amzn-trace-id`. `headers` must already contain `Host`
/// as it will be sent; the verifier refuses requests that do not sign it.
/// `path` and `query` are as they will appear on the wire.
#[allow(clippy::too_many_arguments)] // the argument list mirrors the request; a struct would only rename it
pub fn sign_v4_header(
    method: &str,
    path: &str,
    query: &str,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    access_key: &str,
    secret: &str,
    region: &str,
    service: &str,
    now_unix: i64,
) {
    headers.retain(|(name, _)| {
        !name.eq_ignore_ascii_case("authorization") && !name.eq_ignore_ascii_case("x-amz-date")
    });
    let (date, amz_date) = signing_time(now_unix);
    headers.push(("X-Amz-Date".to_string(), amz_date.clone()));

    let declared = header_values(headers, "x-amz-content-sha256")
        .next()
        .map(|v| v.trim().to_string());
    let payload = match declared {
        Some(v) => v,
        None => {
            let hash = sha256_hex(body);
            if service == "s3" {
                headers.push(("x-amz-content-sha256".to_string(), hash.clone()));
            }
            hash
        }
    };

    let signed = signed_header_names(headers);
    // Every signed name was taken from `headers`, so none can be missing.
    let canonical_headers = canonical_headers(headers, &signed).unwrap_or_default();
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}",
        canonical_uri(path, service),
        canonical_query(query, false),
    );
    let scope = format!("{date}/{region}/{service}/{TERMINATOR}");
    let sts = string_to_sign(&amz_date, &scope, &canonical_request);
    let key = signing_key(secret, &date, region, service);
    let signature = hex::encode(hmac_sha256(&key, sts.as_bytes()).finalize().into_bytes());
    headers.push((
        "Authorization".to_string(),
        format!(
            "{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        ),
    ));
}

/// Presigns a request and returns its new query string: `query` followed by
/// the `X-Amz-*` parameters, `X-Amz-Signature` last.
///
/// `headers` are the headers the request will carry and are all signed
/// (except `user-agent`, `expect`, `x-amzn-trace-id`); at least `Host` must
/// be there. The payload is signed as `UNSIGNED-PAYLOAD` unless `headers`
/// holds `x-amz-content-sha256`; the verifier accepts that for bodiless
/// requests and for S3, so presign GETs (or S3 uploads).
#[allow(clippy::too_many_arguments)] // see sign_v4_header
pub fn presign_v4(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    access_key: &str,
    secret: &str,
    region: &str,
    service: &str,
    now_unix: i64,
    expires_secs: u32,
) -> String {
    let (date, amz_date) = signing_time(now_unix);
    let scope = format!("{date}/{region}/{service}/{TERMINATOR}");
    let signed = signed_header_names(headers);
    let auth_params = encode::encode_params(&[
        ("X-Amz-Algorithm".to_string(), ALGORITHM.to_string()),
        (
            "X-Amz-Credential".to_string(),
            format!("{access_key}/{scope}"),
        ),
        ("X-Amz-Date".to_string(), amz_date.clone()),
        ("X-Amz-Expires".to_string(), expires_secs.to_string()),
        ("X-Amz-SignedHeaders".to_string(), signed.clone()),
    ]);
    let full_query = if query.is_empty() {
        auth_params
    } else {
        format!("{query}&{auth_params}")
    };

    let payload = header_values(headers, "x-amz-content-sha256")
        .next()
        .map_or_else(|| UNSIGNED_PAYLOAD.to_string(), |v| v.trim().to_string());
    let canonical_headers = canonical_headers(headers, &signed).unwrap_or_default();
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}",
        canonical_uri(path, service),
        canonical_query(&full_query, true),
    );
    let sts = string_to_sign(&amz_date, &scope, &canonical_request);
    let key = signing_key(secret, &date, region, service);
    let signature = hex::encode(hmac_sha256(&key, sts.as_bytes()).finalize().into_bytes());
    format!("{full_query}&X-Amz-Signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uri_normalises_non_s3_paths() {
        for (path, want) in [
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/./", "/"),
            ("/example/..", "/"),
            ("/example1/example2/../..", "/"),
            ("/../../x", "/x"),
            ("//example//", "/example/"),
            ("/./example", "/example"),
            ("/a/b/.", "/a/b"),
            ("/services/compute", "/services/compute"),
            ("/example space/", "/example%20space/"),
            ("/a%2Fb", "/a%252Fb"),
            ("relative", "/relative"),
            ("/-._~az09", "/-._~az09"),
        ] {
            assert_eq!(canonical_uri(path, "ec2"), want, "{path:?}");
        }
    }

    #[test]
    fn canonical_uri_for_s3_decodes_once_and_keeps_shape() {
        assert_eq!(canonical_uri("/bucket//a/../b", "s3"), "/bucket//a/../b");
        assert_eq!(canonical_uri("/bucket/a%20b", "s3"), "/bucket/a%20b");
        assert_eq!(canonical_uri("/bucket/a b", "s3"), "/bucket/a%20b");
        assert_eq!(canonical_uri("", "s3"), "/");
    }

    #[test]
    fn canonical_query_sorts_encoded_pairs_and_drops_only_presigned_signature() {
        assert_eq!(
            canonical_query("b=2&a=2&a=1&c&X-Amz-Signature=ff", true),
            "a=1&a=2&b=2&c="
        );
        assert_eq!(
            canonical_query("X-Amz-Signature=ff", false),
            "X-Amz-Signature=ff"
        );
        assert_eq!(canonical_query("a=x+y%20z", false), "a=x%2By%20z");
        assert_eq!(canonical_query("", false), "");
    }

    #[test]
    fn canonical_headers_trim_collapse_and_join() {
        let headers = vec![
            ("Host".to_string(), "h".to_string()),
            ("X-A".to_string(), "  one   two \t three ".to_string()),
            ("x-a".to_string(), "four".to_string()),
        ];
        assert_eq!(
            canonical_headers(&headers, "host;x-a"),
            Ok("host:h\nx-a:one two three,four\n".to_string())
        );
        assert_eq!(canonical_headers(&headers, "host;x-b"), Err("x-b"));
    }

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        let long = "\u{e9}".repeat(100);
        let cut = excerpt(&long);
        assert!(cut.ends_with("..."));
        assert_eq!(cut.chars().count(), 67);
        assert_eq!(excerpt("short"), "short");
    }
}
