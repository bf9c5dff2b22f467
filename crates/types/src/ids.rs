//! Newtype ids. Each id kind has its own type so an account id can never be
//! passed where a group id is expected; each knows its AWS spelling
//! (`sg-…`, `key-…`, 12-digit account numbers, `AKI…` access keys) and how to
//! mint a fresh random one.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::{Error, ErrorKind};

fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect()
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Wraps a value read back from the store, which only ever held valid ids.
            pub fn from_stored(s: impl Into<String>) -> Self {
                $name(s.into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

macro_rules! prefixed_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal, $kind:expr) => {
        string_id!($(#[$m])* $name);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id: the prefix and 17 hex digits, as current AWS ids are.
            pub fn generate() -> Self {
                $name(format!("{}{}", $prefix, random_hex(17)))
            }

            /// Accepts the 8- and 17-digit forms (older clouds and Eucalyptus used 8).
            pub fn parse(s: &str) -> Result<Self, Error> {
                let ok = s
                    .strip_prefix($prefix)
                    .map(|h| {
                        (h.len() == 8 || h.len() == 17)
                            && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    })
                    .unwrap_or(false);
                if ok {
                    Ok($name(s.to_string()))
                } else {
                    Err(Error::new($kind, format!("Invalid id: \"{s}\"")))
                }
            }
        }
    };
}

prefixed_id!(
    /// A security group, `sg-…`.
    SecurityGroupId,
    "sg-",
    ErrorKind::GroupIdMalformed
);
prefixed_id!(
    /// An instance, `i-…`.
    InstanceId,
    "i-",
    ErrorKind::InstanceIdMalformed
);
prefixed_id!(
    /// A reservation (one RunInstances call), `r-…`.
    ReservationId,
    "r-",
    ErrorKind::InvalidId
);
prefixed_id!(
    /// An EBS volume, `vol-…`.
    VolumeId,
    "vol-",
    ErrorKind::VolumeIdMalformed
);
prefixed_id!(
    /// An EBS snapshot, `snap-…`.
    SnapshotId,
    "snap-",
    ErrorKind::SnapshotIdMalformed
);
prefixed_id!(
    /// An elastic IP allocation, `eipalloc-…`.
    AllocationId,
    "eipalloc-",
    ErrorKind::AllocationIdNotFound
);
prefixed_id!(
    /// An elastic IP's association with an instance, `eipassoc-…`.
    AssociationId,
    "eipassoc-",
    ErrorKind::AssociationIdNotFound
);
prefixed_id!(
    /// A key pair, `key-…` (what KeyPairId filters and tags address).
    KeyPairId,
    "key-",
    ErrorKind::InvalidId
);

/// What an image is: a bootable machine image, or the kernel or ramdisk
/// one boots with. Eucalyptus named them by prefix: `emi-`, `eki-`, `eri-`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageKind {
    Machine,
    Kernel,
    Ramdisk,
}

impl ImageKind {
    pub fn prefix(self) -> &'static str {
        match self {
            ImageKind::Machine => "emi-",
            ImageKind::Kernel => "eki-",
            ImageKind::Ramdisk => "eri-",
        }
    }

    /// The spelling of `imageType` in DescribeImages.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Machine => "machine",
            ImageKind::Kernel => "kernel",
            ImageKind::Ramdisk => "ramdisk",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "machine" => Some(ImageKind::Machine),
            "kernel" => Some(ImageKind::Kernel),
            "ramdisk" => Some(ImageKind::Ramdisk),
            _ => None,
        }
    }
}

string_id!(
    /// An image: `emi-`, `eki-` or `eri-` and 8 or 17 hex digits. AWS-style
    /// `ami-`/`aki-`/`ari-` spellings of the same id are accepted on input.
    ImageId
);

impl ImageId {
    pub fn generate(kind: ImageKind) -> Self {
        ImageId(format!("{}{}", kind.prefix(), random_hex(17)))
    }

