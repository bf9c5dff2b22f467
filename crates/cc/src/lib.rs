//! The ironbark cluster controller (CC): one availability zone's network,
//! its metadata service, and the relay between the CLC and the zone's NCs.
//!
//! # How data flows
//!
//! The CLC sends the zone's whole desired state
//! ([`ironbark_cluster_api::ZoneDesired`], `PUT /v1/zone`, served by
//! [`api`]). The [`controller::ClusterController`]:
//!
//! 1. plans the host network with the pure [`plan::plan`]: per security
//!    group a bridge with the gateway address, a dnsmasq configuration with
//!    one static host per instance, VXLAN tunnels to the NCs on other hosts
//!    that run the group's instances, the public addresses to hold, and the
//!    `ironbark` nftables table that redirects 169.254.169.254 to the
//!    metadata service, NATs public addresses and filters by the groups'
//!    rules (whose contents are set elements, see [`filter`]);
//! 2. applies the plan with [`hostnet::reconcile`] through a
//!    [`hostnet::HostNet`] ([`linux::LinuxHostNet`] drives `ip`, `dnsmasq`
//!    and `nft`; [`fakenet::FakeHostNet`] is its in-memory stand-in),
//!    changing only what differs;
//! 3. serves each instance's metadata ([`metadata`]) from that zone, to the
//!    instance whose address the request comes from;
//! 4. sends every NC its [`ironbark_node_api::DesiredInstances`] through a
//!    [`node_link::NodeLink`] (the NC crate's HTTP client, or
//!    [`node_link::FakeNode`]), and aggregates the nodes' reports, from the
//!    answers, from NC events (`POST /v1/events`) and from a poll loop, into
//!    the [`ironbark_cluster_api::ZoneReport`] the CLC reads and is pushed.
//!
//! `POST /v1/network/rebuild` ([`ClusterController::rebuild_network`]) is
//! the clean restart: everything the CC owns on the host is removed and
//! rebuilt from the last desired state.
//!
//! Terminate follows the original: the instance's node first, every node
//! when that one does not answer. [`client::ClusterClient`] is the typed
//! client the CLC uses.

pub mod api;
pub mod client;
pub mod config;
pub mod controller;
pub mod fakenet;
pub mod filter;
pub mod hostnet;
mod http;
pub mod linux;
pub mod metadata;
pub mod netns;
pub mod node_link;
pub mod plan;
pub mod testdata;

pub use api::{router, run, serve};
pub use client::{ClientError, ClusterClient};
pub use config::{CcConfig, DEFAULT_BRIDGE_PREFIX, DEFAULT_METADATA_PORT};
pub use controller::{CcError, ClusterController};
pub use fakenet::{FakeHostNet, NetOp};
pub use hostnet::{HostNet, NetError, reconcile};
pub use linux::LinuxHostNet;
pub use metadata::{MetaPeer, MetadataStore};
pub use node_link::{FakeMode, FakeNode, LinkError, NodeCall, NodeLink};
pub use plan::{NetPlan, plan};
