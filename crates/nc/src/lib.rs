//! The ironbark node controller (NC): runs instances as QEMU processes on one
//! host.
//!
//! # How data flows
//!
//! The CC sends the whole set of instances this host should run
//! ([`ironbark_node_api::DesiredInstances`], `PUT /v1/instances`, served by
//! [`api`]). The [`node::Node`] reconciler compares it with what it runs:
//! for each missing instance it fetches the boot images into the local
//! [`cache::ImageCache`] (HTTP, SHA-256 checked, one download per image
//! however many launches want it) and asks a [`hypervisor::Hypervisor`] to
//! start the VM in the instance's directory; for each unwanted instance it
//! stops the VM, deletes its tap and then its directory. A periodic tick
//! notices VMs that died and removes orphaned taps. State changes are pushed
//! to the CC's callback URL; the CC also polls `GET /v1/instances`.
//!
//! The real hypervisor is [`qemu::QemuHypervisor`] (daemonized QEMU driven
//! over QMP, see [`qmp`]), so VMs outlive an NC restart and are adopted again
//! when it comes back. [`fake::FakeHypervisor`] stands in for it in tests of
//! the logic above it. [`client::NodeClient`] is the typed client the CC
//! uses.
//!
//! EBS volumes are hot-plugged into running VMs by [`volumes`]: the CC
//! sends per instance the SC exports to attach (`PUT /v1/volumes`).

pub mod api;
pub mod cache;
pub mod client;
pub mod fake;
pub mod host;
mod http;
pub mod hypervisor;
pub mod netns_hv;
pub mod node;
pub mod qemu;
mod qemu_volumes;
pub mod qmp;
pub mod segnet;
pub mod testing;
pub mod volumes;

pub use api::{router, serve};
pub use cache::{CacheError, ImageCache};
pub use client::{ClientError, NodeClient};
pub use fake::{FakeCall, FakeHypervisor};
pub use host::Capacity;
pub use hypervisor::{HvError, Hypervisor, Launch, TapInfo, VmInfo};
pub use netns_hv::{NetnsHypervisor, NetnsHypervisorConfig};
pub use node::{Node, NodeConfig, NodeError};
pub use qemu::{Accel, AccelMode, QemuConfig, QemuHypervisor};
