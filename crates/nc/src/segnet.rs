//! Joining security-group segments across hosts: a bridge per segment and
//! a VXLAN tunnel (VNI = the segment's tag; this kernel has no 802.1Q)
//! enslaved to it, with head-end replication to the segment's other hosts
//! (one all-zeros FDB entry per peer, so broadcasts such as DHCP reach the
//! CC and unknown unicast reaches everyone; the bridge and the tunnel then
//! learn where each MAC lives).
//!
//! Both sides use it: an NC on its own host builds bridges and tunnels
//! from [`NodeNetwork`] ([`join`] with `own_bridges`), the CC adds tunnels
//! to the bridges it already has ([`join`] without). The host is reached
//! through the [`SegNet`] trait: [`LinuxSegNet`] drives `ip` and `bridge`
//! (inside a network namespace if asked, as tests do), [`FakeSegNet`]
//! keeps the same state in memory and records changes. [`join`] is a
//! reconciler: it reads what exists, changes only the difference and
//! removes tunnels (and, with `own_bridges`, bridges) that are no longer
//! wanted, so applying the same segments twice changes nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ironbark_node_api::{NodeNetwork, SegmentLink};
use serde::Deserialize;
use tokio::process::Command;

/// Tunnels are named `ivx<vni>`; anything with the prefix that is not
/// wanted is removed.
pub const VXLAN_PREFIX: &str = "ivx";
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// The MAC of the flooding entries.
const FLOOD: &str = "00:00:00:00:00:00";

pub fn vxlan_name(vni: u32) -> String {
    format!("{VXLAN_PREFIX}{vni}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Vxlan { vni: u32 },
}

/// A bridge or tunnel as found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub kind: LinkKind,
    pub master: Option<String>,
    pub up: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SegNetError(pub String);

#[async_trait]
pub trait SegNet: Send + Sync + 'static {
    /// Bridges named with `bridge_prefix` and tunnels named with
    /// [`VXLAN_PREFIX`].
    async fn links(&self, bridge_prefix: &str) -> Result<Vec<LinkState>, SegNetError>;
    async fn add_bridge(&self, name: &str) -> Result<(), SegNetError>;
    /// Creates the tunnel over `dev` (the underlay), enslaves it to
    /// `bridge` and sets it up.
    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        dev: Option<&str>,
        bridge: &str,
    ) -> Result<(), SegNetError>;
    async fn delete_link(&self, name: &str) -> Result<(), SegNetError>;
    /// The flooding destinations of a tunnel.
    async fn peers(&self, vxlan: &str) -> Result<Vec<String>, SegNetError>;
    async fn add_peer(&self, vxlan: &str, peer: &str) -> Result<(), SegNetError>;
    async fn delete_peer(&self, vxlan: &str, peer: &str) -> Result<(), SegNetError>;
}

/// Makes the host's segments `want`; returns what changed. Segments
/// without peers get no tunnel (nobody to reach). Every step is tried; the
/// failures come back together.
pub async fn join(
    net: &dyn SegNet,
    want: &NodeNetwork,
    underlay: Option<&str>,
    own_bridges: bool,
) -> Result<Vec<String>, SegNetError> {
    let have = net.links(&want.bridge_prefix).await?;
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    let mut note = |what: String, r: Result<(), SegNetError>, changes: &mut Vec<String>| match r {
        Ok(()) => changes.push(what),
        Err(e) => errors.push(e.0),
    };
    let find = |name: &str| have.iter().find(|l| l.name == name);
    let wanted_tunnels: Vec<(&SegmentLink, String)> = want
        .segments
        .iter()
        .filter(|s| !s.peers.is_empty())
        .map(|s| (s, vxlan_name(s.vni)))
        .collect();

    if own_bridges {
        for s in &want.segments {
            if find(&s.bridge).is_none() {
                let r = net.add_bridge(&s.bridge).await;
                note(format!("add bridge {}", s.bridge), r, &mut changes);
            }
        }
    }
    for (s, name) in &wanted_tunnels {
        let current = find(name);
        let fits = current.is_some_and(|l| {
            l.kind == LinkKind::Vxlan { vni: s.vni }
                && l.master.as_deref() == Some(&s.bridge)
                && l.up
        });
        if !fits {
            if current.is_some() {
                let r = net.delete_link(name).await;
                note(format!("delete misfit tunnel {name}"), r, &mut changes);
            }
            let r = net.add_vxlan(name, s.vni, underlay, &s.bridge).await;
            note(
                format!("add tunnel {name} (VNI {}) to {}", s.vni, s.bridge),
                r,
                &mut changes,
            );
        }
        let peers = net.peers(name).await.unwrap_or_default();
        for p in s.peers.iter().filter(|p| !peers.contains(p)) {
            let r = net.add_peer(name, p).await;
            note(format!("flood {name} to {p}"), r, &mut changes);
        }
        for p in peers.iter().filter(|p| !s.peers.contains(p)) {
            let r = net.delete_peer(name, p).await;
            note(format!("stop flooding {name} to {p}"), r, &mut changes);
        }
    }
    for l in &have {
        let stale = match l.kind {
            LinkKind::Vxlan { .. } => !wanted_tunnels.iter().any(|(_, n)| *n == l.name),
            LinkKind::Bridge => own_bridges && !want.segments.iter().any(|s| s.bridge == l.name),
        };
        if stale {
            let r = net.delete_link(&l.name).await;
            note(format!("delete {}", l.name), r, &mut changes);
        }
    }
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(SegNetError(errors.join("; ")))
    }
}

