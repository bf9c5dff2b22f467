//! `ImportKeyPair`: turning whatever public key file a user uploaded into the
//! canonical OpenSSH line plus EC2's fingerprint.
//!
//! Every accepted format is first reduced to a [`Parsed`] key (raw RSA
//! components or the 32 Ed25519 bytes); validation, canonical encoding and
//! fingerprinting then happen once, in [`finish`], so the same key always
//! yields the same stored form no matter how it was uploaded.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use openssl::bn::{BigNum, BigNumRef};
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Rsa;

use crate::wire::Reader;
use crate::{
    KeyError, KeyType, PublicKey, digest_colon_hex, ed25519_blob, ed25519_fingerprint, invalid,
    openssh_line, rsa_blob, truncate_for_message,
};

/// Smallest RSA modulus accepted; EC2 refuses anything weaker than 1024 bits.
const RSA_MIN_BITS: i32 = 1024;
/// Largest RSA modulus accepted. Nothing legitimate is bigger, and a cap keeps
/// hostile keys from making later signature checks on instances expensive.
const RSA_MAX_BITS: i32 = 16384;
/// Public exponents beyond 64 bits are refused: OpenSSL rejects them for
/// large moduli anyway, and real keys use 65537 (or, rarely, 3).
const RSA_MAX_E_BITS: i32 = 64;
/// Upper bound on uploaded material. A 16384-bit key in the most verbose
/// accepted format is about 3 KiB; anything far larger is not a key.
const MAX_MATERIAL_LEN: usize = 64 * 1024;

/// Many tools omit or mangle base64 padding in key files; accepting either
/// form costs nothing because the decoded bytes are validated structurally.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A decoded but not yet validated public key.
enum Parsed {
    Rsa { n: BigNum, e: BigNum },
    Ed25519([u8; 32]),
}

/// Parses a public key uploaded through `ImportKeyPair`.
///
/// `material` is the file content after the API layer removed the base64
/// transport encoding of the `PublicKeyMaterial` parameter. Accepted are
/// OpenSSH one-line keys, RFC 4716 (`---- BEGIN SSH2 PUBLIC KEY ----`) files,
/// PEM `PUBLIC KEY` (SubjectPublicKeyInfo) and `RSA PUBLIC KEY` (PKCS#1)
/// blocks, and bare base64 of a DER SubjectPublicKeyInfo. RSA keys must have
/// a 1024..=16384-bit modulus; DSA and ECDSA keys are refused, as EC2 does.
pub fn import(material: &[u8]) -> Result<PublicKey, KeyError> {
    if material.len() > MAX_MATERIAL_LEN {
        return Err(invalid("key material is too large to be a public key"));
    }
    let text = std::str::from_utf8(material)
        .map_err(|_| invalid("key material is not text; expected an OpenSSH or PEM public key"))?
        .trim();
    if text.is_empty() {
        return Err(invalid("key material is empty"));
    }

    let parsed = if text.starts_with("---- BEGIN SSH2 PUBLIC KEY ----") {
        parse_rfc4716(text)?
    } else if text.starts_with("-----BEGIN ") {
        parse_pem(text)?
    } else if text
        .bytes()
        .all(|b| is_base64_byte(b) || b.is_ascii_whitespace())
    {
        parse_bare_base64(text)?
    } else {
        parse_openssh_line(text)?
    };
    finish(parsed)
}

fn is_base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

fn decode_base64(text: &str) -> Result<Vec<u8>, KeyError> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    BASE64
        .decode(compact)
        .map_err(|_| invalid("key data is not valid base64 (truncated or corrupted?)"))
}

/// `ssh-rsa AAAA... optional comment` — the `.pub` file format and an
/// `authorized_keys` line without options.
fn parse_openssh_line(text: &str) -> Result<Parsed, KeyError> {
    if text.contains(['\n', '\r']) {
        return Err(invalid(
            "expected a single OpenSSH public key line, found several lines",
        ));
    }
    let mut fields = text.split_ascii_whitespace();
    let algorithm = fields.next().unwrap_or_default();
    check_algorithm_name(algorithm)?;
    let Some(data) = fields.next() else {
        return Err(invalid("OpenSSH public key has no key data after the type"));
    };
    // Whatever follows is a free-form comment, which EC2 discards too.
    let blob = decode_base64(data)?;
    let (blob_algorithm, parsed) = parse_ssh_blob(&blob)?;
    // A mismatch means the line was hand-edited or spliced together; trusting
    // either half would store a key the user did not intend.
    if blob_algorithm != algorithm {
        return Err(invalid(format!(
            "key type {:?} does not match the encoded key ({:?})",
            truncate_for_message(algorithm),
            blob_algorithm
        )));
    }
    Ok(parsed)
}

