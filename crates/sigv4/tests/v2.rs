//! Signature Version 2: AWS's documented example, vectors computed
//! independently with Python's hmac/hashlib, and round trips.

mod common;

use common::{ACCESS_KEY, NOW, Req, SECRET, v2_signature};
use ironbark_sigv4::{AuthError, Claim, Scheme, claim, encode_params, explain, sign_v2, verify};

fn v2_claim(key: &str) -> Claim {
    Claim {
        access_key_id: key.to_string(),
        scheme: Scheme::V2,
    }
}

/// The worked example of AWS's "Signature Version 2 signing process"
/// page (Elastic MapReduce DescribeJobFlows). Note the Timestamp without a
/// zone and the secret, which differs from the SigV4 suite's by one
/// character.
mod aws_documentation_example {
    use super::*;

    const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const DOC_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    /// 2011-10-03T15:19:30Z.
    const DOC_NOW: i64 = 1_317_655_170;
    const QUERY: &str = "Action=DescribeJobFlows&Version=2009-03-31\
        &AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&SignatureVersion=2\
        &SignatureMethod=HmacSHA256&Timestamp=2011-10-03T15%3A19%3A30\
        &Signature=i91nKc4PWAt0JJIdXwz9HxZCJDdiy6cf%2FMj6vPxyYIs%3D";

    fn doc_request(query: &str) -> Req {
        Req::new(
            "GET",
            "/",
            query,
            &[("Host", "elasticmapreduce.amazonaws.com")],
            b"",
        )
    }

    #[test]
    fn string_to_sign_matches_the_documentation() {
        let req = doc_request(QUERY);
        let e = explain(&req.http()).expect("parses");
        assert_eq!(e.scheme, Scheme::V2);
        assert_eq!(e.canonical_request, None);
        assert_eq!(
            e.string_to_sign,
            "GET\nelasticmapreduce.amazonaws.com\n/\n\
             AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Action=DescribeJobFlows\
             &SignatureMethod=HmacSHA256&SignatureVersion=2\
             &Timestamp=2011-10-03T15%3A19%3A30&Version=2009-03-31"
        );
    }

    #[test]
    fn verifies() {
        let req = doc_request(QUERY);
        assert_eq!(claim(&req.http()), Ok(v2_claim(DOC_KEY)));
        assert_eq!(
            verify(&req.http(), &v2_claim(DOC_KEY), DOC_SECRET, DOC_NOW),
            Ok(())
        );
    }

