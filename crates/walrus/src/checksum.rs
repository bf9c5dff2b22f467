//! S3's flexible checksums (`x-amz-checksum-crc32`, `-crc32c`, `-crc64nvme`,
//! `-sha1`, `-sha256`) on uploads: the client names one algorithm and sends
//! the expected value in a header, or declares it in `x-amz-trailer` and
//! sends it after an aws-chunked body, or only names the algorithm
//! (`x-amz-sdk-checksum-algorithm`) and wants the value back.
//!
//! [`Requested::from_headers`] reads what the client asked for before the
//! body is read, refusing malformed values then (`InvalidRequest`), so an
//! error needs no body. The body is hashed while it streams into the blob
//! (a [`Tap`] on the blob's hashing thread, nothing buffered), and
//! [`Requested::verify`] compares once the body, and so any trailer, is in:
//! a mismatch is `BadDigest` and the caller drops the blob before anything
//! names it. The digests themselves are `s3s`' implementations.
//!
//! What was verified is kept with the object (a [`StoredChecksum`]) and
//! given back on GET/HEAD with `x-amz-checksum-mode: ENABLED` ([`to_dto`]),
//! so SDKs that validate downloads (boto3 and the AWS CLI do by default)
//! can. A multipart object's checksum is derived from its parts' at
//! CompleteMultipartUpload ([`of_parts`]): either S3's composite form, the
//! digest of the parts' digests with `-N` appended, or for CRCs the
//! checksum of the whole object, combined arithmetically from the parts'
//! CRCs and lengths without reading the data again.

use base64::Engine;
use s3s::checksum::ChecksumHasher;
use s3s::dto::{Checksum, ChecksumType, CompletedPart};
use s3s::{S3Request, S3Result, s3_error};

use crate::blob::Tap;
use crate::meta::StoredChecksum;

pub(crate) const FULL_OBJECT: &str = "FULL_OBJECT";
pub(crate) const COMPOSITE: &str = "COMPOSITE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algo {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

const ALGOS: [Algo; 5] = [
    Algo::Crc32,
    Algo::Crc32c,
    Algo::Crc64Nvme,
    Algo::Sha1,
    Algo::Sha256,
];

impl Algo {
    fn header(self) -> &'static str {
        match self {
            Algo::Crc32 => "x-amz-checksum-crc32",
            Algo::Crc32c => "x-amz-checksum-crc32c",
            Algo::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algo::Sha1 => "x-amz-checksum-sha1",
            Algo::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// The name S3 uses in messages and in `x-amz-sdk-checksum-algorithm`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "CRC32",
            Algo::Crc32c => "CRC32C",
            Algo::Crc64Nvme => "CRC64NVME",
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algo::Crc32 | Algo::Crc32c => 4,
            Algo::Crc64Nvme => 8,
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
        }
    }

    fn by_header(h: &str) -> Option<Algo> {
        ALGOS
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(h))
    }

    pub(crate) fn by_name(n: &str) -> Option<Algo> {
        ALGOS.into_iter().find(|a| a.name().eq_ignore_ascii_case(n))
    }

    /// `crc-fast`'s name for the CRCs, whose checksums can be combined.
    fn crc(self) -> Option<crc_fast::CrcAlgorithm> {
        match self {
            Algo::Crc32 => Some(crc_fast::CrcAlgorithm::Crc32IsoHdlc),
            Algo::Crc32c => Some(crc_fast::CrcAlgorithm::Crc32Iscsi),
            Algo::Crc64Nvme => Some(crc_fast::CrcAlgorithm::Crc64Nvme),
            Algo::Sha1 | Algo::Sha256 => None,
        }
    }

    /// A hasher computing this algorithm only.
    pub(crate) fn hasher(self) -> Hashing {
        let mut h = ChecksumHasher::default();
        match self {
            Algo::Crc32 => h.crc32 = Some(Default::default()),
            Algo::Crc32c => h.crc32c = Some(Default::default()),
            Algo::Crc64Nvme => h.crc64nvme = Some(Default::default()),
            Algo::Sha1 => h.sha1 = Some(Default::default()),
            Algo::Sha256 => h.sha256 = Some(Default::default()),
        }
        Hashing(h)
    }

    fn set(self, c: &mut Checksum, v: String) {
        let field = match self {
            Algo::Crc32 => &mut c.checksum_crc32,
            Algo::Crc32c => &mut c.checksum_crc32c,
            Algo::Crc64Nvme => &mut c.checksum_crc64nvme,
            Algo::Sha1 => &mut c.checksum_sha1,
            Algo::Sha256 => &mut c.checksum_sha256,
        };
        *field = Some(v);
    }

    fn value(self, c: &Checksum) -> Option<&String> {
        match self {
            Algo::Crc32 => c.checksum_crc32.as_ref(),
            Algo::Crc32c => c.checksum_crc32c.as_ref(),
            Algo::Crc64Nvme => c.checksum_crc64nvme.as_ref(),
            Algo::Sha1 => c.checksum_sha1.as_ref(),
            Algo::Sha256 => c.checksum_sha256.as_ref(),
        }
    }
}

