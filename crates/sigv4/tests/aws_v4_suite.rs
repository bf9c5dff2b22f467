//! The AWS Signature Version 4 test suite, run against the verifier and the
//! signer: canonical request, string to sign and signature must match the
//! published files exactly, and any one-byte change to what the signature
//! covers must be refused. Both the Authorization-header and the presigned
//! (query) form of every case are checked.

#[path = "data/aws_v4_suite.rs"]
mod suite;

use ironbark_sigv4::{
    AuthError, Claim, HttpRequest, Scheme, claim, explain, sign_v4_header, verify,
};
use suite::{HEADER_VECTORS, QUERY_VECTORS, Vector};

const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z.
const NOW: i64 = 1_440_938_160;

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn request<'a>(
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    body: &'a [u8],
) -> HttpRequest<'a> {
    HttpRequest {
        method,
        path,
        query,
        headers,
        body,
    }
}

fn suite_claim(scheme: Scheme) -> Claim {
    Claim {
        access_key_id: ACCESS_KEY.to_string(),
        scheme,
    }
}

/// Every case in both forms, with the scheme it should be recognised as.
fn all_vectors() -> impl Iterator<Item = (&'static Vector, Scheme)> {
    HEADER_VECTORS
        .iter()
        .map(|v| (v, Scheme::V4Header))
        .chain(QUERY_VECTORS.iter().map(|v| (v, Scheme::V4Query)))
}

/// Replaces the last character with a different alphanumeric one.
fn change_last_char(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    match chars.last_mut() {
        Some(c) => *c = if *c == 'a' { 'b' } else { 'a' },
        None => chars.push('a'),
    }
    chars.into_iter().collect()
}

fn verify_with(
    scheme: Scheme,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(), AuthError> {
    let req = request(method, path, query, headers, body.as_bytes());
    verify(&req, &suite_claim(scheme), SECRET, NOW)
}

/// Lower-case names from the SignedHeaders of either form.
fn signed_header_names(v: &Vector) -> Vec<String> {
    let list = if let Some((_, authz)) = v.headers.iter().find(|(n, _)| *n == "Authorization") {
        authz
            .split("SignedHeaders=")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .expect("authz has SignedHeaders")
            .to_string()
    } else {
        v.query
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-SignedHeaders="))
            .expect("query has X-Amz-SignedHeaders")
            .replace("%3B", ";")
    };
    list.split(';').map(str::to_string).collect()
}

#[test]
fn suite_is_complete() {
    // Guards against the data file being truncated by accident.
    assert_eq!(HEADER_VECTORS.len(), 30);
    assert_eq!(QUERY_VECTORS.len(), 29);
}

#[test]
fn canonical_request_and_string_to_sign_match_the_suite() {
    for (v, scheme) in all_vectors() {
        let headers = owned(v.headers);
        let req = request(v.method, v.path, v.query, &headers, v.body.as_bytes());
        let e = explain(&req).unwrap_or_else(|err| panic!("{}: {err}", v.name));
        assert_eq!(e.scheme, scheme, "{}", v.name);
        assert_eq!(
            e.canonical_request.as_deref(),
            Some(v.creq),
            "{} {scheme:?}",
            v.name
        );
        assert_eq!(e.string_to_sign, v.sts, "{} {scheme:?}", v.name);
    }
}

#[test]
fn verify_accepts_every_suite_request() {
    for (v, scheme) in all_vectors() {
        let headers = owned(v.headers);
        let req = request(v.method, v.path, v.query, &headers, v.body.as_bytes());
        assert_eq!(claim(&req), Ok(suite_claim(scheme)), "{}", v.name);
        assert_eq!(
            verify(&req, &suite_claim(scheme), SECRET, NOW),
            Ok(()),
            "{} {scheme:?}",
            v.name
        );
    }
}

#[test]
fn signer_reproduces_every_suite_signature() {
    for v in HEADER_VECTORS {
        // The signer covers every header it is given: give it the ones the
        // suite signed, less the date it adds itself.
        let signed = signed_header_names(v);
        let mut headers: Vec<(String, String)> = owned(v.headers)
            .into_iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                signed.contains(&n) && n != "x-amz-date"
            })
            .collect();
        sign_v4_header(
            v.method,
            v.path,
            v.query,
            &mut headers,
            v.body.as_bytes(),
            ACCESS_KEY,
            SECRET,
            "us-east-1",
            "service",
            NOW,
        );
        let expected = v
            .headers
            .iter()
            .find(|(n, _)| *n == "Authorization")
            .map(|(_, a)| *a);
        let produced: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == "Authorization")
            .map(|(_, a)| a.as_str())
            .collect();
        assert_eq!(produced.first().copied(), expected, "{}", v.name);
        assert_eq!(produced.len(), 1);
        assert!(produced[0].ends_with(v.signature), "{}", v.name);
    }
}

