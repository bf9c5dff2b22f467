//! Cross-check against botocore, the signer behind the AWS CLI and boto3:
//! a real botocore EC2 client (custom region "eucalyptus", endpoint on a
//! private host and port) signs requests with SigV4, presigns a URL, and
//! signs with SigV2; the HTTP layer is stubbed out so the requests are
//! captured instead of sent. Every captured request must verify, and this
//! crate's signer must produce botocore's exact signatures.
//!
//! Skipped, with a notice, when python3 or botocore is not installed.

mod common;

use std::process::Command;

use common::{ACCESS_KEY, NOW, Req, SECRET};
use ironbark_sigv4::{
    AuthError, Claim, Scheme, claim, encode_params, sign_v2, sign_v4_header, verify,
};

/// Drives botocore and prints each captured request as hex fields, one per
/// line, so no escaping questions arise.
const SCRIPT: &str = r#"
import datetime, time
import botocore.session, botocore.auth
from botocore.config import Config
from botocore.awsrequest import AWSResponse

NOW = 1440938160  # 2015-08-30T12:36:00Z
botocore.auth.get_current_datetime = lambda *a, **k: datetime.datetime(2015, 8, 30, 12, 36, 0)
_gmtime = time.gmtime
time.gmtime = lambda *a: _gmtime(NOW)

class EmptyBody:
    def stream(self, **kw):
        yield b''

def client(signature_version=None):
    cfg = Config(signature_version=signature_version, retries={'max_attempts': 0}) if signature_version else Config(retries={'max_attempts': 0})
    return botocore.session.get_session().create_client(
        'ec2', region_name='eucalyptus',
        endpoint_url='http://cloud.example:8773/services/compute',
        aws_access_key_id='AKIDEXAMPLE',
        aws_secret_access_key='wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY',
        config=cfg)

def h(x):
    if isinstance(x, str):
        x = x.encode('utf-8')
    return (x or b'').hex()

def emit(name, method, url, headers, body):
    print('case', name)
    print('method', method)
    print('url', h(url))
    for k, v in headers.items():
        print('header', h(k), h(v))
    print('body', h(body))
    print('end')

def capture(name, signature_version):
    c = client(signature_version)
    captured = []
    def before_send(request, **kw):
        captured.append(request)
        return AWSResponse(request.url, 200, {}, EmptyBody())
    c.meta.events.register('before-send', before_send)
    try:
        c.describe_regions(RegionNames=['a b', 'caf\u00e9+x~/*'], DryRun=True)
    except Exception:
        pass  # the stub's empty response does not parse; the request is captured
    r = captured[0]
    emit(name, r.method, r.url, dict(r.headers), r.body)

capture('v4-post', None)
capture('v2-post', 'v2')
# botocore presigns with the operation's own method (POST for EC2) unless
# told otherwise; such a URL is then sent as a POST without a body.
params = {'RegionNames': ['a b', 'x/y']}
url = client().generate_presigned_url('describe_regions', Params=params, ExpiresIn=600)
emit('v4-presigned-post', 'POST', url, {}, b'')
url = client().generate_presigned_url(
    'describe_regions', Params=params, ExpiresIn=600, HttpMethod='GET')
emit('v4-presigned-get', 'GET', url, {}, b'')
"#;

#[derive(Debug)]
struct Captured {
    name: String,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("script prints hex")
}

fn unhex_str(s: &str) -> String {
    String::from_utf8(unhex(s)).expect("script prints UTF-8")
}

fn run_botocore() -> Option<Vec<Captured>> {
    let probe = Command::new("python3")
        .args(["-c", "import botocore"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!(
                "NOTICE: python3 with botocore is not available; botocore cross-check skipped"
            );
            return None;
        }
    }
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "botocore script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cases = Vec::new();
    let mut current: Option<Captured> = None;
    for line in String::from_utf8(out.stdout).expect("UTF-8").lines() {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("case"), Some(name), None) => {
                current = Some(Captured {
                    name: name.to_string(),
                    method: String::new(),
                    url: String::new(),
                    headers: Vec::new(),
                    body: Vec::new(),
                });
            }
            (Some("method"), Some(m), None) => current.as_mut().expect("in case").method = m.into(),
            (Some("url"), Some(u), None) => current.as_mut().expect("in case").url = unhex_str(u),
            (Some("header"), Some(n), Some(v)) => current
                .as_mut()
                .expect("in case")
                .headers
                .push((unhex_str(n), unhex_str(v))),
            (Some("header"), Some(n), None) => current
                .as_mut()
                .expect("in case")
                .headers
                .push((unhex_str(n), String::new())),
            (Some("body"), body, None) => {
                current.as_mut().expect("in case").body = unhex(body.unwrap_or(""))
            }
            (Some("end"), None, None) => cases.push(current.take().expect("in case")),
            _ => panic!("unexpected line from script: {line}"),
        }
    }
    Some(cases)
}

