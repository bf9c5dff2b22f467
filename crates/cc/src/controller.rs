//! The cluster controller's behaviour, independent of HTTP.
//!
//! # How data flows
//!
//! - **Desired state down.** The CLC sends the whole zone
//!   ([`ClusterController::apply`]). A generation older than the last one
//!   is ignored (it arrived late). Otherwise the CC plans and reconciles the
//!   host network ([`mod@crate::plan`], [`crate::hostnet`]) first, so bridges
//!   exist before an NC attaches a tap to one, swaps the metadata store, and
//!   then sends every configured node its [`DesiredInstances`]: the zone's
//!   instances placed on it, with the zone's generation.
//! - **Reports up.** Each call's answer (and each `POST /v1/events` from an
//!   NC) updates that node's [`NodeStatus`]; an event also queues the
//!   whole [`ZoneReport`] for the CLC callback (one sender task, latest
//!   report wins, short timeout, failures only logged: the CLC also polls).
//! - **Safety net.** Every poll interval ([`ClusterController::poll_once`])
//!   the CC repairs the host network, asks every node for its report, marks
//!   it reachable or not, and re-sends the desired set to nodes whose
//!   generation lags (a restarted NC, a lost PUT).
//! - **Terminate.** Sent to the instance's node (from the desired state, or
//!   else from the nodes' reports) with a short timeout. When that node is
//!   unreachable or silent, or no node is known, the CC sends it to every
//!   node, as Eucalyptus did, and says so in [`TerminateOutcome`]. The id is
//!   also remembered so that no later re-send of a desired set (to a node
//!   that lost its own memory of the terminate) starts it again, until a
//!   zone arrives that no longer lists it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;
use ironbark_cluster_api::{NodeStatus, TerminateOutcome, ZoneDesired, ZoneReport};
use ironbark_nc::NodeClient;
use ironbark_node_api::{DesiredInstances, NodeReport};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::CcConfig;
use crate::hostnet::{self, HostNet};
use crate::http;
use crate::linux::LinuxHostNet;
use crate::metadata::MetadataStore;
use crate::node_link::{LinkError, NodeLink};
use crate::plan;