/// Gives precise errors for the key kinds people commonly try to import.
fn check_algorithm_name(name: &str) -> Result<(), KeyError> {
    match name {
        "ssh-rsa" | "ssh-ed25519" => Ok(()),
        "ssh-dss" => Err(invalid("DSA keys are not supported; use RSA or Ed25519")),
        n if n.starts_with("ecdsa-sha2-") => {
            Err(invalid("ECDSA keys are not supported; use RSA or Ed25519"))
        }
        n if n.starts_with("sk-") => Err(invalid(
            "security-key (FIDO) keys are not supported; use RSA or Ed25519",
        )),
        n if n.contains("-cert-") => Err(invalid("SSH certificates are not supported")),
        n => Err(invalid(format!(
            "unsupported or unrecognised key type {:?}",
            truncate_for_message(n)
        ))),
    }
}

/// Decodes an SSH public key blob, returning its algorithm name (always one
/// of the supported ones) and the key.
fn parse_ssh_blob(blob: &[u8]) -> Result<(&'static str, Parsed), KeyError> {
    let truncated = || invalid("SSH key data is truncated or malformed");
    let mut r = Reader::new(blob);
    let name = r.string().ok_or_else(truncated)?;
    let name = std::str::from_utf8(name).map_err(|_| truncated())?;
    check_algorithm_name(name)?;
    let result = if name == "ssh-rsa" {
        // The order really is e before n in the SSH encoding.
        let e = r.positive_mpint().ok_or_else(truncated)?;
        let n = r.positive_mpint().ok_or_else(truncated)?;
        (
            "ssh-rsa",
            Parsed::Rsa {
                n: bignum(n)?,
                e: bignum(e)?,
            },
        )
    } else {
        let key = r.string().ok_or_else(truncated)?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| invalid("Ed25519 public key must be exactly 32 bytes"))?;
        ("ssh-ed25519", Parsed::Ed25519(key))
    };
    if !r.is_empty() {
        return Err(invalid("SSH key data has unexpected trailing bytes"));
    }
    Ok(result)
}

fn bignum(magnitude: &[u8]) -> Result<BigNum, KeyError> {
    // Checked before allocating a BigNum so absurd lengths are cheap to refuse.
    let max_bytes = usize::try_from(RSA_MAX_BITS / 8 + 1).unwrap_or(usize::MAX);
    if magnitude.len() > max_bytes {
        return Err(invalid(format!(
            "RSA key is larger than {RSA_MAX_BITS} bits"
        )));
    }
    Ok(BigNum::from_slice(magnitude)?)
}

/// RFC 4716 "SSH2" public key files, as written by `ssh-keygen -e` and many
/// commercial SSH products.
fn parse_rfc4716(text: &str) -> Result<Parsed, KeyError> {
    const BEGIN: &str = "---- BEGIN SSH2 PUBLIC KEY ----";
    const END: &str = "---- END SSH2 PUBLIC KEY ----";
    let mut lines = text.lines().map(str::trim);
    if lines.next() != Some(BEGIN) {
        return Err(invalid("malformed SSH2 public key header line"));
    }

    let mut body = String::new();
    let mut in_headers = true;
    let mut continued = false;
    let mut ended = false;
    for line in lines.by_ref() {
        if line == END {
            ended = true;
            break;
        }
        if continued {
            // Header values may be folded over several lines with a
            // trailing backslash; the folded text is irrelevant to the key.
            continued = line.ends_with('\\');
            continue;
        }
        // Header lines are `Tag: value`; ':' never occurs in base64, so it
        // is an unambiguous marker of where the headers stop.
        if in_headers && line.contains(':') {
            continued = line.ends_with('\\');
            continue;
        }
        in_headers = false;
        body.push_str(line);
    }
    if !ended {
        return Err(invalid("SSH2 public key has no END line"));
    }
    if lines.any(|l| !l.is_empty()) {
        return Err(invalid("unexpected data after the SSH2 public key"));
    }
    if body.is_empty() {
        return Err(invalid("SSH2 public key contains no key data"));
    }
    let blob = decode_base64(&body)?;
    Ok(parse_ssh_blob(&blob)?.1)
}

