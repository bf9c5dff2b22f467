//! The pure network planner: from the zone's desired state to the host
//! network the CC must have, as data.
//!
//! [`plan`] does no I/O. It turns each security group's [`Segment`] into a
//! bridge with the gateway address on it, the text of one dnsmasq instance's
//! configuration and static host list, and renders one nftables table
//! (`table ip ironbark`) holding the metadata redirect, the metadata
//! listener's anti-spoofing guard, the public addresses' DNAT/SNAT and the
//! security groups' ingress filtering (whose contents are set elements
//! built by [`crate::filter`]), plus the `/32`s the public interface must
//! hold ([`PublicPlan`]).
//! [`crate::hostnet::reconcile`] then compares the plan with what the host
//! has and changes only the difference; keeping all text generation here
//! means the whole layout is checked by golden tests without a kernel.
//!
//! Bad input does not fail the whole plan: a segment or instance that
//! cannot be laid out (unparsable address, outside its subnet, a duplicate,
//! a bridge name the CC would not own) is left out with a line in
//! [`NetPlan::warnings`], so one mistake does not cut every other instance
//! off the network.
//!
//! [`Planner`] is the same function with a memory, for the controller:
//! each of the CLC's updates is the whole zone, usually with one thing
//! changed, so it keeps the last plan's parts by the inputs that made
//! them (the layout of segments and instances, each group's set elements,
//! the table's text) and rebuilds only those whose inputs differ. Its
//! output is always what [`plan`] would say; a rule change at 1,000 groups
//! costs one group's sets instead of the zone's 25,000 elements.
//!
//! Multi-host: [`NetPlan::tunnels`] lists, per segment, the NCs on other
//! hosts (by the address in their URL) that run its instances, which the
//! CC's VXLAN tunnel (VNI = `tag`) floods to, and [`NetPlan::nodes`] what
//! each of those NCs must join itself. NCs on the CC's host need nothing.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ironbark_cluster_api::{InstanceDesired, Segment, ZoneDesired};

use crate::filter::{self, Elements, GroupRules, Member};
use ironbark_node_api::{NodeNetwork, SegmentLink};
use sha2::{Digest, Sha256};

use crate::config::CcConfig;

/// The nftables table (family `ip`) the CC owns entirely.
pub const NFT_TABLE: &str = "ironbark";
/// The link-local address guests ask for their metadata.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The comment on the table starts with this, followed by the fingerprint.
pub const NFT_COMMENT_PREFIX: &str = "ironbark:";

/// File names inside a segment's DHCP directory (`<state>/dhcp/<bridge>/`).
pub mod files {
    pub const CONFIG: &str = "dnsmasq.conf";
    pub const LEASES: &str = "leases";
    pub const PID: &str = "pid";
    pub const LOG: &str = "log";
}

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// An IPv4 network: a base address (host bits zero) and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix_len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix_len) == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Whether `ip` may be given to a host: inside, and neither the network
    /// nor the broadcast address (a /31 or /32 has neither).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
            && (self.prefix_len >= 31 || (ip != self.network && ip != self.broadcast()))
    }
}

fn mask_bits(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    /// `a.b.c.d/n`; host bits are cleared (`10.0.0.5/28` is `10.0.0.0/28`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR block"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
        Ok(Ipv4Net {
            network: Ipv4Addr::from(u32::from(addr) & mask_bits(prefix_len)),
            prefix_len,
        })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Everything the host network should be for one zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetPlan {
    /// By bridge name.
    pub segments: Vec<SegmentPlan>,
    /// `None` when there is no segment: the table is removed.
    pub nft: Option<NftPlan>,
    /// The instances' public addresses on the CC's public interface.
    pub public: PublicPlan,
    /// Whether the host must route (IPv4 forwarding on): it must as soon
    /// as there is a segment, since the CC is every segment's gateway.
    pub forwarding: bool,
    /// The CC's tunnels: per segment, the NCs on other hosts that run its
    /// instances (no peers, no tunnel).
    pub tunnels: NodeNetwork,
    /// What each NC on another host must join (NCs on the CC's host are
    /// not listed: the CC's bridges are theirs).
    pub nodes: BTreeMap<String, NodeNetwork>,
    /// The device the CC's tunnels run over (`VNET_PRIVINTERFACE`).
    pub underlay_interface: Option<String>,
    /// The bridge-name prefix the CC owns (stale bridges are found by it).
    pub bridge_prefix: String,
    /// What was left out of the plan, and why.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    pub group_id: String,
    /// The VXLAN VNI once segments span hosts.
    pub tag: u32,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dhcp: DhcpPlan,
}

impl SegmentPlan {
    /// The gateway with the subnet's prefix, as `ip addr` takes and shows it.
    pub fn address(&self) -> String {
        format!("{}/{}", self.gateway, self.subnet.prefix_len)
    }
}

/// The public addresses the CC holds for its instances.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicPlan {
    /// `VNET_PUBINTERFACE`; without it the addresses are only NATed (the
    /// upstream must then route them to the CC).
    pub interface: Option<String>,
    /// `a.b.c.d/32`, sorted.
    pub addresses: Vec<String>,
    /// Which `/32`s on the interface are the CC's, so stale ones can be
    /// removed: those inside the pool, or every `/32` when no pool is set.
    pub pool: Vec<filter::Range>,
}

impl PublicPlan {
    /// Whether `cidr` (as `ip addr` shows it) is one the CC manages.
    pub fn owns(&self, cidr: &str) -> bool {
        let Some(ip) = cidr
            .strip_suffix("/32")
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        else {
            return false;
        };
        let ip = u32::from(ip);
        self.pool.is_empty() || self.pool.iter().any(|(a, b)| *a <= ip && ip <= *b)
    }
}

/// One dnsmasq instance serving one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpPlan {
    /// `<state>/dhcp/<bridge>`: the instance's files (see [`files`]).
    pub dir: PathBuf,
    /// The whole `--conf-file`; a change means a restart.
    pub config: String,
    /// The `--dhcp-hostsfile` (`mac,ip,hostname` lines); a change only
    /// needs a SIGHUP, which makes dnsmasq reread it.
    pub hosts: String,
    /// Where the host list lives (see [`CcConfig::dhcp_hosts_dir`]).
    pub hosts_path: PathBuf,
    pub entries: Vec<DhcpHost>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpHost {
    pub instance_id: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// The `ironbark` table: fixed chains and declared sets (`table`), and the
/// sets' contents (`elements`), which are all that security-group and
/// address changes touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftPlan {
    /// `table ip ironbark { ... }` with empty sets, its comment carrying
    /// the fingerprint.
    pub table: String,
    /// Hex digest of `table`: what the host's table is compared by, since
    /// `nft list` does not print rules back the way they went in. When it
    /// matches, only elements need to change.
    pub fingerprint: String,
    /// By set name (see [`filter::SETS`]).
    pub elements: Elements,
    /// Hex digest of `elements`.
    pub elements_fingerprint: String,
}

