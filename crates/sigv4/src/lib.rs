//! Verification of AWS request signatures, as a server sees them.
//!
//! Ironbark speaks the EC2 Query API (and later S3) to stock AWS clients:
//! botocore/the AWS CLI sign with Signature Version 4, euca2ools still signs
//! with Signature Version 2. This crate decides whether a request was signed
//! by the holder of an access key's secret. It does no I/O and knows nothing
//! about where secrets live, so every service front end can share it.
//!
//! # How a request flows through it
//!
//! 1. The HTTP layer wraps what it received, undecoded, in an [`HttpRequest`]:
//!    raw path and query, headers as sent, body bytes. Signatures cover the
//!    bytes on the wire, so nothing may be normalised before this point.
//! 2. [`claim`] reads the request without any secret and says which access
//!    key it claims and which scheme it uses (SigV4 `Authorization` header,
//!    SigV4 presigned query string, or SigV2 parameters). Malformed
//!    authentication data is rejected here, before any key lookup.
//! 3. The caller looks up the secret for [`Claim::access_key_id`].
//! 4. [`verify`] rebuilds the canonical request / string to sign, recomputes
//!    the HMAC with that secret, compares in constant time, and then checks
//!    the request's timestamp against the server clock it is given.
//!
//! ```
//! use ironbark_sigv4::{HttpRequest, claim, sign_v4_header, verify};
//!
//! // What botocore does on the client...
//! let mut headers = vec![
//!     ("Host".to_string(), "cloud.example:8773".to_string()),
//!     (
//!         "Content-Type".to_string(),
//!         "application/x-www-form-urlencoded; charset=utf-8".to_string(),
//!     ),
//! ];
//! let body = b"Action=DescribeRegions&Version=2016-11-15";
//! let now = 1_440_938_160;
//! sign_v4_header(
//!     "POST", "/services/compute", "", &mut headers, body,
//!     "AKIDEXAMPLE", "the-secret", "eucalyptus", "ec2", now,
//! );
//!
//! // ...and what the server does with the request it receives.
//! let req = HttpRequest {
//!     method: "POST",
//!     path: "/services/compute",
//!     query: "",
//!     headers: &headers,
//!     body,
//! };
//! let claimed = claim(&req)?;
//! assert_eq!(claimed.access_key_id, "AKIDEXAMPLE");
//! let secret = "the-secret"; // looked up by claimed.access_key_id
//! verify(&req, &claimed, secret, now)?;
//! # Ok::<(), ironbark_sigv4::AuthError>(())
//! ```
//!
//! On SigV4 the region and service names come from the credential scope the
//! client sent: clients of a private cloud sign with region names of their
//! own (`eucalyptus`, `ironbark-1`, ...), and the signature already binds
//! them, so there is nothing to gain by insisting on a particular one.
//!
//! The signing side ([`sign_v4_header`], [`presign_v4`], [`sign_v2`]) shares
//! the canonicalisation code with the verifier; it exists for tests, load
//! generators and service-to-service calls.
//!
//! # Choices where AWS is ambiguous
//!
//! * SigV4 canonical query strings treat `+` as a literal plus (RFC 3986),
//!   so `a+b` is canonicalised as `a%2Bb`: SigV4 defines the query string
//!   by RFC 3986 escaping, not HTML form rules. botocore never sends a bare
//!   `+` in a query string (it escapes spaces as `%20` and `+` as `%2B`), so
//!   no real client depends on the other reading. SigV2 parameters and form
//!   bodies, on the other hand, are `application/x-www-form-urlencoded`,
//!   where `+` is a space.
//! * The canonical URI of non-S3 services is the received path with empty
//!   and dot segments removed and every segment escaped once more (so `%2F`
//!   on the wire signs as `%252F`), which is what botocore computes. For
//!   service `s3` the path is decoded and escaped once, not normalised.
//! * A presigned SigV4 URL is checked against `UNSIGNED-PAYLOAD` and against
//!   the SHA-256 of the body (botocore presigns non-S3 requests with the
//!   latter). `UNSIGNED-PAYLOAD` is only accepted when the body is empty or
//!   the service is `s3`: on the Query API the body carries API parameters,
//!   and an unsigned body would let whoever holds the URL add some.

use sha2::{Digest, Sha256};

pub mod clock;
mod encode;
mod v2;
mod v4;