#[test]
fn wrong_secret_is_refused() {
    let wrong = SECRET.replace('K', "k");
    for (v, scheme) in all_vectors() {
        let headers = owned(v.headers);
        let req = request(v.method, v.path, v.query, &headers, v.body.as_bytes());
        assert_eq!(
            verify(&req, &suite_claim(scheme), &wrong, NOW),
            Err(AuthError::SignatureMismatch),
            "{}",
            v.name
        );
    }
}

#[test]
fn changing_any_signed_header_value_is_refused() {
    for (v, scheme) in all_vectors() {
        let signed = signed_header_names(v);
        let received = owned(v.headers);
        for (i, (name, value)) in received.iter().enumerate() {
            if !signed.contains(&name.to_ascii_lowercase()) {
                continue;
            }
            let mut headers = received.clone();
            headers[i].1 = if name.eq_ignore_ascii_case("x-amz-date") {
                // Keep it a valid date on the same day: one second later.
                value.replace("123600Z", "123601Z")
            } else if name.eq_ignore_ascii_case("x-amz-content-sha256") {
                // A different declared hash fails before the HMAC does.
                continue;
            } else {
                change_last_char(value)
            };
            assert_eq!(
                verify_with(scheme, v.method, v.path, v.query, &headers, v.body),
                Err(AuthError::SignatureMismatch),
                "{} {scheme:?}: header {name}",
                v.name
            );
        }
    }
}

#[test]
fn unsigned_headers_may_change_freely() {
    let v = HEADER_VECTORS
        .iter()
        .find(|v| v.name == "post-sts-header-after")
        .expect("vector present");
    let mut headers = owned(v.headers);
    for (name, value) in headers.iter_mut() {
        if name == "X-Amz-Security-Token" {
            *value = change_last_char(value);
        }
    }
    headers.push(("User-Agent".into(), "curl/8".into()));
    let req = request(v.method, v.path, v.query, &headers, v.body.as_bytes());
    assert_eq!(
        verify(&req, &suite_claim(Scheme::V4Header), SECRET, NOW),
        Ok(())
    );
}

#[test]
fn removing_a_signed_header_is_refused() {
    let v = HEADER_VECTORS
        .iter()
        .find(|v| v.name == "get-header-value-trim")
        .expect("vector present");
    let headers: Vec<(String, String)> = owned(v.headers)
        .into_iter()
        .filter(|(n, _)| n != "My-Header2")
        .collect();
    let req = request(v.method, v.path, v.query, &headers, v.body.as_bytes());
    assert!(matches!(
        verify(&req, &suite_claim(Scheme::V4Header), SECRET, NOW),
        Err(AuthError::Incomplete(msg)) if msg.contains("my-header2")
    ));
}