impl NftPlan {
    /// What the host keeps (in the `state` set's one element's comment) to
    /// say which table and elements it has loaded.
    pub fn state(&self) -> String {
        format!("{}:{}", self.fingerprint, self.elements_fingerprint)
    }
}

/// The segment directory of `bridge` under `state_dir`.
pub fn dhcp_dir(state_dir: &Path, bridge: &str) -> PathBuf {
    state_dir.join("dhcp").join(bridge)
}

/// Plans the host network for `zone`. Pure: same input, same output.
pub fn plan(zone: &ZoneDesired, cfg: &CcConfig) -> NetPlan {
    Planner::default().plan(zone, cfg)
}

/// [`plan`] with a memory: it keeps what the last plan built, by the
/// inputs that determined it ([`filter::ElementCache`], the table text),
/// and reuses what those inputs did not change. Same input, same output
/// as [`plan`], whatever came before; only faster when the zone changed a
/// little, which is what each of the CLC's updates is (the controller
/// keeps one).
#[derive(Debug, Default)]
pub struct Planner {
    elements: filter::ElementCache,
    /// The last table: what its text was made from, and the text.
    table: Option<(TableKey, String, String)>,
    /// The last layout (everything but the table), and its inputs.
    layout: Option<(LayoutKey, Layout)>,
}

/// What the table's text depends on: per segment its bridge, gateway,
/// subnet and tag, in order; the metadata port and the bridge prefix.
type TableKey = (Vec<(String, Ipv4Addr, Ipv4Net, u32)>, u16, String);

impl Planner {
    /// Plans the host network for `zone` (see [`plan`]).
    pub fn plan(&mut self, zone: &ZoneDesired, cfg: &CcConfig) -> NetPlan {
        let cfg_text = format!("{cfg:?}");
        let layout = match self.layout.take() {
            Some((key, layout)) if key.matches(zone, &cfg_text) => (key, layout),
            _ => (LayoutKey::new(zone, cfg_text), layout(zone, cfg)),
        };
        let Layout {
            segments,
            members,
            public,
            tunnels,
            nodes,
            warnings,
            node_warnings,
        } = &layout.1;
        let mut warnings = warnings.clone();
        let nft = (!segments.is_empty()).then(|| {
            let rules: BTreeMap<&str, &[ironbark_cluster_api::IngressRule]> = zone
                .segments
                .iter()
                .map(|s| (s.group_id.as_str(), s.rules.as_slice()))
                .collect();
            let groups: Vec<GroupRules<'_>> = segments
                .iter()
                .map(|s| GroupRules {
                    group_id: &s.group_id,
                    tag: s.tag,
                    rules: rules.get(s.group_id.as_str()).copied().unwrap_or_default(),
                })
                .collect();
            let subnets: Vec<Ipv4Net> = segments.iter().map(|s| s.subnet).collect();
            let elements = filter::elements_cached(
                &groups,
                members,
                &subnets,
                &mut warnings,
                &mut self.elements,
            );
            self.nft_table(segments, cfg, elements)
        });
        warnings.extend(node_warnings.iter().cloned());
        let plan = NetPlan {
            forwarding: !segments.is_empty(),
            tunnels: tunnels.clone(),
            nodes: nodes.clone(),
            underlay_interface: cfg.private_interface.clone(),
            segments: segments.clone(),
            nft,
            public: public.clone(),
            bridge_prefix: cfg.bridge_prefix.clone(),
            warnings,
        };
        self.layout = Some(layout);
        plan
    }
}

/// Everything in a plan but the table: it depends on the zone's
/// segments (not their rules), its instances and the configuration.
#[derive(Clone, Debug)]
struct Layout {
    segments: Vec<SegmentPlan>,
    members: Vec<Member>,
    public: PublicPlan,
    tunnels: NodeNetwork,
    nodes: BTreeMap<String, NodeNetwork>,
    /// Warnings about segments, instances and DHCP settings (before the
    /// rules' in a plan), and about nodes (after them).
    warnings: Vec<String>,
    node_warnings: Vec<String>,
}

/// What a [`Layout`] is made from: per segment all but its rules, the
/// instances, and the configuration (as its `Debug` text: every field).
#[derive(Debug, PartialEq)]
struct LayoutKey {
    segments: Vec<(String, u32, String, String, String)>,
    instances: Vec<InstanceDesired>,
    cfg: String,
}

impl LayoutKey {
    fn matches(&self, zone: &ZoneDesired, cfg: &str) -> bool {
        self.cfg == cfg
            && self.instances == zone.instances
            && self.segments.len() == zone.segments.len()
            && self.segments.iter().zip(&zone.segments).all(|(k, s)| {
                k.0 == s.group_id
                    && k.1 == s.tag
                    && k.2 == s.bridge
                    && k.3 == s.subnet
                    && k.4 == s.gateway
            })
    }

    fn new(zone: &ZoneDesired, cfg: String) -> Self {
        LayoutKey {
            segments: zone
                .segments
                .iter()
                .map(|s| {
                    (
                        s.group_id.clone(),
                        s.tag,
                        s.bridge.clone(),
                        s.subnet.clone(),
                        s.gateway.clone(),
                    )
                })
                .collect(),
            instances: zone.instances.clone(),
            cfg,
        }
    }
}

