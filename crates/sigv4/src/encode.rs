//! Percent-encoding as both signature versions define it.
//!
//! AWS canonicalises every name and value by decoding what the client sent
//! and encoding it again with one fixed alphabet, so that two clients that
//! escape differently on the wire still agree on the bytes that get signed.
//! Everything here works on bytes rather than `str`: a hostile client can
//! percent-encode invalid UTF-8, and that must become a signature mismatch,
//! not a panic or a lossy conversion that could make two requests collide.

/// The RFC 3986 unreserved set, the only bytes AWS leaves unescaped.
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `bytes` to `out`, escaping everything outside the unreserved set
/// as `%XX` with upper-case hex (AWS compares the escapes literally).
pub(crate) fn encode_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0x0f)]));
        }
    }
}

/// Percent-encodes `bytes` with the AWS unreserved set.
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    encode_into(&mut out, bytes);
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How `+` is read when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plus {
    /// RFC 3986: `+` is an ordinary character. SigV4 canonical query strings
    /// use this reading (the AWS test suite and botocore both depend on it).
    Literal,
    /// `application/x-www-form-urlencoded`: `+` stands for a space. Form
    /// bodies and SigV2 parameters (which boto/euca2ools build as forms)
    /// use this reading.
    Space,
}

/// Percent-decodes `input`. A `%` not followed by two hex digits is kept as
/// it stands rather than rejected: the bytes still go into the signature, so
/// leniency here cannot let a forged request through.
pub(crate) fn decode(input: &[u8], plus: Plus) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex_value),
                input.get(i + 2).copied().and_then(hex_value),
            ) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
            out.push(b'%');
        } else if b == b'+' && plus == Plus::Space {
            out.push(b' ');
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

/// A decoded `name=value` pair from a query string or form body.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// Splits an `&`-separated list into decoded pairs. Empty pieces (`a=1&&b=2`,
/// a trailing `&`) carry nothing and are skipped; a piece without `=` is a
/// name with an empty value, which is how AWS canonicalises it.
pub(crate) fn parse_pairs(input: &[u8], plus: Plus) -> Vec<Pair> {
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&piece[..eq], plus), decode(&piece[eq + 1..], plus)),
            None => (decode(piece, plus), Vec::new()),
        })
        .collect()
}

/// Serialises decoded pairs as `name=value&...` with the AWS unreserved set,
/// in the order given. Suitable for a query string or a form body, and it is
/// what a signer should send so the server sees exactly what was signed.
pub fn encode_params(params: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, name.as_bytes());
        out.push('=');
        encode_into(&mut out, value.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_outside_unreserved_set_with_upper_hex() {
        assert_eq!(uri_encode(b"aZ09-_.~"), "aZ09-_.~");
        assert_eq!(uri_encode(b"a b+c/d=e&f"), "a%20b%2Bc%2Fd%3De%26f");
        assert_eq!(uri_encode("\u{1234}".as_bytes()), "%E1%88%B4");
        assert_eq!(uri_encode(&[0xff, 0x00]), "%FF%00");
    }

    #[test]
    fn decode_handles_plus_both_ways_and_bad_escapes() {
        assert_eq!(decode(b"a+b%20c", Plus::Literal), b"a+b c");
        assert_eq!(decode(b"a+b%20c", Plus::Space), b"a b c");
        assert_eq!(decode(b"%zz%4", Plus::Literal), b"%zz%4");
        assert_eq!(decode(b"%", Plus::Literal), b"%");
        assert_eq!(decode(b"%e1%88%b4", Plus::Literal), "\u{1234}".as_bytes());
        assert_eq!(decode(b"%FF", Plus::Literal), [0xff]);
    }

    #[test]
    fn pairs_skip_empty_pieces_and_allow_missing_value() {
        let pairs = parse_pairs(b"a=1&&b&c=x=y&", Plus::Literal);
        assert_eq!(
            pairs,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"".to_vec()),
                (b"c".to_vec(), b"x=y".to_vec()),
            ]
        );
        assert!(parse_pairs(b"", Plus::Space).is_empty());
    }

    #[test]
    fn encode_params_round_trips_through_form_decoding() {
        let params = vec![
            ("Action".to_string(), "Describe Things".to_string()),
            ("Filter.1.Value".to_string(), "a+b/c~".to_string()),
        ];
        let encoded = encode_params(&params);
        assert_eq!(
            encoded,
            "Action=Describe%20Things&Filter.1.Value=a%2Bb%2Fc~"
        );
        let back = parse_pairs(encoded.as_bytes(), Plus::Space);
        assert_eq!(back[0].1, b"Describe Things");
        assert_eq!(back[1].1, b"a+b/c~");
    }
}
