//! The SSH binary encoding (RFC 4251 §5) used inside public key blobs and
//! OpenSSH private key files.
//!
//! Only the three primitives key blobs need are here: `uint32`, `string` and
//! `mpint`. The reader never panics: every length is checked against what is
//! left, because blobs arrive from API callers.

/// Cursor over an untrusted SSH-encoded buffer.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let (head, tail) = self.rest.split_first_chunk::<4>()?;
        self.rest = tail;
        Some(u32::from_be_bytes(*head))
    }

    pub(crate) fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        if len > self.rest.len() {
            return None;
        }
        let (value, tail) = self.rest.split_at(len);
        self.rest = tail;
        Some(value)
    }

    /// Reads an `mpint` that must be non-negative and returns its magnitude
    /// with any leading zero bytes removed.
    ///
    /// Negative values are refused rather than interpreted, since no RSA
    /// component may be negative and a sign bit here means a malformed blob.
    pub(crate) fn positive_mpint(&mut self) -> Option<&'a [u8]> {
        let raw = self.string()?;
        if raw.first().is_some_and(|b| b & 0x80 != 0) {
            return None;
        }
        let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
        Some(&raw[start..])
    }
}

/// Builder for SSH-encoded buffers.
#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn string(&mut self, s: &[u8]) -> &mut Self {
        // Everything written here is a key component or a short label, far
        // below 4 GiB, so the conversion cannot actually saturate.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.buf.extend_from_slice(s);
        self
    }

    /// Writes a non-negative integer given as big-endian magnitude bytes, in
    /// the minimal form OpenSSH itself produces, so that re-encoded blobs
    /// compare byte-for-byte with `ssh-keygen` output.
    pub(crate) fn mpint(&mut self, magnitude: &[u8]) -> &mut Self {
        let start = magnitude
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(magnitude.len());
        let magnitude = &magnitude[start..];
        if magnitude.first().is_some_and(|b| b & 0x80 != 0) {
            let mut padded = Vec::with_capacity(magnitude.len() + 1);
            padded.push(0);
            padded.extend_from_slice(magnitude);
            self.string(&padded)
        } else {
            self.string(magnitude)
        }
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpint_encoding_is_minimal_and_sign_safe() {
        let mut w = Writer::new();
        w.mpint(&[0, 0, 0x7f])
            .mpint(&[0x80])
            .mpint(&[])
            .mpint(&[0, 0]);
        assert_eq!(
            w.into_bytes(),
            [
                0, 0, 0, 1, 0x7f, // leading zeros dropped
                0, 0, 0, 2, 0, 0x80, // sign byte added
                0, 0, 0, 0, // zero is the empty string
                0, 0, 0, 0,
            ]
        );
    }

    #[test]
    fn reader_refuses_overlong_and_negative_values() {
        assert!(Reader::new(&[0, 0, 0, 5, 1, 2]).string().is_none());
        assert!(Reader::new(&[0, 0, 0]).u32().is_none());
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff]).string().is_none());
        assert!(Reader::new(&[0, 0, 0, 1, 0x80]).positive_mpint().is_none());
        let mut r = Reader::new(&[0, 0, 0, 3, 0, 0, 0x42]);
        assert_eq!(r.positive_mpint(), Some(&[0x42][..]));
        assert!(r.is_empty());
    }
}