/// Where the expected value comes from.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    /// Decoded from the request header.
    Header(Vec<u8>),
    /// Sent after the body, in the aws-chunked trailer.
    Trailer,
    /// Nothing to check: the client only wants the value back.
    None,
}

/// The checksum a client asked for on an upload.
#[derive(Debug)]
pub(crate) struct Requested {
    algo: Algo,
    expected: Expected,
}

fn invalid_value(algo: Algo) -> s3s::S3Error {
    s3_error!(
        InvalidRequest,
        "Value for {} header is invalid.",
        algo.header()
    )
}

fn decode(algo: Algo, v: &str) -> S3Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
        .filter(|d| d.len() == algo.digest_len())
        .ok_or_else(|| invalid_value(algo))
}

impl Requested {
    /// What the request's headers ask for; `None` when no checksum is named.
    pub(crate) fn from_headers<T>(req: &S3Request<T>) -> S3Result<Option<Requested>> {
        let h = &req.headers;
        let mut given = ALGOS
            .into_iter()
            .filter_map(|a| h.get(a.header()).map(|v| (a, v)));
        let first = given.next();
        if given.next().is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
            ));
        }
        if let Some((algo, v)) = first {
            let v = v.to_str().map_err(|_| invalid_value(algo))?;
            return Ok(Some(Requested {
                algo,
                expected: Expected::Header(decode(algo, v)?),
            }));
        }
        if let Some(t) = h.get("x-amz-trailer") {
            let t = t.to_str().unwrap_or_default().trim();
            if let Some(algo) = Algo::by_header(t) {
                return Ok(Some(Requested {
                    algo,
                    expected: Expected::Trailer,
                }));
            }
            if t.to_ascii_lowercase().starts_with("x-amz-checksum-") {
                return Err(s3_error!(
                    InvalidRequest,
                    "The value specified in the x-amz-trailer header is not supported"
                ));
            }
        }
        for name in ["x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"] {
            if let Some(v) = h.get(name) {
                let v = v.to_str().unwrap_or_default();
                let algo = Algo::by_name(v.trim()).ok_or_else(|| {
                    s3_error!(InvalidRequest, "Checksum algorithm {v} is not supported")
                })?;
                return Ok(Some(Requested {
                    algo,
                    expected: Expected::None,
                }));
            }
        }
        Ok(None)
    }

    /// What hashes the body for [`Requested::verify`].
    pub(crate) fn hasher(&self) -> Hashing {
        self.algo.hasher()
    }

    pub(crate) fn algo(&self) -> Algo {
        self.algo
    }

    /// Checks the body's checksum against the expected value, reading a
    /// trailer's from `trailers` (available once the body is consumed).
    /// Returns the checksum to report back to the client.
    pub(crate) fn verify(
        &self,
        hashed: Hashing,
        trailers: Option<&s3s::TrailingHeaders>,
    ) -> S3Result<Checksum> {
        let got = hashed.0.finalize();
        let value = self.algo.value(&got).cloned().unwrap_or_default();
        let expected = match &self.expected {
            Expected::None => return Ok(got),
            Expected::Header(v) => v.clone(),
            Expected::Trailer => {
                let sent = trailers
                    .and_then(|t| {
                        t.read(|h| {
                            h.get(self.algo.header())
                                .and_then(|v| v.to_str().ok().map(str::to_string))
                        })
                    })
                    .flatten()
                    .ok_or_else(|| {
                        s3_error!(
                            InvalidRequest,
                            "The {} trailer declared in x-amz-trailer was not sent",
                            self.algo.header()
                        )
                    })?;
                decode(self.algo, &sent)?
            }
        };
        let computed = base64::engine::general_purpose::STANDARD
            .decode(&value)
            .unwrap_or_default();
        if computed != expected {
            return Err(s3_error!(
                BadDigest,
                "The {} you specified did not match the calculated checksum.",
                self.algo.name()
            ));
        }
        Ok(got)
    }
}