fn layout(zone: &ZoneDesired, cfg: &CcConfig) -> Layout {
    let mut warnings = Vec::new();
    let mut segments: BTreeMap<String, SegmentPlan> = BTreeMap::new();
    let mut by_group: BTreeMap<String, String> = BTreeMap::new();
    let mut by_start: BTreeMap<u32, String> = BTreeMap::new();

    // Sorted first, so which of two conflicting entries wins does not
    // depend on the order the CLC listed them in.
    let mut sorted_segments: Vec<&Segment> = zone.segments.iter().collect();
    sorted_segments.sort_by(|a, b| (&a.bridge, &a.group_id).cmp(&(&b.bridge, &b.group_id)));
    for seg in sorted_segments {
        match check_segment(seg, cfg) {
            Ok((subnet, gateway)) => {
                // Blocks either nest or are apart: an overlap is with the
                // nearest block starting at or before this one's start, or
                // with one starting inside it.
                let start = u32::from(subnet.network);
                let end = u32::from(subnet.broadcast());
                let before = by_start.range(..=start).next_back();
                let inside = by_start.range(start..=end).next();
                if let Some((_, bridge)) = before
                    .filter(|(_, b)| segments[*b].subnet.overlaps(&subnet))
                    .or(inside)
                {
                    let other = &segments[bridge];
                    warnings.push(format!(
                        "segment {} left out: subnet {subnet} overlaps {} of {}",
                        seg.group_id, other.subnet, other.group_id
                    ));
                    continue;
                }
                if segments.contains_key(&seg.bridge) || by_group.contains_key(&seg.group_id) {
                    warnings.push(format!(
                        "segment {} left out: bridge {} or group listed twice",
                        seg.group_id, seg.bridge
                    ));
                    continue;
                }
                by_group.insert(seg.group_id.clone(), seg.bridge.clone());
                by_start.insert(start, seg.bridge.clone());
                segments.insert(
                    seg.bridge.clone(),
                    SegmentPlan {
                        group_id: seg.group_id.clone(),
                        tag: seg.tag,
                        bridge: seg.bridge.clone(),
                        subnet,
                        gateway,
                        dhcp: DhcpPlan {
                            dir: dhcp_dir(&cfg.state_dir, &seg.bridge),
                            config: String::new(),
                            hosts: String::new(),
                            hosts_path: cfg.dhcp_hosts_dir.join(format!("{}.hosts", seg.bridge)),
                            entries: Vec::new(),
                        },
                    },
                );
            }
            Err(why) => warnings.push(format!("segment {} left out: {why}", seg.group_id)),
        }
    }

    // Addresses and MACs must be unique across the zone: segments will share
    // a layer-2 domain per VNI, and the metadata service finds an instance
    // by its address.
    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    let mut publics = HashSet::new();
    let mut members = Vec::new();
    let mut sorted_instances: Vec<&InstanceDesired> = zone.instances.iter().collect();
    sorted_instances.sort_by(|a, b| a.spec.instance_id.cmp(&b.spec.instance_id));
    for inst in sorted_instances {
        let id = &inst.spec.instance_id;
        let Some(bridge) = by_group.get(&inst.group_id) else {
            warnings.push(format!(
                "instance {id} left out of DHCP: no segment for group {}",
                inst.group_id
            ));
            continue;
        };
        let seg = segments.get_mut(bridge).expect("indexed above");
        match check_instance(inst, seg) {
            Ok(host) => {
                if !ips.insert(host.ip) || !macs.insert(host.mac.clone()) {
                    warnings.push(format!(
                        "instance {id} left out of DHCP: address {} or MAC {} already taken",
                        host.ip, host.mac
                    ));
                    continue;
                }
                let public = match inst.public_ip.as_deref().map(str::parse::<Ipv4Addr>) {
                    None => None,
                    Some(Ok(p)) if publics.insert(p) && !ips.contains(&p) => Some(p),
                    Some(_) => {
                        warnings.push(format!(
                            "instance {id} has no public address: {:?} is not IPv4 or is taken",
                            inst.public_ip.as_deref().unwrap_or_default()
                        ));
                        None
                    }
                };
                members.push(Member {
                    group_id: inst.group_id.clone(),
                    private: host.ip,
                    public,
                });
                seg.dhcp.entries.push(host);
            }
            Err(why) => warnings.push(format!("instance {id} left out of DHCP: {why}")),
        }
    }

    let options = dhcp_options(cfg, &mut warnings);
    let mut segments: Vec<SegmentPlan> = segments.into_values().collect();
    for seg in &mut segments {
        seg.dhcp.entries.sort_by_key(|h| h.ip);
        seg.dhcp.config = dnsmasq_config(seg, &options);
        seg.dhcp.hosts = dnsmasq_hosts(&seg.dhcp.entries);
    }
    let mut addresses: Vec<Ipv4Addr> = members.iter().filter_map(|m| m.public).collect();
    addresses.sort();
    let public = PublicPlan {
        interface: cfg.public_interface.clone(),
        addresses: addresses.iter().map(|a| format!("{a}/32")).collect(),
        pool: cfg
            .public_ips
            .iter()
            .map(|(a, b)| (u32::from(*a), u32::from(*b)))
            .collect(),
    };
    let mut node_warnings = Vec::new();
    let (tunnels, nodes) = node_networks(zone, cfg, &segments, &members, &mut node_warnings);
    Layout {
        segments,
        members,
        public,
        tunnels,
        nodes,
        warnings,
        node_warnings,
    }
}

