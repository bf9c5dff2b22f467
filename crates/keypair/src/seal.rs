//! Authenticated encryption of secrets stored in the state database.
//!
//! The format is versioned (`v1:`) so the algorithm can change later without
//! guessing what an existing row contains.

use base64::Engine as _;
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};

use crate::{KeyError, invalid};

const PREFIX: &str = "v1:";
const KEY_LEN: usize = 32;
/// 96 bits is GCM's native nonce size; random nonces of this size are safe
/// for far more seals than a control plane will ever perform under one key.
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A 256-bit key for sealing secrets at rest.
///
/// Kept outside the database (for example in a root-only file) so that the
/// database alone does not reveal the secrets sealed with it.
#[derive(Clone)]
pub struct SealKey([u8; KEY_LEN]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// A fresh random key from OpenSSL's CSPRNG.
    pub fn generate() -> SealKey {
        let mut key = [0u8; KEY_LEN];
        // Failure here means the OS entropy source is unusable; continuing
        // with a predictable key would be worse than stopping.
        openssl::rand::rand_bytes(&mut key).expect("OpenSSL CSPRNG failed");
        SealKey(key)
    }

    /// Accepts exactly 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<SealKey, KeyError> {
        let key: [u8; KEY_LEN] = b.try_into().map_err(|_| {
            invalid(format!(
                "seal key must be exactly {KEY_LEN} bytes, got {}",
                b.len()
            ))
        })?;
        Ok(SealKey(key))
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    /// Encrypts `plaintext` with AES-256-GCM under a random nonce.
    ///
    /// `aad` is authenticated but not stored: pass something that identifies
    /// the row (such as the access key id), so a sealed value copied into
    /// another row fails to open there.
    ///
    /// Output: `"v1:" + base64(nonce || ciphertext || tag)`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).expect("OpenSSL CSPRNG failed");
        let mut tag = [0u8; TAG_LEN];
        // AES-256-GCM with a correctly sized key and nonce has no failure
        // mode for valid inputs; an error would mean a broken OpenSSL build.
        let ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(&nonce),
            aad,
            plaintext,
            &mut tag,
        )
        .expect("AES-256-GCM encryption failed");

        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out.extend_from_slice(&tag);
        let mut sealed = String::from(PREFIX);
        base64::engine::general_purpose::STANDARD.encode_string(out, &mut sealed);
        sealed
    }

    /// Reverses [`SealKey::seal`]. Returns [`KeyError::InvalidFormat`] for
    /// values that are not sealed values at all, and [`KeyError::Crypto`]
    /// when authentication fails (wrong key, wrong `aad`, or tampering).
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let encoded = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("sealed value has an unknown version prefix"))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| invalid("sealed value is not valid base64"))?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(invalid("sealed value is too short"));
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(nonce),
            aad,
            ciphertext,
            tag,
        )
        .map_err(|_| {
            KeyError::Crypto(
                "sealed value failed authentication (wrong key, wrong row, or tampered)".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_including_empty_plaintext() {
        let key = SealKey::generate();
        for plaintext in [&b""[..], b"x", b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"] {
            let sealed = key.seal(plaintext, b"AKIAEXAMPLE");
            assert!(sealed.starts_with("v1:"));
            assert_eq!(key.open(&sealed, b"AKIAEXAMPLE").unwrap(), plaintext);
        }
    }

    #[test]
    fn seals_of_the_same_plaintext_differ() {
        let key = SealKey::generate();
        let a = key.seal(b"secret", b"row");
        let b = key.seal(b"secret", b"row");
        assert_ne!(a, b);
        assert_eq!(key.open(&a, b"row").unwrap(), key.open(&b, b"row").unwrap());
    }

    #[test]
    fn wrong_aad_or_key_fails_authentication() {
        let key = SealKey::generate();
        let sealed = key.seal(b"secret", b"AKIA1");
        assert!(matches!(
            key.open(&sealed, b"AKIA2"),
            Err(KeyError::Crypto(_))
        ));
        assert!(matches!(key.open(&sealed, b""), Err(KeyError::Crypto(_))));
        let other = SealKey::generate();
        assert!(matches!(
            other.open(&sealed, b"AKIA1"),
            Err(KeyError::Crypto(_))
        ));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let key = SealKey::generate();
        let sealed = key.seal(b"secret value", b"row");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sealed[PREFIX.len()..])
            .unwrap();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut tampered = raw.clone();
                tampered[i] ^= 1 << bit;
                let text = format!(
                    "{PREFIX}{}",
                    base64::engine::general_purpose::STANDARD.encode(&tampered)
                );
                assert!(key.open(&text, b"row").is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn malformed_sealed_values_are_format_errors() {
        let key = SealKey::generate();
        let sealed = key.seal(b"secret", b"row");
        let truncated = &sealed[..sealed.len() - 8];
        for bad in [
            "",
            "v1:",
            "v2:AAAA",
            "secret",
            "v1:!!!!",
            "v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 27 bytes: under nonce + tag
            &sealed[3..],
        ] {
            assert!(
                matches!(key.open(bad, b"row"), Err(KeyError::InvalidFormat(_))),
                "{bad:?}"
            );
        }
        assert!(key.open(truncated, b"row").is_err());
    }

    #[test]
    fn key_bytes_round_trip_and_length_is_enforced() {
        let key = SealKey::generate();
        let copy = SealKey::from_bytes(&key.to_bytes()).unwrap();
        let sealed = key.seal(b"secret", b"row");
        assert_eq!(copy.open(&sealed, b"row").unwrap(), b"secret");
        assert!(SealKey::from_bytes(&[0; 31]).is_err());
        assert!(SealKey::from_bytes(&[0; 33]).is_err());
        assert!(SealKey::from_bytes(&[]).is_err());
        assert_eq!(format!("{key:?}"), "SealKey(<redacted>)");
    }

    #[test]
    fn known_answer_with_fixed_key() {
        // Pins the stored layout so existing rows stay readable across
        // refactors. The value was produced independently (Python's
        // `cryptography` AESGCM, key 32x 0x07, nonce 12x 0x09, aad "id").
        let key = SealKey::from_bytes(&[7; 32]).unwrap();
        let stored = "v1:CQkJCQkJCQkJCQkJT+Do+NEIs4vlgQpQKI1A+n6m3u9r";
        assert_eq!(key.open(stored, b"id").unwrap(), b"hello");
        assert!(key.open(stored, b"ie").is_err());
    }
}