/// The running digest of one upload's body.
pub(crate) struct Hashing(ChecksumHasher);

impl Default for Hashing {
    /// Hashes nothing: for uploads that name no checksum.
    fn default() -> Self {
        Hashing(ChecksumHasher::default())
    }
}

impl Tap for Hashing {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

impl Hashing {
    /// The whole-object checksum of what was hashed, for an algorithm
    /// [`Algo::hasher`] was made for.
    pub(crate) fn stored(self, algo: Algo) -> Option<StoredChecksum> {
        stored(algo, &self.0.finalize())
    }
}

/// The whole-object checksum `algo` has in `c`, to keep.
pub(crate) fn stored(algo: Algo, c: &Checksum) -> Option<StoredChecksum> {
    algo.value(c).map(|v| StoredChecksum {
        algorithm: algo.name().to_string(),
        kind: FULL_OBJECT.to_string(),
        value: v.clone(),
    })
}

/// A kept checksum as the response fields it fills.
pub(crate) fn to_dto(s: &StoredChecksum) -> (Checksum, Option<ChecksumType>) {
    let mut c = Checksum::default();
    let Some(algo) = Algo::by_name(&s.algorithm) else {
        return (c, None);
    };
    algo.set(&mut c, s.value.clone());
    (c, Some(ChecksumType::from(s.kind.clone())))
}

/// Which algorithm and type CreateMultipartUpload declared, checked as S3
/// does: full-object checksums exist only for the CRCs, and CRC64NVME has
/// only that form.
pub(crate) fn declared(
    algorithm: Option<&str>,
    kind: Option<&str>,
) -> S3Result<Option<StoredChecksum>> {
    let Some(name) = algorithm else {
        if kind.is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."
            ));
        }
        return Ok(None);
    };
    let algo = Algo::by_name(name)
        .ok_or_else(|| s3_error!(InvalidRequest, "Checksum algorithm {name} is not supported"))?;
    let kind = match kind.map(str::to_ascii_uppercase) {
        Some(k) if k == FULL_OBJECT || k == COMPOSITE => k,
        Some(k) => {
            return Err(s3_error!(
                InvalidRequest,
                "Checksum type {k} is not supported"
            ));
        }
        None if algo == Algo::Crc64Nvme => FULL_OBJECT.to_string(),
        None => COMPOSITE.to_string(),
    };
    let ok = match algo {
        Algo::Crc64Nvme => kind == FULL_OBJECT,
        Algo::Sha1 | Algo::Sha256 => kind == COMPOSITE,
        Algo::Crc32 | Algo::Crc32c => true,
    };
    if !ok {
        return Err(s3_error!(
            InvalidRequest,
            "The {kind} checksum type cannot be used with the {} checksum algorithm.",
            algo.name()
        ));
    }
    Ok(Some(StoredChecksum {
        algorithm: algo.name().to_string(),
        kind,
        value: String::new(),
    }))
}

/// The object checksum of a completed multipart upload, of the `kind` the
/// upload declared, from each part's kept checksum and size in order.
/// `None` when the parts carry no checksum of that algorithm.
pub(crate) fn of_parts(
    declared: &StoredChecksum,
    parts: &[(Option<&StoredChecksum>, u64)],
) -> S3Result<Option<StoredChecksum>> {
    let Some(algo) = Algo::by_name(&declared.algorithm) else {
        return Ok(None);
    };
    let mut digests = Vec::with_capacity(parts.len());
    for (c, size) in parts {
        match c {
            Some(c) if c.algorithm == declared.algorithm => {
                digests.push((decode(algo, &c.value)?, *size))
            }
            _ => return Ok(None),
        }
    }
    let b64 = &base64::engine::general_purpose::STANDARD;
    let value = if declared.kind == FULL_OBJECT {
        let Some(crc) = algo.crc() else {
            return Ok(None);
        };
        let be = |d: &[u8]| d.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let mut whole: Option<u64> = None;
        for (d, size) in &digests {
            let v = be(d);
            whole = Some(match whole {
                None => v,
                Some(w) => crc_fast::checksum_combine(crc, w, v, *size),
            });
        }
        let w = whole.unwrap_or(0).to_be_bytes();
        b64.encode(&w[8 - algo.digest_len()..])
    } else {
        let mut h = algo.hasher();
        for (d, _) in &digests {
            h.update(d);
        }
        let whole = h.0.finalize();
        format!(
            "{}-{}",
            algo.value(&whole).cloned().unwrap_or_default(),
            digests.len()
        )
    };
    Ok(Some(StoredChecksum {
        algorithm: declared.algorithm.clone(),
        kind: declared.kind.clone(),
        value,
    }))
}

