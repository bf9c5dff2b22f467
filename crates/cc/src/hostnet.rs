//! Applying a [`NetPlan`] to a host: the [`HostNet`] trait and the
//! reconciler that drives it.
//!
//! [`HostNet`] is a small vocabulary of observations (which CC bridges
//! exist, which DHCP servers run with which files, which nftables table is
//! loaded) and changes (add a bridge, an address, (re)start or reload a
//! DHCP server, replace the table). [`reconcile`] reads the host, compares
//! it with the plan and issues only the changes that are missing, so
//! applying the same plan twice changes nothing the second time, and a host
//! that drifted (a crashed dnsmasq, a flushed table, a deleted bridge) is
//! repaired by the next apply. It also removes what the plan no longer
//! lists: prefixed bridges and DHCP servers of segments that are gone.
//!
//! [`crate::linux::LinuxHostNet`] implements the trait with `ip`, `nft` and
//! `dnsmasq`; [`crate::fakenet::FakeHostNet`] keeps the same state in
//! memory and records every change, for tests of everything above it.
//! Multi-host segments will add VXLAN devices to the vocabulary.

use async_trait::async_trait;

use crate::plan::{DhcpPlan, NetPlan, NftPlan};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command ran and failed.
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A command's output could not be understood.
    #[error("{0}")]
    Parse(String),
    /// Several steps failed; the others were still done.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<NetError>),
}

/// A CC bridge as found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeState {
    pub name: String,
    pub up: bool,
    /// IPv4 addresses as `a.b.c.d/len`.
    pub addresses: Vec<String>,
}

/// A segment's DHCP server as found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpState {
    pub bridge: String,
    /// The configuration file it was started with.
    pub config: String,
    /// The host list it was last told to read.
    pub hosts: String,
    pub running: bool,
}

/// The host-network operations the reconciler needs. Observations only
/// report what the CC owns (bridges with its prefix, its DHCP servers, its
/// table); changes are each idempotent where the kernel allows.
#[async_trait]
pub trait HostNet: Send + Sync + 'static {
    /// Bridges whose name starts with `prefix`.
    async fn bridges(&self, prefix: &str) -> Result<Vec<BridgeState>, NetError>;
    /// Creates the bridge and sets it up.
    async fn add_bridge(&self, name: &str) -> Result<(), NetError>;
    async fn set_up(&self, name: &str) -> Result<(), NetError>;
    async fn delete_bridge(&self, name: &str) -> Result<(), NetError>;
    async fn add_address(&self, bridge: &str, cidr: &str) -> Result<(), NetError>;
    async fn delete_address(&self, bridge: &str, cidr: &str) -> Result<(), NetError>;
    /// Every DHCP server the CC set up, running or not.
    async fn dhcp_servers(&self) -> Result<Vec<DhcpState>, NetError>;
    /// Writes the files and (re)starts the server of `bridge`.
    async fn start_dhcp(&self, bridge: &str, dhcp: &DhcpPlan) -> Result<(), NetError>;
    /// Rewrites the host list and makes the running server reread it.
    async fn reload_dhcp_hosts(&self, bridge: &str, dhcp: &DhcpPlan) -> Result<(), NetError>;
    /// Stops the server of `bridge` and removes its files.
    async fn stop_dhcp(&self, bridge: &str) -> Result<(), NetError>;
    /// The fingerprint of the loaded `ironbark` table, if there is one.
    async fn nft_fingerprint(&self) -> Result<Option<String>, NetError>;
    /// Replaces the whole table in one transaction.
    async fn apply_nft(&self, nft: &NftPlan) -> Result<(), NetError>;
    /// Removes the table if it exists.
    async fn delete_nft(&self) -> Result<(), NetError>;
}

