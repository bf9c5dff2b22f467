//! Signature Version 2 (`SignatureVersion=2`), what euca2ools sends.
//!
//! SigV2 signs the request line's method, the Host header, the path and
//! every parameter (query string and, for POST, the form body) except
//! `Signature` itself:
//!
//! ```text
//! METHOD \n host-lowercased \n path \n name=value&name=value...
//! ```
//!
//! with pairs sorted by name (then value) in byte order and each name and
//! value escaped with the RFC 3986 unreserved set.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::encode::{Pair, Plus, encode_into, parse_pairs};
use crate::{
    AuthError, Explanation, HttpRequest, Scheme, clock, outside_skew, single_header,
    valid_access_key,
};

/// Parameters that carry the signature rather than being covered by it
/// (only `Signature`), or that a signer sets itself.
const AUTH_PARAMS: [&str; 6] = [
    "Signature",
    "AWSAccessKeyId",
    "SignatureVersion",
    "SignatureMethod",
    "Timestamp",
    "Expires",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    HmacSha1,
    HmacSha256,
}

#[derive(Debug, Clone, Copy)]
enum Validity {
    /// Signed at this time; valid within the clock-skew window.
    Timestamp(i64),
    /// Valid until this time.
    Expires(i64),
}

pub(crate) struct Parsed {
    pub(crate) access_key: String,
    method: Method,
    validity: Validity,
    signature: Vec<u8>,
    /// Every parameter, `Signature` included; the string to sign skips it.
    params: Vec<Pair>,
    host: String,
}

fn incomplete(msg: impl Into<String>) -> AuthError {
    AuthError::Incomplete(msg.into())
}

/// Whether the body holds form parameters. Clients set
/// `application/x-www-form-urlencoded` (with or without a charset); a POST
/// without any Content-Type is read as a form too, since that is the only
/// thing a Query API POST can carry and its parameters are signed anyway.
fn body_is_form(req: &HttpRequest) -> Result<bool, AuthError> {
    if !req.method.eq_ignore_ascii_case("POST") {
        return Ok(false);
    }
    Ok(match single_header(req.headers, "content-type")? {
        None => true,
        Some(ct) => ct.trim().get(..33).is_some_and(|essence| {
            essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }),
    })
}

/// All parameters of the request, query string first, then form body.
fn collect_params(req: &HttpRequest) -> Result<Vec<Pair>, AuthError> {
    let mut params = parse_pairs(req.query.as_bytes(), Plus::Space);
    if body_is_form(req)? {
        params.extend(parse_pairs(req.body, Plus::Space));
    }
    Ok(params)
}

/// A parameter that may appear at most once, as UTF-8 text.
fn single<'p>(params: &'p [Pair], name: &str) -> Result<Option<&'p str>, AuthError> {
    let mut found = params
        .iter()
        .filter(|(n, _)| n.as_slice() == name.as_bytes());
    let first = found.next();
    if found.next().is_some() {
        return Err(incomplete(format!(
            "parameter {name} appears more than once"
        )));
    }
    first
        .map(|(_, v)| {
            std::str::from_utf8(v).map_err(|_| incomplete(format!("parameter {name} is not UTF-8")))
        })
        .transpose()
}

/// `Ok(None)` when the request shows no sign of SigV2 at all.
pub(crate) fn parse(req: &HttpRequest) -> Result<Option<Parsed>, AuthError> {
    let params = collect_params(req)?;
    let mentions = |name: &str| params.iter().any(|(n, _)| n.as_slice() == name.as_bytes());
    if !(mentions("AWSAccessKeyId") || mentions("SignatureVersion") || mentions("Signature")) {
        return Ok(None);
    }

    match single(&params, "SignatureVersion")? {
        Some("2") => {}
        Some(v @ ("0" | "1")) => {
            return Err(AuthError::UnsupportedAlgorithm(format!(
                "SignatureVersion {v} is not accepted; use 2 or 4"
            )));
        }
        Some(other) => {
            return Err(AuthError::UnsupportedAlgorithm(format!(
                "SignatureVersion '{}'",
                other.chars().take(16).collect::<String>()
            )));
        }
        None => return Err(incomplete("SignatureVersion is required")),
    }
    let method = match single(&params, "SignatureMethod")? {
        Some("HmacSHA256") => Method::HmacSha256,
        Some("HmacSHA1") => Method::HmacSha1,
        Some(other) => {
            return Err(AuthError::UnsupportedAlgorithm(format!(
                "SignatureMethod '{}'",
                other.chars().take(32).collect::<String>()
            )));
        }
        None => return Err(incomplete("SignatureMethod is required")),
    };
    let access_key = single(&params, "AWSAccessKeyId")?
        .ok_or_else(|| incomplete("AWSAccessKeyId is required"))?;
    if !valid_access_key(access_key) {
        return Err(incomplete("AWSAccessKeyId is not a valid access key id"));
    }
    let access_key = access_key.to_string();
    let signature =
        single(&params, "Signature")?.ok_or_else(|| incomplete("Signature is required"))?;
    // Base64 never contains a space, but an unescaped '+' in a query string
    // decodes to one; restoring it costs nothing and rescues sloppy clients.
    let signature = BASE64
        .decode(signature.trim().replace(' ', "+"))
        .map_err(|_| incomplete("Signature is not base64"))?;

    let validity = match (single(&params, "Timestamp")?, single(&params, "Expires")?) {
        (Some(ts), None) => Validity::Timestamp(
            clock::parse_iso8601(ts)
                .ok_or_else(|| incomplete("Timestamp is not an ISO 8601 date and time"))?,
        ),
        (None, Some(ex)) => Validity::Expires(
            clock::parse_iso8601(ex)
                .ok_or_else(|| incomplete("Expires is not an ISO 8601 date and time"))?,
        ),
        (Some(_), Some(_)) => {
            return Err(incomplete("Timestamp and Expires must not both be present"));
        }
        (None, None) => return Err(incomplete("Timestamp or Expires is required")),
    };

    let host = single_header(req.headers, "host")?
        .ok_or_else(|| incomplete("signature version 2 requires a Host header"))?
        .trim()
        .to_ascii_lowercase();

    Ok(Some(Parsed {
        access_key,
        method,
        validity,
        signature,
        params,
        host,
    }))
}

