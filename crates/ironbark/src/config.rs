//! The operator's configuration file, in the eucalyptus.conf idiom: one
//! `KEY="value"` per line, `#` comments, shell-style quoting kept simple.
//! Every role reads the same file and takes the keys it knows; unknown keys
//! are reported, not fatal, so one file can serve a whole multi-host cloud.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    values: BTreeMap<String, String>,
}

/// Keys this version understands, with what they set.
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    (
        "REGION",
        "region name reported by DescribeRegions and written to admin/config",
    ),
    (
        "ZONES",
        "comma-separated availability zone names (the first is the default)",
    ),
    (
        "CLC_URL",
        "URL clients use to reach the cloud, if not http://<listen>/",
    ),
    (
        "WALRUS_URL",
        "URL clients use to reach Walrus, if not http://<walrus-listen>/",
    ),
    (
        "WALRUS_LOCATIONS",
        "comma-separated LocationConstraint values CreateBucket accepts (default: the region)",
    ),
    ("VNET_MODE", "network mode; MANAGED (the only one)"),
    (
        "VNET_SUBNET",
        "address space security-group segments are carved from",
    ),
    ("VNET_NETMASK", "its netmask"),
    (
        "VNET_ADDRSPERNET",
        "addresses per security group's segment (a power of two)",
    ),
    ("VNET_DNS", "DNS server handed to instances by DHCP"),
    (
        "VNET_PUBLICIPS",
        "public addresses for instances: addresses, a-b ranges and CIDR blocks",
    ),
    (
        "VNET_PUBINTERFACE",
        "CC interface that holds instances' public addresses (as /32s)",
    ),
    (
        "VNET_PRIVINTERFACE",
        "interface segment tunnels (VXLAN) between the CC and NC hosts run over",
    ),
    ("NC_ACCEL", "kvm, tcg or auto (a real probe boot picks)"),
    (
        "WALRUS_DOMAINS",
        "comma-separated base domains for virtual-host-style bucket addressing",
    ),
];

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected KEY=\"value\"", n + 1))?;
            let k = k.trim();
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("line {}: bad key '{k}'", n + 1));
            }
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"'))
                    || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                v
            };
            values.insert(k.to_string(), v.to_string());
        }
        Ok(ConfigFile { values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Keys present that this version does not use (possibly another role's).
    pub fn unknown_keys(&self) -> Vec<&str> {
        self.values
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_KEYS.iter().any(|(n, _)| n == k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_eucalyptus_conf_style() {
        let c = ConfigFile::parse(
            "# comment\nREGION=\"east\"\n  ZONES='a,b'\nexport CLC_URL=http://x:1/\nEMPTY=\"\"\nSC_ONLY_KEY=\"x\"\n",
        )
        .unwrap();
        assert_eq!(c.get("REGION"), Some("east"));
        assert_eq!(c.get("ZONES"), Some("a,b"));
        assert_eq!(c.get("CLC_URL"), Some("http://x:1/"));
        assert_eq!(c.get("EMPTY"), None);
        assert_eq!(c.unknown_keys(), vec!["EMPTY", "SC_ONLY_KEY"]);
        assert!(ConfigFile::parse("no equals sign").is_err());
        assert!(ConfigFile::parse("BAD KEY=1").is_err());
    }
}