/// Makes the host match `plan`; returns what it changed, in order.
///
/// Every step is attempted even when an earlier one fails (a broken segment
/// must not keep the others from their DHCP), and the failures come back
/// together as [`NetError::Several`].
pub async fn reconcile(net: &dyn HostNet, plan: &NetPlan) -> Result<Vec<String>, NetError> {
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    let mut step =
        |what: String, result: Result<(), NetError>, changes: &mut Vec<String>| match result {
            Ok(()) => changes.push(what),
            Err(e) => errors.push(e),
        };

    // Bridges and gateway addresses first: dnsmasq binds to the bridge and
    // its address, and the NCs attach taps to it.
    let bridges = net.bridges(&plan.bridge_prefix).await?;
    for seg in &plan.segments {
        let want = seg.address();
        match bridges.iter().find(|b| b.name == seg.bridge) {
            None => {
                let r = net.add_bridge(&seg.bridge).await;
                let ok = r.is_ok();
                step(format!("add bridge {}", seg.bridge), r, &mut changes);
                if ok {
                    let r = net.add_address(&seg.bridge, &want).await;
                    step(format!("add {want} to {}", seg.bridge), r, &mut changes);
                }
            }
            Some(b) => {
                if !b.up {
                    let r = net.set_up(&b.name).await;
                    step(format!("set {} up", b.name), r, &mut changes);
                }
                // A stale gateway (the segment was renumbered) goes first so
                // the new one does not share the bridge with it.
                for old in b.addresses.iter().filter(|a| **a != want) {
                    let r = net.delete_address(&b.name, old).await;
                    step(format!("delete {old} from {}", b.name), r, &mut changes);
                }
                if !b.addresses.contains(&want) {
                    let r = net.add_address(&b.name, &want).await;
                    step(format!("add {want} to {}", b.name), r, &mut changes);
                }
            }
        }
    }

    let servers = net.dhcp_servers().await?;
    for seg in &plan.segments {
        let dhcp = &seg.dhcp;
        match servers.iter().find(|s| s.bridge == seg.bridge) {
            Some(s) if s.running && s.config == dhcp.config => {
                if s.hosts != dhcp.hosts {
                    let r = net.reload_dhcp_hosts(&seg.bridge, dhcp).await;
                    step(
                        format!("reload DHCP hosts of {}", seg.bridge),
                        r,
                        &mut changes,
                    );
                }
            }
            _ => {
                let r = net.start_dhcp(&seg.bridge, dhcp).await;
                step(format!("start DHCP on {}", seg.bridge), r, &mut changes);
            }
        }
    }

    let loaded = net.nft_fingerprint().await?;
    match (&plan.nft, loaded) {
        (Some(nft), Some(fp)) if fp == nft.fingerprint => {}
        (Some(nft), _) => {
            let r = net.apply_nft(nft).await;
            step(
                format!("load nft table {}", nft.fingerprint),
                r,
                &mut changes,
            );
        }
        (None, Some(_)) => {
            let r = net.delete_nft().await;
            step("delete nft table".into(), r, &mut changes);
        }
        (None, None) => {}
    }

    // What the plan no longer lists: DHCP servers before their bridges.
    let planned = |name: &str| plan.segments.iter().any(|s| s.bridge == name);
    for s in servers.iter().filter(|s| !planned(&s.bridge)) {
        let r = net.stop_dhcp(&s.bridge).await;
        step(format!("stop DHCP on {}", s.bridge), r, &mut changes);
    }
    for b in bridges.iter().filter(|b| !planned(&b.name)) {
        let r = net.delete_bridge(&b.name).await;
        step(format!("delete bridge {}", b.name), r, &mut changes);
    }

    match errors.len() {
        0 => Ok(changes),
        1 => Err(errors.pop().expect("one")),
        _ => Err(NetError::Several(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakenet::{FakeHostNet, NetOp};
    use crate::plan::plan;
    use crate::testdata::{cfg, zone};

    #[tokio::test]
    async fn first_apply_builds_everything_in_order() {
        let net = FakeHostNet::new();
        let p = plan(&zone(), &cfg());
        let changes = reconcile(&net, &p).await.unwrap();
        assert_eq!(changes.len(), 7, "{changes:#?}");
        assert_eq!(
            net.take_ops(),
            [
                NetOp::AddBridge("ibr0".into()),
                NetOp::AddAddress("ibr0".into(), "10.200.0.1/28".into()),
                NetOp::AddBridge("ibr1".into()),
                NetOp::AddAddress("ibr1".into(), "10.200.0.17/28".into()),
                NetOp::StartDhcp("ibr0".into()),
                NetOp::StartDhcp("ibr1".into()),
                NetOp::ApplyNft(p.nft.as_ref().unwrap().fingerprint.clone()),
            ]
        );
        assert_eq!(
            net.nft_table().as_deref(),
            Some(p.nft.as_ref().unwrap().table.as_str())
        );
        let dhcp = net.dhcp("ibr0").unwrap();
        assert_eq!(dhcp.hosts, p.segments[0].dhcp.hosts);
        assert!(dhcp.running);
    }

    #[tokio::test]
    async fn the_second_apply_of_the_same_plan_changes_nothing() {
        let net = FakeHostNet::new();
        let p = plan(&zone(), &cfg());
        reconcile(&net, &p).await.unwrap();
        net.take_ops();
        assert!(reconcile(&net, &p).await.unwrap().is_empty());
        assert_eq!(net.take_ops(), []);
    }

    #[tokio::test]
    async fn a_new_instance_only_reloads_its_segments_hosts() {
        let net = FakeHostNet::new();
        let mut z = zone();
        reconcile(&net, &plan(&z, &cfg())).await.unwrap();
        net.take_ops();
        z.instances.push(crate::testdata::instance(
            "i-0000000d",
            "sg-db",
            "ibr1",
            "10.200.0.19",
            "d0:0d:00:00:00:0d",
            "nc2",
        ));
        let p = plan(&z, &cfg());
        reconcile(&net, &p).await.unwrap();
        assert_eq!(net.take_ops(), [NetOp::ReloadDhcp("ibr1".into())]);
        assert!(net.dhcp("ibr1").unwrap().hosts.contains("10.200.0.19"));
    }

    #[tokio::test]
    async fn removing_a_segment_removes_its_bridge_and_dhcp() {
        let net = FakeHostNet::new();
        let mut z = zone();
        reconcile(&net, &plan(&z, &cfg())).await.unwrap();
        net.take_ops();
        z.segments.retain(|s| s.group_id != "sg-db");
        z.instances.retain(|i| i.group_id != "sg-db");
        let p = plan(&z, &cfg());
        reconcile(&net, &p).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [
                NetOp::ApplyNft(p.nft.as_ref().unwrap().fingerprint.clone()),
                NetOp::StopDhcp("ibr1".into()),
                NetOp::DeleteBridge("ibr1".into()),
            ]
        );
        assert!(net.dhcp("ibr1").is_none());
        assert_eq!(net.bridge_names(), ["ibr0"]);

        // And the last one takes the table with it.
        let empty = plan(
            &ironbark_cluster_api::ZoneDesired {
                generation: 9,
                node_poll_secs: None,
                segments: vec![],
                instances: vec![],
            },
            &cfg(),
        );
        reconcile(&net, &empty).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [
                NetOp::DeleteNft,
                NetOp::StopDhcp("ibr0".into()),
                NetOp::DeleteBridge("ibr0".into()),
            ]
        );
        assert_eq!(net.nft_table(), None);
    }

    #[tokio::test]
    async fn drift_is_repaired_and_foreign_bridges_left_alone() {
        let net = FakeHostNet::new();
        let p = plan(&zone(), &cfg());
        reconcile(&net, &p).await.unwrap();
        net.take_ops();
        net.crash_dhcp("ibr0");
        net.set_down("ibr1");
        net.flush_nft();
        net.insert_bridge("ibr7", &["10.9.9.1/24"]);
        net.insert_bridge("docker0", &["172.17.0.1/16"]);
        reconcile(&net, &p).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [
                NetOp::SetUp("ibr1".into()),
                NetOp::StartDhcp("ibr0".into()),
                NetOp::ApplyNft(p.nft.as_ref().unwrap().fingerprint.clone()),
                NetOp::DeleteBridge("ibr7".into()),
            ]
        );
        assert_eq!(net.bridge_names(), ["docker0", "ibr0", "ibr1"]);
    }

    #[tokio::test]
    async fn a_renumbered_segment_moves_its_gateway_and_restarts_dhcp() {
        let net = FakeHostNet::new();
        let mut z = zone();
        reconcile(&net, &plan(&z, &cfg())).await.unwrap();
        net.take_ops();
        z.segments[1].subnet = "10.200.0.32/28".into();
        z.segments[1].gateway = "10.200.0.33".into();
        z.instances[2].private_ip = "10.200.0.34".into();
        let p = plan(&z, &cfg());
        reconcile(&net, &p).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [
                NetOp::DeleteAddress("ibr1".into(), "10.200.0.17/28".into()),
                NetOp::AddAddress("ibr1".into(), "10.200.0.33/28".into()),
                NetOp::StartDhcp("ibr1".into()),
                NetOp::ApplyNft(p.nft.as_ref().unwrap().fingerprint.clone()),
            ]
        );
    }

    #[tokio::test]
    async fn one_failure_does_not_stop_the_other_steps() {
        let net = FakeHostNet::new();
        net.fail_on(NetOp::StartDhcp("ibr0".into()));
        let p = plan(&zone(), &cfg());
        let err = reconcile(&net, &p).await.unwrap_err();
        assert!(err.to_string().contains("ibr0"), "{err}");
        assert!(net.dhcp("ibr1").unwrap().running);
        assert!(net.nft_table().is_some());
    }
}
