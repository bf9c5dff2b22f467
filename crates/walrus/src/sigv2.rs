//! SigV2 (`Authorization: AWS key:signature`, or the `Signature` query of
//! a presigned v2 URL) on bucket-level, path-style requests.
//!
//! `s3s` signs the canonical resource over the request path as sent. For a
//! bucket-level request the path can be `/bucket` while the client signed
//! `/bucket/` (botocore and boto do so for ListObjects, CreateBucket, ?acl,
//! ?delete and the rest), so every such request failed with
//! SignatureDoesNotMatch. S3 accepts either. [`Walrus::fix_sigv2_bucket_path`]
//! runs before `s3s`: when the path is a lone bucket name without the slash
//! and the signature verifies over `/bucket/` (and not over `/bucket`), it
//! adds the slash, which routes the same and makes `s3s`' own check (still
//! the one that authenticates) see what the client signed. Anything else
//! passes unchanged.
//!
//! Under `/services/objectstorage` on the API port (where euca2ools-era
//! clients, which sign S3 with SigV2, find Walrus) the client signed the
//! prefixed path, which `s3s` never sees. [`resign_under_prefix`] lets that
//! front check the signature over the path as sent (or, as Eucalyptus
//! allowed, without the prefix) and sign the request again, with the same
//! key and date, over the path Walrus routes on. SigV2 covers no body, so
//! nothing about the body changes hands.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::Walrus;

/// Query parameters that name a sub-resource, and so are part of the
/// signed resource (S3's list for SigV2), in the sorted order signed.
const SUB_RESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "defaultObjectAcl",
    "delete",
    "inventory",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "select",
    "select-type",
    "storageClass",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

/// The parts of a SigV2-signed request that the check needs.
struct V2 {
    access_key: String,
    signature: String,
    /// The Expires parameter of a presigned URL, which takes the Date's place.
    expires: Option<String>,
}

fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn v2_claim(headers: &http::HeaderMap, query: &str) -> Option<V2> {
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let (key, sig) = auth.strip_prefix("AWS ")?.split_once(':')?;
        return Some(V2 {
            access_key: key.trim().to_string(),
            signature: sig.trim().to_string(),
            expires: None,
        });
    }
    let (mut key, mut sig, mut expires) = (None, None, None);
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "AWSAccessKeyId" => key = Some(v),
            "Signature" => sig = Some(v),
            "Expires" => expires = Some(v),
            _ => {}
        }
    }
    Some(V2 {
        access_key: key?,
        signature: sig?,
        expires: Some(expires?),
    })
}

/// SigV2's string to sign, with `resource` as the canonical resource before
/// its sub-resources.
fn string_to_sign(
    method: &str,
    resource: &str,
    query: &str,
    headers: &http::HeaderMap,
    expires: Option<&str>,
) -> String {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let date = match expires {
        Some(e) => e.to_string(),
        // With x-amz-date, the Date line is empty (x-amz-date is signed below).
        None if headers.contains_key("x-amz-date") => String::new(),
        None => h("date"),
    };
    let mut s = format!(
        "{method}\n{}\n{}\n{date}\n",
        h("content-md5"),
        h("content-type")
    );
    let mut amz: Vec<(&str, Vec<String>)> = Vec::new();
    for (name, value) in headers {
        let n = name.as_str();
        if !n.starts_with("x-amz-") {
            continue;
        }
        let v = String::from_utf8_lossy(value.as_bytes()).trim().to_string();
        match amz.iter_mut().find(|(k, _)| *k == n) {
            Some((_, vs)) => vs.push(v),
            None => amz.push((n, vec![v])),
        }
    }
    amz.sort_by(|a, b| a.0.cmp(b.0));
    for (n, vs) in amz {
        s.push_str(&format!("{n}:{}\n", vs.join(",")));
    }
    s.push_str(resource);
    let mut subs: Vec<(String, String)> = query_pairs(query)
        .filter(|(k, _)| SUB_RESOURCES.contains(&k.as_str()))
        .collect();
    subs.sort();
    for (i, (k, v)) in subs.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(k);
        if !v.is_empty() {
            s.push('=');
            s.push_str(v);
        }
    }
    s
}