#[test]
fn whitespace_inside_header_values_is_canonicalised() {
    let v = HEADER_VECTORS
        .iter()
        .find(|v| v.name == "get-header-value-trim")
        .expect("vector present");
    let mut headers = owned(v.headers);
    for (name, value) in headers.iter_mut() {
        if name == "My-Header2" {
            *value = "\t\"a b        c\"   ".to_string();
        }
    }
    let req = request(v.method, v.path, v.query, &headers, v.body.as_bytes());
    assert_eq!(
        verify(&req, &suite_claim(Scheme::V4Header), SECRET, NOW),
        Ok(())
    );
}

#[test]
fn changing_any_query_parameter_is_refused() {
    for (v, scheme) in all_vectors() {
        let headers = owned(v.headers);
        let pieces: Vec<&str> = v.query.split('&').filter(|p| !p.is_empty()).collect();
        for (i, piece) in pieces.iter().enumerate() {
            // The algorithm, credential and signed-header list are
            // structural (a change there is refused before the HMAC, see
            // changing_the_credential_scope_is_refused); the signature is
            // covered below; the date has to stay a date of the same day.
            if [
                "X-Amz-Algorithm=",
                "X-Amz-Credential=",
                "X-Amz-SignedHeaders=",
                "X-Amz-Signature=",
            ]
            .iter()
            .any(|prefix| piece.starts_with(prefix))
            {
                continue;
            }
            let mut changed = pieces.clone();
            let replaced = if piece.starts_with("X-Amz-Date=") {
                piece.replace("123600Z", "123601Z")
            } else if piece.starts_with("X-Amz-Expires=") {
                "X-Amz-Expires=3601".to_string()
            } else {
                change_last_char(piece)
            };
            changed[i] = &replaced;
            let query = changed.join("&");
            assert_eq!(
                verify_with(scheme, v.method, v.path, &query, &headers, v.body),
                Err(AuthError::SignatureMismatch),
                "{} {scheme:?}: {piece}",
                v.name
            );
        }
        // An extra parameter is refused too.
        let query = if v.query.is_empty() {
            "Param1=value1".to_string()
        } else {
            format!("{}&Extra=1", v.query)
        };
        assert_eq!(
            verify_with(scheme, v.method, v.path, &query, &headers, v.body),
            Err(AuthError::SignatureMismatch),
            "{} {scheme:?}: extra parameter",
            v.name
        );
    }
}

#[test]
fn changing_the_credential_scope_is_refused() {
    for (v, scheme) in all_vectors() {
        for (from, to) in [("us-east-1", "us-east-2"), ("/service/", "/servicf/")] {
            let headers: Vec<(String, String)> = owned(v.headers)
                .into_iter()
                .map(|(n, val)| {
                    let val = if n == "Authorization" {
                        val.replace(from, to)
                    } else {
                        val
                    };
                    (n, val)
                })
                .collect();
            let query = v
                .query
                .replace(&from.replace('/', "%2F"), &to.replace('/', "%2F"));
            assert_eq!(
                verify_with(scheme, v.method, v.path, &query, &headers, v.body),
                Err(AuthError::SignatureMismatch),
                "{} {scheme:?}: {from} -> {to}",
                v.name
            );
        }
    }
}

#[test]
fn changing_the_body_is_refused() {
    for (v, scheme) in all_vectors() {
        let headers = owned(v.headers);
        let body = if v.body.is_empty() {
            "x".to_string()
        } else {
            change_last_char(v.body)
        };
        assert_eq!(
            verify_with(scheme, v.method, v.path, v.query, &headers, &body),
            Err(AuthError::SignatureMismatch),
            "{} {scheme:?}",
            v.name
        );
    }
}

#[test]
fn changing_the_path_or_method_is_refused() {
    for (v, scheme) in all_vectors() {
        let headers = owned(v.headers);
        let path = format!("{}x", v.path);
        assert_eq!(
            verify_with(scheme, v.method, &path, v.query, &headers, v.body),
            Err(AuthError::SignatureMismatch),
            "{} {scheme:?} path",
            v.name
        );
        let method = if v.method == "GET" { "POST" } else { "GET" };
        assert_eq!(
            verify_with(scheme, method, v.path, v.query, &headers, v.body),
            Err(AuthError::SignatureMismatch),
            "{} {scheme:?} method",
            v.name
        );
    }
}

