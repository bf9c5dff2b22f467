//! An in-memory [`HostNet`] for tests: it keeps the bridges, DHCP servers
//! and nftables table a real host would have, records every change as a
//! [`NetOp`] (observations are not recorded), and can be made to drift or
//! fail on purpose.

use std::collections::BTreeMap;

use crate::hostnet::planned_nat;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::hostnet::{BridgeState, DhcpState, HostNet, NetError};
use crate::plan::{DhcpPlan, NftPlan};

/// A change the reconciler asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetOp {
    AddBridge(String),
    SetUp(String),
    DeleteBridge(String),
    AddAddress(String, String),
    DeleteAddress(String, String),
    StartDhcp(String),
    ReloadDhcp(String),
    StopDhcp(String),
    /// The fingerprint of the table loaded.
    ApplyNft(String),
    /// The elements fingerprint the loaded table's sets were brought to.
    UpdateNft(String),
    DeleteNft,
    FlushConntrack(String),
    EnableForwarding,
}

#[derive(Default)]
struct State {
    bridges: BTreeMap<String, BridgeState>,
    dhcp: BTreeMap<String, DhcpState>,
    nft: Option<NftPlan>,
    /// What the reconciler last loaded, as [`HostNet::nft_loaded`] says
    /// (unlike `nft`, it does not follow drift).
    remembered: Option<(String, crate::filter::Elements)>,
    /// Addresses of interfaces that are not CC bridges (the public one).
    ifaces: BTreeMap<String, Vec<String>>,
    forwarding: bool,
    ops: Vec<NetOp>,
    fail: Vec<NetOp>,
}

#[derive(Default)]
pub struct FakeHostNet {
    state: Mutex<State>,
    segnet: ironbark_nc::segnet::FakeSegNet,
}

impl FakeHostNet {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The changes made so far, and forgets them.
    pub fn take_ops(&self) -> Vec<NetOp> {
        std::mem::take(&mut self.lock().ops)
    }

    pub fn bridge_names(&self) -> Vec<String> {
        self.lock().bridges.keys().cloned().collect()
    }

    pub fn bridge(&self, name: &str) -> Option<BridgeState> {
        self.lock().bridges.get(name).cloned()
    }

    pub fn dhcp(&self, bridge: &str) -> Option<DhcpState> {
        self.lock().dhcp.get(bridge).cloned()
    }

    /// The table text as loaded.
    pub fn nft_table(&self) -> Option<String> {
        self.lock().nft.as_ref().map(|n| n.table.clone())
    }

    /// The tunnels' fake host.
    pub fn fake_segnet(&self) -> &ironbark_nc::segnet::FakeSegNet {
        &self.segnet
    }

    /// The loaded table's elements, by set.
    pub fn nft_elements(&self) -> Option<crate::filter::Elements> {
        self.lock().nft.as_ref().map(|n| n.elements.clone())
    }

    /// Addresses of a non-bridge interface (the public one).
    pub fn iface_addresses(&self, iface: &str) -> Vec<String> {
        self.lock().ifaces.get(iface).cloned().unwrap_or_default()
    }

    pub fn forwarding_on(&self) -> bool {
        self.lock().forwarding
    }

    /// Makes `op` fail (once per call, every time it is asked for).
    pub fn fail_on(&self, op: NetOp) {
        self.lock().fail.push(op);
    }

    /// Drift: the DHCP server of `bridge` died.
    pub fn crash_dhcp(&self, bridge: &str) {
        if let Some(d) = self.lock().dhcp.get_mut(bridge) {
            d.running = false;
        }
    }

    /// Drift: someone set the bridge down.
    pub fn set_down(&self, bridge: &str) {
        if let Some(b) = self.lock().bridges.get_mut(bridge) {
            b.up = false;
        }
    }

    /// Drift: someone ran `nft flush ruleset`.
    pub fn flush_nft(&self) {
        self.lock().nft = None;
    }

    /// A bridge the reconciler did not create (a leftover, or the host's own).
    pub fn insert_bridge(&self, name: &str, addresses: &[&str]) {
        self.lock().bridges.insert(
            name.to_string(),
            BridgeState {
                name: name.to_string(),
                up: true,
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
            },
        );
    }

    /// Records `op`, or fails it if told to.
    fn record(&self, st: &mut State, op: NetOp) -> Result<(), NetError> {
        if st.fail.contains(&op) {
            return Err(NetError::Command {
                command: format!("fake {op:?}"),
                message: "failing as told".into(),
            });
        }
        st.ops.push(op);
        Ok(())
    }

    fn missing(what: &str) -> NetError {
        NetError::Command {
            command: format!("fake {what}"),
            message: "no such device".into(),
        }
    }
}

