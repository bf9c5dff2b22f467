//! The cloud properties an administrator sets (`ironbark admin property
//! set NAME VALUE`), checked before they are stored.
//!
//! The places that read a property fall back to its default when the
//! stored value does not parse, so that a bad row never stops the cloud;
//! checking at the one place values come in is what keeps a typo from
//! being accepted and then silently ignored. A refused value is
//! `InvalidParameterValue` and changes nothing. Names this module does not
//! know are stored as given (the cloud keeps some state of its own as
//! properties, and the original had many an operator may still script).

use ironbark_sc_api::Compression;
use ironbark_types::{Error, Result};

/// Seconds a terminated instance is kept before it is buried.
pub const TERMINATED_TIME: &str = "cloud.vmstate.terminated_time";
/// Seconds between the CLC's safety-net passes over its CC.
pub const CLUSTER_POLL: &str = "cloud.cluster.poll_interval";
/// Seconds between the CC's polls of its NCs.
pub const NODE_POLL: &str = "cloud.node.poll_interval";
/// How new snapshots are compressed on their way to Walrus: `gzip` (the
/// default, as the original did) or `zstd`. A snapshot keeps the method
/// it was started with.
pub const SNAPSHOT_COMPRESSION: &str = "cloud.storage.snapshot_compression";

/// Refuses a value the cloud would not read as meant for a property it
/// knows.
pub fn check_property(name: &str, value: &str) -> Result<()> {
    let seconds = |lo: u64, hi: u64| match value.trim().parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(Error::invalid_value(format!(
            "{name} must be a whole number of seconds from {lo} to {hi}, not '{value}'"
        ))),
    };
    match name {
        TERMINATED_TIME => seconds(0, 10 * 365 * 24 * 3600),
        CLUSTER_POLL | NODE_POLL => seconds(1, 3600),
        SNAPSHOT_COMPRESSION => compression(Some(value)).map(|_| ()),
        _ => Ok(()),
    }
}

/// The compression a stored [`SNAPSHOT_COMPRESSION`] value names (gzip
/// when unset).
pub fn compression(value: Option<&str>) -> Result<Compression> {
    match value.map(str::trim) {
        None => Ok(Compression::default()),
        Some(v) => Compression::from_name(v).ok_or_else(|| {
            Error::invalid_value(format!(
                "{SNAPSHOT_COMPRESSION} must be 'gzip' or 'zstd', not '{v}'"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironbark_types::ErrorKind;

    fn refused(name: &str, value: &str) -> bool {
        check_property(name, value).is_err_and(|e| e.kind == ErrorKind::InvalidParameterValue)
    }

    #[test]
    fn known_properties_take_only_what_they_can_use() {
        assert!(check_property(TERMINATED_TIME, "0").is_ok());
        assert!(refused(TERMINATED_TIME, "-1"));
        assert!(refused(TERMINATED_TIME, "ten"));
        assert!(check_property(CLUSTER_POLL, "20").is_ok());
        assert!(refused(CLUSTER_POLL, "0"));
        assert!(refused(NODE_POLL, "3601"));
        assert!(check_property(SNAPSHOT_COMPRESSION, "zstd").is_ok());
        assert!(check_property(SNAPSHOT_COMPRESSION, "gzip").is_ok());
        assert!(refused(SNAPSHOT_COMPRESSION, "xz"));
        assert!(check_property("cloud.something.else", "anything").is_ok());
        assert_eq!(compression(None).unwrap(), Compression::Gzip);
        assert_eq!(compression(Some("zstd")).unwrap(), Compression::Zstd);
    }
}