#[test]
fn changing_one_signature_digit_is_refused() {
    for (v, scheme) in all_vectors() {
        let mut headers = owned(v.headers);
        let mut query = v.query.to_string();
        match scheme {
            Scheme::V4Header => {
                if let Some((_, authz)) = headers.iter_mut().find(|(n, _)| n == "Authorization") {
                    *authz = change_last_char(authz);
                }
            }
            _ => {
                let changed = change_last_char(v.signature);
                query = query.replace(v.signature, &changed);
            }
        }
        assert_eq!(
            verify_with(scheme, v.method, v.path, &query, &headers, v.body),
            Err(AuthError::SignatureMismatch),
            "{} {scheme:?}",
            v.name
        );
    }
}

#[test]
fn header_form_expires_outside_fifteen_minutes() {
    let v = &HEADER_VECTORS[0];
    let headers = owned(v.headers);
    let req = request(v.method, v.path, v.query, &headers, b"");
    let claim = suite_claim(Scheme::V4Header);
    for offset in [-14 * 60, -15 * 60, 0, 14 * 60, 15 * 60] {
        assert_eq!(
            verify(&req, &claim, SECRET, NOW + offset),
            Ok(()),
            "{offset}"
        );
    }
    for offset in [-16 * 60, -15 * 60 - 1, 15 * 60 + 1, 16 * 60, 86_400 * 365] {
        assert!(
            matches!(
                verify(&req, &claim, SECRET, NOW + offset),
                Err(AuthError::Expired(_))
            ),
            "{offset}"
        );
    }
}

#[test]
fn query_form_is_valid_for_x_amz_expires() {
    // The suite's presigned URLs carry X-Amz-Expires=3600.
    let v = &QUERY_VECTORS[0];
    let headers = owned(v.headers);
    let req = request(v.method, v.path, v.query, &headers, b"");
    let claim = suite_claim(Scheme::V4Query);
    for offset in [-15 * 60, 0, 59 * 60, 3600] {
        assert_eq!(
            verify(&req, &claim, SECRET, NOW + offset),
            Ok(()),
            "{offset}"
        );
    }
    for offset in [-16 * 60, 3601, 86_400] {
        assert!(
            matches!(
                verify(&req, &claim, SECRET, NOW + offset),
                Err(AuthError::Expired(_))
            ),
            "{offset}"
        );
    }
}

/// The worked example from AWS's "Signature Version 4 signing process"
/// documentation: IAM ListUsers.
#[test]
fn aws_documentation_iam_list_users_example() {
    let headers: Vec<(String, String)> = vec![
        ("Host".into(), "iam.amazonaws.com".into()),
        (
            "Content-Type".into(),
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        ),
        ("X-Amz-Date".into(), "20150830T123600Z".into()),
        (
            "Authorization".into(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
                .into(),
        ),
    ];
    let req = request(
        "GET",
        "/",
        "Action=ListUsers&Version=2010-05-08",
        &headers,
        b"",
    );
    let e = explain(&req).expect("parses");
    assert_eq!(
        e.canonical_request.as_deref(),
        Some(
            "GET\n/\nAction=ListUsers&Version=2010-05-08\n\
             content-type:application/x-www-form-urlencoded; charset=utf-8\n\
             host:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             content-type;host;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )
    );
    assert_eq!(
        e.string_to_sign,
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n\
         f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    );
    let claim = suite_claim(Scheme::V4Header);
    assert_eq!(verify(&req, &claim, SECRET, NOW), Ok(()));
    let req = request(
        "GET",
        "/",
        "Action=ListUsers&Version=2010-05-09",
        &headers,
        b"",
    );
    assert_eq!(
        verify(&req, &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
}