/// Compares the object checksum CompleteMultipartUpload's request may
/// carry (of the declared algorithm) with the one derived from the parts.
pub(crate) fn check_whole(derived: &StoredChecksum, sent: &Checksum) -> S3Result<()> {
    let Some(algo) = Algo::by_name(&derived.algorithm) else {
        return Ok(());
    };
    let Some(v) = algo.value(sent) else {
        return Ok(());
    };
    let bare = |s: &str| s.split('-').next().unwrap_or_default().trim().to_string();
    if bare(v) != bare(&derived.value) {
        return Err(s3_error!(
            BadDigest,
            "The {} you specified did not match the calculated checksum.",
            algo.name()
        ));
    }
    Ok(())
}

/// The checksum CompleteMultipartUpload's request gives for a part, if
/// any, to compare with the one kept.
pub(crate) fn sent_for_part(p: &CompletedPart) -> Option<(Algo, &String)> {
    ALGOS
        .into_iter()
        .find_map(|a| a.value_of_part(p).map(|v| (a, v)))
}

impl Algo {
    fn value_of_part(self, p: &CompletedPart) -> Option<&String> {
        match self {
            Algo::Crc32 => p.checksum_crc32.as_ref(),
            Algo::Crc32c => p.checksum_crc32c.as_ref(),
            Algo::Crc64Nvme => p.checksum_crc64nvme.as_ref(),
            Algo::Sha1 => p.checksum_sha1.as_ref(),
            Algo::Sha256 => p.checksum_sha256.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&'static str, &str)]) -> S3Request<()> {
        let mut r = S3Request {
            input: (),
            method: Default::default(),
            uri: Default::default(),
            headers: Default::default(),
            extensions: Default::default(),
            credentials: None,
            region: None,
            service: None,
            trailing_headers: None,
        };
        for (k, v) in headers {
            r.headers.insert(*k, v.parse().unwrap());
        }
        r
    }

    fn b64(d: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(d)
    }

    fn run(r: &Requested, body: &[u8]) -> S3Result<Checksum> {
        let mut h = r.hasher();
        h.update(&body[..3]);
        h.update(&body[3..]);
        r.verify(h, None)
    }

    #[test]
    fn header_values_are_verified() {
        let body = b"123456789";
        // Published check values of each algorithm for "123456789".
        let cases: [(&str, Vec<u8>); 4] = [
            (
                "x-amz-checksum-crc32",
                0xCBF4_3926u32.to_be_bytes().to_vec(),
            ),
            (
                "x-amz-checksum-crc32c",
                0xE306_9283u32.to_be_bytes().to_vec(),
            ),
            (
                "x-amz-checksum-sha1",
                hex::decode("f7c3bc1d808e04732adf679965ccc34ca7ae3441").unwrap(),
            ),
            (
                "x-amz-checksum-sha256",
                hex::decode("15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225")
                    .unwrap(),
            ),
        ];
        for (h, good) in cases {
            let r = Requested::from_headers(&req(&[(h, &b64(&good))]))
                .unwrap()
                .unwrap();
            let got = run(&r, body).unwrap();
            assert_eq!(r.algo.value(&got), Some(&b64(&good)), "{h}");
            let mut bad = good.clone();
            bad[0] ^= 1;
            let r = Requested::from_headers(&req(&[(h, &b64(&bad))]))
                .unwrap()
                .unwrap();
            let e = run(&r, body).unwrap_err();
            assert_eq!(*e.code(), s3s::S3ErrorCode::BadDigest, "{h}");
        }
    }

    #[test]
    fn malformed_and_conflicting_headers_are_refused() {
        for hs in [
            vec![("x-amz-checksum-crc32", "not base64!")],
            // Valid base64, wrong length for CRC32.
            vec![("x-amz-checksum-crc32", "AAAAAAAA")],
            vec![
                ("x-amz-checksum-crc32", "AAAAAA=="),
                ("x-amz-checksum-sha1", "AAAAAA=="),
            ],
            vec![("x-amz-sdk-checksum-algorithm", "MD4")],
        ] {
            let e = Requested::from_headers(&req(&hs)).unwrap_err();
            assert_eq!(*e.code(), s3s::S3ErrorCode::InvalidRequest, "{hs:?}");
        }
        assert!(Requested::from_headers(&req(&[])).unwrap().is_none());
    }

    #[test]
    fn trailer_and_algorithm_only_requests() {
        let r = Requested::from_headers(&req(&[("x-amz-trailer", "x-amz-checksum-crc32c")]))
            .unwrap()
            .unwrap();
        assert_eq!((r.algo, &r.expected), (Algo::Crc32c, &Expected::Trailer));
        // Declared but never sent: refused.
        assert!(run(&r, b"abcdef").is_err());
        let r = Requested::from_headers(&req(&[("x-amz-sdk-checksum-algorithm", "crc32")]))
            .unwrap()
            .unwrap();
        let got = run(&r, b"123456789").unwrap();
        assert_eq!(got.checksum_crc32.as_deref(), Some("y/Q5Jg=="));
    }

    fn whole(algo: Algo, data: &[u8]) -> StoredChecksum {
        let mut h = algo.hasher();
        h.update(data);
        h.stored(algo).unwrap()
    }

    #[test]
    fn multipart_checksums_from_the_parts() {
        let (a, b, c): (&[u8], &[u8], &[u8]) = (b"1234", b"56789", b"abcdefghij");
        let all = [a, b, c].concat();
        for algo in [Algo::Crc32, Algo::Crc32c, Algo::Crc64Nvme] {
            // Combined from the parts' CRCs: the CRC of the whole object.
            let d = declared(Some(algo.name()), Some(FULL_OBJECT))
                .unwrap()
                .unwrap();
            let (pa, pb, pc) = (whole(algo, a), whole(algo, b), whole(algo, c));
            let parts = [
                (Some(&pa), a.len() as u64),
                (Some(&pb), b.len() as u64),
                (Some(&pc), c.len() as u64),
            ];
            let got = of_parts(&d, &parts).unwrap().unwrap();
            assert_eq!(got, whole(algo, &all), "{}", algo.name());
        }
        // The published CRC32 check value, from two parts.
        let d = declared(Some("CRC32"), Some("FULL_OBJECT"))
            .unwrap()
            .unwrap();
        let (pa, pb) = (whole(Algo::Crc32, a), whole(Algo::Crc32, b));
        let got = of_parts(&d, &[(Some(&pa), 4), (Some(&pb), 5)])
            .unwrap()
            .unwrap();
        assert_eq!(got.value, "y/Q5Jg==");

        // Composite: the digest of the parts' digests, then -N.
        for algo in [Algo::Sha256, Algo::Sha1, Algo::Crc32, Algo::Crc32c] {
            let d = declared(Some(algo.name()), None).unwrap().unwrap();
            assert_eq!(d.kind, COMPOSITE);
            let (pa, pb) = (whole(algo, a), whole(algo, b));
            let raw = [
                base64::engine::general_purpose::STANDARD
                    .decode(&pa.value)
                    .unwrap(),
                base64::engine::general_purpose::STANDARD
                    .decode(&pb.value)
                    .unwrap(),
            ]
            .concat();
            let want = format!("{}-2", whole(algo, &raw).value);
            let got = of_parts(&d, &[(Some(&pa), 4), (Some(&pb), 5)])
                .unwrap()
                .unwrap();
            assert_eq!(
                (got.value.as_str(), got.kind.as_str()),
                (want.as_str(), COMPOSITE)
            );
            // A part without a checksum: no object checksum.
            assert!(
                of_parts(&d, &[(Some(&pa), 4), (None, 5)])
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn declared_algorithms_and_types_are_checked() {
        let d = declared(Some("CRC64NVME"), None).unwrap().unwrap();
        assert_eq!(d.kind, FULL_OBJECT);
        for (a, t) in [
            (Some("CRC64NVME"), Some("COMPOSITE")),
            (Some("SHA256"), Some("FULL_OBJECT")),
            (Some("MD4"), None),
            (None, Some("COMPOSITE")),
        ] {
            assert!(declared(a, t).is_err(), "{a:?} {t:?}");
        }
        assert!(declared(None, None).unwrap().is_none());
        let sent = Checksum {
            checksum_crc32: Some("AAAAAA==".into()),
            ..Default::default()
        };
        let d = whole(Algo::Crc32, b"123456789");
        assert!(check_whole(&d, &sent).is_err());
        let sent = Checksum {
            checksum_crc32: Some("y/Q5Jg==".into()),
            ..Default::default()
        };
        assert!(check_whole(&d, &sent).is_ok());
        let (dto, kind) = to_dto(&d);
        assert_eq!(dto.checksum_crc32.as_deref(), Some("y/Q5Jg=="));
        assert_eq!(kind.unwrap().as_str(), FULL_OBJECT);
    }
}
