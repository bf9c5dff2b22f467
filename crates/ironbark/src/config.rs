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
        "VNET_PUBINTERFACE",
        "the CC's interface that holds instances' public addresses",
    ),
    (
        "VNET_PUBLICIPS",
        "public addresses for instances and elastic IPs: addresses, ranges (a.b.c.d-a.b.c.e) and blocks (a.b.c.d/n), separated by spaces or commas",
    ),
    (
        "VNET_TAGS",
        "isolation tags (VXLAN VNIs) for security groups' segments, FIRST-LAST (default 1000-16777215)",
    ),
    (
        "VNET_PRIVINTERFACE",
        "interface segment tunnels (VXLAN) between the CC and NC hosts run over",
    ),
    ("NC_ACCEL", "kvm, tcg or auto (a real probe boot picks)"),
    (
        "CC_URL",
        "the CC's control API, for `ironbark clc` and `ironbark nc` (default http://127.0.0.1:<api port + 1>)",
    ),
    (
        "NODES",
        "`ironbark cc`: the NCs it drives, `id=http://host:port` or `host:port` (id nc-<port>), separated by spaces",
    ),
    ("NC_ID", "`ironbark nc`: this node's id (default nc-<port>)"),
    (
        "SC_URL",
        "`ironbark clc`: the SC's control API (default http://127.0.0.1:<api port + 3>)",
    ),
    (
        "SC_NBD_HOST",
        "the address the SC's NBD exports listen on and NCs connect to (default 127.0.0.1)",
    ),
    (
        "SC_LOCAL_NODES",
        "`ironbark sc`: ids of the NCs on the SC's own host, space-separated; their volumes go over a root-only Unix socket without TLS (`ironbark up` does this for its own NC)",
    ),
    (
        "CC_ZONE",
        "`ironbark cc`: the availability zone it runs (default: the first of ZONES)",
    ),
    (
        "CLUSTER_TOKEN_FILE",
        "`ironbark cc`/`nc`: the cluster token (default DIR/keys/cluster.token, copied from the CLC host)",
    ),
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

/// The most addresses a pool may hold; a typo like `/8` should not make a
/// 16-million-entry list.
const MAX_PUBLIC_IPS: usize = 65536;

/// VNET_PUBLICIPS: single addresses, inclusive ranges (`a.b.c.d-a.b.c.e`,
/// or `a.b.c.d-e` for the last octet, as Eucalyptus wrote them) and CIDR
/// blocks (their host addresses), separated by spaces or commas. Order is
/// kept (addresses are handed out from the front); duplicates are errors.
pub fn parse_public_ips(v: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
    use std::net::Ipv4Addr;
    let ip = |s: &str| -> Result<u32, String> {
        s.parse::<Ipv4Addr>()
            .map(u32::from)
            .map_err(|_| format!("'{s}' is not an IPv4 address"))
    };
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for tok in v
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
    {
        let (first, last) = if let Some((a, b)) = tok.split_once('-') {
            let a = ip(a)?;
            let b = if b.contains('.') {
                ip(b)?
            } else {
                let octet: u8 = b
                    .parse()
                    .map_err(|_| format!("'{tok}': bad range end '{b}'"))?;
                (a & 0xffff_ff00) | u32::from(octet)
            };
            if b < a {
                return Err(format!("'{tok}': the range ends before it starts"));
            }
            (a, b)
        } else if let Some((a, len)) = tok.split_once('/') {
            let len: u32 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("'{tok}': bad prefix length"))?;
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let base = ip(a)? & mask;
            let last = base | !mask;
            if len >= 31 {
                (base, last)
            } else {
                (base + 1, last - 1)
            }
        } else {
            let a = ip(tok)?;
            (a, a)
        };
        if (last - first) as usize >= MAX_PUBLIC_IPS
            || out.len() + ((last - first) as usize) >= MAX_PUBLIC_IPS
        {
            return Err(format!("more than {MAX_PUBLIC_IPS} addresses"));
        }
        for n in first..=last {
            let a = Ipv4Addr::from(n);
            if !seen.insert(a) {
                return Err(format!("{a} is listed twice"));
            }
            out.push(a);
        }
    }
    Ok(out)
}

/// VNET_TAGS, `FIRST-LAST`: the isolation tags segments may use. VXLAN
/// network identifiers are 24 bits; 0 is left out (some switches treat it
/// as "no VNI").
pub fn parse_tags(v: &str) -> Result<(u32, u32), String> {
    let (a, b) = v
        .trim()
        .split_once('-')
        .ok_or_else(|| format!("{v:?} is not FIRST-LAST"))?;
    let num = |s: &str| -> Result<u32, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if a == 0 || b > ironbark_clc::MAX_VNI || a > b {
        return Err(format!(
            "{v:?}: tags run from 1 to {} and FIRST must not exceed LAST",
            ironbark_clc::MAX_VNI
        ));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_ranges_are_checked() {
        assert_eq!(parse_tags("100-199"), Ok((100, 199)));
        assert_eq!(parse_tags(" 5 - 5 "), Ok((5, 5)));
        for bad in ["", "100", "0-10", "10-5", "1-16777216", "a-b"] {
            assert!(parse_tags(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn public_ip_pools_in_every_spelling() {
        let ips = |v: &str| -> Vec<String> {
            parse_public_ips(v)
                .unwrap()
                .iter()
                .map(|a| a.to_string())
                .collect()
        };
        assert_eq!(
            ips("203.0.113.10-203.0.113.12, 198.51.100.7"),
            [
                "203.0.113.10",
                "203.0.113.11",
                "203.0.113.12",
                "198.51.100.7"
            ]
        );
        assert_eq!(ips("203.0.113.1-2"), ["203.0.113.1", "203.0.113.2"]);
        assert_eq!(
            ips("192.0.2.0/30"),
            ["192.0.2.1", "192.0.2.2"],
            "a block gives its host addresses"
        );
        assert_eq!(ips("192.0.2.9/32"), ["192.0.2.9"]);
        assert!(ips("").is_empty());
        for bad in [
            "203.0.113.5-203.0.113.1",
            "203.0.113.300",
            "10.0.0.0/8",
            "192.0.2.1 192.0.2.1",
            "192.0.2.1/33",
            "192.0.2.1-x",
        ] {
            assert!(parse_public_ips(bad).is_err(), "{bad} must be refused");
        }
    }

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
