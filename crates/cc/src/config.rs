//! The CC's configuration: who it is, where it listens, which NCs it drives
//! and how it lays out the host network.
//!
//! Everything has a default except what cannot be guessed (zone name, the
//! cluster token, the state directory); the `ironbark` binary fills this from
//! its command line and configuration file.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// Default TCP port of the metadata listener the 169.254.169.254 redirect
/// points at (the next free one after the roles' ports 8773–8776).
pub const DEFAULT_METADATA_PORT: u16 = 8777;

/// Default prefix of the bridges the CC owns. The CLC names segment bridges
/// `ibr<n>`; anything with this prefix that the plan does not list is
/// removed as stale, so it must not collide with the operator's own.
pub const DEFAULT_BRIDGE_PREFIX: &str = "ibr";

#[derive(Clone, Debug)]
pub struct CcConfig {
    /// The availability zone this CC runs (reported in [`ironbark_cluster_api::ZoneReport::zone`]).
    pub zone: String,
    /// The cluster bearer token: required on the CC's API, sent to the NCs
    /// and to the CLC callback.
    pub token: String,
    /// The control API's listen address.
    pub listen: SocketAddr,
    /// The metadata listener. Its port is the DNAT target on every segment
    /// gateway, so the address must be a wildcard (`0.0.0.0`): the
    /// redirected connections arrive addressed to each gateway.
    pub metadata_listen: SocketAddr,
    /// `(node_id, base URL)` of every NC this CC drives.
    pub nodes: Vec<(String, String)>,
    /// Where to POST a [`ironbark_cluster_api::ZoneReport`] when a node reports a change.
    pub clc_callback_url: Option<String>,
    pub callback_timeout: Duration,
    /// How long the instance's own node gets to acknowledge a terminate
    /// before the CC asks every node.
    pub terminate_timeout: Duration,
    /// Bound on every other call to an NC (desired state, report, reboot,
    /// console).
    pub node_timeout: Duration,
    /// How often every NC is polled for its report (the safety net behind
    /// events).
    pub poll_interval: Duration,
    /// See [`DEFAULT_BRIDGE_PREFIX`].
    pub bridge_prefix: String,
    /// DNS servers handed out by DHCP; none means the option is left out.
    pub dns_servers: Vec<String>,
    /// DHCP lease time in dnsmasq's syntax (`12h`, `45m`, `infinite`).
    pub lease_time: String,
    /// Run every network command inside this network namespace (`ip netns
    /// exec`); tests use it so they never touch the host's own network.
    pub netns: Option<String>,
    /// Generated files: `dhcp/<bridge>/{dnsmasq.conf,leases,pid,log}`.
    pub state_dir: PathBuf,
    /// The DHCP host lists, `<bridge>.hosts`. dnsmasq rereads a list on
    /// SIGHUP after it has dropped root, so the list must be where its
    /// unprivileged user can read it, whatever the state directory's mode
    /// (a 0700 data directory is normal). The default is under `/run`,
    /// named after the state directory so several CCs on a host do not
    /// share one.
    pub dhcp_hosts_dir: PathBuf,
    /// The dnsmasq program.
    pub dnsmasq: PathBuf,
    /// `VNET_PUBINTERFACE`: where instances' public addresses live (as
    /// `/32`s). `None`: they are only NATed, the upstream routes them here.
    pub public_interface: Option<String>,
    /// `VNET_PUBLICIPS`, parsed: the CC owns the `/32`s inside these
    /// ranges on the public interface (and removes those no instance has);
    /// empty means it owns every `/32` there.
    pub public_ips: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// `VNET_PRIVINTERFACE`: the underlay device segment tunnels (VXLAN)
    /// run over, towards NCs on other hosts.
    pub private_interface: Option<String>,
    /// The CC's address on the underlay, which NCs on other hosts flood
    /// their segments to. An NC whose URL names a loopback address or this
    /// one shares the CC's host and needs no tunnel.
    pub private_ip: Option<Ipv4Addr>,
    /// The MTU of `VNET_PRIVINTERFACE`. VXLAN takes 50 bytes of each
    /// underlay packet, so guests are told by DHCP (option 26) to send
    /// frames that much smaller: a full-size frame would not fit the
    /// tunnel and the bridge would drop it (TCP stalls at the first big
    /// segment, ping works: the worst kind of failure to debug).
    pub private_mtu: Option<u32>,
}

impl CcConfig {
    pub fn new(
        zone: impl Into<String>,
        token: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        let any = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let state_dir: PathBuf = state_dir.into();
        CcConfig {
            zone: zone.into(),
            token: token.into(),
            listen: any(ironbark_cluster_api::DEFAULT_PORT),
            metadata_listen: any(DEFAULT_METADATA_PORT),
            nodes: Vec::new(),
            clc_callback_url: None,
            callback_timeout: Duration::from_secs(2),
            terminate_timeout: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(6),
            bridge_prefix: DEFAULT_BRIDGE_PREFIX.to_string(),
            dns_servers: Vec::new(),
            lease_time: "12h".to_string(),
            netns: None,
            dhcp_hosts_dir: default_hosts_dir(&state_dir),
            state_dir,
            dnsmasq: PathBuf::from("dnsmasq"),
            public_interface: None,
            public_ips: Vec::new(),
            private_interface: None,
            private_ip: None,
            private_mtu: None,
        }
    }

    /// The underlay address of NC `url` (`http://a.b.c.d:port/`), or
    /// `None` when it shares the CC's host (loopback, the CC's own private
    /// address, or the address the CC listens on, as with `ironbark up
    /// --listen <host address>`) or names no IPv4 address.
    pub fn remote_node_ip(&self, url: &str) -> Option<Ipv4Addr> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        let ip: Ipv4Addr = host.parse().ok()?;
        let own = Some(ip) == self.private_ip || std::net::IpAddr::V4(ip) == self.listen.ip();
        (!ip.is_loopback() && !ip.is_unspecified() && !own).then_some(ip)
    }

    /// The port the metadata redirect points at.
    pub fn metadata_port(&self) -> u16 {
        self.metadata_listen.port()
    }
}

/// `/run/ironbark/dhcp-<digest of the state directory>`.
fn default_hosts_dir(state_dir: &std::path::Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    PathBuf::from("/run/ironbark").join(format!("dhcp-{}", hex::encode(&digest[..6])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_on_the_ccs_own_addresses_need_no_tunnel() {
        let mut c = CcConfig::new("zone1", "t", PathBuf::from("/tmp/cc"));
        c.listen = "10.1.0.2:8774".parse().unwrap();
        c.private_ip = Some("192.168.5.1".parse().unwrap());
        assert_eq!(c.remote_node_ip("http://127.0.0.1:8775/"), None);
        assert_eq!(c.remote_node_ip("http://10.1.0.2:8775/"), None);
        assert_eq!(c.remote_node_ip("http://192.168.5.1:8775"), None);
        assert_eq!(c.remote_node_ip("http://nc.example:8775"), None);
        assert_eq!(
            c.remote_node_ip("http://192.168.5.7:8775/"),
            Some("192.168.5.7".parse().unwrap())
        );
    }
}