/// A single PEM block holding a public key.
///
/// Parsed here instead of by OpenSSL's PEM reader because that reader skips
/// unrelated text and ignores data after the block, which would let
/// concatenated or corrupted files through silently.
fn parse_pem(text: &str) -> Result<Parsed, KeyError> {
    let mut lines = text.lines().map(str::trim);
    let first = lines.next().unwrap_or_default();
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| invalid("malformed PEM header line"))?;

    let end_line = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end_line {
            ended = true;
            break;
        }
        if line.contains(':') {
            // RFC 1421 headers only appear on encrypted legacy blocks.
            return Err(invalid("PEM blocks with headers are not supported"));
        }
        body.push_str(line);
    }
    if !ended {
        return Err(invalid("PEM block has no matching END line"));
    }
    if lines.any(|l| !l.is_empty()) {
        return Err(invalid("unexpected data after the PEM block"));
    }

    match label {
        "PUBLIC KEY" => parse_spki_der(&decode_base64(&body)?),
        "RSA PUBLIC KEY" => parse_pkcs1_der(&decode_base64(&body)?),
        l if l.contains("PRIVATE KEY") => {
            Err(invalid("this is a private key; import the public key only"))
        }
        l => Err(invalid(format!(
            "unsupported PEM block {:?}; expected PUBLIC KEY or RSA PUBLIC KEY",
            truncate_for_message(l)
        ))),
    }
}

/// Base64 without any framing: DER SubjectPublicKeyInfo is what EC2 documents.
/// A bare PKCS#1 key or a bare SSH blob is also recognised, since each is
/// unambiguous (the SSH blob starts with a length, DER with a SEQUENCE tag).
fn parse_bare_base64(text: &str) -> Result<Parsed, KeyError> {
    let der = decode_base64(text)?;
    if der.starts_with(&[0, 0, 0]) {
        return Ok(parse_ssh_blob(&der)?.1);
    }
    parse_spki_der(&der).or_else(|spki_err| parse_pkcs1_der(&der).map_err(|_| spki_err))
}

fn parse_spki_der(der: &[u8]) -> Result<Parsed, KeyError> {
    require_single_der_object(der)?;
    let pkey = PKey::<Public>::public_key_from_der(der)
        .map_err(|_| invalid("not a valid DER SubjectPublicKeyInfo public key"))?;
    match pkey.id() {
        Id::RSA => {
            let rsa = pkey.rsa()?;
            Ok(rsa_components(rsa.n(), rsa.e())?)
        }
        Id::ED25519 => {
            let raw = pkey.raw_public_key()?;
            let key: [u8; 32] = raw
                .try_into()
                .map_err(|_| invalid("Ed25519 public key must be exactly 32 bytes"))?;
            Ok(Parsed::Ed25519(key))
        }
        Id::DSA => Err(invalid("DSA keys are not supported; use RSA or Ed25519")),
        Id::EC => Err(invalid("ECDSA keys are not supported; use RSA or Ed25519")),
        _ => Err(invalid(
            "unsupported public key algorithm; use RSA or Ed25519",
        )),
    }
}

fn parse_pkcs1_der(der: &[u8]) -> Result<Parsed, KeyError> {
    require_single_der_object(der)?;
    let rsa = Rsa::public_key_from_der_pkcs1(der)
        .map_err(|_| invalid("not a valid DER PKCS#1 RSA public key"))?;
    rsa_components(rsa.n(), rsa.e())
}

fn rsa_components(n: &BigNumRef, e: &BigNumRef) -> Result<Parsed, KeyError> {
    Ok(Parsed::Rsa {
        n: n.to_owned()?,
        e: e.to_owned()?,
    })
}

