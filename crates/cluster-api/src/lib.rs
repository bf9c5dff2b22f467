//! The cluster controller's control API, as data.
//!
//! The CLC owns cloud state and sends its CC the whole desired state of the
//! zone ([`ZoneDesired`], `PUT /v1/zone`): every instance that should run,
//! on which node, in which security group's segment, with which addresses
//! and metadata. The CC reconciles: it builds each group's bridge, DHCP and
//! filtering, serves each instance's metadata, and hands every NC the full
//! set of instances it should run. It reports back what the nodes really
//! run ([`ZoneReport`], `GET /v1/zone`, and pushed to the CLC as events
//! happen). `POST /v1/instances/{id}/terminate` is the original's explicit
//! terminate: sent to the instance's NC, or to every NC when that one does
//! not answer. Requests carry `Authorization: Bearer <cluster token>`.

use ironbark_node_api::{
    AttachState, InstanceReport, InstanceSpec, NodeReport, VolumeAttachment, VolumesReport,
};
use serde::{Deserialize, Serialize};

/// Default TCP port of the CC's control API.
pub const DEFAULT_PORT: u16 = 8774;

/// One security group's private segment in this zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub group_id: String,
    /// Isolation tag: a VXLAN VNI here (802.1Q VLAN ids where the kernel has them).
    pub tag: u32,
    /// The bridge every host joins for this segment.
    pub bridge: String,
    /// The block carved from VNET_SUBNET, e.g. `10.1.2.0/28`.
    pub subnet: String,
    /// The CC's address on the segment: DHCP server, gateway, metadata.
    pub gateway: String,
    /// The group's ingress rules: what may reach its instances from outside
    /// the group (their public addresses, and other groups' segments).
    /// Members of the group always reach each other; everything else is
    /// dropped.
    #[serde(default)]
    pub rules: Vec<IngressRule>,
}

/// The protocols a security group rule can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleProtocol {
    Tcp,
    Udp,
    Icmp,
    /// Every protocol (`-1` in the API); ports are ignored.
    All,
}

/// Where a rule's traffic may come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSourceSpec {
    /// An IPv4 block, `a.b.c.d/len`. A packet matches when its source
    /// address, or the public address of the instance that sent it, is
    /// inside (so a rule naming an instance's public IP works between
    /// instances, which the original got wrong).
    Cidr(String),
    /// Every member of this security group (by id, `sg-…`), by its private
    /// and its public address. The group need not have a segment here.
    Group(String),
}

/// One ingress rule, already validated by the CLC.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IngressRule {
    pub protocol: RuleProtocol,
    /// tcp/udp: first port of the range. icmp: the type, `-1` for any.
    pub from_port: i32,
    /// tcp/udp: last port of the range. icmp: the code, `-1` for any.
    pub to_port: i32,
    pub source: RuleSourceSpec,
}

/// The EC2 metadata an instance sees at 169.254.169.254.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMetadata {
    pub ami_id: String,
    pub reservation_id: String,
    pub instance_type: String,
    pub hostname: String,
    pub local_ipv4: String,
    pub public_ipv4: Option<String>,
    pub availability_zone: String,
    pub security_groups: Vec<String>,
    /// (key name, one-line OpenSSH public key)
    pub public_key: Option<(String, String)>,
    /// Raw user data (already base64-decoded).
    pub user_data: Option<Vec<u8>>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    /// device name -> what it is (ami, ephemeral0, root)
    pub block_device_mapping: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDesired {
    /// What the NC runs (its NIC's bridge is the segment's bridge).
    pub spec: InstanceSpec,
    pub node_id: String,
    pub group_id: String,
    pub private_ip: String,
    /// The instance's public address (from the pool, or an elastic IP
    /// associated with it): the CC holds it on its public interface, DNATs
    /// traffic to it to `private_ip` and SNATs the instance's outbound
    /// traffic to it. `None` while it has none.
    #[serde(default)]
    pub public_ip: Option<String>,
    pub metadata: InstanceMetadata,
    /// EBS volumes to hot-plug into it (their SC exports are ready); the
    /// CC hands each NC its instances' sets ([`ironbark_node_api::DesiredVolumes`]).
    #[serde(default)]
    pub volumes: Vec<VolumeAttachment>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneDesired {
    /// Only grows; a CC ignores an older view that arrives late.
    pub generation: u64,
    pub segments: Vec<Segment>,
    pub instances: Vec<InstanceDesired>,
    /// How often the CC polls its NCs (seconds; a cloud property). `None`
    /// keeps the CC's own setting.
    #[serde(default)]
    pub node_poll_secs: Option<u32>,
}

/// A node as the CC sees it: its last report, and whether it answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub url: String,
    pub reachable: bool,
    pub last_seen_ms: Option<i64>,
    pub report: Option<NodeReport>,
    /// The node's volume attachments, as it last reported them.
    #[serde(default)]
    pub volumes: Option<VolumesReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneReport {
    pub zone: String,
    pub generation: u64,
    pub nodes: Vec<NodeStatus>,
}

impl ZoneReport {
    /// Every instance report in the zone, with the node it came from.
    pub fn instances(&self) -> impl Iterator<Item = (&str, &InstanceReport)> {
        self.nodes.iter().flat_map(|n| {
            n.report
                .iter()
                .flat_map(move |r| r.instances.iter().map(move |i| (n.node_id.as_str(), i)))
        })
    }
}

impl ZoneReport {
    /// Volumes inside each instance's VM (attached, or detaching while the
    /// guest still holds them), by instance id.
    pub fn plugged_volumes(&self) -> std::collections::HashMap<String, Vec<String>> {
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        for a in self
            .nodes
            .iter()
            .filter_map(|n| n.volumes.as_ref())
            .flat_map(|v| v.attachments.iter())
            .filter(|a| matches!(a.state, AttachState::Attached | AttachState::Detaching))
        {
            out.entry(a.instance_id.clone())
                .or_default()
                .push(a.volume_id.clone());
        }
        out
    }

    /// The nodes whose volume report the CC has: of an instance on any
    /// other node (one not polled yet since the CC started, say), nothing
    /// is known, which is not the same as nothing plugged.
    pub fn volume_reporting_nodes(&self) -> std::collections::HashSet<String> {
        self.nodes
            .iter()
            .filter(|n| n.volumes.is_some())
            .map(|n| n.node_id.clone())
            .collect()
    }

    /// Everything the NCs said of the volumes in their VMs.
    pub fn node_volumes(&self) -> NodeVolumes {
        NodeVolumes {
            plugged: self.plugged_volumes(),
            reporting: self.volume_reporting_nodes(),
            failed: self
                .nodes
                .iter()
                .filter_map(|n| n.volumes.as_ref())
                .flat_map(|v| v.attachments.iter())
                .filter(|a| a.state == AttachState::Error)
                .map(|a| {
                    (
                        (a.instance_id.clone(), a.volume_id.clone()),
                        a.error.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }
}

/// What the NCs reported of volumes in their VMs ([`ZoneReport::node_volumes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeVolumes {
    /// Volumes inside each instance's VM, by instance id.
    pub plugged: std::collections::HashMap<String, Vec<String>>,
    /// Nodes whose volume report is in hand.
    pub reporting: std::collections::HashSet<String>,
    /// (instance, volume) whose last hot-plug failed, with the NC's reason.
    pub failed: std::collections::HashMap<(String, String), String>,
}

/// The answer to a terminate: which nodes acknowledged, and whether the
/// CC had to fall back to asking every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateOutcome {
    pub broadcast: bool,
    pub acknowledged_by: Vec<String>,
    pub found_on: Option<String>,
}