/// Which hosts each segment spans: the CC's tunnels (to every remote NC
/// running one of the segment's instances) and each remote NC's segments
/// (to the CC and to the other NCs of the segment: a full mesh, so
/// instances of one group on two NCs talk directly).
fn node_networks(
    zone: &ZoneDesired,
    cfg: &CcConfig,
    segments: &[SegmentPlan],
    members: &[Member],
    warnings: &mut Vec<String>,
) -> (NodeNetwork, BTreeMap<String, NodeNetwork>) {
    let remote: BTreeMap<&str, Ipv4Addr> = cfg
        .nodes
        .iter()
        .filter_map(|(id, url)| Some((id.as_str(), cfg.remote_node_ip(url)?)))
        .collect();
    for (id, url) in &cfg.nodes {
        let host = url
            .split_once("://")
            .map_or(url.as_str(), |(_, r)| r)
            .split(['/', ':'])
            .next()
            .unwrap_or_default();
        if host.parse::<Ipv4Addr>().is_err() && host != "localhost" {
            warnings.push(format!(
                "node {id}: {host:?} is not an IPv4 address; treated as the CC's own host (no tunnel)"
            ));
        }
    }
    let planned: HashSet<Ipv4Addr> = members.iter().map(|m| m.private).collect();
    // group -> remote node ids running its (planned) instances
    let mut spans: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for i in &zone.instances {
        let ok = i
            .private_ip
            .parse::<Ipv4Addr>()
            .is_ok_and(|ip| planned.contains(&ip));
        if ok && remote.contains_key(i.node_id.as_str()) {
            spans
                .entry(i.group_id.as_str())
                .or_default()
                .insert(i.node_id.as_str());
        }
    }
    if !spans.is_empty() && cfg.private_ip.is_none() {
        warnings.push(
            "NCs on other hosts run instances but the CC has no private (underlay) address: \
             their segments cannot reach the CC"
                .to_string(),
        );
    }
    let ips_of = |nodes: Option<&std::collections::BTreeSet<&str>>, except: Option<&str>| {
        let mut v: Vec<Ipv4Addr> = nodes
            .into_iter()
            .flatten()
            .filter(|n| Some(**n) != except)
            .map(|n| remote[n])
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let tunnels = NodeNetwork {
        bridge_prefix: cfg.bridge_prefix.clone(),
        segments: segments
            .iter()
            .map(|s| SegmentLink {
                bridge: s.bridge.clone(),
                vni: s.tag,
                peers: ips_of(spans.get(s.group_id.as_str()), None)
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
            })
            .collect(),
    };
    let mut nodes = BTreeMap::new();
    for id in remote.keys() {
        let mut segs = Vec::new();
        for s in segments {
            let Some(span) = spans.get(s.group_id.as_str()) else {
                continue;
            };
            if !span.contains(id) {
                continue;
            }
            let mut peers: Vec<String> = cfg.private_ip.iter().map(|ip| ip.to_string()).collect();
            let others = ips_of(Some(span), Some(id));
            peers.extend(
                others
                    .iter()
                    .filter(|ip| Some(**ip) != Some(remote[id]))
                    .map(|ip| ip.to_string()),
            );
            segs.push(SegmentLink {
                bridge: s.bridge.clone(),
                vni: s.tag,
                peers,
            });
        }
        nodes.insert(
            id.to_string(),
            NodeNetwork {
                bridge_prefix: cfg.bridge_prefix.clone(),
                segments: segs,
            },
        );
    }
    (tunnels, nodes)
}

fn check_segment(seg: &Segment, cfg: &CcConfig) -> Result<(Ipv4Net, Ipv4Addr), String> {
    if !valid_ifname(&seg.bridge) {
        return Err(format!("{:?} is not a usable interface name", seg.bridge));
    }
    // The CC removes prefixed bridges the plan does not list; one without
    // the prefix would be created and then never cleaned up.
    if !seg.bridge.starts_with(&cfg.bridge_prefix) || seg.bridge.len() == cfg.bridge_prefix.len() {
        return Err(format!(
            "bridge {} does not carry the CC's prefix {:?}",
            seg.bridge, cfg.bridge_prefix
        ));
    }
    let subnet: Ipv4Net = seg.subnet.parse()?;
    if subnet.prefix_len > 30 {
        return Err(format!(
            "subnet {subnet} has no room for a gateway and instances"
        ));
    }
    let gateway: Ipv4Addr = seg
        .gateway
        .parse()
        .map_err(|_| format!("gateway {:?} is not an IPv4 address", seg.gateway))?;
    if !subnet.is_host(gateway) {
        return Err(format!(
            "gateway {gateway} is not a host address of {subnet}"
        ));
    }
    Ok((subnet, gateway))
}

fn check_instance(inst: &InstanceDesired, seg: &SegmentPlan) -> Result<DhcpHost, String> {
    let ip: Ipv4Addr = inst
        .private_ip
        .parse()
        .map_err(|_| format!("private address {:?} is not IPv4", inst.private_ip))?;
    if !seg.subnet.is_host(ip) || ip == seg.gateway {
        return Err(format!("{ip} is not an instance address of {}", seg.subnet));
    }
    // The NIC on this segment's bridge; an instance has one today.
    let nic = inst
        .spec
        .nics
        .iter()
        .find(|n| n.bridge == seg.bridge)
        .or_else(|| inst.spec.nics.first())
        .ok_or("it has no network interface")?;
    let mac =
        normalize_mac(&nic.mac).ok_or_else(|| format!("{:?} is not a MAC address", nic.mac))?;
    let hostname = Some(inst.metadata.hostname.as_str())
        .filter(|h| valid_hostname(h))
        .map(str::to_string);
    Ok(DhcpHost {
        instance_id: inst.spec.instance_id.clone(),
        mac,
        ip,
        hostname,
    })
}

/// Lower-case `aa:bb:cc:dd:ee:ff`, or `None` if `s` is not a MAC.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != ".."
}

/// A DNS name dnsmasq accepts as a host name: dot-separated labels of
/// letters, digits and inner hyphens.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// dnsmasq's whole configuration for one segment. Everything is in this
/// file so that the process' command line is only `--conf-file=`; the host
/// list is separate because it changes far more often and dnsmasq rereads
/// it on SIGHUP without dropping its leases.
/// The operator's DHCP settings, checked: they end up in dnsmasq's
/// configuration file, where a stray comma or newline would break it.
struct DhcpOptions {
    lease_time: String,
    dns: Vec<Ipv4Addr>,
    /// Told to guests when segments may run through VXLAN.
    mtu: Option<u32>,
}

/// What VXLAN over IPv4 adds to each frame: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;

fn dhcp_options(cfg: &CcConfig, warnings: &mut Vec<String>) -> DhcpOptions {
    let lease = cfg.lease_time.trim();
    let digits = lease.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
    let lease_ok = lease == "infinite"
        || (!digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && lease.len() <= digits.len() + 1);
    let lease_time = if lease_ok {
        lease.to_string()
    } else {
        warnings.push(format!(
            "lease time {:?} is not dnsmasq's syntax; using 12h",
            cfg.lease_time
        ));
        "12h".to_string()
    };
    let mut dns = Vec::new();
    for d in cfg
        .dns_servers
        .iter()
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
    {
        match d.parse() {
            Ok(ip) => dns.push(ip),
            Err(_) => warnings.push(format!("DNS server {d:?} left out: not an IPv4 address")),
        }
    }
    let mtu = cfg
        .private_interface
        .as_ref()
        .and(cfg.private_mtu)
        .map(|m| m.saturating_sub(VXLAN_OVERHEAD));
    DhcpOptions {
        lease_time,
        dns,
        mtu,
    }
}

