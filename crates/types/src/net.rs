//! Addresses and packet-matching vocabulary used by security-group rules:
//! IPv4 CIDR blocks and IP protocols. The CC will later turn the same values
//! into nftables rules, so they are validated once, here.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Error;

/// An IPv4 block, kept normalised (host bits cleared) so equal blocks compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        let mask = Self::mask_bits(prefix);
        Some(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    fn mask_bits(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_bits(self.prefix) == u32::from(self.addr)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::invalid_value(format!(
                "Value ({s}) for parameter cidrIp is invalid. This is not a valid CIDR block."
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        // Ipv4Addr's parser already refuses leading zeros and out-of-range octets.
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The protocols a managed-mode security group can filter on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// `-1`: every protocol, every port.
    All,
}

impl Protocol {
    /// Accepts names in any case and the IANA numbers, as EC2 does.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Ok(Protocol::Tcp),
            "udp" | "17" => Ok(Protocol::Udp),
            "icmp" | "1" => Ok(Protocol::Icmp),
            "-1" | "all" => Ok(Protocol::All),
            _ => Err(Error::invalid_value(format!(
                "Invalid value '{s}' for IP protocol. Unknown protocol."
            ))),
        }
    }

    /// The spelling EC2 returns in `ipProtocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::All => "-1",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_normalises_and_refuses_garbage() {
        let c: Ipv4Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "256.0.0.0/8",
            "a.b.c.d/1",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/08x",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn protocols_accept_names_and_numbers() {
        assert_eq!(Protocol::parse("TCP").unwrap(), Protocol::Tcp);
        assert_eq!(Protocol::parse("17").unwrap(), Protocol::Udp);
        assert_eq!(Protocol::parse("-1").unwrap(), Protocol::All);
        assert!(Protocol::parse("gre").is_err());
    }
}
