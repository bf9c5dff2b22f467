//! SigV4 sign -> verify round trips in the shapes Ironbark's clients send,
//! the error classification, and hostile input.

mod common;

use common::{ACCESS_KEY, NOW, Req, SECRET, v4_signature};
use ironbark_sigv4::{
    AuthError, Claim, Scheme, claim, clock, explain, presign_v4, sign_v4_header, verify,
};

const EC2_BODY: &[u8] = b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0123abcd";

fn v4_claim(scheme: Scheme) -> Claim {
    Claim {
        access_key_id: ACCESS_KEY.to_string(),
        scheme,
    }
}

/// An EC2 Query API POST as botocore shapes it, signed for a private
/// region name.
fn signed_ec2_post(now: i64) -> Req {
    let mut req = Req::new(
        "POST",
        "/services/compute",
        "",
        &[
            ("Host", "cloud.example:8773"),
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("User-Agent", "test/1.0"),
        ],
        EC2_BODY,
    );
    sign_v4_header(
        &req.method,
        &req.path,
        &req.query,
        &mut req.headers,
        &req.body,
        ACCESS_KEY,
        SECRET,
        "eucalyptus",
        "ec2",
        now,
    );
    req
}

fn presigned_get(query: &str, expires: u32, service: &str) -> Req {
    let mut req = Req::new(
        "GET",
        "/services/compute",
        query,
        &[("Host", "cloud.example:8773")],
        b"",
    );
    req.query = presign_v4(
        &req.method,
        &req.path,
        &req.query,
        &req.headers,
        ACCESS_KEY,
        SECRET,
        "ironbark-1",
        service,
        NOW,
        expires,
    );
    req
}

#[test]
fn header_round_trip_with_private_region() {
    let req = signed_ec2_post(NOW);
    let authz = req.header("Authorization").expect("signed");
    assert!(
        authz.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eucalyptus/ec2/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature="
        ),
        "{authz}"
    );
    assert_eq!(req.header("X-Amz-Date"), Some("20150830T123600Z"));
    assert_eq!(claim(&req.http()), Ok(v4_claim(Scheme::V4Header)));
    assert_eq!(
        verify(&req.http(), &v4_claim(Scheme::V4Header), SECRET, NOW),
        Ok(())
    );
}

#[test]
fn signing_again_replaces_the_old_signature() {
    let mut req = signed_ec2_post(NOW - 3600);
    sign_v4_header(
        &req.method.clone(),
        &req.path.clone(),
        &req.query.clone(),
        &mut req.headers,
        &req.body.clone(),
        ACCESS_KEY,
        SECRET,
        "eucalyptus",
        "ec2",
        NOW,
    );
    let authz_count = req
        .headers
        .iter()
        .filter(|(n, _)| n == "Authorization")
        .count();
    assert_eq!(authz_count, 1);
    assert_eq!(
        verify(&req.http(), &v4_claim(Scheme::V4Header), SECRET, NOW),
        Ok(())
    );
}