fn sign(secret: &str, sts: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(sts.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The access key a SigV2 request (header or presigned URL) names, if it
/// is one.
pub fn access_key(headers: &http::HeaderMap, query: &str) -> Option<String> {
    v2_claim(headers, query).map(|c| c.access_key)
}

/// A SigV2 request checked at a path prefix and signed again for Walrus.
#[derive(Debug, PartialEq, Eq)]
pub struct Resigned {
    /// The path to forward, without the prefix.
    pub path: String,
    /// The query to forward (a presigned URL's `Signature` replaced).
    pub query: String,
    /// The `Authorization` header to forward, for a header-signed request.
    pub authorization: Option<String>,
}

/// Verifies a SigV2 request that arrived at `path` (starting with `prefix`)
/// with the key's `secret`, and signs it again over the path without the
/// prefix. The client may have signed the path as sent or the path without
/// the prefix, and a bucket-level path with or without its trailing slash
/// (see the module docs). `None` when no variant matches. The date or
/// expiry is left to Walrus, which checks it on the re-signed request.
pub fn resign_under_prefix(
    method: &str,
    path: &str,
    prefix: &str,
    query: &str,
    headers: &http::HeaderMap,
    secret: &str,
) -> Option<Resigned> {
    let claim = v2_claim(headers, query)?;
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let rest = if rest.is_empty() { "/" } else { rest };
    let bucket_only = rest.len() > 1 && !rest[1..].contains('/');
    let signed_over = |resource: &str| {
        let sts = string_to_sign(method, resource, query, headers, claim.expires.as_deref());
        sign(secret, &sts) == claim.signature
    };
    // (what the client may have signed, the path Walrus gets for it)
    let mut candidates = vec![
        (path.to_string(), rest.to_string()),
        (rest.to_string(), rest.to_string()),
    ];
    if bucket_only {
        let slashed = format!("{rest}/");
        candidates.push((format!("{path}/"), slashed.clone()));
        candidates.push((slashed.clone(), slashed));
    }
    let (_, forward) = candidates
        .into_iter()
        .find(|(signed, _)| signed_over(signed))?;
    let signature = sign(
        secret,
        &string_to_sign(method, &forward, query, headers, claim.expires.as_deref()),
    );
    if claim.expires.is_some() {
        let query = query
            .split('&')
            .map(|p| {
                if p.split_once('=').map_or(p, |(k, _)| k) == "Signature" {
                    format!("Signature={}", query_escape(&signature))
                } else {
                    p.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        Some(Resigned {
            path: forward,
            query,
            authorization: None,
        })
    } else {
        Some(Resigned {
            path: forward,
            query: query.to_string(),
            authorization: Some(format!("AWS {}:{signature}", claim.access_key)),
        })
    }
}

/// Base64 in a query value: `+`, `/` and `=` escaped.
fn query_escape(v: &str) -> String {
    v.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

impl Walrus {
    /// Adds the trailing slash to a path-style bucket-level path when the
    /// client's SigV2 signature was made over `/bucket/` (see the module
    /// docs). Never authenticates anything by itself.
    pub async fn fix_sigv2_bucket_path<B>(&self, req: &mut http::Request<B>) {
        let path = req.uri().path();
        let bucket_only = path.len() > 1 && !path[1..].contains('/');
        if !bucket_only || self.is_virtual_host(req.headers()) {
            return;
        }
        let query = req.uri().query().unwrap_or("").to_string();
        let Some(claim) = v2_claim(req.headers(), &query) else {
            return;
        };
        let Some(id) = self.ids.lookup(&claim.access_key).await else {
            return;
        };
        let method = req.method().as_str();
        let signed_over = |resource: &str| {
            let sts = string_to_sign(
                method,
                resource,
                &query,
                req.headers(),
                claim.expires.as_deref(),
            );
            sign(&id.secret, &sts) == claim.signature
        };
        let with_slash = format!("{path}/");
        if signed_over(path) || !signed_over(&with_slash) {
            return;
        }
        let pq = if query.is_empty() {
            with_slash
        } else {
            format!("{with_slash}?{query}")
        };
        let mut parts = req.uri().clone().into_parts();
        match pq.parse() {
            Ok(p) => parts.path_and_query = Some(p),
            Err(_) => return,
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    /// Whether the Host names a bucket under one of our domains, where the
    /// path is a key, not a bucket.
    fn is_virtual_host(&self, headers: &http::HeaderMap) -> bool {
        let Some(host) = headers.get("host").and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
        self.config.domains.iter().any(|d| {
            bare.strip_suffix(d.as_str())
                .is_some_and(|b| b.ends_with('.') && b.len() > 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_to_sign_follows_s3s_rules() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-amz-date",
            "Tue, 27 Mar 2007 19:36:42 +0000".parse().unwrap(),
        );
        h.insert("date", "ignored".parse().unwrap());
        h.insert("content-type", "text/xml".parse().unwrap());
        h.append("x-amz-meta-b", " two ".parse().unwrap());
        h.append("x-amz-meta-b", "three".parse().unwrap());
        h.insert("x-amz-acl", "private".parse().unwrap());
        let sts = string_to_sign("PUT", "/bkt/", "prefix=a&uploads&acl", &h, None);
        assert_eq!(
            sts,
            "PUT\n\ntext/xml\n\nx-amz-acl:private\nx-amz-date:Tue, 27 Mar 2007 19:36:42 +0000\n\
             x-amz-meta-b:two,three\n/bkt/?acl&uploads"
        );
        let sts = string_to_sign("GET", "/bkt/", "Expires=99&versionId=a%2Fb", &h, Some("99"));
        assert!(sts.starts_with("GET\n\ntext/xml\n99\n") && sts.ends_with("/bkt/?versionId=a/b"));
    }

    #[test]
    fn signature_is_hmac_sha1_base64() {
        // AWS' documented SigV2 example (GET /photos/puppy.jpg).
        let sts = "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg";
        assert_eq!(
            sign("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", sts),
            "qgk2+6Sv9/oM7G3qLEjTH1a1l1g="
        );
    }

    #[test]
    fn requests_signed_under_the_prefix_are_signed_again_without_it() {
        let secret = "s3cr3t";
        let mut h = http::HeaderMap::new();
        h.insert("date", "Tue, 27 Mar 2007 19:36:42 +0000".parse().unwrap());
        let prefix = "/services/objectstorage";
        for (sent, signed, forwarded) in [
            (
                "/services/objectstorage/b/k",
                "/services/objectstorage/b/k",
                "/b/k",
            ),
            ("/services/objectstorage/b/k", "/b/k", "/b/k"),
            (
                "/services/objectstorage/b",
                "/services/objectstorage/b/",
                "/b/",
            ),
            ("/services/objectstorage/b", "/b", "/b"),
            ("/services/objectstorage", "/services/objectstorage", "/"),
        ] {
            let sig = sign(secret, &string_to_sign("GET", signed, "acl", &h, None));
            let mut hh = h.clone();
            hh.insert("authorization", format!("AWS AK:{sig}").parse().unwrap());
            let r = resign_under_prefix("GET", sent, prefix, "acl", &hh, secret).unwrap();
            let want = sign(secret, &string_to_sign("GET", forwarded, "acl", &h, None));
            assert_eq!(r.path, forwarded, "{sent} signed as {signed}");
            assert_eq!(r.authorization, Some(format!("AWS AK:{want}")));
            // Another secret: refused.
            assert!(resign_under_prefix("GET", sent, prefix, "acl", &hh, "other").is_none());
        }
        // Presigned: the Signature parameter is replaced, the rest kept.
        let sig = sign(
            secret,
            &string_to_sign("GET", "/services/objectstorage/b/k", "", &h, Some("99")),
        );
        let q = format!(
            "AWSAccessKeyId=AK&Expires=99&Signature={}",
            query_escape(&sig)
        );
        let r = resign_under_prefix("GET", "/services/objectstorage/b/k", prefix, &q, &h, secret)
            .unwrap();
        let want = sign(secret, &string_to_sign("GET", "/b/k", "", &h, Some("99")));
        assert_eq!(
            r.query,
            format!(
                "AWSAccessKeyId=AK&Expires=99&Signature={}",
                query_escape(&want)
            )
        );
        assert_eq!(r.authorization, None);
        assert_eq!(access_key(&h, &q).as_deref(), Some("AK"));
    }
}