pub use encode::{encode_params, uri_encode};
pub use v2::sign_v2;
pub use v4::{presign_v4, sign_v4_header};

/// How far a request's timestamp may be from the server clock, either way.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// Longest lifetime AWS allows for a presigned SigV4 URL (7 days).
pub const MAX_PRESIGN_EXPIRES_SECS: i64 = 7 * 24 * 60 * 60;

/// A request as received by the HTTP server, before any decoding.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// `"GET"`, `"POST"`, ... exactly as on the request line.
    pub method: &'a str,
    /// Raw path as received, percent-encoded, e.g. `"/services/compute"`.
    pub path: &'a str,
    /// Raw query string without `?`, possibly empty.
    pub query: &'a str,
    /// Header names in any case, values as received. Repeated headers are
    /// separate entries.
    pub headers: &'a [(String, String)],
    /// The body bytes.
    pub body: &'a [u8],
}

/// Which signing scheme a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// SigV4 in an `Authorization: AWS4-HMAC-SHA256 ...` header.
    V4Header,
    /// SigV4 presigned URL (`X-Amz-Algorithm=AWS4-HMAC-SHA256&...`).
    V4Query,
    /// SigV2 query or form parameters (`SignatureVersion=2`).
    V2,
}

/// What the request claims: found without any secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub access_key_id: String,
    pub scheme: Scheme,
}

/// Why a request was not accepted. The variants follow the AWS error codes
/// a front end should answer with; see [`AuthError::aws_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no signature at all.
    #[error("request is not signed")]
    Missing,
    /// Signature data is present but malformed or incomplete.
    #[error("incomplete signature: {0}")]
    Incomplete(String),
    /// The request's timestamp is outside the accepted window.
    #[error("request has expired: {0}")]
    Expired(String),
    /// The signature is well formed but was not made with this secret over
    /// this request.
    #[error("the request signature does not match")]
    SignatureMismatch,
    /// A signature scheme or algorithm this server does not accept.
    #[error("unsupported signature algorithm: {0}")]
    UnsupportedAlgorithm(String),
}

impl AuthError {
    /// The AWS error code a Query API front end would answer with.
    pub fn aws_code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationToken",
            AuthError::Incomplete(_) => "IncompleteSignature",
            AuthError::Expired(_) => "RequestExpired",
            AuthError::SignatureMismatch => "SignatureDoesNotMatch",
            AuthError::UnsupportedAlgorithm(_) => "InvalidParameterValue",
        }
    }
}

/// The intermediate strings of a signature computation, for tests and for
/// logging why a client's signature did not match (AWS itself echoes the
/// canonical request back in that case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub scheme: Scheme,
    /// SigV4 only; SigV2 has no separate canonical request.
    pub canonical_request: Option<String>,
    pub string_to_sign: String,
}

/// Look at the request and find which access key it claims to be signed with.
///
/// Errors: no signature at all -> [`AuthError::Missing`]; malformed header or
/// parameters -> [`AuthError::Incomplete`]; another algorithm ->
/// [`AuthError::UnsupportedAlgorithm`].
pub fn claim(req: &HttpRequest) -> Result<Claim, AuthError> {
    Ok(match parse(req)? {
        Parsed::V4(p) => Claim {
            access_key_id: p.access_key,
            scheme: if p.presigned {
                Scheme::V4Query
            } else {
                Scheme::V4Header
            },
        },
        Parsed::V2(p) => Claim {
            access_key_id: p.access_key,
            scheme: Scheme::V2,
        },
    })
}

/// Verify the request's signature with that key's secret. `now_unix` is the
/// server clock in seconds.
///
/// The signature is checked before the timestamp, so [`AuthError::Expired`]
/// is only reported for requests that really were signed with `secret`.
/// A `claim` that does not describe this request (another key or scheme)
/// yields [`AuthError::SignatureMismatch`], as the secret cannot belong to
/// the key the request names.
pub fn verify(
    req: &HttpRequest,
    claim: &Claim,
    secret: &str,
    now_unix: i64,
) -> Result<(), AuthError> {
    match parse(req)? {
        Parsed::V4(p) => {
            let scheme = if p.presigned {
                Scheme::V4Query
            } else {
                Scheme::V4Header
            };
            if scheme != claim.scheme || p.access_key != claim.access_key_id {
                return Err(AuthError::SignatureMismatch);
            }
            v4::verify(req, &p, secret, now_unix, false)
        }
        Parsed::V2(p) => {
            if claim.scheme != Scheme::V2 || p.access_key != claim.access_key_id {
                return Err(AuthError::SignatureMismatch);
            }
            v2::verify(req, &p, secret, now_unix)
        }
    }
}