/// The SigV2 string to sign over already-decoded parameters; `Signature`
/// is skipped wherever it appears.
fn string_to_sign<'a>(
    method: &str,
    host: &str,
    path: &str,
    params: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> String {
    let mut sorted: Vec<(&[u8], &[u8])> = params.filter(|(n, _)| *n != b"Signature").collect();
    sorted.sort();
    let path = if path.is_empty() { "/" } else { path };
    let mut out = format!("{method}\n{host}\n{path}\n");
    for (i, (name, value)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, name);
        out.push('=');
        encode_into(&mut out, value);
    }
    out
}

fn request_string_to_sign(req: &HttpRequest, p: &Parsed) -> String {
    string_to_sign(
        req.method,
        &p.host,
        req.path,
        p.params.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
    )
}

pub(crate) fn verify(
    req: &HttpRequest,
    p: &Parsed,
    secret: &str,
    now_unix: i64,
) -> Result<(), AuthError> {
    let sts = request_string_to_sign(req, p);
    // verify_slice compares in constant time (and refuses a wrong length).
    let matched = match p.method {
        Method::HmacSha256 => Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map(|mac| {
            mac.chain_update(sts.as_bytes())
                .verify_slice(&p.signature)
                .is_ok()
        }),
        Method::HmacSha1 => Hmac::<Sha1>::new_from_slice(secret.as_bytes()).map(|mac| {
            mac.chain_update(sts.as_bytes())
                .verify_slice(&p.signature)
                .is_ok()
        }),
    };
    if matched != Ok(true) {
        return Err(AuthError::SignatureMismatch);
    }

    match p.validity {
        Validity::Timestamp(t) if outside_skew(now_unix, t) => Err(AuthError::Expired(format!(
            "Timestamp {} is more than 15 minutes from the server time {}",
            clock::format_iso8601(t),
            clock::format_iso8601(now_unix)
        ))),
        Validity::Expires(e) if now_unix > e => Err(AuthError::Expired(format!(
            "request expired at {}",
            clock::format_iso8601(e)
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn explain(req: &HttpRequest, p: &Parsed) -> Explanation {
    Explanation {
        scheme: Scheme::V2,
        canonical_request: None,
        string_to_sign: request_string_to_sign(req, p),
    }
}

/// Signs SigV2 parameters with HmacSHA256, as euca2ools does.
///
/// `params` are the request's decoded parameters; any authentication
/// parameters already in it are replaced. Afterwards it holds
/// `AWSAccessKeyId`, `SignatureVersion=2`, `SignatureMethod=HmacSHA256`,
/// `Timestamp` and, last, `Signature`: send it with
/// [`encode_params`](crate::encode_params) as the query string (GET) or as
/// an `application/x-www-form-urlencoded` body (POST). `host` is the Host
/// header as it will be sent, port included if it is sent.
pub fn sign_v2(
    method: &str,
    host: &str,
    path: &str,
    params: &mut Vec<(String, String)>,
    access_key: &str,
    secret: &str,
    now_unix: i64,
) {
    params.retain(|(name, _)| !AUTH_PARAMS.contains(&name.as_str()));
    params.push(("AWSAccessKeyId".to_string(), access_key.to_string()));
    params.push(("SignatureVersion".to_string(), "2".to_string()));
    params.push(("SignatureMethod".to_string(), "HmacSHA256".to_string()));
    params.push(("Timestamp".to_string(), clock::format_iso8601(now_unix)));
    let sts = string_to_sign(
        method,
        &host.trim().to_ascii_lowercase(),
        path,
        params.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
    );
    let signature = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map(|mac| BASE64.encode(mac.chain_update(sts.as_bytes()).finalize().into_bytes()))
        .unwrap_or_default();
    params.push(("Signature".to_string(), signature));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_to_sign_sorts_by_raw_name_bytes_and_skips_signature() {
        let params: Vec<(&[u8], &[u8])> = vec![
            (b"b", b"x y"),
            (b"Signature", b"zzz"),
            (b"a_b", b"1"),
            (b"a", b"2"),
            (b"a", b"1"),
            (b"B", b"/"),
        ];
        assert_eq!(
            string_to_sign("GET", "host:8773", "", params.into_iter()),
            "GET\nhost:8773\n/\nB=%2F&a=1&a=2&a_b=1&b=x%20y"
        );
    }
}