/// The request as the server would receive it: urllib3 adds the Host
/// header from the URL.
fn received(c: &Captured) -> Req {
    let rest = c.url.strip_prefix("http://").expect("http URL");
    let (host, path_and_query) = rest.split_at(rest.find('/').expect("has path"));
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut req = Req {
        method: c.method.clone(),
        path: path.to_string(),
        query: query.to_string(),
        headers: c.headers.clone(),
        body: c.body.clone(),
    };
    req.headers.push(("Host".into(), host.into()));
    req
}

fn key_claim(scheme: Scheme) -> Claim {
    Claim {
        access_key_id: ACCESS_KEY.into(),
        scheme,
    }
}

#[test]
fn botocore_requests_verify() {
    let Some(cases) = run_botocore() else {
        return;
    };
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "v4-post",
            "v2-post",
            "v4-presigned-post",
            "v4-presigned-get"
        ]
    );

    for c in &cases {
        let req = received(c);
        let scheme = match c.name.as_str() {
            "v4-post" => Scheme::V4Header,
            "v2-post" => Scheme::V2,
            _ => Scheme::V4Query,
        };
        let claimed = key_claim(scheme);
        assert_eq!(claim(&req.http()), Ok(claimed.clone()), "{}", c.name);
        assert_eq!(
            verify(&req.http(), &claimed, SECRET, NOW),
            Ok(()),
            "{}",
            c.name
        );
        assert_eq!(
            verify(&req.http(), &claimed, "wrong", NOW),
            Err(AuthError::SignatureMismatch),
            "{}",
            c.name
        );
        assert!(
            matches!(
                verify(&req.http(), &claimed, SECRET, NOW + 16 * 60 + 600),
                Err(AuthError::Expired(_))
            ),
            "{}",
            c.name
        );

        if scheme == Scheme::V4Query {
            // Valid for X-Amz-Expires=600 rather than the 15-minute window.
            assert_eq!(verify(&req.http(), &claimed, SECRET, NOW + 600), Ok(()));
            assert!(matches!(
                verify(&req.http(), &claimed, SECRET, NOW + 601),
                Err(AuthError::Expired(_))
            ));
            // The URL is bound to the method it was presigned for.
            let mut other_method = req.clone();
            other_method.method = if req.method == "GET" { "POST" } else { "GET" }.into();
            assert_eq!(
                verify(&other_method.http(), &claimed, SECRET, NOW),
                Err(AuthError::SignatureMismatch)
            );
        }

        // One byte of an API parameter changed, wherever it travels.
        let mut tampered = req.clone();
        if tampered.body.is_empty() {
            tampered.query = tampered.query.replacen("a%20b", "a%20c", 1);
        } else {
            let body = String::from_utf8(tampered.body).expect("form body");
            tampered.body = body.replacen("a+b", "a+c", 1).into_bytes();
        }
        assert_eq!(
            verify(&tampered.http(), &claimed, SECRET, NOW),
            Err(AuthError::SignatureMismatch),
            "{} tampered",
            c.name
        );
    }
}

#[test]
fn our_signers_match_botocore() {
    let Some(cases) = run_botocore() else {
        return;
    };

    let v4 = received(cases.iter().find(|c| c.name == "v4-post").expect("v4 case"));
    let mut headers: Vec<(String, String)> = v4
        .headers
        .iter()
        .filter(|(n, _)| n == "Content-Type" || n == "Host")
        .cloned()
        .collect();
    sign_v4_header(
        &v4.method,
        &v4.path,
        &v4.query,
        &mut headers,
        &v4.body,
        ACCESS_KEY,
        SECRET,
        "eucalyptus",
        "ec2",
        NOW,
    );
    let ours = headers
        .iter()
        .find(|(n, _)| n == "Authorization")
        .map(|(_, v)| v.as_str());
    assert_eq!(ours, v4.header("Authorization"));

    let v2 = received(cases.iter().find(|c| c.name == "v2-post").expect("v2 case"));
    let form = String::from_utf8(v2.body.clone()).expect("form body");
    let mut params: Vec<(String, String)> = form
        .split('&')
        .map(|pair| {
            let (n, v) = pair.split_once('=').expect("name=value");
            (form_decode(n), form_decode(v))
        })
        .collect();
    let theirs = params
        .iter()
        .find(|(n, _)| n == "Signature")
        .map(|(_, v)| v.clone());
    sign_v2(
        "POST",
        v2.header("Host").expect("host"),
        &v2.path,
        &mut params,
        ACCESS_KEY,
        SECRET,
        NOW,
    );
    let ours = params
        .iter()
        .find(|(n, _)| n == "Signature")
        .map(|(_, v)| v.clone());
    assert_eq!(ours, theirs);
    // And the re-encoded form verifies too.
    let reencoded = Req {
        body: encode_params(&params).into_bytes(),
        ..v2
    };
    assert_eq!(
        verify(&reencoded.http(), &key_claim(Scheme::V2), SECRET, NOW),
        Ok(())
    );
}

/// `application/x-www-form-urlencoded` decoding for the test's own use.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex escape"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8")
}
