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
//! Segment tunnels to NCs on other hosts go through the same host's
//! [`ironbark_nc::segnet::SegNet`] ([`HostNet::segnet`]).
//!
//! The table is loaded whole only when its chains change (new or removed
//! segments, a new metadata port); instances, addresses and rules only
//! change set elements, in one transaction ([`HostNet::update_nft_elements`]),
//! which is what keeps a rule change atomic and fast at thousands of rules.
//! A change does not even read the table first while the host net trusts
//! its memory of what it loaded ([`reconcile_nft`]); a reconcile that
//! changes nothing (every poll) still reads it, and repairs drift.
//! When a public address moves (an elastic IP associated elsewhere), the
//! conntrack entries of its old mapping are deleted, so no connection keeps
//! running through a NAT binding the plan no longer has.

use std::collections::BTreeMap;

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
    /// What the loaded `ironbark` table says it holds ([`NftPlan::state`]),
    /// if there is a table.
    async fn nft_state(&self) -> Result<Option<String>, NetError>;
    /// Replaces the whole table, elements included, in one transaction.
    async fn apply_nft(&self, nft: &NftPlan) -> Result<(), NetError>;
    /// Brings the loaded table's elements to the plan's in one
    /// transaction; its chains are already the plan's. `loaded` is the
    /// table's state as [`HostNet::nft_state`] said it or as
    /// [`HostNet::nft_loaded`] remembers it: the transaction fails,
    /// changing nothing, if the table is not in that state.
    async fn update_nft_elements(&self, loaded: &str, nft: &NftPlan) -> Result<(), NetError>;
    /// The state and elements this process last loaded into the table,
    /// while it has no reason to doubt them (none after a restart or a
    /// failed transaction). `None`, the default, makes every change read
    /// the table first.
    fn nft_loaded(&self) -> Option<(String, crate::filter::Elements)> {
        None
    }
    /// The loaded public-to-private NAT map (empty without a table).
    async fn nat_map(&self) -> Result<BTreeMap<String, String>, NetError>;
    /// Deletes the conntrack entries to or NATed to `ip`.
    async fn flush_conntrack(&self, ip: &str) -> Result<(), NetError>;
    /// IPv4 addresses (`a.b.c.d/len`) on any interface.
    async fn addresses(&self, iface: &str) -> Result<Vec<String>, NetError>;
    async fn forwarding(&self) -> Result<bool, NetError>;
    async fn enable_forwarding(&self) -> Result<(), NetError>;
    /// The same host's bridges and tunnels, for the segments' VXLAN
    /// tunnels to NCs on other hosts.
    fn segnet(&self) -> &dyn ironbark_nc::segnet::SegNet;
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
    // Filtering and NAT first: a rule change is enforced as soon as its
    // one transaction commits, before the slower checks of bridges and DHCP
    // servers (nft names interfaces, so a bridge made after is matched).
    match reconcile_nft(net, plan).await {
        Ok(done) => changes.extend(done),
        Err(NetError::Several(all)) => errors.extend(all),
        Err(e) => errors.push(e),
    }
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

    // Tunnels to NCs on other hosts, on the bridges just made; stale ones go.
    match ironbark_nc::segnet::join(
        net.segnet(),
        &plan.tunnels,
        plan.underlay_interface.as_deref(),
        false,
    )
    .await
    {
        Ok(done) => changes.extend(done),
        Err(e) => step(
            "join segment tunnels".into(),
            Err(NetError::Command {
                command: "joining segment tunnels".into(),
                message: e.0,
            }),
            &mut changes,
        ),
    }

    if plan.forwarding && !net.forwarding().await? {
        let r = net.enable_forwarding().await;
        step("enable IPv4 forwarding".into(), r, &mut changes);
    }

    // New public addresses before the NAT that points at them.
    let public_have = match &plan.public.interface {
        Some(iface) => net.addresses(iface).await?,
        None => Vec::new(),
    };
    if let Some(iface) = &plan.public.interface {
        for a in plan
            .public
            .addresses
            .iter()
            .filter(|a| !public_have.contains(a))
        {
            let r = net.add_address(iface, a).await;
            step(format!("add {a} to {iface}"), r, &mut changes);
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

    // Stale public addresses go after the NAT that used them.
    if let Some(iface) = &plan.public.interface {
        for old in public_have
            .iter()
            .filter(|a| plan.public.owns(a) && !plan.public.addresses.contains(a))
        {
            let r = net.delete_address(iface, old).await;
            step(format!("delete {old} from {iface}"), r, &mut changes);
        }
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

/// The table part of [`reconcile`]: brings the `ironbark` table to the
/// plan's and deletes the conntrack entries of public addresses whose
/// mapping changed; returns what it changed.
///
/// A change (the plan's state is not the one this process last loaded)
/// goes straight to one element transaction when the host net still
/// trusts its memory ([`HostNet::nft_loaded`]): that transaction deletes
/// the old state's `state` element first, so it fails whole, changing
/// nothing, if the table is not in that state any more (flushed, reloaded
/// by someone else); then, and whenever the plan did not change (each poll
/// is such a check), the table is read as before. Skipping the read saves
/// one `nft` run per rule change without trusting anything the kernel does
/// not confirm in the same transaction.
pub async fn reconcile_nft(net: &dyn HostNet, plan: &NetPlan) -> Result<Vec<String>, NetError> {
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    let mut step =
        |what: String, result: Result<(), NetError>, changes: &mut Vec<String>| match result {
            Ok(()) => changes.push(what),
            Err(e) => errors.push(e),
        };
    let same_table = |state: &str, nft: &NftPlan| state.split(':').next() == Some(&nft.fingerprint);
    let known = plan.nft.as_ref().zip(net.nft_loaded());
    let mut done = false;
    if let Some((nft, (state, old))) =
        known.filter(|(nft, (s, _))| *s != nft.state() && same_table(s, nft))
    {
        match net.update_nft_elements(&state, nft).await {
            Ok(()) => {
                changes.push(format!(
                    "update nft elements to {}",
                    nft.elements_fingerprint
                ));
                let after = planned_nat(nft);
                for (public, private) in &nat_of(&old) {
                    if after.get(public) != Some(private) {
                        let r = net.flush_conntrack(public).await;
                        step(format!("flush conntrack of {public}"), r, &mut changes);
                    }
                }
                done = true;
            }
            Err(e) => {
                // Most likely the table is not what this process loaded;
                // whatever the cause, reading it decides what to do.
                tracing::warn!(error = %e, "nft element transaction failed; reading the table");
            }
        }
    }
    if !done {
        let loaded = net.nft_state().await?;
        match (&plan.nft, loaded) {
            (Some(nft), Some(state)) if state == nft.state() => {}
            (Some(nft), loaded) => {
                let before = net.nat_map().await.unwrap_or_default();
                let r = match loaded {
                    Some(state) if same_table(&state, nft) => {
                        let r = net.update_nft_elements(&state, nft).await;
                        step(
                            format!("update nft elements to {}", nft.elements_fingerprint),
                            r,
                            &mut changes,
                        );
                        true
                    }
                    _ => {
                        let r = net.apply_nft(nft).await;
                        let ok = r.is_ok();
                        step(format!("load nft table {}", nft.state()), r, &mut changes);
                        ok
                    }
                };
                if r {
                    let after = planned_nat(nft);
                    for (public, private) in &before {
                        if after.get(public) != Some(private) {
                            let r = net.flush_conntrack(public).await;
                            step(format!("flush conntrack of {public}"), r, &mut changes);
                        }
                    }
                }
            }
            (None, Some(_)) => {
                let r = net.delete_nft().await;
                step("delete nft table".into(), r, &mut changes);
            }
            (None, None) => {}
        }
    }
    match errors.len() {
        0 => Ok(changes),
        1 => Err(errors.pop().expect("one")),
        _ => Err(NetError::Several(errors)),
    }
}

/// The plan's public-to-private map.
pub fn planned_nat(nft: &NftPlan) -> BTreeMap<String, String> {
    nat_of(&nft.elements)
}

/// The public-to-private map among `elements`.
pub fn nat_of(elements: &crate::filter::Elements) -> BTreeMap<String, String> {
    elements
        .get("pub2priv")
        .into_iter()
        .flat_map(|set| set.iter())
        .filter_map(|e| e.split_once(" : "))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
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
        assert_eq!(changes.len(), 8, "{changes:#?}");
        assert_eq!(
            net.take_ops(),
            [
                NetOp::ApplyNft(p.nft.as_ref().unwrap().fingerprint.clone()),
                NetOp::AddBridge("ibr0".into()),
                NetOp::AddAddress("ibr0".into(), "10.200.0.1/28".into()),
                NetOp::AddBridge("ibr1".into()),
                NetOp::AddAddress("ibr1".into(), "10.200.0.17/28".into()),
                NetOp::EnableForwarding,
                NetOp::StartDhcp("ibr0".into()),
                NetOp::StartDhcp("ibr1".into()),
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
        assert_eq!(
            net.take_ops(),
            [
                NetOp::UpdateNft(p.nft.as_ref().unwrap().elements_fingerprint.clone()),
                NetOp::ReloadDhcp("ibr1".into()),
            ]
        );
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
                NetOp::ApplyNft(p.nft.as_ref().unwrap().fingerprint.clone()),
                NetOp::SetUp("ibr1".into()),
                NetOp::StartDhcp("ibr0".into()),
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
                NetOp::ApplyNft(p.nft.as_ref().unwrap().fingerprint.clone()),
                NetOp::DeleteAddress("ibr1".into(), "10.200.0.17/28".into()),
                NetOp::AddAddress("ibr1".into(), "10.200.0.33/28".into()),
                NetOp::StartDhcp("ibr1".into()),
            ]
        );
    }

    fn public_cfg() -> crate::config::CcConfig {
        let mut c = cfg();
        c.public_interface = Some("pub0".into());
        c.public_ips = vec![([203, 0, 113, 0].into(), [203, 0, 113, 255].into())];
        c
    }

    #[tokio::test]
    async fn public_addresses_are_held_and_applying_twice_changes_nothing() {
        let net = FakeHostNet::new();
        net.add_address("pub0", "198.51.100.1/24").await.unwrap();
        net.add_address("pub0", "203.0.113.99/32").await.unwrap();
        net.take_ops();
        let p = plan(&crate::testdata::zone_with_rules(), &public_cfg());
        reconcile(&net, &p).await.unwrap();
        // The operator's own address stays; a stale one of the pool goes.
        assert_eq!(
            net.iface_addresses("pub0"),
            [
                "198.51.100.1/24",
                "203.0.113.10/32",
                "203.0.113.11/32",
                "203.0.113.20/32"
            ]
        );
        assert!(net.forwarding_on());
        assert_eq!(
            net.nft_elements().as_ref(),
            Some(&p.nft.as_ref().unwrap().elements)
        );
        net.take_ops();
        assert!(reconcile(&net, &p).await.unwrap().is_empty());
        assert_eq!(net.take_ops(), []);
    }

    #[tokio::test]
    async fn a_rule_change_only_updates_set_elements() {
        let net = FakeHostNet::new();
        let mut z = crate::testdata::zone_with_rules();
        reconcile(&net, &plan(&z, &public_cfg())).await.unwrap();
        net.take_ops();
        z.segments[0].rules.pop();
        let p = plan(&z, &public_cfg());
        reconcile(&net, &p).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [NetOp::UpdateNft(
                p.nft.as_ref().unwrap().elements_fingerprint.clone()
            )]
        );
    }

    #[tokio::test]
    async fn a_change_after_drift_reads_the_table_instead_of_trusting_memory() {
        let net = FakeHostNet::new();
        let mut z = crate::testdata::zone_with_rules();
        reconcile(&net, &plan(&z, &public_cfg())).await.unwrap();
        // Someone flushed the ruleset: the remembered state is wrong, the
        // element transaction that names it fails, the table is read
        // (missing) and loaded whole.
        net.flush_nft();
        net.take_ops();
        z.segments[0].rules.pop();
        let p = plan(&z, &public_cfg());
        reconcile(&net, &p).await.unwrap();
        let nft = p.nft.as_ref().unwrap();
        assert_eq!(net.take_ops(), [NetOp::ApplyNft(nft.fingerprint.clone())]);
        assert_eq!(net.nft_elements().as_ref(), Some(&nft.elements));
        // Trusted again: the next change is one element transaction.
        z.segments[0].rules.clear();
        let p = plan(&z, &public_cfg());
        reconcile(&net, &p).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [NetOp::UpdateNft(
                p.nft.as_ref().unwrap().elements_fingerprint.clone()
            )]
        );
    }

    #[tokio::test]
    async fn an_elastic_ip_moves_without_a_dangling_mapping() {
        let net = FakeHostNet::new();
        let mut z = crate::testdata::zone_with_rules();
        reconcile(&net, &plan(&z, &public_cfg())).await.unwrap();
        net.take_ops();
        // i-0000000a (10.200.0.2) had 203.0.113.10; it gets 203.0.113.50
        // and i-0000000b (10.200.0.3) takes 203.0.113.10 over.
        let a = z
            .instances
            .iter_mut()
            .find(|i| i.private_ip == "10.200.0.2")
            .unwrap();
        a.public_ip = Some("203.0.113.50".into());
        let b = z
            .instances
            .iter_mut()
            .find(|i| i.private_ip == "10.200.0.3")
            .unwrap();
        b.public_ip = Some("203.0.113.10".into());
        let p = plan(&z, &public_cfg());
        reconcile(&net, &p).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [
                NetOp::UpdateNft(p.nft.as_ref().unwrap().elements_fingerprint.clone()),
                NetOp::FlushConntrack("203.0.113.10".into()),
                NetOp::FlushConntrack("203.0.113.11".into()),
                NetOp::AddAddress("pub0".into(), "203.0.113.50/32".into()),
                NetOp::DeleteAddress("pub0".into(), "203.0.113.11/32".into()),
            ]
        );
        let nat = planned_nat(p.nft.as_ref().unwrap());
        assert_eq!(nat["203.0.113.10"], "10.200.0.3");
        assert_eq!(nat["203.0.113.50"], "10.200.0.2");
        assert!(!nat.contains_key("203.0.113.11"));
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
