//! Cryptography behind EC2 key pairs and the sealing of secrets at rest.
//!
//! Two API actions need real key material:
//!
//! * `CreateKeyPair` calls [`generate`]: the cloud makes a fresh key pair,
//!   hands the private half back to the caller exactly once and keeps only
//!   the public half ([`PublicKey::openssh`]) plus its fingerprint.
//! * `ImportKeyPair` calls [`import`]: the caller uploads a public key in any
//!   of the formats people actually have lying around (OpenSSH one-liner,
//!   RFC 4716, PEM, bare base64 DER). Everything is reduced to one canonical
//!   OpenSSH line, because that is what the metadata service later serves to
//!   instances and what `cloud-init` writes into `authorized_keys`.
//!
//! Fingerprints follow EC2's own, somewhat historical, conventions so that
//! tooling written against AWS (which compares fingerprints to detect drift)
//! sees the same values here: a SHA-1 over the PKCS#8 private key for created
//! RSA keys, an MD5 over the SubjectPublicKeyInfo for imported RSA keys, and
//! an unprefixed padded base64 SHA-256 of the OpenSSH blob for Ed25519.
//!
//! [`SealKey`] is unrelated to SSH but lives here to keep every direct use of
//! OpenSSL in one reviewed crate: the state database stores access-key
//! secrets sealed with AES-256-GCM so that a copied database file is useless
//! without the separately stored seal key.
//!
//! All parsing treats its input as hostile: malformed input yields
//! [`KeyError::InvalidFormat`], never a panic.

mod generate;
mod import;
mod seal;
mod wire;

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use openssl::hash::{MessageDigest, hash};

pub use generate::{Generated, generate};
pub use import::import;
pub use seal::SealKey;

/// The key algorithms EC2 offers for key pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

impl KeyType {
    /// The spelling used by the EC2 API's `KeyType` parameter and response field.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    /// Accepts exactly the API spellings; EC2 itself is case-sensitive here.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rsa" => Ok(KeyType::Rsa),
            "ed25519" => Ok(KeyType::Ed25519),
            _ => Err(KeyError::InvalidFormat(format!(
                "unknown key type {:?}; expected \"rsa\" or \"ed25519\"",
                truncate_for_message(s)
            ))),
        }
    }
}

/// The public half of a key pair, in the form the rest of the system stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub key_type: KeyType,
    /// Normalised one-line OpenSSH form, e.g. `ssh-rsa AAAA...`, without a
    /// comment. This is what the metadata service hands to instances.
    pub openssh: String,
    /// The fingerprint EC2 would report for this key (see the crate docs for
    /// which flavour applies when).
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The caller supplied something that is not an acceptable key or sealed
    /// value. The message is safe to return to the API client.
    #[error("invalid key format: {0}")]
    InvalidFormat(String),
    /// A cryptographic operation failed: OpenSSL reported an error, or a
    /// sealed value failed authentication.
    #[error("cryptographic failure: {0}")]
    Crypto(String),
}

impl From<openssl::error::ErrorStack> for KeyError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        KeyError::Crypto(e.to_string())
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> KeyError {
    KeyError::InvalidFormat(msg.into())
}

/// Lower-case hex bytes joined by ':' — the layout EC2 uses for its MD5 and
/// SHA-1 fingerprints (and `openssl dgst -c` prints).
pub(crate) fn colon_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

pub(crate) fn digest_colon_hex(md: MessageDigest, data: &[u8]) -> Result<String, KeyError> {
    Ok(colon_hex(&hash(md, data)?))
}

/// EC2's Ed25519 fingerprint: OpenSSH's SHA256 fingerprint but with the
/// base64 padding kept and without the `SHA256:` prefix.
pub(crate) fn ed25519_fingerprint(blob: &[u8]) -> Result<String, KeyError> {
    let digest = hash(MessageDigest::sha256(), blob)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// Keeps attacker-controlled text in error messages short and printable.
pub(crate) fn truncate_for_message(s: &str) -> String {
    s.chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The SSH blob for an Ed25519 public key: `string "ssh-ed25519", string key`.
pub(crate) fn ed25519_blob(public: &[u8]) -> Vec<u8> {
    let mut w = wire::Writer::new();
    w.string(b"ssh-ed25519").string(public);
    w.into_bytes()
}

/// The SSH blob for an RSA public key: `string "ssh-rsa", mpint e, mpint n`.
pub(crate) fn rsa_blob(e: &[u8], n: &[u8]) -> Vec<u8> {
    let mut w = wire::Writer::new();
    w.string(b"ssh-rsa").mpint(e).mpint(n);
    w.into_bytes()
}

pub(crate) fn openssh_line(algorithm: &str, blob: &[u8]) -> String {
    format!(
        "{algorithm} {}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_round_trips_through_its_api_spelling() {
        for kt in [KeyType::Rsa, KeyType::Ed25519] {
            assert_eq!(kt.as_str().parse::<KeyType>().unwrap(), kt);
            assert_eq!(kt.to_string(), kt.as_str());
        }
        assert!("RSA".parse::<KeyType>().is_err());
        assert!("dsa".parse::<KeyType>().is_err());
        assert!("".parse::<KeyType>().is_err());
    }

    #[test]
    fn colon_hex_matches_openssl_c_flag_layout() {
        assert_eq!(colon_hex(&[0x00, 0xab, 0x0f]), "00:ab:0f");
        assert_eq!(colon_hex(&[]), "");
        let md5 = digest_colon_hex(MessageDigest::md5(), b"").unwrap();
        assert_eq!(md5, "d4:1d:8c:d9:8f:00:b2:04:e9:80:09:98:ec:f8:42:7e");
    }

    #[test]
    fn error_messages_do_not_echo_control_characters() {
        let msg = truncate_for_message("a\nb\u{1b}[31m");
        assert!(!msg.chars().any(char::is_control));
    }
}
