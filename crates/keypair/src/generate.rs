//! `CreateKeyPair`: fresh key material in the formats EC2 hands out.

use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use crate::wire::Writer;
use crate::{
    KeyError, KeyType, PublicKey, digest_colon_hex, ed25519_blob, ed25519_fingerprint,
    openssh_line, rsa_blob,
};

/// EC2's `CreateKeyPair` always makes 2048-bit RSA keys.
const RSA_BITS: u32 = 2048;

/// A newly created key pair. The private key is returned to the API caller
/// once and must not be stored by the cloud.
#[derive(Clone)]
pub struct Generated {
    /// `fingerprint` here is EC2's *create* fingerprint, which for RSA differs
    /// in kind from the import fingerprint of the very same key.
    pub public: PublicKey,
    /// PEM text: PKCS#1 (`BEGIN RSA PRIVATE KEY`) for RSA, the OpenSSH
    /// private key format for Ed25519 — the same choices EC2 makes.
    pub private_key: String,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keeps the private key out of logs that print this with `{:?}`.
        f.debug_struct("Generated")
            .field("public", &self.public)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Creates a key pair for `CreateKeyPair`.
pub fn generate(key_type: KeyType) -> Result<Generated, KeyError> {
    match key_type {
        KeyType::Rsa => generate_rsa(),
        KeyType::Ed25519 => generate_ed25519(),
    }
}

fn generate_rsa() -> Result<Generated, KeyError> {
    // OpenSSL's default public exponent is 65537, which is what EC2 uses.
    let rsa = Rsa::generate(RSA_BITS)?;
    let blob = rsa_blob(&rsa.e().to_vec(), &rsa.n().to_vec());
    // `Rsa::private_key_to_pem` writes the traditional PKCS#1 form that
    // EC2 returns and that old clients (PuTTYgen, older ssh) expect.
    let private_key = pem_to_string(rsa.private_key_to_pem()?)?;
    let pkcs8 = PKey::from_rsa(rsa)?.private_key_to_pkcs8()?;
    Ok(Generated {
        public: PublicKey {
            key_type: KeyType::Rsa,
            openssh: openssh_line("ssh-rsa", &blob),
            fingerprint: digest_colon_hex(MessageDigest::sha1(), &pkcs8)?,
        },
        private_key,
    })
}

fn generate_ed25519() -> Result<Generated, KeyError> {
    let key = PKey::generate_ed25519()?;
    let seed = key.raw_private_key()?;
    let public = key.raw_public_key()?;
    let blob = ed25519_blob(&public);
    Ok(Generated {
        public: PublicKey {
            key_type: KeyType::Ed25519,
            openssh: openssh_line("ssh-ed25519", &blob),
            fingerprint: ed25519_fingerprint(&blob)?,
        },
        private_key: openssh_ed25519_private_key(&seed, &public, &blob)?,
    })
}

fn pem_to_string(pem: Vec<u8>) -> Result<String, KeyError> {
    String::from_utf8(pem).map_err(|_| KeyError::Crypto("OpenSSL produced non-UTF-8 PEM".into()))
}

/// Serialises an unencrypted OpenSSH private key (`openssh-key-v1`, see
/// PROTOCOL.key in the OpenSSH sources), the only format OpenSSH reads
/// Ed25519 private keys from.
fn openssh_ed25519_private_key(
    seed: &[u8],
    public: &[u8],
    public_blob: &[u8],
) -> Result<String, KeyError> {
    const AUTH_MAGIC: &[u8] = b"openssh-key-v1\0";
    // With cipher "none" OpenSSH still pads the private section to 8 bytes.
    const BLOCK_SIZE: usize = 8;

    // Two equal random words let OpenSSH detect a wrong passphrase on
    // encrypted keys; it verifies them on unencrypted keys too.
    let mut check = [0u8; 4];
    openssl::rand::rand_bytes(&mut check)?;
    let check = u32::from_be_bytes(check);

    // OpenSSH's Ed25519 "private key" is seed || public key, 64 bytes.
    let mut secret = Vec::with_capacity(seed.len() + public.len());
    secret.extend_from_slice(seed);
    secret.extend_from_slice(public);

    let mut private = Writer::new();
    private
        .u32(check)
        .u32(check)
        .string(b"ssh-ed25519")
        .string(public)
        .string(&secret)
        .string(b""); // comment
    let mut pad: u8 = 1;
    while !private.len().is_multiple_of(BLOCK_SIZE) {
        private.raw(&[pad]);
        pad += 1;
    }
    let private = private.into_bytes();

    let mut file = Writer::new();
    file.raw(AUTH_MAGIC)
        .string(b"none") // cipher
        .string(b"none") // kdf
        .string(b"") // kdf options
        .u32(1) // number of keys
        .string(public_blob)
        .string(&private);
    let encoded = base64::engine::general_purpose::STANDARD.encode(file.into_bytes());

    // OpenSSH wraps the base64 at 70 columns; matching it keeps the files
    // indistinguishable from `ssh-keygen` output.
    let mut out = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for chunk in encoded.as_bytes().chunks(70) {
        out.push_str(
            std::str::from_utf8(chunk)
                .map_err(|_| KeyError::Crypto("base64 output was not ASCII".into()))?,
        );
        out.push('\n');
    }
    out.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import;
    use crate::wire::Reader;

    #[test]
    fn rsa_pair_is_consistent() {
        let generated = generate(KeyType::Rsa).unwrap();
        assert!(
            generated
                .private_key
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );
        let rsa = Rsa::private_key_from_pem(generated.private_key.as_bytes()).unwrap();
        assert_eq!(rsa.size() * 8, RSA_BITS);
        assert_eq!(rsa.e().to_vec(), [1, 0, 1]);
        assert!(rsa.check_key().unwrap());

        let fp = &generated.public.fingerprint;
        assert_eq!(fp.len(), 59, "SHA-1 colon hex: {fp}");

        // Importing the public half gives the same line but the *import*
        // fingerprint (MD5), exactly as on EC2.
        let imported = import(generated.public.openssh.as_bytes()).unwrap();
        assert_eq!(imported.openssh, generated.public.openssh);
        assert_eq!(imported.fingerprint.len(), 47);
    }

    #[test]
    fn ed25519_private_key_structure() {
        let generated = generate(KeyType::Ed25519).unwrap();
        let pem = &generated.private_key;
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .inspect(|l| assert!(l.len() <= 70))
            .collect();
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let rest = raw.strip_prefix(b"openssh-key-v1\0").unwrap();

        let mut r = Reader::new(rest);
        assert_eq!(r.string().unwrap(), b"none");
        assert_eq!(r.string().unwrap(), b"none");
        assert_eq!(r.string().unwrap(), b"");
        assert_eq!(r.u32().unwrap(), 1);
        let public_blob = r.string().unwrap();
        let private = r.string().unwrap();
        assert!(r.is_empty());
        assert!(private.len().is_multiple_of(8));

        let line = generated.public.openssh.split(' ').nth(1).unwrap();
        let expected_blob = base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap();
        assert_eq!(public_blob, expected_blob);

        let mut p = Reader::new(private);
        assert_eq!(p.u32(), p.u32());
        assert_eq!(p.string().unwrap(), b"ssh-ed25519");
        let public = p.string().unwrap();
        let secret = p.string().unwrap();
        assert_eq!(p.string().unwrap(), b"");
        assert_eq!(&secret[32..], public);
        // The seed must really produce the public key.
        let key =
            PKey::private_key_from_raw_bytes(&secret[..32], openssl::pkey::Id::ED25519).unwrap();
        assert_eq!(key.raw_public_key().unwrap(), public);

        // Created and imported Ed25519 fingerprints are the same kind.
        let imported = import(generated.public.openssh.as_bytes()).unwrap();
        assert_eq!(imported, generated.public);
    }

    #[test]
    fn generated_keys_are_distinct() {
        let a = generate(KeyType::Ed25519).unwrap();
        let b = generate(KeyType::Ed25519).unwrap();
        assert_ne!(a.public.openssh, b.public.openssh);
        assert!(!format!("{a:?}").contains("PRIVATE KEY"));
    }
}