fn dnsmasq_config(seg: &SegmentPlan, opts: &DhcpOptions) -> String {
    let dir = &seg.dhcp.dir;
    let path = |name: &str| dir.join(name).display().to_string();
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# ironbark CC: DHCP for {} on {}; generated, do not edit",
        seg.group_id, seg.bridge
    );
    let _ = writeln!(c, "interface={}", seg.bridge);
    // Only this bridge: one dnsmasq per segment must not answer another's
    // clients, nor anything on the host's own interfaces.
    c.push_str("bind-interfaces\nexcept-interface=lo\n");
    // DHCP only: no DNS service, no reading of the host's resolver files.
    c.push_str("port=0\nno-resolv\nno-hosts\n");
    // The only DHCP server on the segment: answer clients renewing leases it
    // does not remember (after a restart) instead of making them wait.
    c.push_str("dhcp-authoritative\n");
    let _ = writeln!(
        c,
        "dhcp-range={},static,{},{}",
        seg.subnet.network,
        seg.subnet.netmask(),
        opts.lease_time
    );
    let _ = writeln!(c, "dhcp-option=option:router,{}", seg.gateway);
    if !opts.dns.is_empty() {
        let dns: Vec<String> = opts.dns.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(c, "dhcp-option=option:dns-server,{}", dns.join(","));
    }
    if let Some(mtu) = opts.mtu {
        // Forced: many DHCP clients (busybox udhcpc among them) do not ask
        // for option 26 and would never hear of it.
        let _ = writeln!(c, "dhcp-option-force=option:mtu,{mtu}");
    }
    let _ = writeln!(c, "dhcp-hostsfile={}", seg.dhcp.hosts_path.display());
    let _ = writeln!(c, "dhcp-leasefile={}", path(files::LEASES));
    let _ = writeln!(c, "pid-file={}", path(files::PID));
    let _ = writeln!(c, "log-facility={}", path(files::LOG));
    c
}

fn dnsmasq_hosts(entries: &[DhcpHost]) -> String {
    let mut h = String::new();
    for e in entries {
        match &e.hostname {
            Some(name) => {
                let _ = writeln!(h, "{},{},{}", e.mac, e.ip, name);
            }
            None => {
                let _ = writeln!(h, "{},{}", e.mac, e.ip);
            }
        }
    }
    h
}

impl Planner {
    /// The table for `segments`: its text from the last plan when the
    /// segments' layout is the same (rule and instance changes only touch
    /// elements), and the elements' fingerprint.
    fn nft_table(
        &mut self,
        segments: &[SegmentPlan],
        cfg: &CcConfig,
        elements: Elements,
    ) -> NftPlan {
        let key: TableKey = (
            segments
                .iter()
                .map(|s| (s.bridge.clone(), s.gateway, s.subnet, s.tag))
                .collect(),
            cfg.metadata_port(),
            cfg.bridge_prefix.clone(),
        );
        let (table, fingerprint) = match self.table.take() {
            Some((k, table, fingerprint)) if k == key => (table, fingerprint),
            _ => table_text(segments, cfg),
        };
        let mut h = Sha256::new();
        for (set, items) in &elements {
            h.update(set.as_bytes());
            h.update(b"\n");
            for e in items.iter() {
                h.update(e.as_bytes());
                h.update(b"\n");
            }
        }
        let elements_fingerprint = hex::encode(&h.finalize()[..8]);
        self.table = Some((key, table.clone(), fingerprint.clone()));
        NftPlan {
            table,
            fingerprint,
            elements,
            elements_fingerprint,
        }
    }
}