#[async_trait]
impl HostNet for FakeHostNet {
    async fn bridges(&self, prefix: &str) -> Result<Vec<BridgeState>, NetError> {
        Ok(self
            .lock()
            .bridges
            .values()
            .filter(|b| b.name.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn add_bridge(&self, name: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::AddBridge(name.into()))?;
        st.bridges
            .entry(name.to_string())
            .or_insert_with(|| BridgeState {
                name: name.to_string(),
                up: true,
                addresses: vec![],
            });
        Ok(())
    }

    async fn set_up(&self, name: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::SetUp(name.into()))?;
        st.bridges
            .get_mut(name)
            .ok_or_else(|| Self::missing(name))?
            .up = true;
        Ok(())
    }

    async fn delete_bridge(&self, name: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::DeleteBridge(name.into()))?;
        st.bridges.remove(name);
        Ok(())
    }

    async fn add_address(&self, bridge: &str, cidr: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::AddAddress(bridge.into(), cidr.into()))?;
        let list = match st.bridges.get_mut(bridge) {
            Some(b) => &mut b.addresses,
            None => st.ifaces.entry(bridge.to_string()).or_default(),
        };
        if !list.iter().any(|a| a == cidr) {
            list.push(cidr.to_string());
        }
        Ok(())
    }

    async fn delete_address(&self, bridge: &str, cidr: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::DeleteAddress(bridge.into(), cidr.into()))?;
        let list = match st.bridges.get_mut(bridge) {
            Some(b) => &mut b.addresses,
            None => st
                .ifaces
                .get_mut(bridge)
                .ok_or_else(|| Self::missing(bridge))?,
        };
        list.retain(|a| a != cidr);
        Ok(())
    }

    async fn addresses(&self, iface: &str) -> Result<Vec<String>, NetError> {
        let st = self.lock();
        Ok(match st.bridges.get(iface) {
            Some(b) => b.addresses.clone(),
            None => st.ifaces.get(iface).cloned().unwrap_or_default(),
        })
    }

    fn segnet(&self) -> &dyn ironbark_nc::segnet::SegNet {
        &self.segnet
    }

    async fn forwarding(&self) -> Result<bool, NetError> {
        Ok(self.lock().forwarding)
    }

    async fn enable_forwarding(&self) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::EnableForwarding)?;
        st.forwarding = true;
        Ok(())
    }

    async fn dhcp_servers(&self) -> Result<Vec<DhcpState>, NetError> {
        Ok(self.lock().dhcp.values().cloned().collect())
    }

    async fn start_dhcp(&self, bridge: &str, dhcp: &DhcpPlan) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::StartDhcp(bridge.into()))?;
        st.dhcp.insert(
            bridge.to_string(),
            DhcpState {
                bridge: bridge.to_string(),
                config: dhcp.config.clone(),
                hosts: dhcp.hosts.clone(),
                running: true,
            },
        );
        Ok(())
    }

    async fn reload_dhcp_hosts(&self, bridge: &str, dhcp: &DhcpPlan) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::ReloadDhcp(bridge.into()))?;
        st.dhcp
            .get_mut(bridge)
            .ok_or_else(|| Self::missing(bridge))?
            .hosts = dhcp.hosts.clone();
        Ok(())
    }

    async fn stop_dhcp(&self, bridge: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::StopDhcp(bridge.into()))?;
        st.dhcp.remove(bridge);
        Ok(())
    }

    async fn nft_state(&self) -> Result<Option<String>, NetError> {
        Ok(self.lock().nft.as_ref().map(|n| n.state()))
    }

    async fn update_nft_elements(&self, loaded: &str, nft: &NftPlan) -> Result<(), NetError> {
        let mut st = self.lock();
        // Like the real transaction: nothing happens unless the table is
        // in the state the caller names.
        if st.nft.as_ref().map(|n| n.state()).as_deref() != Some(loaded) {
            st.remembered = None;
            return Err(NetError::Command {
                command: "fake update of nft elements".into(),
                message: format!("the table is not in state {loaded}"),
            });
        }
        if let Err(e) = self.record(&mut st, NetOp::UpdateNft(nft.elements_fingerprint.clone())) {
            st.remembered = None;
            return Err(e);
        }
        let table = st.nft.as_mut().ok_or_else(|| Self::missing("table"))?;
        table.elements = nft.elements.clone();
        table.elements_fingerprint = nft.elements_fingerprint.clone();
        st.remembered = Some((nft.state(), nft.elements.clone()));
        Ok(())
    }

    fn nft_loaded(&self) -> Option<(String, crate::filter::Elements)> {
        self.lock().remembered.clone()
    }

    async fn nat_map(&self) -> Result<BTreeMap<String, String>, NetError> {
        Ok(self
            .lock()
            .nft
            .as_ref()
            .map(planned_nat)
            .unwrap_or_default())
    }

    async fn flush_conntrack(&self, ip: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::FlushConntrack(ip.into()))
    }

    async fn apply_nft(&self, nft: &NftPlan) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::ApplyNft(nft.fingerprint.clone()))?;
        st.nft = Some(nft.clone());
        st.remembered = Some((nft.state(), nft.elements.clone()));
        Ok(())
    }

    async fn delete_nft(&self) -> Result<(), NetError> {
        let mut st = self.lock();
        self.record(&mut st, NetOp::DeleteNft)?;
        st.nft = None;
        st.remembered = None;
        Ok(())
    }
}