/// What a verified SigV4 request said about itself, for a front end that
/// forwards it (re-signed) to a service mounted under another path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Info {
    pub timestamp: i64,
    pub expires: Option<i64>,
    pub region: String,
    pub service: String,
    /// Lower-case names the client signed.
    pub signed_headers: Vec<String>,
    pub presigned: bool,
}

/// Verifies a SigV4 request without its body: the payload hash the client
/// declared in `x-amz-content-sha256` (or `UNSIGNED-PAYLOAD` for a presigned
/// S3 URL) is taken as signed, and the caller must hold the body to it as it
/// streams (a proxy does so by re-signing with the same declared hash for a
/// verifier that checks bodies). Chunk-signed streaming uploads are refused:
/// their chunk signatures chain from this request's signature.
pub fn verify_deferring_payload(
    req: &HttpRequest,
    claim: &Claim,
    secret: &str,
    now_unix: i64,
) -> Result<V4Info, AuthError> {
    match parse(req)? {
        Parsed::V4(p) => {
            if p.access_key != claim.access_key_id {
                return Err(AuthError::SignatureMismatch);
            }
            v4::verify(req, &p, secret, now_unix, true)?;
            Ok(p.info())
        }
        Parsed::V2(_) => Err(AuthError::UnsupportedAlgorithm(
            "Signature Version 2 is not accepted here".into(),
        )),
    }
}

/// Rebuild the canonical request and string to sign the way [`verify`]
/// does, without a secret. For a presigned SigV4 request without an
/// `x-amz-content-sha256` header this shows the variant with the body's
/// SHA-256; [`verify`] also tries `UNSIGNED-PAYLOAD` where it accepts it.
pub fn explain(req: &HttpRequest) -> Result<Explanation, AuthError> {
    match parse(req)? {
        Parsed::V4(p) => v4::explain(req, &p),
        Parsed::V2(p) => Ok(v2::explain(req, &p)),
    }
}

enum Parsed {
    V4(v4::Parsed),
    V2(v2::Parsed),
}

/// Finds the one authentication mechanism a request uses. AWS refuses
/// requests that carry two (an ambiguity an attacker could play with), and
/// so do we.
fn parse(req: &HttpRequest) -> Result<Parsed, AuthError> {
    let authorization = single_header(req.headers, "authorization")?;
    let query_pairs = encode::parse_pairs(req.query.as_bytes(), encode::Plus::Literal);
    let presigned = query_pairs
        .iter()
        .any(|(name, _)| name.as_slice() == b"X-Amz-Algorithm");

    match authorization {
        Some(value) => {
            if presigned {
                return Err(AuthError::Incomplete(
                    "request carries both an Authorization header and X-Amz-Algorithm".into(),
                ));
            }
            v4::parse_header(req, value).map(Parsed::V4)
        }
        None if presigned => v4::parse_query(&query_pairs).map(Parsed::V4),
        None => match v2::parse(req)? {
            Some(p) => Ok(Parsed::V2(p)),
            None => Err(AuthError::Missing),
        },
    }
}

/// All values of a header, in the order received.
fn header_values<'h>(
    headers: &'h [(String, String)],
    name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A header that must not be repeated: a second copy is refused rather than
/// guessed about, since the verifier and the application could otherwise
/// read different values.
fn single_header<'h>(
    headers: &'h [(String, String)],
    name: &'h str,
) -> Result<Option<&'h str>, AuthError> {
    let mut values = header_values(headers, name);
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthError::Incomplete(format!(
            "header {name} appears more than once"
        )));
    }
    Ok(first)
}

/// Access key ids are printable ASCII words (AWS uses `[A-Z0-9]{16,128}`).
/// Anything else is refused before it can reach a key store or a log line.
fn valid_access_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `|now - t| > MAX_CLOCK_SKEW_SECS`, without overflow for any inputs.
fn outside_skew(now_unix: i64, t: i64) -> bool {
    (i128::from(now_unix) - i128::from(t)).abs() > i128::from(MAX_CLOCK_SKEW_SECS)
}