/// OpenSSL's DER decoders stop after the first object and ignore the rest,
/// so trailing garbage is rejected here by checking the outer length.
fn require_single_der_object(der: &[u8]) -> Result<(), KeyError> {
    let bad = || invalid("DER data is malformed or has trailing bytes");
    let (&tag, rest) = der.split_first().ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (&first_len, rest) = rest.split_first().ok_or_else(bad)?;
    let (content_len, rest) = if first_len < 0x80 {
        (usize::from(first_len), rest)
    } else {
        let count = usize::from(first_len & 0x7f);
        if count == 0 || count > 4 || count > rest.len() {
            return Err(bad());
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if content_len != rest.len() {
        return Err(bad());
    }
    Ok(())
}

/// Validates a parsed key and produces the stored representation.
fn finish(parsed: Parsed) -> Result<PublicKey, KeyError> {
    match parsed {
        Parsed::Rsa { n, e } => {
            validate_rsa(&n, &e)?;
            let blob = rsa_blob(&e.to_vec(), &n.to_vec());
            let rsa = Rsa::from_public_components(n, e)?;
            // The SPKI is re-encoded from the components rather than taken
            // from the upload, so every input format of one key agrees.
            let spki = PKey::from_rsa(rsa)?.public_key_to_der()?;
            Ok(PublicKey {
                key_type: KeyType::Rsa,
                openssh: openssh_line("ssh-rsa", &blob),
                fingerprint: digest_colon_hex(MessageDigest::md5(), &spki)?,
            })
        }
        Parsed::Ed25519(key) => {
            // Make OpenSSL accept the key once, so nothing is stored that
            // the rest of the tool chain would refuse later.
            PKey::public_key_from_raw_bytes(&key, Id::ED25519)
                .map_err(|_| invalid("not a valid Ed25519 public key"))?;
            let blob = ed25519_blob(&key);
            Ok(PublicKey {
                key_type: KeyType::Ed25519,
                openssh: openssh_line("ssh-ed25519", &blob),
                fingerprint: ed25519_fingerprint(&blob)?,
            })
        }
    }
}

fn validate_rsa(n: &BigNumRef, e: &BigNumRef) -> Result<(), KeyError> {
    let bits = n.num_bits();
    if bits < RSA_MIN_BITS {
        return Err(invalid(format!(
            "RSA key is {bits} bits; at least {RSA_MIN_BITS} bits are required"
        )));
    }
    if bits > RSA_MAX_BITS {
        return Err(invalid(format!(
            "RSA key is {bits} bits; at most {RSA_MAX_BITS} bits are supported"
        )));
    }
    // A product of two odd primes is odd, and e must be odd and > 1 to be
    // invertible; failing either means the "key" cannot be a real RSA key.
    if !n.is_bit_set(0) {
        return Err(invalid("RSA modulus is even; not a valid RSA key"));
    }
    if !e.is_bit_set(0) || e.num_bits() < 2 || e.num_bits() > RSA_MAX_E_BITS {
        return Err(invalid("RSA public exponent is invalid"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Writer;
    use openssl::dsa::Dsa;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn rsa_line(bits: u32) -> String {
        let rsa = Rsa::generate(bits).unwrap();
        openssh_line("ssh-rsa", &rsa_blob(&rsa.e().to_vec(), &rsa.n().to_vec()))
    }

    fn ed_line() -> String {
        let key = PKey::generate_ed25519().unwrap();
        openssh_line("ssh-ed25519", &ed25519_blob(&key.raw_public_key().unwrap()))
    }

    fn err_text(material: &[u8]) -> String {
        match import(material) {
            Err(KeyError::InvalidFormat(m)) => m,
            other => panic!("expected InvalidFormat, got {other:?}"),
        }
    }

    #[test]
    fn openssh_line_with_comment_and_whitespace_is_normalised() {
        let line = ed_line();
        let decorated = format!("  {line}  user@host with spaces \r\n");
        let key = import(decorated.as_bytes()).unwrap();
        assert_eq!(key.openssh, line);
        assert_eq!(key.key_type, KeyType::Ed25519);
        // Padded base64 of a 32-byte digest is 44 characters ending in '='.
        assert_eq!(key.fingerprint.len(), 44);
        assert!(key.fingerprint.ends_with('='));
    }

    #[test]
    fn rsa_import_fingerprint_is_md5_of_spki() {
        let rsa = Rsa::generate(1024).unwrap();
        let line = openssh_line("ssh-rsa", &rsa_blob(&rsa.e().to_vec(), &rsa.n().to_vec()));
        let spki = PKey::from_rsa(rsa).unwrap().public_key_to_der().unwrap();
        let expected = digest_colon_hex(MessageDigest::md5(), &spki).unwrap();
        let key = import(line.as_bytes()).unwrap();
        assert_eq!(key.fingerprint, expected);
        assert_eq!(key.fingerprint.len(), 47);

        // The same key through every other accepted container.
        let pem = String::from_utf8(
            PKey::public_key_from_der(&spki)
                .unwrap()
                .public_key_to_pem()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(import(pem.as_bytes()).unwrap(), key);
        assert_eq!(import(b64(&spki).as_bytes()).unwrap(), key);
        let pkcs1 = Rsa::public_key_from_der(&spki).unwrap();
        let pkcs1_pem = pkcs1.public_key_to_pem_pkcs1().unwrap();
        assert_eq!(import(&pkcs1_pem).unwrap(), key);
        let pkcs1_der = pkcs1.public_key_to_der_pkcs1().unwrap();
        assert_eq!(import(b64(&pkcs1_der).as_bytes()).unwrap(), key);
        let blob_only = line.split(' ').nth(1).unwrap();
        assert_eq!(import(blob_only.as_bytes()).unwrap(), key);
    }

    #[test]
    fn rfc4716_with_folded_headers_is_accepted() {
        let line = ed_line();
        let data = line.split(' ').nth(1).unwrap();
        let (a, b) = data.split_at(30);
        let file = format!(
            "---- BEGIN SSH2 PUBLIC KEY ----\r\n\
             Comment: \"a very long comment that \\\r\n\
             continues: on the next line\"\r\n\
             x-private: whatever\n\
             {a}\n{b}\n\
             ---- END SSH2 PUBLIC KEY ----\n\n"
        );
        assert_eq!(import(file.as_bytes()).unwrap().openssh, line);
    }

    #[test]
    fn rfc4716_without_end_or_with_trailing_data_is_refused() {
        let data = ed_line().split(' ').nth(1).unwrap().to_owned();
        let no_end = format!("---- BEGIN SSH2 PUBLIC KEY ----\n{data}\n");
        assert!(err_text(no_end.as_bytes()).contains("END"));
        let trailing =
            format!("---- BEGIN SSH2 PUBLIC KEY ----\n{data}\n---- END SSH2 PUBLIC KEY ----\nx");
        assert!(import(trailing.as_bytes()).is_err());
        let empty = "---- BEGIN SSH2 PUBLIC KEY ----\nComment: x\n---- END SSH2 PUBLIC KEY ----";
        assert!(import(empty.as_bytes()).is_err());
    }

    #[test]
    fn non_canonical_mpint_is_normalised() {
        let rsa = Rsa::generate(1024).unwrap();
        let canonical = openssh_line("ssh-rsa", &rsa_blob(&rsa.e().to_vec(), &rsa.n().to_vec()));
        let mut padded_e = vec![0, 0, 0];
        padded_e.extend(rsa.e().to_vec());
        let mut padded_n = vec![0, 0];
        padded_n.extend(rsa.n().to_vec());
        let mut w = Writer::new();
        w.string(b"ssh-rsa").string(&padded_e).string(&padded_n);
        let odd = openssh_line("ssh-rsa", &w.into_bytes());
        assert_ne!(odd, canonical);
        assert_eq!(import(odd.as_bytes()).unwrap().openssh, canonical);
    }

    #[test]
    fn rsa_size_limits() {
        assert!(err_text(rsa_line(512).as_bytes()).contains("512 bits"));
        assert!(err_text(rsa_line(1016).as_bytes()).contains("1016 bits"));
        assert!(import(rsa_line(1024).as_bytes()).is_ok());

        // Fabricated moduli: only size and parity are checked for imports, so
        // these stand in for keys that would take minutes to generate.
        let modulus = |bits: usize| {
            let mut n = vec![0xffu8; bits / 8];
            if let Some(last) = n.last_mut() {
                *last = 0xfb;
            }
            n
        };
        let line = |n: &[u8]| openssh_line("ssh-rsa", &rsa_blob(&[1, 0, 1], n));
        assert!(import(line(&modulus(16384)).as_bytes()).is_ok());
        assert!(err_text(line(&modulus(16392)).as_bytes()).contains("at most"));
        assert!(import(line(&modulus(80000)).as_bytes()).is_err());
    }

    #[test]
    fn degenerate_rsa_components_are_refused() {
        let mut n = vec![0xffu8; 256];
        let good_n = n.clone();
        *n.last_mut().unwrap() = 0xfe;
        for (e, n) in [
            (&[1, 0, 1][..], &n[..]),      // even modulus
            (&[1][..], &good_n[..]),       // e = 1
            (&[0][..], &good_n[..]),       // e = 0
            (&[1, 0, 0][..], &good_n[..]), // even e
            (&[0x7f; 9][..], &good_n[..]), // 71-bit e
        ] {
            let line = openssh_line("ssh-rsa", &rsa_blob(e, n));
            assert!(import(line.as_bytes()).is_err(), "accepted e={e:?}");
        }
    }

    #[test]
    fn unsupported_algorithms_are_named_in_the_error() {
        let dsa = Dsa::generate(1024).unwrap();
        let mut w = Writer::new();
        w.string(b"ssh-dss")
            .mpint(&dsa.p().to_vec())
            .mpint(&dsa.q().to_vec())
            .mpint(&dsa.g().to_vec())
            .mpint(&dsa.pub_key().to_vec());
        let dss_line = openssh_line("ssh-dss", &w.into_bytes());
        assert!(err_text(dss_line.as_bytes()).contains("DSA"));
        let dsa_pem = PKey::from_dsa(dsa).unwrap().public_key_to_pem().unwrap();
        assert!(err_text(&dsa_pem).contains("DSA"));

        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let ec_pem = PKey::from_ec_key(ec).unwrap().public_key_to_pem().unwrap();
        assert!(err_text(&ec_pem).contains("ECDSA"));
        assert!(err_text(b"ecdsa-sha2-nistp256 AAAAE2VjZHNh").contains("ECDSA"));
        assert!(err_text(b"sk-ssh-ed25519@openssh.com AAAA").contains("FIDO"));
        assert!(err_text(b"ssh-rsa-cert-v01@openssh.com AAAA").contains("certificate"));
    }

    #[test]
    fn mismatched_type_label_is_refused() {
        let line = ed_line();
        let swapped = line.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(err_text(swapped.as_bytes()).contains("does not match"));
    }

    #[test]
    fn structural_garbage_is_refused() {
        let line = ed_line();
        let data = line.split(' ').nth(1).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b" \n\t ".to_vec(),
            b"hello world".to_vec(),
            b"ssh-ed25519".to_vec(),
            b"ssh-ed25519 !!!!".to_vec(),
            format!("ssh-ed25519 {}", &data[..data.len() - 8]).into_bytes(),
            format!("{line}\n{line}").into_bytes(),
            vec![0xff, 0xfe, 0x00],
            vec![b'A'; MAX_MATERIAL_LEN + 1],
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n".to_vec(),
            b"-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----".to_vec(),
            b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----".to_vec(),
            b"-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----".to_vec(),
            b"-----BEGIN garbage".to_vec(),
            b"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA".to_vec(),
            b"AAAA".to_vec(),
        ];
        for case in cases {
            assert!(
                matches!(import(&case), Err(KeyError::InvalidFormat(_))),
                "accepted {:?}",
                String::from_utf8_lossy(&case[..case.len().min(60)])
            );
        }
    }

    #[test]
    fn trailing_bytes_in_blob_or_der_are_refused() {
        let key = PKey::generate_ed25519().unwrap();
        let mut blob = ed25519_blob(&key.raw_public_key().unwrap());
        blob.push(0);
        assert!(err_text(openssh_line("ssh-ed25519", &blob).as_bytes()).contains("trailing"));

        let mut der = key.public_key_to_der().unwrap();
        assert!(import(b64(&der).as_bytes()).is_ok());
        der.extend_from_slice(&[0, 0]);
        assert!(import(b64(&der).as_bytes()).is_err());
    }

    #[test]
    fn private_key_pem_gets_a_helpful_error() {
        let pem = Rsa::generate(1024).unwrap().private_key_to_pem().unwrap();
        assert!(err_text(&pem).contains("private key"));
    }

    #[test]
    fn every_truncation_of_valid_inputs_fails_cleanly() {
        // Guards the "no panics on hostile input" promise across all parsers.
        let rsa = Rsa::generate(1024).unwrap();
        let spki_pem = PKey::from_rsa(rsa.clone())
            .unwrap()
            .public_key_to_pem()
            .unwrap();
        let line = openssh_line("ssh-rsa", &rsa_blob(&rsa.e().to_vec(), &rsa.n().to_vec()));
        for input in [spki_pem, line.into_bytes()] {
            for cut in 0..input.len() {
                let _ = import(&input[..cut]);
            }
        }
    }
}