/// The `ironbark` table. Sets and maps hold everything that changes with
/// instances and rules (see [`crate::filter`]); the chains are fixed per
/// set of segments:
/// - `prerouting` (nat): a guest's 169.254.169.254:80 goes to the metadata
///   listener on its own segment's gateway (DNAT keeps the source address,
///   which is how the metadata service knows who asks); traffic to a public
///   address goes to its instance. `output` does the latter for the CC
///   host's own traffic.
/// - `postrouting` (nat): an instance's traffic leaving the segments, or
///   coming back to one through a public address (a hairpin), is SNATed to
///   its public address, so the peer answers through the CC; one without a
///   public address is masqueraded on a hairpin.
/// - `input`: connections to a gateway's metadata port must come in on that
///   segment's bridge from that segment's subnet, so no guest can pose as
///   another segment's instance (and nothing outside can ask at all).
/// - `forward` (after DNAT, before SNAT, so it sees the instance's private
///   destination and the sender's own source): replies pass; a packet to an
///   instance jumps (`dst_group`) to its group's chain `g<tag>`, where it
///   must match one of the group's allow sets, one lookup each, or is
///   dropped. Every
///   original-direction packet is checked, so a revoked rule also stops
///   established connections. Anything else routed into a segment (an
///   address no instance has) is dropped, which keeps segments isolated.
///
/// Returns the table's text and its fingerprint.
fn table_text(segments: &[SegmentPlan], cfg: &CcConfig) -> (String, String) {
    let port = cfg.metadata_port();
    let prefix = &cfg.bridge_prefix;
    let mut pre = String::new();
    let mut input = String::new();
    for s in segments {
        let b = &s.bridge;
        let gw = s.gateway;
        let _ = writeln!(
            pre,
            "\t\tiifname \"{b}\" ip daddr {METADATA_IP} tcp dport 80 dnat to {gw}:{port}"
        );
        let _ = writeln!(
            input,
            "\t\tip daddr {gw} tcp dport {port} iifname != \"{b}\" drop"
        );
        let _ = writeln!(
            input,
            "\t\tip daddr {gw} tcp dport {port} ip saddr != {} drop",
            s.subnet
        );
    }
    let mut sets = String::from(
        "\tmap dst_group {\n\t\ttype ipv4_addr : verdict\n\t}\n\n\
         \tmap pub2priv {\n\t\ttype ipv4_addr : ipv4_addr\n\t}\n\n\
         \tmap priv2pub {\n\t\ttype ipv4_addr : ipv4_addr\n\t}\n\n\
         \tset subnets {\n\t\ttype ipv4_addr . inet_proto\n\t\tflags interval\n\t}\n\n\
         \tset state {\n\t\ttype ipv6_addr\n\t}\n\n",
    );
    let mut group_chains = String::new();
    for s in segments {
        let [all, ports, icmp] = filter::group_sets(s.tag);
        let _ = write!(
            sets,
            "\tset {all} {{\n\t\ttype ipv4_addr . inet_proto\n\t\tflags interval\n\t}}\n\n\
             \tset {ports} {{\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval\n\t}}\n\n\
             \tset {icmp} {{\n\t\ttype ipv4_addr . icmp_type . icmp_code\n\t\tflags interval\n\t}}\n\n"
        );
        let _ = write!(
            group_chains,
            "\n\tchain {} {{\n\
             \t\tip saddr . meta l4proto @{all} accept\n\
             \t\tip saddr . meta l4proto . th dport @{ports} accept\n\
             \t\tip saddr . icmp type . icmp code @{icmp} accept\n\
             \t\tdrop\n\t}}\n",
            filter::group_chain(s.tag)
        );
    }
    let chains = format!(
        "{sets}\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{pre}\
         \t\tdnat ip to ip daddr map @pub2priv\n\t}}\n\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
         \t\tdnat ip to ip daddr map @pub2priv\n\t}}\n\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname != \"{prefix}*\" snat ip to ip saddr map @priv2pub\n\
         \t\tct status dnat snat ip to ip saddr map @priv2pub\n\
         \t\tct status dnat ip saddr . meta l4proto @subnets masquerade\n\t}}\n\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{input}\t}}\n\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct direction reply accept\n\
         \t\tip daddr vmap @dst_group\n\
         \t\toifname \"{prefix}*\" drop\n\t}}\n{group_chains}"
    );
    let fingerprint = hex::encode(&Sha256::digest(chains.as_bytes())[..8]);
    let table = format!(
        "table ip {NFT_TABLE} {{\n\tcomment \"{NFT_COMMENT_PREFIX}{fingerprint}\";\n{chains}}}\n"
    );
    (table, fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{cfg, instance, zone};

    #[test]
    fn golden_two_segments_three_instances() {
        let p = plan(&zone(), &cfg());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let bridges: Vec<(&str, String, u32)> = p
            .segments
            .iter()
            .map(|s| (s.bridge.as_str(), s.address(), s.tag))
            .collect();
        assert_eq!(
            bridges,
            [
                ("ibr0", "10.200.0.1/28".to_string(), 10),
                ("ibr1", "10.200.0.17/28".to_string(), 11)
            ]
        );

        assert_eq!(
            p.segments[0].dhcp.config,
            "# ironbark CC: DHCP for sg-web on ibr0; generated, do not edit\n\
             interface=ibr0\n\
             bind-interfaces\n\
             except-interface=lo\n\
             port=0\n\
             no-resolv\n\
             no-hosts\n\
             dhcp-authoritative\n\
             dhcp-range=10.200.0.0,static,255.255.255.240,12h\n\
             dhcp-option=option:router,10.200.0.1\n\
             dhcp-option=option:dns-server,192.0.2.53\n\
             dhcp-hostsfile=/run/ironbark/dhcp-17cd61767eea/ibr0.hosts\n\
             dhcp-leasefile=/var/lib/ironbark/cc/dhcp/ibr0/leases\n\
             pid-file=/var/lib/ironbark/cc/dhcp/ibr0/pid\n\
             log-facility=/var/lib/ironbark/cc/dhcp/ibr0/log\n"
        );
        // Sorted by address, MACs lower-cased.
        assert_eq!(
            p.segments[0].dhcp.hosts,
            "d0:0d:00:00:00:0a,10.200.0.2,ip-10-200-0-2\n\
             d0:0d:00:00:00:0b,10.200.0.3,ip-10-200-0-3\n"
        );
        assert_eq!(
            p.segments[1].dhcp.hosts,
            "d0:0d:00:00:00:0c,10.200.0.18,ip-10-200-0-18\n"
        );
        assert!(
            p.segments[1]
                .dhcp
                .config
                .contains("dhcp-range=10.200.0.16,static,255.255.255.240,12h\n")
        );
        assert!(
            p.segments[1]
                .dhcp
                .config
                .contains("dhcp-option=option:router,10.200.0.17\n")
        );

        let nft = p.nft.expect("a table");
        golden("two_segments.nft", &crate::linux::nft_replace_script(&nft));
        assert_eq!(nft.fingerprint.len(), 16);
    }

    /// Compares `text` with `src/golden/<name>`; `IRONBARK_BLESS=1`
    /// rewrites the file instead (then review the diff).
    fn golden(name: &str, text: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/golden")
            .join(name);
        if std::env::var("IRONBARK_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            text,
            want,
            "{} differs (IRONBARK_BLESS=1 rewrites it)",
            path.display()
        );
    }

    #[test]
    fn golden_public_addresses_nat_and_rules() {
        let mut c = cfg();
        c.public_interface = Some("pub0".into());
        c.public_ips = vec![([203, 0, 113, 0].into(), [203, 0, 113, 255].into())];
        let p = plan(&crate::testdata::zone_with_rules(), &c);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(p.forwarding);
        assert_eq!(
            p.public.addresses,
            ["203.0.113.10/32", "203.0.113.11/32", "203.0.113.20/32"]
        );
        assert!(p.public.owns("203.0.113.99/32"));
        assert!(!p.public.owns("198.51.100.1/32") && !p.public.owns("203.0.113.0/24"));
        let nft = p.nft.unwrap();
        golden("rules.nft", &crate::linux::nft_replace_script(&nft));
        // Spot checks of what the golden file must say.
        let e = |set: &str| nft.elements[set].iter().cloned().collect::<Vec<_>>();
        // DNS from the db instance's public address admits its private one.
        assert!(e("g10_ports").contains(&"10.200.0.18 . udp . 53".to_string()));
        // Overlapping port ranges were cut apart: 22 from anywhere, the
        // rest of 20-30 from 10/8.
        assert!(e("g11_ports").contains(&"0.0.0.0/0 . tcp . 22".to_string()));
        assert!(e("g11_ports").contains(&"10.0.0.0/8 . tcp . 20-21".to_string()));
        // A source group is its members' private and public addresses.
        assert!(e("g10_icmp").contains(&"10.200.0.18 . 8 . 0-255".to_string()));
        assert!(e("g10_icmp").contains(&"203.0.113.20 . 8 . 0-255".to_string()));
        assert_eq!(
            e("pub2priv"),
            [
                "203.0.113.10 : 10.200.0.2",
                "203.0.113.11 : 10.200.0.3",
                "203.0.113.20 : 10.200.0.18"
            ]
        );
    }

    #[test]
    fn bad_rules_and_public_addresses_are_left_out_with_a_warning() {
        use ironbark_cluster_api::{RuleProtocol, RuleSourceSpec};
        let mut z = crate::testdata::zone_with_rules();
        z.instances[1].public_ip = Some("203.0.113.11".into()); // taken by [0]
        z.segments[0].rules.push(crate::testdata::rule(
            RuleProtocol::Tcp,
            90,
            80,
            RuleSourceSpec::Cidr("0.0.0.0/0".into()),
        ));
        z.segments[0].rules.push(crate::testdata::rule(
            RuleProtocol::Icmp,
            300,
            -1,
            RuleSourceSpec::Cidr("0.0.0.0/0".into()),
        ));
        z.segments[0].rules.push(crate::testdata::rule(
            RuleProtocol::Tcp,
            1,
            2,
            RuleSourceSpec::Cidr("nope".into()),
        ));
        let p = plan(&z, &cfg());
        assert_eq!(p.warnings.len(), 4, "{:#?}", p.warnings);
        assert_eq!(p.public.addresses.len(), 2);
    }

    #[test]
    fn segments_span_the_hosts_running_their_instances() {
        let mut c = cfg();
        c.private_interface = Some("eth1".into());
        c.private_ip = Some("10.99.0.1".parse().unwrap());
        c.nodes = vec![
            ("nc1".into(), "http://10.99.0.2:8775".into()),
            ("nc2".into(), "http://10.99.0.3:8775/".into()),
            ("local".into(), "http://127.0.0.1:8775".into()),
            ("self".into(), "http://10.99.0.1:8775".into()),
            ("named".into(), "http://nc9.example:8775".into()),
        ];
        let mut z = zone();
        z.instances.push(instance(
            "i-0000000d",
            "sg-web",
            "ibr0",
            "10.200.0.4",
            "d0:0d:00:00:00:0d",
            "nc2",
        ));
        z.instances.push(instance(
            "i-0000000e",
            "sg-db",
            "ibr1",
            "10.200.0.19",
            "d0:0d:00:00:00:0e",
            "local",
        ));
        let p = plan(&z, &c);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("nc9.example"), "{:?}", p.warnings);
        let link = |bridge: &str, vni, peers: &[&str]| SegmentLink {
            bridge: bridge.into(),
            vni,
            peers: peers.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(p.underlay_interface.as_deref(), Some("eth1"));
        assert_eq!(
            p.tunnels.segments,
            [
                link("ibr0", 10, &["10.99.0.2", "10.99.0.3"]),
                link("ibr1", 11, &["10.99.0.3"])
            ]
        );
        // Hosts of the CC's own (loopback or its address) get nothing.
        assert_eq!(p.nodes.keys().collect::<Vec<_>>(), ["nc1", "nc2"]);
        assert_eq!(
            p.nodes["nc1"].segments,
            [link("ibr0", 10, &["10.99.0.1", "10.99.0.3"])]
        );
        assert_eq!(
            p.nodes["nc2"].segments,
            [
                link("ibr0", 10, &["10.99.0.1", "10.99.0.2"]),
                link("ibr1", 11, &["10.99.0.1"])
            ]
        );
        assert_eq!(p.nodes["nc2"].bridge_prefix, "ibr");
        // One host (as `ironbark up` runs): no tunnel, no node networks.
        let p = plan(&z, &cfg());
        assert!(p.nodes.is_empty());
        assert!(p.tunnels.segments.iter().all(|s| s.peers.is_empty()));
    }

    #[test]
    fn the_planner_remembers_nothing_that_changes_a_plan() {
        use ironbark_cluster_api::{RuleProtocol, RuleSourceSpec};
        let mut planner = Planner::default();
        let mut c = cfg();
        let mut z = crate::testdata::zone_with_rules();
        let mut check = |z: &ZoneDesired, c: &CcConfig| {
            let p = planner.plan(z, c);
            assert_eq!(p, plan(z, c));
            p
        };
        let first = check(&z, &c);
        // A rule, then a source group's new member, then an instance's
        // new public address, then the configuration, then a new segment.
        z.segments[0].rules.push(crate::testdata::rule(
            RuleProtocol::Udp,
            9,
            9,
            RuleSourceSpec::Cidr("192.0.2.0/24".into()),
        ));
        let with_rule = check(&z, &c);
        assert_ne!(with_rule.nft, first.nft);
        let a = first.nft.as_ref().unwrap();
        let b = with_rule.nft.as_ref().unwrap();
        let unchanged = a
            .elements
            .iter()
            .filter(|(k, v)| std::sync::Arc::ptr_eq(v, &b.elements[*k]))
            .count();
        assert!(unchanged > 0, "the other sets are reused");
        z.instances.push(instance(
            "i-0000000d",
            "sg-db",
            "ibr1",
            "10.200.0.19",
            "d0:0d:00:00:00:0d",
            "nc1",
        ));
        check(&z, &c);
        z.instances[0].public_ip = Some("203.0.113.77".into());
        check(&z, &c);
        c.metadata_listen.set_port(9999);
        check(&z, &c);
        z.segments.push(Segment {
            group_id: "sg-new".into(),
            tag: 12,
            bridge: "ibr2".into(),
            subnet: "10.200.0.32/28".into(),
            gateway: "10.200.0.33".into(),
            rules: Vec::new(),
        });
        check(&z, &c);
        z.segments.pop();
        z.segments[0].rules.clear();
        check(&z, &c);
    }

    #[test]
    fn planning_is_deterministic_and_order_independent() {
        let mut z = crate::testdata::zone_with_rules();
        let a = plan(&z, &cfg());
        z.instances.reverse();
        z.segments.reverse();
        for s in &mut z.segments {
            s.rules.reverse();
        }
        assert_eq!(plan(&z, &cfg()), a);
    }

    #[test]
    fn the_fingerprint_follows_the_rules() {
        let a = plan(&zone(), &cfg()).nft.unwrap();
        let mut c = cfg();
        c.metadata_listen.set_port(9999);
        let b = plan(&zone(), &c).nft.unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        // Instances do not change the chains, only the elements.
        let mut z = zone();
        z.instances.pop();
        let c = plan(&z, &cfg()).nft.unwrap();
        assert_eq!(c.fingerprint, a.fingerprint);
        assert_ne!(c.elements_fingerprint, a.elements_fingerprint);
        // Nor do rules.
        let d = plan(&crate::testdata::zone_with_rules(), &cfg())
            .nft
            .unwrap();
        assert_eq!(d.fingerprint, a.fingerprint);
    }

    #[test]
    fn no_segments_no_table() {
        let p = plan(
            &ZoneDesired {
                generation: 1,
                node_poll_secs: None,
                segments: vec![],
                instances: vec![],
            },
            &cfg(),
        );
        assert!(p.segments.is_empty());
        assert_eq!(p.nft, None);
    }

    #[test]
    fn bad_input_is_left_out_with_a_warning() {
        let mut z = zone();
        z.segments.push(Segment {
            group_id: "sg-evil".into(),
            tag: 12,
            bridge: "eth0".into(),
            subnet: "10.200.0.32/28".into(),
            gateway: "10.200.0.33".into(),
            rules: Vec::new(),
        });
        z.segments.push(Segment {
            group_id: "sg-overlap".into(),
            tag: 13,
            bridge: "ibr9".into(),
            subnet: "10.200.0.8/29".into(),
            gateway: "10.200.0.9".into(),
            rules: Vec::new(),
        });
        z.segments.push(Segment {
            group_id: "sg-gw".into(),
            tag: 14,
            bridge: "ibr4".into(),
            subnet: "10.200.0.64/28".into(),
            gateway: "10.200.0.80".into(),
            rules: Vec::new(),
        });
        z.instances.push(instance(
            "i-0000000d",
            "sg-web",
            "ibr0",
            "10.200.0.99",
            "d0:0d:00:00:00:0d",
            "nc1",
        ));
        z.instances.push(instance(
            "i-0000000e",
            "sg-web",
            "ibr0",
            "10.200.0.2",
            "d0:0d:00:00:00:0e",
            "nc1",
        ));
        z.instances.push(instance(
            "i-0000000f",
            "sg-none",
            "ibr7",
            "10.200.1.2",
            "d0:0d:00:00:00:0f",
            "nc1",
        ));
        z.instances.push(instance(
            "i-00000010",
            "sg-web",
            "ibr0",
            "10.200.0.4",
            "d0:0d:zz",
            "nc1",
        ));
        z.instances.push(instance(
            "i-00000011",
            "sg-web",
            "ibr0",
            "10.200.0.1",
            "d0:0d:00:00:00:11",
            "nc1",
        ));
        let p = plan(&z, &cfg());
        let bridges: Vec<&str> = p.segments.iter().map(|s| s.bridge.as_str()).collect();
        assert_eq!(bridges, ["ibr0", "ibr1"]);
        assert_eq!(p.segments[0].dhcp.entries.len(), 2);
        assert_eq!(p.warnings.len(), 8, "{:#?}", p.warnings);
        for needle in [
            "sg-evil",
            "sg-overlap",
            "sg-gw",
            "i-0000000d",
            "i-0000000e",
            "i-0000000f",
            "i-00000010",
            "i-00000011",
        ] {
            assert!(
                p.warnings.iter().any(|w| w.contains(needle)),
                "no warning about {needle}"
            );
        }
    }

    #[test]
    fn guests_are_told_the_mtu_the_tunnels_leave_only_when_there_are_tunnels() {
        let mut c = cfg();
        c.private_mtu = Some(1500);
        let p = plan(&zone(), &c);
        assert!(
            !p.segments[0].dhcp.config.contains("option:mtu"),
            "no underlay, no tunnels: the guests keep their MTU"
        );
        c.private_interface = Some("eth1".into());
        let p = plan(&zone(), &c);
        for seg in &p.segments {
            assert!(
                seg.dhcp
                    .config
                    .contains("dhcp-option-force=option:mtu,1450\n"),
                "{}",
                seg.dhcp.config
            );
        }
        c.private_mtu = Some(9000);
        let p = plan(&zone(), &c);
        assert!(
            p.segments[0]
                .dhcp
                .config
                .contains("dhcp-option-force=option:mtu,8950\n")
        );
    }

    #[test]
    fn bad_dhcp_settings_are_replaced_or_left_out() {
        let mut c = cfg();
        c.dns_servers = vec!["".into(), "192.0.2.53".into(), "ns1,evil".into()];
        c.lease_time = "12h\nport=53".into();
        let p = plan(&zone(), &c);
        let conf = &p.segments[0].dhcp.config;
        assert!(
            conf.contains("dhcp-option=option:dns-server,192.0.2.53\n"),
            "{conf}"
        );
        assert!(
            conf.contains(",255.255.255.240,12h\n") && !conf.contains("port=53"),
            "{conf}"
        );
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        c.dns_servers = vec!["192.0.2.53".into()];
        for (lease, ok) in [
            ("45m", true),
            ("infinite", true),
            ("3600", true),
            ("h", false),
            ("1hh", false),
        ] {
            c.lease_time = lease.into();
            assert_eq!(plan(&zone(), &c).warnings.is_empty(), ok, "{lease}");
        }
        c.dns_servers.clear();
        assert!(
            !plan(&zone(), &c).segments[0]
                .dhcp
                .config
                .contains("dns-server")
        );
    }

    #[test]
    fn hostnames_dnsmasq_would_refuse_are_dropped() {
        let mut z = zone();
        z.instances[0].metadata.hostname = "bad host,name".into();
        let p = plan(&z, &cfg());
        assert!(
            p.segments[0]
                .dhcp
                .hosts
                .contains("d0:0d:00:00:00:0b,10.200.0.3\n")
        );
        assert!(valid_hostname("ip-10-0-0-1.ec2.internal"));
        assert!(!valid_hostname("-x"));
    }

    #[test]
    fn cidr_arithmetic() {
        let n: Ipv4Net = "10.1.2.5/28".parse().unwrap();
        assert_eq!(n.to_string(), "10.1.2.0/28");
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 240));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 1, 2, 15));
        assert!(n.is_host(Ipv4Addr::new(10, 1, 2, 1)));
        assert!(!n.is_host(Ipv4Addr::new(10, 1, 2, 0)));
        assert!(!n.is_host(Ipv4Addr::new(10, 1, 2, 15)));
        assert!(!n.contains(Ipv4Addr::new(10, 1, 2, 16)));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(all.overlaps(&n));
    }
}
