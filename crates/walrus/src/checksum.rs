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

use base64::Engine;
use s3s::checksum::ChecksumHasher;
use s3s::dto::Checksum;
use s3s::{S3Request, S3Result, s3_error};

use crate::blob::Tap;

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
    fn name(self) -> &'static str {
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

    fn by_name(n: &str) -> Option<Algo> {
        ALGOS.into_iter().find(|a| a.name().eq_ignore_ascii_case(n))
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
        let mut h = ChecksumHasher::default();
        match self.algo {
            Algo::Crc32 => h.crc32 = Some(Default::default()),
            Algo::Crc32c => h.crc32c = Some(Default::default()),
            Algo::Crc64Nvme => h.crc64nvme = Some(Default::default()),
            Algo::Sha1 => h.sha1 = Some(Default::default()),
            Algo::Sha256 => h.sha256 = Some(Default::default()),
        }
        Hashing(h)
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
}