    pub fn kind(&self) -> ImageKind {
        match &self.0[..4] {
            "eki-" => ImageKind::Kernel,
            "eri-" => ImageKind::Ramdisk,
            _ => ImageKind::Machine,
        }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::new(ErrorKind::ImageIdMalformed, format!("Invalid id: \"{s}\""));
        if s.len() < 4 {
            return Err(bad());
        }
        let prefix = match &s[..4] {
            "emi-" | "ami-" => "emi-",
            "eki-" | "aki-" => "eki-",
            "eri-" | "ari-" => "eri-",
            _ => return Err(bad()),
        };
        let h = &s[4..];
        if (h.len() == 8 || h.len() == 17)
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            Ok(ImageId(format!("{prefix}{h}")))
        } else {
            Err(bad())
        }
    }
}

string_id!(
    /// An account: 12 decimal digits, as AWS account numbers are.
    AccountId
);

impl AccountId {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        // A leading zero would be legal but confuses tools that treat it as a number.
        let first = rng.random_range(1..10u8);
        AccountId(format!("{first}{}", random_from(b"0123456789", 11)))
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(AccountId(s.to_string()))
        } else {
            Err(Error::invalid_value(format!("Invalid account id: \"{s}\"")))
        }
    }
}

string_id!(
    /// An access key id: `AKI` and 17 upper-case letters or digits (20 in all).
    AccessKeyId
);

impl AccessKeyId {
    pub fn generate() -> Self {
        AccessKeyId(format!(
            "AKI{}",
            random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 17)
        ))
    }

    /// Imported keys keep whatever id the other cloud gave them, within the
    /// shape every AWS client accepts.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if (16..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(AccessKeyId(s.to_string()))
        } else {
            Err(Error::invalid_value(format!(
                "Invalid access key id \"{s}\": 16 to 128 letters or digits"
            )))
        }
    }
}

/// A freshly minted secret access key (40 characters, as AWS issues them).
pub fn generate_secret_key() -> String {
    random_from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        40,
    )
}

/// A request id for the `requestId` element and logs.
pub fn generate_request_id() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        for _ in 0..100 {
            let g = SecurityGroupId::generate();
            assert_eq!(SecurityGroupId::parse(g.as_str()).unwrap(), g);
            assert_eq!(g.as_str().len(), 20);
            let a = AccountId::generate();
            assert_eq!(AccountId::parse(a.as_str()).unwrap(), a);
            let k = AccessKeyId::generate();
            assert_eq!(k.as_str().len(), 20);
            assert!(AccessKeyId::parse(k.as_str()).is_ok());
            assert_eq!(generate_secret_key().len(), 40);
        }
    }

    #[test]
    fn image_ids_know_their_kind_and_accept_aws_spellings() {
        let k = ImageId::generate(ImageKind::Kernel);
        assert_eq!(k.kind(), ImageKind::Kernel);
        assert_eq!(ImageId::parse(k.as_str()).unwrap(), k);
        assert_eq!(
            ImageId::parse("ami-1234abcd").unwrap().as_str(),
            "emi-1234abcd"
        );
        assert_eq!(
            ImageId::parse("ari-1234abcd").unwrap().kind(),
            ImageKind::Ramdisk
        );
        assert_eq!(
            ImageId::parse("emi-xyz").unwrap_err().kind,
            ErrorKind::ImageIdMalformed
        );
        assert!(ImageId::parse("sg-1234abcd").is_err());
    }

    #[test]
    fn malformed_ids_are_refused_with_their_code() {
        assert_eq!(
            SecurityGroupId::parse("sg-xyz").unwrap_err().kind,
            ErrorKind::GroupIdMalformed
        );
        assert!(SecurityGroupId::parse("sg-1234abcd").is_ok());
        assert!(SecurityGroupId::parse("sg-1234ABCD").is_err());
        assert!(KeyPairId::parse("sg-1234abcd").is_err());
        assert!(AccountId::parse("12345").is_err());
        assert!(AccessKeyId::parse("short").is_err());
    }
}
