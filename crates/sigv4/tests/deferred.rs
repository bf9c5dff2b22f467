//! `verify_deferring_payload`: the signature is checked against the payload
//! hash the client declared, without the body, for proxies that stream it.

use ironbark_sigv4::{AuthError, HttpRequest, claim, sign_v4_header, verify_deferring_payload};

const KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const NOW: i64 = 1_800_000_000;

fn signed(declared: &str) -> Vec<(String, String)> {
    let mut h = vec![
        ("Host".to_string(), "127.0.0.1:8773".to_string()),
        ("x-amz-content-sha256".to_string(), declared.to_string()),
    ];
    sign_v4_header(
        "PUT",
        "/services/objectstorage/b/k",
        "",
        &mut h,
        b"",
        KEY,
        SECRET,
        "eucalyptus",
        "s3",
        NOW,
    );
    h
}

fn check(h: &[(String, String)]) -> Result<ironbark_sigv4::V4Info, AuthError> {
    let req = HttpRequest {
        method: "PUT",
        path: "/services/objectstorage/b/k",
        query: "",
        headers: h,
        body: b"",
    };
    let c = claim(&req)?;
    verify_deferring_payload(&req, &c, SECRET, NOW)
}

#[test]
fn declared_hashes_are_trusted_but_bound_by_the_signature() {
    let hex = "a".repeat(64);
    let info = check(&signed(&hex)).unwrap();
    assert_eq!(info.timestamp, NOW);
    assert_eq!(info.region, "eucalyptus");
    assert!(
        info.signed_headers
            .contains(&"x-amz-content-sha256".to_string())
    );
    assert!(check(&signed("UNSIGNED-PAYLOAD")).is_ok());
    assert!(check(&signed("STREAMING-UNSIGNED-PAYLOAD-TRAILER")).is_ok());

    // Swapping the declared hash after signing breaks the signature.
    let mut h = signed(&hex);
    for (k, v) in h.iter_mut() {
        if k == "x-amz-content-sha256" {
            *v = "b".repeat(64);
        }
    }
    assert_eq!(check(&h).unwrap_err(), AuthError::SignatureMismatch);

    // Chunk-signed streaming chains from this signature: not forwardable.
    assert!(matches!(
        check(&signed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")),
        Err(AuthError::UnsupportedAlgorithm(_))
    ));
}