#[test]
fn header_form_tampering_is_refused() {
    let claim = v4_claim(Scheme::V4Header);
    let good = signed_ec2_post(NOW);

    let wrong_secret = verify(
        &good.http(),
        &claim,
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz",
        NOW,
    );
    assert_eq!(wrong_secret, Err(AuthError::SignatureMismatch));

    let mut body = good.clone();
    body.body = b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0123abce".to_vec();
    assert_eq!(
        verify(&body.http(), &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );

    let mut query = good.clone();
    query.query = "DryRun=true".into();
    assert_eq!(
        verify(&query.http(), &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );

    let mut host = good.clone();
    host.set_header("Host", "cloud.example:8774");
    assert_eq!(
        verify(&host.http(), &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );

    let mut content_type = good.clone();
    content_type.set_header("Content-Type", "application/x-www-form-urlencoded");
    assert_eq!(
        verify(&content_type.http(), &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );

    // User-Agent is not signed: proxies may rewrite it.
    let mut agent = good.clone();
    agent.set_header("User-Agent", "something else");
    assert_eq!(verify(&agent.http(), &claim, SECRET, NOW), Ok(()));

    // A second copy of a signed header changes its canonical value.
    let mut dup = good.clone();
    dup.headers
        .push(("content-type".into(), "text/plain".into()));
    assert_eq!(
        verify(&dup.http(), &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
}

#[test]
fn header_form_clock_window() {
    let req = signed_ec2_post(NOW);
    let claim = v4_claim(Scheme::V4Header);
    assert_eq!(verify(&req.http(), &claim, SECRET, NOW + 14 * 60), Ok(()));
    assert_eq!(verify(&req.http(), &claim, SECRET, NOW - 14 * 60), Ok(()));
    for now in [NOW + 16 * 60, NOW - 16 * 60, i64::MAX, i64::MIN] {
        assert!(
            matches!(
                verify(&req.http(), &claim, SECRET, now),
                Err(AuthError::Expired(_))
            ),
            "{now}"
        );
    }
}

#[test]
fn date_header_instead_of_x_amz_date() {
    // Sign "date;host" with an independent oracle, as a client that only
    // sends an RFC 1123 Date header would.
    let date = clock::format_http_date(NOW);
    assert_eq!(date, "Sun, 30 Aug 2015 12:36:00 GMT");
    let creq = format!(
        "GET\n/\nAction=DescribeRegions\ndate:{date}\nhost:cloud.example\n\ndate;host\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let sts = format!(
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/r/ec2/aws4_request\n{}",
        common_sha256_hex(creq.as_bytes())
    );
    let sig = v4_signature(SECRET, "20150830", "r", "ec2", &sts);
    let authz = format!(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/r/ec2/aws4_request, \
         SignedHeaders=date;host, Signature={sig}"
    );
    let req = Req::new(
        "GET",
        "/",
        "Action=DescribeRegions",
        &[
            ("Host", "cloud.example"),
            ("Date", &date),
            ("Authorization", &authz),
        ],
        b"",
    );
    let e = explain(&req.http()).expect("parses");
    assert_eq!(e.canonical_request.as_deref(), Some(creq.as_str()));
    assert_eq!(e.string_to_sign, sts);
    let claim = v4_claim(Scheme::V4Header);
    assert_eq!(verify(&req.http(), &claim, SECRET, NOW), Ok(()));
    assert!(matches!(
        verify(&req.http(), &claim, SECRET, NOW + 3600),
        Err(AuthError::Expired(_))
    ));
    // X-Amz-Date wins over Date when both are present.
    let mut both = req.clone();
    both.headers
        .push(("X-Amz-Date".into(), "20150830T123601Z".into()));
    assert_eq!(
        verify(&both.http(), &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
}

fn common_sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn x_amz_content_sha256_header() {
    let claim = v4_claim(Scheme::V4Header);
    let body_hash = common_sha256_hex(EC2_BODY);
    let sign = |declared: &str| {
        let mut req = Req::new(
            "POST",
            "/",
            "",
            &[("Host", "h"), ("x-amz-content-sha256", declared)],
            EC2_BODY,
        );
        sign_v4_header(
            "POST",
            "/",
            "",
            &mut req.headers,
            EC2_BODY,
            ACCESS_KEY,
            SECRET,
            "r",
            "ec2",
            NOW,
        );
        req
    };

    let declared = sign(&body_hash);
    assert_eq!(verify(&declared.http(), &claim, SECRET, NOW), Ok(()));
    // The declared hash binds the body even though the HMAC covers the hash.
    let mut swapped = declared.clone();
    swapped.body = b"Action=TerminateInstances".to_vec();
    assert_eq!(
        verify(&swapped.http(), &claim, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );

    // UNSIGNED-PAYLOAD is the signer's explicit choice not to cover the body.
    let unsigned = sign("UNSIGNED-PAYLOAD");
    assert_eq!(verify(&unsigned.http(), &claim, SECRET, NOW), Ok(()));
    let mut other_body = unsigned.clone();
    other_body.body = b"anything".to_vec();
    assert_eq!(verify(&other_body.http(), &claim, SECRET, NOW), Ok(()));

    let streaming = sign("STREAMING-AWS4-HMAC-SHA256-PAYLOAD");
    assert!(matches!(
        verify(&streaming.http(), &claim, SECRET, NOW),
        Err(AuthError::UnsupportedAlgorithm(_))
    ));
    let garbage = sign("not-a-hash");
    assert!(matches!(
        verify(&garbage.http(), &claim, SECRET, NOW),
        Err(AuthError::Incomplete(_))
    ));
}

#[test]
fn s3_signer_adds_payload_hash_and_keeps_path_shape() {
    let mut req = Req::new(
        "PUT",
        "/bucket/a//b/../c%20d",
        "",
        &[("Host", "s3.cloud")],
        b"data",
    );
    sign_v4_header(
        &req.method,
        &req.path,
        &req.query,
        &mut req.headers,
        &req.body,
        ACCESS_KEY,
        SECRET,
        "ironbark-1",
        "s3",
        NOW,
    );
    assert_eq!(
        req.header("x-amz-content-sha256"),
        Some(common_sha256_hex(b"data").as_str())
    );
    let e = explain(&req.http()).expect("parses");
    assert!(
        e.canonical_request
            .as_deref()
            .is_some_and(|c| c.starts_with("PUT\n/bucket/a//b/../c%20d\n")),
        "{e:?}"
    );
    assert_eq!(
        verify(&req.http(), &v4_claim(Scheme::V4Header), SECRET, NOW),
        Ok(())
    );
}

#[test]
fn presigned_round_trip() {
    let req = presigned_get("Action=DescribeRegions&Version=2016-11-15", 300, "ec2");
    assert!(req.query.starts_with(
        "Action=DescribeRegions&Version=2016-11-15&X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fironbark-1%2Fec2%2Faws4_request\
         &X-Amz-Date=20150830T123600Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host\
         &X-Amz-Signature="
    ));
    let claim_q = v4_claim(Scheme::V4Query);
    assert_eq!(claim(&req.http()), Ok(claim_q.clone()));
    assert_eq!(
        explain(&req.http())
            .expect("parses")
            .canonical_request
            .as_deref()
            .map(|c| c.ends_with(
                "\nhost\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )),
        Some(true),
        "explain shows the body-hash variant"
    );
    assert_eq!(verify(&req.http(), &claim_q, SECRET, NOW), Ok(()));
    assert_eq!(verify(&req.http(), &claim_q, SECRET, NOW + 300), Ok(()));
    assert!(matches!(
        verify(&req.http(), &claim_q, SECRET, NOW + 301),
        Err(AuthError::Expired(_))
    ));
    // Used (much) before it was made: the clock-skew rule applies.
    assert_eq!(verify(&req.http(), &claim_q, SECRET, NOW - 15 * 60), Ok(()));
    assert!(matches!(
        verify(&req.http(), &claim_q, SECRET, NOW - 16 * 60),
        Err(AuthError::Expired(_))
    ));

    assert_eq!(
        verify(&req.http(), &claim_q, "other secret", NOW),
        Err(AuthError::SignatureMismatch)
    );
    let mut tampered = req.clone();
    tampered.query = req.query.replace("DescribeRegions", "DescribeRegionz");
    assert_eq!(
        verify(&tampered.http(), &claim_q, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
    let mut longer = req.clone();
    longer.query = req
        .query
        .replace("X-Amz-Expires=300", "X-Amz-Expires=604800");
    assert_eq!(
        verify(&longer.http(), &claim_q, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
    let mut host = req.clone();
    host.set_header("Host", "elsewhere:8773");
    assert_eq!(
        verify(&host.http(), &claim_q, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
    // The claim must describe the request.
    assert_eq!(
        verify(&req.http(), &v4_claim(Scheme::V4Header), SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
}

#[test]
fn presigned_without_expires_uses_the_clock_window() {
    let req = presigned_get("", 60, "ec2");
    let query: String = req
        .query
        .split('&')
        .filter(|p| !p.starts_with("X-Amz-Expires="))
        .collect::<Vec<_>>()
        .join("&");
    // Removing X-Amz-Expires changes the canonical query, so re-sign with
    // the oracle from the explained string to sign.
    let probe = Req {
        query: query.clone(),
        ..req.clone()
    };
    let sts = explain(&probe.http()).expect("parses").string_to_sign;
    let sig = v4_signature(SECRET, "20150830", "ironbark-1", "ec2", &sts);
    let (unsigned, _) = query
        .rsplit_once("&X-Amz-Signature=")
        .expect("signature last");
    let resigned = Req {
        query: format!("{unsigned}&X-Amz-Signature={sig}"),
        ..req
    };
    let claim_q = v4_claim(Scheme::V4Query);
    assert_eq!(
        verify(&resigned.http(), &claim_q, SECRET, NOW + 15 * 60),
        Ok(())
    );
    assert!(matches!(
        verify(&resigned.http(), &claim_q, SECRET, NOW + 16 * 60),
        Err(AuthError::Expired(_))
    ));
}

#[test]
fn presigned_unsigned_payload_only_without_a_body_or_for_s3() {
    let claim_q = v4_claim(Scheme::V4Query);
    let mut with_body = presigned_get("", 300, "ec2");
    with_body.body = b"Action=TerminateInstances&InstanceId.1=i-1".to_vec();
    assert_eq!(
        verify(&with_body.http(), &claim_q, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
    let mut s3_upload = presigned_get("", 300, "s3");
    s3_upload.method = "GET".into();
    s3_upload.body = b"object bytes".to_vec();
    assert_eq!(verify(&s3_upload.http(), &claim_q, SECRET, NOW), Ok(()));
}

#[test]
fn classification_of_unsigned_and_malformed_requests() {
    let plain = Req::new("GET", "/", "Action=DescribeRegions", &[("Host", "h")], b"");
    assert_eq!(claim(&plain.http()), Err(AuthError::Missing));
    assert_eq!(
        verify(&plain.http(), &v4_claim(Scheme::V4Header), SECRET, NOW),
        Err(AuthError::Missing)
    );

    let good = signed_ec2_post(NOW);
    let good_authz = good.header("Authorization").expect("signed").to_string();
    let with_authz = |value: &str| {
        let mut req = good.clone();
        req.set_header("Authorization", value);
        claim(&req.http())
    };
    for garbage in [
        "",
        "garbage",
        "Bearer abc.def",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 ",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/r/s/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/r/s/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/r/s/aws4_request, SignedHeaders=host, Signature=zz",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/r/s/aws4_request, SignedHeaders=host, Signature=abcd",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/r/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/2015083/r/s/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/r/s/aws5_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=a, Credential=b, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/r/s/aws4_request, Foo=bar",
        "AWS4-HMAC-SHA256 Credential",
    ] {
        assert!(
            matches!(with_authz(garbage), Err(AuthError::Incomplete(_))),
            "{garbage:?}: {:?}",
            with_authz(garbage)
        );
    }
    for unsupported in [
        "AWS4-ECDSA-P256-SHA256 Credential=AKIDEXAMPLE/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
        "AWS AKIDEXAMPLE:c2lnbmF0dXJl",
    ] {
        assert!(
            matches!(
                with_authz(unsupported),
                Err(AuthError::UnsupportedAlgorithm(_))
            ),
            "{unsupported:?}"
        );
    }

    // The signed header list must include host, and every listed header
    // must be there.
    let no_host = good_authz.replace("content-type;host;x-amz-date", "content-type;x-amz-date");
    assert!(matches!(
        with_authz(&no_host),
        Err(AuthError::Incomplete(_))
    ));
    let mut missing = good.clone();
    missing.headers.retain(|(n, _)| n != "Content-Type");
    assert!(matches!(
        verify(&missing.http(), &v4_claim(Scheme::V4Header), SECRET, NOW),
        Err(AuthError::Incomplete(_))
    ));

    // The scope date must be the request's date.
    let other_day = good_authz.replace("/20150830/", "/20150831/");
    assert!(matches!(
        with_authz(&other_day),
        Err(AuthError::Incomplete(_))
    ));

    // Two Authorization headers, or header and query auth at once.
    let mut twice = good.clone();
    twice
        .headers
        .push(("authorization".into(), good_authz.clone()));
    assert!(matches!(
        claim(&twice.http()),
        Err(AuthError::Incomplete(_))
    ));
    let mut both = good.clone();
    both.query = "X-Amz-Algorithm=AWS4-HMAC-SHA256".into();
    assert!(matches!(claim(&both.http()), Err(AuthError::Incomplete(_))));

    // No date at all.
    let mut undated = good.clone();
    undated.headers.retain(|(n, _)| n != "X-Amz-Date");
    assert!(matches!(
        claim(&undated.http()),
        Err(AuthError::Incomplete(_))
    ));
    let mut bad_date = good.clone();
    bad_date.set_header("X-Amz-Date", "2015-08-30T12:36:00Z");
    assert!(matches!(
        claim(&bad_date.http()),
        Err(AuthError::Incomplete(_))
    ));

    // Presigned parameters.
    let presigned = presigned_get("", 300, "ec2");
    let with_query = |from: &str, to: &str| {
        let mut req = presigned.clone();
        req.query = req.query.replace(from, to);
        claim(&req.http())
    };
    assert!(matches!(
        with_query("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
        Err(AuthError::UnsupportedAlgorithm(_))
    ));
    for (from, to) in [
        ("X-Amz-Expires=300", "X-Amz-Expires=0"),
        ("X-Amz-Expires=300", "X-Amz-Expires=604801"),
        ("X-Amz-Expires=300", "X-Amz-Expires=-5"),
        ("X-Amz-Expires=300", "X-Amz-Expires=5m"),
        ("X-Amz-Date=20150830T123600Z", "X-Amz-Date=now"),
        ("&X-Amz-SignedHeaders=host", ""),
        ("X-Amz-Signature=", "X-Amz-Signature=zz"),
        ("X-Amz-Date=", "X-Amz-Date=20150830T123600Z&X-Amz-Date="),
        ("X-Amz-Credential=AKIDEXAMPLE", "X-Amz-Credential=%FF"),
    ] {
        assert!(
            matches!(with_query(from, to), Err(AuthError::Incomplete(_))),
            "{from} -> {to}"
        );
    }
}

#[test]
fn uppercase_hex_signature_is_accepted() {
    let mut req = signed_ec2_post(NOW);
    let authz = req.header("Authorization").expect("signed").to_string();
    let (head, sig) = authz.rsplit_once("Signature=").expect("has signature");
    req.set_header(
        "Authorization",
        &format!("{head}Signature={}", sig.to_ascii_uppercase()),
    );
    assert_eq!(
        verify(&req.http(), &v4_claim(Scheme::V4Header), SECRET, NOW),
        Ok(())
    );
}

#[test]
fn claim_for_another_key_is_refused() {
    let req = signed_ec2_post(NOW);
    let other = Claim {
        access_key_id: "AKIDOTHER".into(),
        scheme: Scheme::V4Header,
    };
    assert_eq!(
        verify(&req.http(), &other, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
}

#[test]
fn hostile_input_never_panics() {
    let good = signed_ec2_post(NOW);
    let authz = good.header("Authorization").expect("signed").to_string();
    let claim_h = v4_claim(Scheme::V4Header);

    // Every truncation of the Authorization header.
    for cut in 0..authz.len() {
        let mut req = good.clone();
        req.set_header("Authorization", &authz[..cut]);
        assert!(claim(&req.http()).is_err(), "{cut}");
        assert!(verify(&req.http(), &claim_h, SECRET, NOW).is_err(), "{cut}");
    }
    // Every truncation of a presigned query string.
    let presigned = presigned_get("Action=DescribeRegions", 300, "ec2");
    for cut in 0..presigned.query.len() {
        let mut req = presigned.clone();
        req.query.truncate(cut);
        let _ = claim(&req.http());
        assert!(
            verify(&req.http(), &v4_claim(Scheme::V4Query), SECRET, NOW).is_err(),
            "{cut}"
        );
    }

    // Multi-byte characters where ASCII is expected, invalid UTF-8 escapes,
    // broken escapes, and a very large header.
    let huge = "A".repeat(1 << 20);
    let weird = [
        authz.replace("Signature=", "Signature=\u{e9}"),
        authz.replace("/20150830/", "/\u{1f600}\u{1f600}/"),
        authz.replace("Credential=", "Credential=\u{0}"),
        authz.replace("SignedHeaders=", "SignedHeaders=\u{e9};"),
        format!("{authz}, {huge}"),
        format!(
            "AWS4-HMAC-SHA256 Credential={huge}/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00"
        ),
    ];
    for value in &weird {
        let mut req = good.clone();
        req.set_header("Authorization", value);
        let result = claim(&req.http());
        assert!(result.is_err(), "{}", &value[..value.len().min(120)]);
        if let Err(AuthError::Incomplete(msg)) = result {
            assert!(
                msg.len() < 512,
                "error message echoes too much: {}",
                msg.len()
            );
        }
    }
    for (header, value) in [
        (
            "X-Amz-Date",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ),
        ("X-Amz-Date", huge.as_str()),
        ("Host", huge.as_str()),
        ("Content-Type", "\u{0}\u{7f}"),
    ] {
        let mut req = good.clone();
        req.set_header(header, value);
        assert!(
            verify(&req.http(), &claim_h, SECRET, NOW).is_err(),
            "{header}"
        );
    }
    for query in ["%", "%F", "%FF%FE=%C3%28", "a=%zz&&&=&==", "\u{e9}=\u{e9}"] {
        let mut req = good.clone();
        req.query = query.to_string();
        assert_eq!(
            verify(&req.http(), &claim_h, SECRET, NOW),
            Err(AuthError::SignatureMismatch),
            "{query}"
        );
    }
    // Empty pieces carry no parameter, so they do not change the request.
    let mut ampersands = good.clone();
    ampersands.query = "&&&&".into();
    assert_eq!(verify(&ampersands.http(), &claim_h, SECRET, NOW), Ok(()));
    for path in [
        "",
        "%",
        "/%FF/../..",
        "/\u{e9}/./x",
        "../../../etc/passwd",
        "//////",
    ] {
        let mut req = good.clone();
        req.path = path.to_string();
        assert!(
            verify(&req.http(), &claim_h, SECRET, NOW).is_err(),
            "{path}"
        );
    }
    let mut binary = good.clone();
    binary.body = vec![0xff, 0x00, 0xfe, b'&', b'=', b'%'];
    assert_eq!(
        verify(&binary.http(), &claim_h, SECRET, NOW),
        Err(AuthError::SignatureMismatch)
    );
    // SigV2 detection reads the body of a form POST: binary there too.
    let sigv2ish = Req::new(
        "POST",
        "/",
        "",
        &[
            ("Host", "h"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"AWSAccessKeyId=%FF&Signature=%%%&SignatureVersion=2\xff\xfe",
    );
    assert!(claim(&sigv2ish.http()).is_err());
}