    #[test]
    fn wrong_secret_or_changed_request_is_refused() {
        let claim = v2_claim(DOC_KEY);
        let req = doc_request(QUERY);
        assert_eq!(
            verify(&req.http(), &claim, SECRET, DOC_NOW),
            Err(AuthError::SignatureMismatch)
        );
        let changed = doc_request(&QUERY.replace("2009-03-31", "2009-03-30"));
        assert_eq!(
            verify(&changed.http(), &claim, DOC_SECRET, DOC_NOW),
            Err(AuthError::SignatureMismatch)
        );
        let mut other_host = doc_request(QUERY);
        other_host.set_header("Host", "elasticmapreduce.amazonaws.com:8443");
        assert_eq!(
            verify(&other_host.http(), &claim, DOC_SECRET, DOC_NOW),
            Err(AuthError::SignatureMismatch)
        );
        let mut other_path = doc_request(QUERY);
        other_path.path = "/x".into();
        assert_eq!(
            verify(&other_path.http(), &claim, DOC_SECRET, DOC_NOW),
            Err(AuthError::SignatureMismatch)
        );
        let mut post = doc_request(QUERY);
        post.method = "POST".into();
        assert_eq!(
            verify(&post.http(), &claim, DOC_SECRET, DOC_NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn expires_fifteen_minutes_from_timestamp() {
        let req = doc_request(QUERY);
        let claim = v2_claim(DOC_KEY);
        for offset in [-14 * 60, 14 * 60, 15 * 60] {
            assert_eq!(
                verify(&req.http(), &claim, DOC_SECRET, DOC_NOW + offset),
                Ok(())
            );
        }
        for offset in [-16 * 60, 16 * 60] {
            assert!(matches!(
                verify(&req.http(), &claim, DOC_SECRET, DOC_NOW + offset),
                Err(AuthError::Expired(_))
            ));
        }
    }
}

/// A euca2ools-style POST to a non-standard port, signed with HmacSHA1 and
/// HmacSHA256. Signatures computed with:
///
/// ```text
/// params = parse_qsl(body); params.sort(key=bytes of (name, value))
/// qs = '&'.join(quote(k, safe='-_.~') + '=' + quote(v, safe='-_.~') ...)
/// sts = 'POST\nec2.example.internal:8773\n/services/compute\n' + qs
/// base64(hmac.new(secret, sts, sha1 | sha256).digest())
/// ```
mod python_vectors {
    use super::*;

    const STS_SHA1: &str = "POST\nec2.example.internal:8773\n/services/compute\n\
        AWSAccessKeyId=AKIDEXAMPLE&Action=DescribeInstances&Filter.1.Name=tag%3AName\
        &Filter.1.Value.1=web%20server&InstanceId.1=i-12345678&SignatureMethod=HmacSHA1\
        &SignatureVersion=2&Timestamp=2015-08-30T12%3A36%3A00.000Z&Version=2014-06-15";
    const SIG_SHA1: &str = "FSaXS6ExtHnizabgDdUzsI8fcaE=";
    const SIG_SHA256: &str = "sR6+nQ+LZQfSpwfzbg7fRijU8IyP6yll9yBQVFL31Bw=";

    /// The form body, without the signature, with `+` for the space as a
    /// browser-style form encoder writes it.
    fn body(method: &str) -> String {
        format!(
            "Action=DescribeInstances&Version=2014-06-15&InstanceId.1=i-12345678\
             &Filter.1.Name=tag%3AName&Filter.1.Value.1=web+server&AWSAccessKeyId=AKIDEXAMPLE\
             &SignatureVersion=2&SignatureMethod={method}&Timestamp=2015-08-30T12%3A36%3A00.000Z"
        )
    }

    fn post(body: &str, query: &str) -> Req {
        Req::new(
            "POST",
            "/services/compute",
            query,
            &[
                // The host is lower-cased for signing.
                ("Host", "EC2.Example.Internal:8773"),
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=UTF-8",
                ),
            ],
            body.as_bytes(),
        )
    }

    fn signed_body(method: &str, signature: &str) -> String {
        format!(
            "{}&{}",
            body(method),
            encode_params(&[("Signature".into(), signature.into())])
        )
    }

    #[test]
    fn hmac_sha1_verifies_with_the_python_string_to_sign() {
        let req = post(&signed_body("HmacSHA1", SIG_SHA1), "");
        assert_eq!(
            explain(&req.http()).expect("parses").string_to_sign,
            STS_SHA1
        );
        assert_eq!(claim(&req.http()), Ok(v2_claim(ACCESS_KEY)));
        assert_eq!(
            verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
            Ok(())
        );
    }

    #[test]
    fn hmac_sha256_verifies() {
        let req = post(&signed_body("HmacSHA256", SIG_SHA256), "");
        assert_eq!(
            verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
            Ok(())
        );
    }

    #[test]
    fn signature_method_is_covered_by_the_signature() {
        // The SHA-1 signature presented as SHA-256 and vice versa.
        for (method, sig) in [("HmacSHA256", SIG_SHA1), ("HmacSHA1", SIG_SHA256)] {
            let req = post(&signed_body(method, sig), "");
            assert_eq!(
                verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
                Err(AuthError::SignatureMismatch)
            );
        }
    }

    #[test]
    fn parameters_may_be_split_between_query_and_body() {
        let full = signed_body("HmacSHA1", SIG_SHA1);
        let pieces: Vec<&str> = full.split('&').collect();
        let (query, body) = pieces.split_at(4);
        let req = post(&body.join("&"), &query.join("&"));
        assert_eq!(
            verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
            Ok(())
        );
    }

    #[test]
    fn changing_any_parameter_by_one_byte_is_refused() {
        let full = signed_body("HmacSHA1", SIG_SHA1);
        let pieces: Vec<&str> = full.split('&').collect();
        for (i, piece) in pieces.iter().enumerate() {
            // Auth parameters fail structurally (unknown method, bad
            // timestamp, ...) or point at another key; those have their
            // own tests.
            if [
                "Signature",
                "SignatureMethod",
                "SignatureVersion",
                "AWSAccessKeyId",
                "Timestamp",
            ]
            .iter()
            .any(|p| piece.starts_with(&format!("{p}=")))
            {
                continue;
            }
            let mut changed = pieces.clone();
            let replaced = format!("{}X", &piece[..piece.len() - 1]);
            changed[i] = &replaced;
            let req = post(&changed.join("&"), "");
            assert_eq!(
                verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
                Err(AuthError::SignatureMismatch),
                "{piece}"
            );
        }
        // The timestamp, still a valid one, one second later.
        let req = post(&full.replace("36%3A00.000Z", "36%3A01.000Z"), "");
        assert_eq!(
            verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
            Err(AuthError::SignatureMismatch)
        );
        // An extra parameter.
        let req = post(&format!("{full}&DryRun=true"), "");
        assert_eq!(
            verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn an_unescaped_plus_in_the_signature_is_tolerated() {
        // Sloppy clients put base64 into a query string unescaped, so its
        // '+' arrives as a space after form decoding. Find a request whose
        // signature has a '+' (the loop is deterministic).
        let claim = v2_claim(ACCESS_KEY);
        for nonce in 0..100 {
            let unsigned = format!("{}&Nonce={nonce}", body("HmacSHA256"));
            let probe = Req::new(
                "GET",
                "/services/compute",
                &format!("{unsigned}&Signature=AAAA"),
                &[("Host", "ec2.example.internal:8773")],
                b"",
            );
            let sts = explain(&probe.http()).expect("parses").string_to_sign;
            let sig = v2_signature(SECRET, &sts);
            if !sig.contains('+') {
                continue;
            }
            let req = Req {
                query: format!("{unsigned}&Signature={sig}"),
                ..probe
            };
            assert_eq!(verify(&req.http(), &claim, SECRET, NOW), Ok(()));
            return;
        }
        panic!("no signature with a '+' among 100 candidates");
    }
}

#[test]
fn round_trip_get_and_post() {
    let mut params = vec![
        ("Action".to_string(), "RunInstances".to_string()),
        ("Version".to_string(), "2014-06-15".to_string()),
        ("ImageId".to_string(), "emi-0123ABCD".to_string()),
        (
            "UserData".to_string(),
            "#!/bin/sh\necho 'hi' + ~ & done=1".to_string(),
        ),
        (
            "TagSpecification.1.Tag.1.Value".to_string(),
            "caf\u{e9} \u{2603}".to_string(),
        ),
    ];
    sign_v2(
        "GET",
        "compute.cloud:8773",
        "/services/compute",
        &mut params,
        ACCESS_KEY,
        SECRET,
        NOW,
    );
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[5..],
        [
            "AWSAccessKeyId",
            "SignatureVersion",
            "SignatureMethod",
            "Timestamp",
            "Signature"
        ]
    );
    assert_eq!(params[8].1, "2015-08-30T12:36:00Z");

    let encoded = encode_params(&params);
    let get = Req::new(
        "GET",
        "/services/compute",
        &encoded,
        &[("Host", "compute.cloud:8773")],
        b"",
    );
    assert_eq!(claim(&get.http()), Ok(v2_claim(ACCESS_KEY)));
    assert_eq!(
        verify(&get.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
        Ok(())
    );
    assert_eq!(
        verify(&get.http(), &v2_claim(ACCESS_KEY), "not-the-secret", NOW),
        Err(AuthError::SignatureMismatch)
    );

    // Same parameters re-signed for POST, sent as a form body.
    sign_v2(
        "POST",
        "compute.cloud:8773",
        "/services/compute",
        &mut params,
        ACCESS_KEY,
        SECRET,
        NOW,
    );
    let body = encode_params(&params);
    let post = Req::new(
        "POST",
        "/services/compute",
        "",
        &[
            ("Host", "compute.cloud:8773"),
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        verify(&post.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
        Ok(())
    );
    let tampered = Req {
        body: body.replace("emi-0123ABCD", "emi-0123ABCE").into_bytes(),
        ..post.clone()
    };
    assert_eq!(
        verify(&tampered.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
    // A body that is not a form is not read for parameters.
    let mut not_form = post.clone();
    not_form.set_header("Content-Type", "application/json");
    assert_eq!(claim(&not_form.http()), Err(AuthError::Missing));
}

#[test]
fn timestamp_window_and_expires() {
    let mut params = vec![("Action".to_string(), "DescribeRegions".to_string())];
    sign_v2("GET", "h", "/", &mut params, ACCESS_KEY, SECRET, NOW);
    let req = Req::new("GET", "/", &encode_params(&params), &[("Host", "h")], b"");
    let claim = v2_claim(ACCESS_KEY);
    assert_eq!(verify(&req.http(), &claim, SECRET, NOW + 14 * 60), Ok(()));
    assert_eq!(verify(&req.http(), &claim, SECRET, NOW - 14 * 60), Ok(()));
    assert!(matches!(
        verify(&req.http(), &claim, SECRET, NOW + 16 * 60),
        Err(AuthError::Expired(_))
    ));
    assert!(matches!(
        verify(&req.http(), &claim, SECRET, NOW - 16 * 60),
        Err(AuthError::Expired(_))
    ));

    // Expires instead of Timestamp: valid until then, however far away.
    let unsigned = "Action=DescribeRegions&AWSAccessKeyId=AKIDEXAMPLE&SignatureVersion=2\
        &SignatureMethod=HmacSHA256&Expires=2015-08-30T14%3A36%3A00%2B00%3A00";
    let sts = "GET\nh\n/\nAWSAccessKeyId=AKIDEXAMPLE&Action=DescribeRegions\
         &Expires=2015-08-30T14%3A36%3A00%2B00%3A00&SignatureMethod=HmacSHA256&SignatureVersion=2";
    let sig = v2_signature(SECRET, sts);
    let query = format!("{unsigned}&{}", encode_params(&[("Signature".into(), sig)]));
    let req = Req::new("GET", "/", &query, &[("Host", "h")], b"");
    assert_eq!(explain(&req.http()).expect("parses").string_to_sign, sts);
    assert_eq!(verify(&req.http(), &claim, SECRET, NOW - 86_400), Ok(()));
    assert_eq!(verify(&req.http(), &claim, SECRET, NOW + 2 * 3600), Ok(()));
    assert!(matches!(
        verify(&req.http(), &claim, SECRET, NOW + 2 * 3600 + 1),
        Err(AuthError::Expired(_))
    ));
}

#[test]
fn malformed_or_unsupported_parameters() {
    let base = "AWSAccessKeyId=AKIDEXAMPLE&SignatureVersion=2&SignatureMethod=HmacSHA256\
        &Timestamp=2015-08-30T12%3A36%3A00Z&Signature=AAAA";
    let check = |query: &str| claim(&Req::new("GET", "/", query, &[("Host", "h")], b"").http());

    assert!(check(base).is_ok());
    for (query, unsupported) in [
        (
            base.replace("SignatureVersion=2", "SignatureVersion=1"),
            true,
        ),
        (
            base.replace("SignatureVersion=2", "SignatureVersion=0"),
            true,
        ),
        (
            base.replace("SignatureVersion=2", "SignatureVersion=3"),
            true,
        ),
        (base.replace("HmacSHA256", "HmacMD5"), true),
        (base.replace("&SignatureVersion=2", ""), false),
        (base.replace("&SignatureMethod=HmacSHA256", ""), false),
        (base.replace("AWSAccessKeyId=AKIDEXAMPLE&", ""), false),
        (
            base.replace("AWSAccessKeyId=AKIDEXAMPLE", "AWSAccessKeyId="),
            false,
        ),
        (base.replace("&Signature=AAAA", ""), false),
        (base.replace("Signature=AAAA", "Signature=%%%"), false),
        (
            base.replace("&Timestamp=2015-08-30T12%3A36%3A00Z", ""),
            false,
        ),
        (base.replace("2015-08-30T12%3A36%3A00Z", "yesterday"), false),
        (format!("{base}&Expires=2015-08-30T12%3A36%3A00Z"), false),
        (format!("{base}&AWSAccessKeyId=OTHER"), false),
        (format!("{base}&Timestamp=2015-08-30T12%3A36%3A00Z"), false),
        (base.replace("AKIDEXAMPLE", "%FF%FE"), false),
    ] {
        match check(&query) {
            Err(AuthError::UnsupportedAlgorithm(_)) if unsupported => {}
            Err(AuthError::Incomplete(_)) if !unsupported => {}
            other => panic!("{query}: {other:?}"),
        }
    }
    // No Host header: there is nothing to sign the host with.
    assert!(matches!(
        claim(&Req::new("GET", "/", base, &[], b"").http()),
        Err(AuthError::Incomplete(_))
    ));
    // Parameters of an API call that is not signed at all.
    assert_eq!(check("Action=DescribeRegions"), Err(AuthError::Missing));
}

#[test]
fn empty_path_signs_as_slash() {
    let mut params = vec![("Action".to_string(), "DescribeRegions".to_string())];
    sign_v2("GET", "h", "", &mut params, ACCESS_KEY, SECRET, NOW);
    for path in ["", "/"] {
        let req = Req::new("GET", path, &encode_params(&params), &[("Host", "h")], b"");
        assert_eq!(
            verify(&req.http(), &v2_claim(ACCESS_KEY), SECRET, NOW),
            Ok(()),
            "{path:?}"
        );
    }
}
