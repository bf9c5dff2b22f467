//! The CC and NC roles inside the `ironbark` process, and the glue that
//! connects them to the CLC: the shared cluster token, the CLC's view of its
//! CC (a [`Cluster`] over the CC's HTTP client), and the CLC's loop that
//! re-sends desired state, polls, and buries terminated instances.
//!
//! `ironbark up` runs all of them on one host, talking over loopback HTTP
//! exactly as they would across hosts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ironbark_cc::{CcConfig, ClusterClient, ClusterController};
use ironbark_clc::{Cloud, Cluster};
use ironbark_cluster_api::{TerminateOutcome, ZoneDesired, ZoneReport};
use ironbark_nc::{AccelMode, Node, NodeConfig, QemuConfig, QemuHypervisor};
use ironbark_types::{Error, ErrorKind, InstanceId, Result};

/// The per-cloud secret CC, NCs and the CLC's internal endpoint share.
/// Made once, kept beside the sealing key.
pub fn cluster_token(data_dir: &Path) -> std::result::Result<String, String> {
    let path = data_dir.join("keys").join("cluster.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.parent().expect("has parent"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let token = ironbark_types::generate_secret_key()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>();
    ironbark_clc::write_private_file(&path, token.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(token)
}

/// The CLC's CC, over HTTP.
pub struct HttpCluster(pub ClusterClient);

fn cc_error(e: ironbark_cc::ClientError) -> Error {
    Error::new(ErrorKind::Internal, format!("cluster controller: {e}"))
}

#[async_trait::async_trait]
impl Cluster for HttpCluster {
    async fn apply(&self, zone: ZoneDesired) -> Result<ZoneReport> {
        self.0.apply(&zone).await.map_err(cc_error)
    }
    async fn report(&self) -> Result<ZoneReport> {
        self.0.report().await.map_err(cc_error)
    }
    async fn terminate(&self, id: &InstanceId) -> Result<TerminateOutcome> {
        self.0.terminate(id.as_str()).await.map_err(cc_error)
    }
    async fn reboot(&self, id: &InstanceId) -> Result<()> {
        self.0.reboot(id.as_str()).await.map_err(cc_error)
    }
    async fn console(&self, id: &InstanceId) -> Result<String> {
        self.0.console(id.as_str()).await.map_err(cc_error)
    }
}

/// The CLC's SC, over HTTP.
pub struct HttpStorage(pub ironbark_sc::ScClient);

fn sc_error(e: ironbark_sc::ScError) -> Error {
    Error::new(ErrorKind::Internal, format!("storage controller: {e}"))
}

#[async_trait::async_trait]
impl ironbark_clc::Storage for HttpStorage {
    async fn apply(
        &self,
        desired: ironbark_sc_api::DesiredStorage,
    ) -> Result<ironbark_sc_api::StorageReport> {
        self.0.apply(&desired).await.map_err(sc_error)
    }
    async fn report(&self) -> Result<ironbark_sc_api::StorageReport> {
        self.0.report().await.map_err(sc_error)
    }
}

/// Where each role listens, derived from the API address so several clouds
/// can run side by side: CC on port+1, NC on port+2, SC on port+3,
/// metadata on port+4, and the SC's NBD exports from port+100 (100 ports).
pub struct Ports {
    pub cc: SocketAddr,
    pub nc: SocketAddr,
    pub sc: SocketAddr,
    pub metadata: SocketAddr,
    pub nbd: (u16, u16),
}

impl Ports {
    pub fn around(api: SocketAddr) -> Self {
        let at = |off: u16| SocketAddr::new(api.ip(), api.port().wrapping_add(off));
        let meta = SocketAddr::new([0, 0, 0, 0].into(), api.port().wrapping_add(4));
        let nbd = api.port().wrapping_add(100);
        Ports {
            cc: at(1),
            nc: at(2),
            sc: at(3),
            metadata: meta,
            nbd: (nbd, nbd.wrapping_add(99)),
        }
    }
}

pub struct NcSettings {
    pub node_id: String,
    pub accel: AccelMode,
    pub cc_url: Option<String>,
    /// VNET_PRIVINTERFACE: what segment tunnels run over when the CC asks
    /// this NC to join segments itself (an NC on its own host).
    pub underlay_interface: Option<String>,
}

/// Starts an NC on `listen`; returns once it serves.
pub async fn start_nc(
    data_dir: &Path,
    listen: SocketAddr,
    token: &str,
    s: NcSettings,
) -> std::result::Result<Arc<Node>, String> {
    let hv = Arc::new(QemuHypervisor::new(QemuConfig {
        accel: s.accel,
        // Instance storage is discarded at terminate, so nothing is lost by
        // stopping at once; waiting for a guest that ignores ACPI would
        // hold `shutting-down` for the whole grace period.
        powerdown_timeout: Duration::ZERO,
        ..Default::default()
    }));
    let mut cfg = NodeConfig::new(&s.node_id, data_dir.join("nc"), token);
    cfg.underlay_interface = s.underlay_interface;
    cfg.callback_url = s
        .cc_url
        .map(|u| format!("{}/v1/events", u.trim_end_matches('/')));
    let node = Node::start(cfg, hv)
        .await
        .map_err(|e| format!("starting the NC: {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    tracing::info!(%listen, node = %s.node_id, "NC listening");
    let n = node.clone();
    tokio::spawn(async move {
        if let Err(e) = ironbark_nc::serve(n, listener).await {
            tracing::error!(error = %e, "NC server stopped");
        }
    });
    Ok(node)
}

/// The first IPv4 address of `dev` (VNET_PRIVINTERFACE): the CC's underlay
/// address, which NCs on other hosts tunnel segments to.
pub fn interface_ipv4(dev: &str) -> std::result::Result<std::net::Ipv4Addr, String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", dev])
        .output()
        .map_err(|e| format!("VNET_PRIVINTERFACE: running ip: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok())
        .ok_or_else(|| format!("VNET_PRIVINTERFACE: {dev} has no IPv4 address"))
}

/// The MTU of `dev` (VNET_PRIVINTERFACE), which the segments' tunnels
/// must fit in.
pub fn interface_mtu(dev: &str) -> std::result::Result<u32, String> {
    let path = format!("/sys/class/net/{dev}/mtu");
    std::fs::read_to_string(&path)
        .map_err(|e| format!("VNET_PRIVINTERFACE: {path}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("VNET_PRIVINTERFACE: {path}: {e}"))
}

/// Starts a CC on `listen` (and its metadata listener); returns once it serves.
pub async fn start_cc(cfg: CcConfig) -> std::result::Result<Arc<ClusterController>, String> {
    let api = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", cfg.listen))?;
    let meta = tokio::net::TcpListener::bind(cfg.metadata_listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", cfg.metadata_listen))?;
    let listen = cfg.listen;
    let cc = ClusterController::start(cfg).map_err(|e| format!("starting the CC: {e}"))?;
    tracing::info!(%listen, "CC listening");
    let c = cc.clone();
    tokio::spawn(async move {
        if let Err(e) = ironbark_cc::serve(c, api, meta).await {
            tracing::error!(error = %e, "CC server stopped");
        }
    });
    Ok(cc)
}

/// The CLC's safety net: re-send desired state, poll the CC, bury. Events
/// make the normal path fast; this repairs whatever an event missed.
pub fn spawn_clc_loop(cloud: Arc<Cloud>) {
    tokio::spawn(async move {
        let mut waited = 0u64;
        loop {
            // Ticks of a second, so a changed interval applies at once.
            tokio::time::sleep(Duration::from_secs(1)).await;
            waited += 1;
            // EBS changes move in steps (SC makes, NC plugs); while any is
            // under way it is driven every second.
            if let Err(e) = cloud.ebs_tick().await {
                tracing::warn!(error = %e, "EBS pass failed");
            }
            let every = cloud
                .store()
                .property(ironbark_clc::CLUSTER_POLL)
                .await
                .ok()
                .flatten()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(20)
                .clamp(1, 3600);
            if waited < every {
                continue;
            }
            waited = 0;
            if let Err(e) = cloud.reconcile().await {
                tracing::warn!(error = %e, "CLC reconcile pass failed");
            }
        }
    });
}