/// [`SegNet`] with `ip` and `bridge`.
pub struct LinuxSegNet {
    netns: Option<String>,
}

impl LinuxSegNet {
    /// Inside the named network namespace when `netns` is set.
    pub fn new(netns: Option<String>) -> Self {
        LinuxSegNet { netns }
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<String, SegNetError> {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        c.args(args).kill_on_drop(true);
        let shown = format!("{program} {}", args.join(" "));
        let out = tokio::time::timeout(Duration::from_secs(30), c.output())
            .await
            .map_err(|_| SegNetError(format!("`{shown}` timed out")))?
            .map_err(|e| SegNetError(format!("running `{shown}`: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(SegNetError(format!(
                "`{shown}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

#[derive(Deserialize)]
struct JsonLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    master: Option<String>,
    linkinfo: Option<JsonLinkInfo>,
}

#[derive(Deserialize)]
struct JsonLinkInfo {
    info_kind: Option<String>,
    info_data: Option<serde_json::Value>,
}

/// Bridges and tunnels from `ip -j -d link show`.
pub fn parse_links(json: &str, bridge_prefix: &str) -> Result<Vec<LinkState>, SegNetError> {
    if json.trim().is_empty() {
        return Ok(vec![]);
    }
    let links: Vec<JsonLink> = serde_json::from_str(json)
        .map_err(|e| SegNetError(format!("`ip -j -d link` output: {e}")))?;
    let mut out = Vec::new();
    for l in links {
        let info = l.linkinfo.as_ref();
        let kind = match info.and_then(|i| i.info_kind.as_deref()) {
            Some("bridge") if l.ifname.starts_with(bridge_prefix) => LinkKind::Bridge,
            Some("vxlan") if l.ifname.starts_with(VXLAN_PREFIX) => LinkKind::Vxlan {
                vni: info
                    .and_then(|i| i.info_data.as_ref())
                    .and_then(|d| d.get("id"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or_default() as u32,
            },
            _ => continue,
        };
        out.push(LinkState {
            up: l.flags.iter().any(|f| f == "UP"),
            name: l.ifname,
            kind,
            master: l.master,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct JsonFdb {
    mac: String,
    dst: Option<String>,
}

/// Flooding destinations from `bridge -j fdb show dev <vxlan>`.
pub fn parse_peers(json: &str) -> Result<Vec<String>, SegNetError> {
    if json.trim().is_empty() {
        return Ok(vec![]);
    }
    let entries: Vec<JsonFdb> = serde_json::from_str(json)
        .map_err(|e| SegNetError(format!("`bridge -j fdb` output: {e}")))?;
    Ok(entries
        .into_iter()
        .filter(|e| e.mac == FLOOD)
        .filter_map(|e| e.dst)
        .collect())
}

#[async_trait]
impl SegNet for LinuxSegNet {
    async fn links(&self, bridge_prefix: &str) -> Result<Vec<LinkState>, SegNetError> {
        parse_links(
            &self.run("ip", &["-j", "-d", "link", "show"]).await?,
            bridge_prefix,
        )
    }

    async fn add_bridge(&self, name: &str) -> Result<(), SegNetError> {
        self.run("ip", &["link", "add", name, "type", "bridge"])
            .await?;
        self.run("ip", &["link", "set", name, "up"]).await.map(drop)
    }

    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        dev: Option<&str>,
        bridge: &str,
    ) -> Result<(), SegNetError> {
        let (vni, port) = (vni.to_string(), VXLAN_PORT.to_string());
        let mut args = vec![
            "link", "add", name, "type", "vxlan", "id", &vni, "dstport", &port,
        ];
        if let Some(d) = dev {
            args.extend(["dev", d]);
        }
        self.run("ip", &args).await?;
        self.run("ip", &["link", "set", name, "master", bridge, "up"])
            .await
            .map(drop)
    }

    async fn delete_link(&self, name: &str) -> Result<(), SegNetError> {
        self.run("ip", &["link", "del", name]).await.map(drop)
    }

    async fn peers(&self, vxlan: &str) -> Result<Vec<String>, SegNetError> {
        parse_peers(
            &self
                .run("bridge", &["-j", "fdb", "show", "dev", vxlan])
                .await?,
        )
    }

    async fn add_peer(&self, vxlan: &str, peer: &str) -> Result<(), SegNetError> {
        self.run(
            "bridge",
            &["fdb", "append", FLOOD, "dev", vxlan, "dst", peer],
        )
        .await
        .map(drop)
    }

    async fn delete_peer(&self, vxlan: &str, peer: &str) -> Result<(), SegNetError> {
        self.run("bridge", &["fdb", "del", FLOOD, "dev", vxlan, "dst", peer])
            .await
            .map(drop)
    }
}

/// An in-memory [`SegNet`] that records its changes.
#[derive(Default)]
pub struct FakeSegNet {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    links: BTreeMap<String, LinkState>,
    peers: BTreeMap<String, Vec<String>>,
    ops: Vec<String>,
}

impl FakeSegNet {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The changes so far (as `op arg...` lines), and forgets them.
    pub fn take_ops(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().ops)
    }

    pub fn link_names(&self) -> Vec<String> {
        self.lock().links.keys().cloned().collect()
    }

    pub fn peers_of(&self, vxlan: &str) -> Vec<String> {
        self.lock().peers.get(vxlan).cloned().unwrap_or_default()
    }
}

#[async_trait]
impl SegNet for FakeSegNet {
    async fn links(&self, bridge_prefix: &str) -> Result<Vec<LinkState>, SegNetError> {
        Ok(self
            .lock()
            .links
            .values()
            .filter(|l| match l.kind {
                LinkKind::Bridge => l.name.starts_with(bridge_prefix),
                LinkKind::Vxlan { .. } => true,
            })
            .cloned()
            .collect())
    }

    async fn add_bridge(&self, name: &str) -> Result<(), SegNetError> {
        let mut st = self.lock();
        st.ops.push(format!("add-bridge {name}"));
        st.links.insert(
            name.into(),
            LinkState {
                name: name.into(),
                kind: LinkKind::Bridge,
                master: None,
                up: true,
            },
        );
        Ok(())
    }

    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        dev: Option<&str>,
        bridge: &str,
    ) -> Result<(), SegNetError> {
        let mut st = self.lock();
        st.ops.push(format!(
            "add-vxlan {name} {vni} {} {bridge}",
            dev.unwrap_or("-")
        ));
        st.links.insert(
            name.into(),
            LinkState {
                name: name.into(),
                kind: LinkKind::Vxlan { vni },
                master: Some(bridge.into()),
                up: true,
            },
        );
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), SegNetError> {
        let mut st = self.lock();
        st.ops.push(format!("delete {name}"));
        st.links.remove(name);
        st.peers.remove(name);
        Ok(())
    }

    async fn peers(&self, vxlan: &str) -> Result<Vec<String>, SegNetError> {
        Ok(self.peers_of(vxlan))
    }

    async fn add_peer(&self, vxlan: &str, peer: &str) -> Result<(), SegNetError> {
        let mut st = self.lock();
        st.ops.push(format!("add-peer {vxlan} {peer}"));
        st.peers.entry(vxlan.into()).or_default().push(peer.into());
        Ok(())
    }

    async fn delete_peer(&self, vxlan: &str, peer: &str) -> Result<(), SegNetError> {
        let mut st = self.lock();
        st.ops.push(format!("delete-peer {vxlan} {peer}"));
        if let Some(p) = st.peers.get_mut(vxlan) {
            p.retain(|x| x != peer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(segments: &[(&str, u32, &[&str])]) -> NodeNetwork {
        NodeNetwork {
            bridge_prefix: "ibr".into(),
            segments: segments
                .iter()
                .map(|(b, vni, peers)| SegmentLink {
                    bridge: b.to_string(),
                    vni: *vni,
                    peers: peers.iter().map(|p| p.to_string()).collect(),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn an_nc_builds_bridges_and_tunnels_once_and_removes_stale_ones() {
        let net = FakeSegNet::new();
        let want = network(&[
            ("ibr0", 10, &["10.99.0.1", "10.99.0.3"]),
            ("ibr1", 11, &["10.99.0.1"]),
        ]);
        join(&net, &want, Some("eth1"), true).await.unwrap();
        assert_eq!(
            net.take_ops(),
            [
                "add-bridge ibr0",
                "add-bridge ibr1",
                "add-vxlan ivx10 10 eth1 ibr0",
                "add-peer ivx10 10.99.0.1",
                "add-peer ivx10 10.99.0.3",
                "add-vxlan ivx11 11 eth1 ibr1",
                "add-peer ivx11 10.99.0.1",
            ]
        );
        // Twice: nothing.
        assert!(
            join(&net, &want, Some("eth1"), true)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(net.take_ops().is_empty());

        // A peer leaves a segment, a segment goes.
        let want = network(&[("ibr0", 10, &["10.99.0.1"])]);
        join(&net, &want, Some("eth1"), true).await.unwrap();
        assert_eq!(
            net.take_ops(),
            ["delete-peer ivx10 10.99.0.3", "delete ibr1", "delete ivx11"]
        );
        assert_eq!(net.link_names(), ["ibr0", "ivx10"]);
    }

    #[tokio::test]
    async fn the_cc_only_adds_tunnels_to_its_own_bridges() {
        let net = FakeSegNet::new();
        net.add_bridge("ibr0").await.unwrap();
        net.add_bridge("ibr5").await.unwrap();
        net.take_ops();
        let want = network(&[("ibr0", 10, &["10.99.0.2"]), ("ibr1", 11, &[])]);
        join(&net, &want, None, false).await.unwrap();
        assert_eq!(
            net.take_ops(),
            ["add-vxlan ivx10 10 - ibr0", "add-peer ivx10 10.99.0.2"]
        );
    }

    #[test]
    fn links_and_peers_parse_from_json() {
        let links = r#"[{"ifname":"lo","flags":["UP"]},
            {"ifname":"ibr0","flags":["UP"],"linkinfo":{"info_kind":"bridge","info_data":{}}},
            {"ifname":"docker0","flags":["UP"],"linkinfo":{"info_kind":"bridge"}},
            {"ifname":"ivx10","flags":["BROADCAST"],"master":"ibr0","linkinfo":{"info_kind":"vxlan","info_data":{"id":10,"port":4789}}}]"#;
        assert_eq!(
            parse_links(links, "ibr").unwrap(),
            [
                LinkState {
                    name: "ibr0".into(),
                    kind: LinkKind::Bridge,
                    master: None,
                    up: true
                },
                LinkState {
                    name: "ivx10".into(),
                    kind: LinkKind::Vxlan { vni: 10 },
                    master: Some("ibr0".into()),
                    up: false
                },
            ]
        );
        let fdb = r#"[{"mac":"00:00:00:00:00:00","dst":"10.99.0.1","flags":["self","permanent"]},
            {"mac":"d0:0d:00:00:00:01","dst":"10.99.0.3","flags":["self"]},
            {"mac":"6a:00:00:00:00:01","flags":["master"]}]"#;
        assert_eq!(parse_peers(fdb).unwrap(), ["10.99.0.1"]);
    }
}