#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("instance {0} is not known to this cluster")]
    NotFound(String),
    #[error("node {node} is unreachable: {error}")]
    NodeUnreachable { node: String, error: LinkError },
    #[error("node {node} refused: {message}")]
    NodeRefused {
        node: String,
        status: u16,
        message: String,
    },
    #[error("{0} is not one of this cluster's nodes")]
    UnknownNode(String),
    /// The host network could not be fully applied; the nodes still got
    /// their desired sets.
    #[error("network: {0}")]
    Network(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl CcError {
    fn from_link(node: &str, error: LinkError) -> Self {
        match error {
            LinkError::Refused { status, message } => CcError::NodeRefused {
                node: node.to_string(),
                status,
                message,
            },
            error => CcError::NodeUnreachable {
                node: node.to_string(),
                error,
            },
        }
    }
}

struct Node {
    id: String,
    url: String,
    link: Arc<dyn NodeLink>,
}

#[derive(Clone, Default)]
struct Seen {
    reachable: bool,
    last_seen_ms: Option<i64>,
    report: Option<NodeReport>,
    volumes: Option<ironbark_node_api::VolumesReport>,
    /// The volume set last delivered (the node acknowledged it).
    volumes_sent: Option<BTreeMap<String, Vec<ironbark_node_api::VolumeAttachment>>>,
}

#[derive(Default)]
struct State {
    /// The last zone accepted; `None` until the CLC sends one (so a
    /// restarted CC never pushes an empty set that would stop everything).
    zone: Option<ZoneDesired>,
    generation: u64,
    seen: HashMap<String, Seen>,
    /// Instances terminated through the CC, kept out of desired sets.
    terminated: BTreeSet<String>,
    /// What each NC on another host must join, from the last plan.
    networks: std::collections::BTreeMap<String, ironbark_node_api::NodeNetwork>,
}

impl State {
    /// The zone less what was terminated since it came.
    fn effective_zone(&self) -> Option<ZoneDesired> {
        let mut zone = self.zone.clone()?;
        zone.instances
            .retain(|i| !self.terminated.contains(&i.spec.instance_id));
        Some(zone)
    }
}

pub struct ClusterController {
    cfg: CcConfig,
    net: Arc<dyn HostNet>,
    nodes: Vec<Node>,
    metadata: Arc<MetadataStore>,
    state: Mutex<State>,
    /// Remembers the last plan's parts, so an update that changes one
    /// group's rules re-plans that group, not the zone.
    planner: Mutex<plan::Planner>,
    /// Serializes whole applies and re-sends, so a node never gets an older
    /// set after a newer one and the network is reconciled by one at a time.
    apply_lock: tokio::sync::Mutex<()>,
    events: Option<watch::Sender<Option<ZoneReport>>>,
    /// The node poll period in ms: the configured one until the CLC's
    /// desired state names one (a cloud property).
    poll_ms: std::sync::atomic::AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl ClusterController {
    /// A CC with the real host network ([`LinuxHostNet`]) and HTTP clients
    /// of the configured NCs. Needs a tokio runtime (the CLC callback
    /// sender is spawned here).
    pub fn start(cfg: CcConfig) -> Result<Arc<Self>, CcError> {
        let mut links = Vec::new();
        for (id, url) in &cfg.nodes {
            let client = NodeClient::new(url, &cfg.token)
                .map_err(|e| CcError::Config(format!("node {id}: {e}")))?
                .with_timeout(cfg.node_timeout);
            links.push(Arc::new(client) as Arc<dyn NodeLink>);
        }
        let net = Arc::new(LinuxHostNet::new(&cfg));
        let mut links = links.into_iter();
        Self::with_parts(cfg, net, |_, _| links.next().expect("one link per node"))
    }

    /// A CC over the given host network, with `link(node_id, url)` for each
    /// configured node (fakes in tests, other transports).
    pub fn with_parts(
        cfg: CcConfig,
        net: Arc<dyn HostNet>,
        mut link: impl FnMut(&str, &str) -> Arc<dyn NodeLink>,
    ) -> Result<Arc<Self>, CcError> {
        let nodes = cfg
            .nodes
            .iter()
            .map(|(id, url)| Node {
                id: id.clone(),
                url: url.clone(),
                link: link(id, url),
            })
            .collect();
        let events = match &cfg.clc_callback_url {
            Some(url) => {
                http::check_url(url)
                    .map_err(|e| CcError::Config(format!("CLC callback {url}: {e}")))?;
                let (tx, rx) = watch::channel(None);
                tokio::spawn(send_events(
                    rx,
                    url.clone(),
                    cfg.token.clone(),
                    cfg.callback_timeout,
                ));
                Some(tx)
            }
            None => None,
        };
        Ok(Arc::new(ClusterController {
            poll_ms: std::sync::atomic::AtomicU64::new(cfg.poll_interval.as_millis() as u64),
            cfg,
            net,
            nodes,
            metadata: Arc::new(MetadataStore::new()),
            state: Mutex::new(State::default()),
            planner: Mutex::new(plan::Planner::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            events,
        }))
    }

    pub fn config(&self) -> &CcConfig {
        &self.cfg
    }

    /// What the metadata service serves (the last applied zone).
    pub fn metadata(&self) -> Arc<MetadataStore> {
        self.metadata.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reconciles to `zone` (see the module docs) and reports. The nodes
    /// get their sets even when the network could not be fully applied;
    /// that failure is then the answer.
    pub async fn apply(&self, zone: ZoneDesired) -> Result<ZoneReport, CcError> {
        let _order = self.apply_lock.lock().await;
        let effective = {
            let mut st = self.lock();
            if zone.generation < st.generation {
                tracing::info!(
                    got = zone.generation,
                    have = st.generation,
                    "ignoring an older zone"
                );
                drop(st);
                return Ok(self.report());
            }
            st.generation = zone.generation;
            if let Some(secs) = zone.node_poll_secs.filter(|s| *s > 0) {
                self.poll_ms
                    .store(u64::from(secs) * 1000, std::sync::atomic::Ordering::Relaxed);
            }
            // A tombstone is needed only while the zone still lists the id.
            st.terminated
                .retain(|id| zone.instances.iter().any(|i| i.spec.instance_id == *id));
            st.zone = Some(zone);
            st.effective_zone().expect("just set")
        };
        for inst in &effective.instances {
            if !self.nodes.iter().any(|n| n.id == inst.node_id) {
                tracing::warn!(instance = %inst.spec.instance_id, node = %inst.node_id, "instance placed on a node this CC does not drive");
            }
        }
        self.metadata.replace(&effective);
        let network = self.reconcile_network(&effective).await;
        let all: Vec<&Node> = self.nodes.iter().collect();
        self.push_desired(&all).await;
        self.push_volumes(&all, false).await;
        network.map_err(CcError::Network)?;
        Ok(self.report())
    }

    fn plan(&self, zone: &ZoneDesired) -> plan::NetPlan {
        self.planner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan(zone, &self.cfg)
    }

    async fn reconcile_network(&self, zone: &ZoneDesired) -> Result<(), String> {
        let plan = self.plan(zone);
        for w in &plan.warnings {
            tracing::warn!(generation = zone.generation, "{w}");
        }
        self.lock().networks = plan.nodes.clone();
        match hostnet::reconcile(self.net.as_ref(), &plan).await {
            Ok(changes) => {
                for c in changes {
                    tracing::info!("network: {c}");
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "network reconcile failed");
                Err(e.to_string())
            }
        }
    }

    /// Sends each of `nodes` the volumes of its instances when that set
    /// changed since it last acknowledged one (or, with `poll`, when its
    /// report shows it lost it), and records what it has plugged in.
    /// A node is always sent its set once after this process starts, empty
    /// or not: until it answers, nothing is known of what it has plugged
    /// in (the CLC waits for that before ending a detach), and a detach
    /// decided before a restart must reach it. Call with `apply_lock` held.
    async fn push_volumes(&self, nodes: &[&Node], poll: bool) {
        let Some(zone) = self.lock().effective_zone() else {
            return;
        };
        let mut calls = JoinSet::new();
        for node in nodes {
            let set: BTreeMap<String, Vec<ironbark_node_api::VolumeAttachment>> = zone
                .instances
                .iter()
                .filter(|i| i.node_id == node.id && !i.volumes.is_empty())
                .map(|i| (i.spec.instance_id.clone(), i.volumes.clone()))
                .collect();
            let (sent, lost) = {
                let st = self.lock();
                let seen = st.seen.get(&node.id);
                let sent = seen.and_then(|s| s.volumes_sent.clone());
                let lost = seen
                    .and_then(|s| s.volumes.as_ref())
                    .zip(sent.as_ref())
                    .is_some_and(|(r, s)| !s.is_empty() && r.generation == 0);
                (sent, lost)
            };
            let (id, link, limit) = (node.id.clone(), node.link.clone(), self.cfg.node_timeout);
            if sent.as_ref() != Some(&set) || lost {
                let desired = ironbark_node_api::DesiredVolumes {
                    generation: zone.generation,
                    instances: set.clone(),
                };
                calls.spawn(async move {
                    (
                        id,
                        Some(set),
                        bounded(limit, link.apply_volumes(&desired)).await,
                    )
                });
            } else if poll && sent.is_some() {
                calls.spawn(async move { (id, None, bounded(limit, link.volumes()).await) });
            }
        }
        while let Some(done) = calls.join_next().await {
            let Ok((id, set, result)) = done else {
                continue;
            };
            match result {
                Ok(report) => {
                    let mut st = self.lock();
                    let seen = st.seen.entry(id).or_default();
                    if let Some(set) = set {
                        seen.volumes_sent = Some(set);
                    }
                    seen.volumes = Some(report);
                }
                Err(e) => tracing::warn!(node = %id, error = %e, "volume set not delivered"),
            }
        }
    }

    /// Sends `nodes` their desired sets, all at once, and records the
    /// answers. Call with `apply_lock` held.
    async fn push_desired(&self, nodes: &[&Node]) {
        let Some(zone) = self.lock().effective_zone() else {
            return;
        };
        let mut calls = JoinSet::new();
        for node in nodes {
            let mut instances: Vec<_> = zone
                .instances
                .iter()
                .filter(|i| i.node_id == node.id)
                .map(|i| i.spec.clone())
                .collect();
            instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            let desired = DesiredInstances {
                generation: zone.generation,
                instances,
                network: self.lock().networks.get(&node.id).cloned(),
            };
            let (id, link, limit) = (node.id.clone(), node.link.clone(), self.cfg.node_timeout);
            calls.spawn(async move { (id, bounded(limit, link.apply(&desired)).await) });
        }
        while let Some(done) = calls.join_next().await {
            if let Ok((id, result)) = done {
                if let Err(e) = &result {
                    tracing::warn!(node = %id, error = %e, "desired set not delivered");
                }
                self.record(&id, result);
            }
        }
    }

    /// Notes what a call to `node` said about it.
    fn record(&self, node: &str, result: Result<NodeReport, LinkError>) {
        let mut st = self.lock();
        let seen = st.seen.entry(node.to_string()).or_default();
        match result {
            Ok(report) => {
                if report.node_id != node {
                    tracing::warn!(node, reported = %report.node_id, "node reports under another id");
                }
                seen.reachable = true;
                seen.last_seen_ms = Some(now_ms());
                seen.report = Some(report);
            }
            Err(e) if e.is_unreachable() => seen.reachable = false,
            Err(_) => {
                seen.reachable = true;
                seen.last_seen_ms = Some(now_ms());
            }
        }
    }

    /// The zone as last seen: every configured node, in configuration order.
    pub fn report(&self) -> ZoneReport {
        let st = self.lock();
        ZoneReport {
            zone: self.cfg.zone.clone(),
            generation: st.generation,
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    let seen = st.seen.get(&n.id).cloned().unwrap_or_default();
                    NodeStatus {
                        node_id: n.id.clone(),
                        url: n.url.clone(),
                        reachable: seen.reachable,
                        last_seen_ms: seen.last_seen_ms,
                        report: seen.report,
                        volumes: seen.volumes,
                    }
                })
                .collect(),
        }
    }

    /// The node that runs `instance_id`: its placement in the desired state,
    /// else the first node whose last report lists it.
    fn node_of(&self, instance_id: &str) -> Option<&Node> {
        let st = self.lock();
        let placed = st
            .zone
            .as_ref()
            .and_then(|z| {
                z.instances
                    .iter()
                    .find(|i| i.spec.instance_id == instance_id)
            })
            .map(|i| i.node_id.clone());
        let id = placed
            .filter(|p| self.nodes.iter().any(|n| n.id == *p))
            .or_else(|| {
                self.nodes
                    .iter()
                    .find(|n| {
                        st.seen
                            .get(&n.id)
                            .and_then(|s| s.report.as_ref())
                            .is_some_and(|r| {
                                r.instances.iter().any(|i| i.instance_id == instance_id)
                            })
                    })
                    .map(|n| n.id.clone())
            })?;
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Terminates `instance_id` on its node, or on every node when its node
    /// does not answer in time (see the module docs).
    pub async fn terminate(&self, instance_id: &str) -> Result<TerminateOutcome, CcError> {
        self.lock().terminated.insert(instance_id.to_string());
        let limit = self.cfg.terminate_timeout;
        if let Some(node) = self.node_of(instance_id) {
            match bounded(limit, node.link.terminate(instance_id)).await {
                Ok(ack) => {
                    self.mark(&node.id, true);
                    tracing::info!(instance = instance_id, node = %node.id, was_here = ack.was_here, "terminated");
                    return Ok(TerminateOutcome {
                        broadcast: false,
                        acknowledged_by: vec![node.id.clone()],
                        found_on: ack.was_here.then(|| node.id.clone()),
                    });
                }
                Err(e) if !e.is_unreachable() => {
                    self.mark(&node.id, true);
                    return Err(CcError::from_link(&node.id, e));
                }
                Err(e) => {
                    self.mark(&node.id, false);
                    tracing::warn!(instance = instance_id, node = %node.id, error = %e, "node did not answer the terminate; asking every node");
                }
            }
        } else {
            tracing::warn!(
                instance = instance_id,
                "no node known to run it; asking every node"
            );
        }

        let mut calls = JoinSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let (link, id) = (node.link.clone(), instance_id.to_string());
            calls.spawn(async move { (i, bounded(limit, link.terminate(&id)).await) });
        }
        let mut answers = vec![None; self.nodes.len()];
        while let Some(done) = calls.join_next().await {
            if let Ok((i, result)) = done {
                self.mark(
                    &self.nodes[i].id,
                    !result.as_ref().is_err_and(|e| e.is_unreachable()),
                );
                answers[i] = Some(result);
            }
        }
        let mut outcome = TerminateOutcome {
            broadcast: true,
            acknowledged_by: vec![],
            found_on: None,
        };
        for (node, answer) in self.nodes.iter().zip(answers) {
            match answer {
                Some(Ok(ack)) => {
                    outcome.acknowledged_by.push(node.id.clone());
                    if ack.was_here && outcome.found_on.is_none() {
                        outcome.found_on = Some(node.id.clone());
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(instance = instance_id, node = %node.id, error = %e, "no terminate acknowledgement")
                }
                None => {}
            }
        }
        tracing::info!(instance = instance_id, acknowledged_by = ?outcome.acknowledged_by, found_on = ?outcome.found_on, "terminate broadcast");
        Ok(outcome)
    }

    /// Updates only whether `node` answered.
    fn mark(&self, node: &str, reachable: bool) {
        let mut st = self.lock();
        let seen = st.seen.entry(node.to_string()).or_default();
        seen.reachable = reachable;
        if reachable {
            seen.last_seen_ms = Some(now_ms());
        }
    }

    /// Reboots the instance on its node.
    pub async fn reboot(&self, instance_id: &str) -> Result<(), CcError> {
        let node = self
            .node_of(instance_id)
            .ok_or_else(|| CcError::NotFound(instance_id.to_string()))?;
        let result = bounded(self.cfg.node_timeout, node.link.reboot(instance_id)).await;
        self.mark(
            &node.id,
            !result.as_ref().is_err_and(|e| e.is_unreachable()),
        );
        result.map_err(|e| CcError::from_link(&node.id, e))
    }

    /// The instance's console output, from its node.
    pub async fn console(&self, instance_id: &str) -> Result<String, CcError> {
        let node = self
            .node_of(instance_id)
            .ok_or_else(|| CcError::NotFound(instance_id.to_string()))?;
        let result = bounded(self.cfg.node_timeout, node.link.console(instance_id)).await;
        self.mark(
            &node.id,
            !result.as_ref().is_err_and(|e| e.is_unreachable()),
        );
        result.map_err(|e| CcError::from_link(&node.id, e))
    }

    /// A report an NC pushed (`POST /v1/events`): recorded, then passed on
    /// to the CLC.
    pub fn node_event(&self, report: NodeReport) -> Result<(), CcError> {
        let node = report.node_id.clone();
        if !self.nodes.iter().any(|n| n.id == node) {
            return Err(CcError::UnknownNode(node));
        }
        self.record(&node, Ok(report));
        self.notify_clc();
        Ok(())
    }

    /// Queues the current zone report for the CLC (latest wins).
    fn notify_clc(&self) {
        if let Some(tx) = &self.events {
            tx.send_replace(Some(self.report()));
        }
    }

    /// The CC's clean restart (an administrator's repair): removes
    /// everything it owns on the host (the table, every DHCP server with
    /// its leases, every segment bridge and tunnel, every public address
    /// of the pool), then rebuilds all of it from the CLC's last desired
    /// state and re-sends every NC its set (NCs on other hosts rebuild
    /// their segments from it). Refused before the CLC has sent a zone, so
    /// it never leaves instances without a network. Returns the changes.
    pub async fn rebuild_network(&self) -> Result<Vec<String>, CcError> {
        let _order = self.apply_lock.lock().await;
        let Some(zone) = self.lock().effective_zone() else {
            return Err(CcError::Network(
                "no desired state from the CLC yet: nothing to rebuild from".into(),
            ));
        };
        let nothing = ZoneDesired {
            generation: zone.generation,
            node_poll_secs: None,
            segments: vec![],
            instances: vec![],
        };
        let net = |e: hostnet::NetError| CcError::Network(e.to_string());
        let mut changes = hostnet::reconcile(self.net.as_ref(), &plan::plan(&nothing, &self.cfg))
            .await
            .map_err(net)?;
        let plan = self.plan(&zone);
        self.lock().networks = plan.nodes.clone();
        changes.extend(
            hostnet::reconcile(self.net.as_ref(), &plan)
                .await
                .map_err(net)?,
        );
        tracing::info!(
            changes = changes.len(),
            "network rebuilt from the desired state"
        );
        let all: Vec<&Node> = self.nodes.iter().collect();
        self.push_desired(&all).await;
        Ok(changes)
    }

    /// One round of the safety net (see the module docs). Runs every poll
    /// interval once [`Self::spawn_poller`] is called; tests call it directly.
    pub async fn poll_once(&self) {
        let before = self.report();
        let mut calls = JoinSet::new();
        for node in &self.nodes {
            let (id, link, limit) = (node.id.clone(), node.link.clone(), self.cfg.node_timeout);
            calls.spawn(async move { (id, bounded(limit, link.report()).await) });
        }
        while let Some(done) = calls.join_next().await {
            if let Ok((id, result)) = done {
                if let Err(e) = &result {
                    tracing::debug!(node = %id, error = %e, "no report");
                }
                self.record(&id, result);
            }
        }

        let _order = self.apply_lock.lock().await;
        let (zone, lagging) = {
            let st = self.lock();
            let lagging: Vec<&Node> = self
                .nodes
                .iter()
                .filter(|n| {
                    st.seen
                        .get(&n.id)
                        .and_then(|s| s.report.as_ref().filter(|_| s.reachable))
                        .is_some_and(|r| r.generation < st.generation)
                })
                .collect();
            (st.effective_zone(), lagging)
        };
        let Some(zone) = zone else {
            return;
        };
        // Repairs drift (a dnsmasq that died, a flushed table); a no-op on
        // a host that is as planned.
        let _ = self.reconcile_network(&zone).await;
        if !lagging.is_empty() {
            let ids: Vec<&str> = lagging.iter().map(|n| n.id.as_str()).collect();
            tracing::info!(nodes = ?ids, generation = zone.generation, "re-sending desired sets to lagging nodes");
            self.push_desired(&lagging).await;
        }
        // Volume sets: re-read what each node has plugged in, and re-send
        // to a node that lost its set (restarted) or never got it.
        let all: Vec<&Node> = self.nodes.iter().collect();
        self.push_volumes(&all, true).await;
        drop(_order);
        let after = self.report();
        if without_times(&before) != without_times(&after) {
            self.notify_clc();
        }
    }

    /// Polls every [`CcConfig::poll_interval`] (or the period the CLC's
    /// desired state names) until the controller is dropped.
    pub fn spawn_poller(self: &Arc<Self>) -> JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(cc) = weak.upgrade() else { break };
                cc.poll_once().await;
                let period = cc.poll_period();
                drop(cc);
                tokio::time::sleep(period).await;
            }
        })
    }

    /// The node poll period in force.
    pub fn poll_period(&self) -> Duration {
        Duration::from_millis(self.poll_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The report without last-seen times, to tell a real change from a poll.
fn without_times(r: &ZoneReport) -> ZoneReport {
    let mut r = r.clone();
    for n in &mut r.nodes {
        n.last_seen_ms = None;
    }
    r
}

/// `call`, or [`LinkError::Timeout`] after `limit`.
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(LinkError::Timeout(limit)))
}

/// Sends queued zone reports to the CLC one at a time; ends with the
/// controller (when the sender is dropped).
async fn send_events(
    mut rx: watch::Receiver<Option<ZoneReport>>,
    url: String,
    token: String,
    timeout: Duration,
) {
    let client = http::client(timeout);
    while rx.changed().await.is_ok() {
        let Some(report) = rx.borrow_and_update().clone() else {
            continue;
        };
        let Ok(body) = serde_json::to_vec(&report) else {
            continue;
        };
        match http::exchange(&client, Method::POST, &url, &token, Some(body), timeout).await {
            Ok((status, _)) if status.is_success() => {
                tracing::debug!("zone report delivered to the CLC")
            }
            Ok((status, _)) => tracing::debug!(%status, "the CLC refused the zone report"),
            Err(e) => tracing::debug!(error = ?e, "zone report not delivered to the CLC"),
        }
    }
}
