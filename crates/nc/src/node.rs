//! The NC's reconciler: one [`Node`] per host, holding what runs there.
//!
//! # Data flow
//!
//! [`Node::apply`] takes the CC's whole desired set. Desired instances that
//! are not here become `Pending` and a task starts each: write
//! `<data>/instances/<account>/<id>/spec.json`, fetch the images through the
//! [`ImageCache`], [`Hypervisor::start`], then `Running`. Instances here that
//! are no longer desired become `ShuttingDown` and a task tears each down:
//! stop the VM, delete its taps, delete its directory (in that order, so
//! every step can be retried after a crash at any point), then `Terminated`.
//! A start that fails is torn down the same way and ends `Failed` with its
//! error. Ended instances stay in [`Node::report`] for
//! [`NodeConfig::terminated_retention`] so the CC sees how they ended.
//!
//! An instance id that ended here (or that an explicit [`Node::terminate`]
//! named) is never started again by this process: a late or repeated
//! desired set that still lists it must not resurrect it.
//!
//! At most one operation (start, teardown, reboot) runs per instance: the
//! `busy` flag. A terminate that arrives during another operation only
//! marks the instance `ShuttingDown`; whoever finishes the running
//! operation starts the teardown.
//!
//! # Restart
//!
//! [`Node::start`] scans the instance directories. A directory whose VM is
//! still running (the hypervisor finds it by its files) is adopted as
//! `Running`; one without a running VM is cleaned up, and reported
//! `Terminated` if its VM had been started (`started` marker).
//!
//! # Periodic tick
//!
//! Every [`NodeConfig::poll_interval`]: VMs that stopped on their own are
//! torn down and reported `Terminated` (never restarted), failed teardowns
//! are retried, orphan taps removed, old ended records forgotten.
//!
//! # Events
//!
//! With [`NodeConfig::callback_url`] set, each state change POSTs the whole
//! [`NodeReport`] there (bearer token, short timeout, latest report wins:
//! one sender task, so reports arrive in order and a slow CC only skips
//! intermediate ones).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use ironbark_node_api::{
    DesiredInstances, DesiredVolumes, ImageRef, InstanceReport, InstanceSpec, NodeReport,
    TerminateAck, VmState, VolumesReport,
};
use tokio::sync::{RwLock, watch};

use crate::cache::{DownloadTimeouts, ImageCache};
use crate::host::{self, Capacity};
use crate::http::{self, HttpClient};
use crate::hypervisor::{Hypervisor, Launch};
use crate::segnet::{self, LinuxSegNet, SegNet};
use crate::volumes::Volumes;

/// The instance's spec, written first when it starts and deleted last when
/// it ends: an instance directory with it is an instance.
pub const SPEC_FILE: &str = "spec.json";
/// Written once the VM runs, holding the start time (Unix ms).
pub const STARTED_FILE: &str = "started";
/// The serial console log the hypervisor writes.
pub const CONSOLE_FILE: &str = "console.log";
/// How much of the console [`Node::console`] returns.
pub const CONSOLE_TAIL: u64 = 64 * 1024;
/// Ids remembered as ended, beyond which the oldest are forgotten.
const MAX_TOMBSTONES: usize = 10_000;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// How this NC names itself in reports.
    pub node_id: String,
    /// `<data>`: `instances/` and `cache/` live here.
    pub data_dir: PathBuf,
    /// The bearer token the API requires and event POSTs carry.
    pub token: String,
    /// What to offer; `None` measures the host.
    pub capacity: Option<Capacity>,
    pub poll_interval: Duration,
    /// How long ended instances stay in reports.
    pub terminated_retention: Duration,
    /// Where to POST the NodeReport when something changes.
    pub callback_url: Option<String>,
    pub callback_timeout: Duration,
    pub download: DownloadTimeouts,
    /// `VNET_PRIVINTERFACE`: the device segment tunnels run over when the
    /// CC asks this NC to join segments itself (its own host).
    pub underlay_interface: Option<String>,
}

impl NodeConfig {
    pub fn new(
        node_id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        token: impl Into<String>,
    ) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            data_dir: data_dir.into(),
            token: token.into(),
            capacity: None,
            poll_interval: Duration::from_secs(6),
            terminated_retention: Duration::from_secs(300),
            callback_url: None,
            callback_timeout: Duration::from_secs(2),
            download: DownloadTimeouts::default(),
            underlay_interface: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("instance {0} is not on this node")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

/// An instance that has (or is getting, or is losing) a VM here.
struct Live {
    spec: InstanceSpec,
    dir: PathBuf,
    /// Pending, Running or ShuttingDown.
    state: VmState,
    /// An operation task owns the instance.
    busy: bool,
    started_ms: Option<i64>,
    /// Shown in reports while live (a failed start being cleaned up, a
    /// teardown to retry).
    error: Option<String>,
    /// How it ends once torn down; `None` is a plain `Terminated`.
    outcome: Option<(VmState, Option<String>)>,
}

struct Ended {
    report: InstanceReport,
    at: Instant,
}

#[derive(Default)]
struct State {
    generation: u64,
    live: BTreeMap<String, Live>,
    ended: BTreeMap<String, Ended>,
    tombstones: HashSet<String>,
    tombstone_order: VecDeque<String>,
}

impl State {
    fn tombstone(&mut self, id: &str) {
        if self.tombstones.insert(id.to_string()) {
            self.tombstone_order.push_back(id.to_string());
            while self.tombstone_order.len() > MAX_TOMBSTONES {
                if let Some(old) = self.tombstone_order.pop_front() {
                    self.tombstones.remove(&old);
                }
            }
        }
    }

    fn end(&mut self, report: InstanceReport) {
        self.tombstone(&report.instance_id);
        self.ended.insert(
            report.instance_id.clone(),
            Ended {
                report,
                at: Instant::now(),
            },
        );
    }

    fn is_known(&self, id: &str) -> bool {
        self.live.contains_key(id) || self.ended.contains_key(id) || self.tombstones.contains(id)
    }
}

/// Counts operation tasks so [`Node::settle`] can wait for them.
struct OpGuard(Arc<watch::Sender<usize>>);

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// See the module docs.
pub struct Node {
    cfg: NodeConfig,
    instances_root: PathBuf,
    hv: Arc<dyn Hypervisor>,
    /// Joins segments when the CC sends [`DesiredInstances::network`].
    segnet: Arc<dyn SegNet>,
    /// Serializes segment changes (applies may overlap).
    segnet_lock: tokio::sync::Mutex<()>,
    cache: ImageCache,
    capacity: Capacity,
    state: Mutex<State>,
    /// Starts (which create taps) hold it shared, the orphan sweep
    /// exclusively, so the sweep never deletes a tap a start just made.
    tap_guard: RwLock<()>,
    ops: Arc<watch::Sender<usize>>,
    events: Option<watch::Sender<Option<NodeReport>>>,
    stopped: AtomicBool,
    /// Hot-plugged EBS volumes (see [`crate::volumes`]).
    volumes: Volumes,
}

impl Node {
    /// Opens the data directory, adopts VMs left running by a previous NC
    /// process, cleans up what died meanwhile, and starts the periodic tick
    /// (which ends when the node is dropped or [`Node::shutdown`]).
    pub async fn start(cfg: NodeConfig, hv: Arc<dyn Hypervisor>) -> Result<Arc<Node>, NodeError> {
        Self::start_with_net(cfg, hv, Arc::new(LinuxSegNet::new(None))).await
    }

    /// [`Node::start`] with the host-network driver for segments.
    pub async fn start_with_net(
        cfg: NodeConfig,
        hv: Arc<dyn Hypervisor>,
        segnet: Arc<dyn SegNet>,
    ) -> Result<Arc<Node>, NodeError> {
        let internal =
            |what: &str, e: &dyn std::fmt::Display| NodeError::Internal(format!("{what}: {e}"));
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| internal("creating the data directory", &e))?;
        // Absolute, canonical paths: QEMU's pidfile argument is matched
        // against them after a restart, and backing files must be absolute.
        let data_dir =
            std::fs::canonicalize(&cfg.data_dir).map_err(|e| internal("data directory", &e))?;
        let instances_root = data_dir.join("instances");
        std::fs::create_dir_all(&instances_root)
            .map_err(|e| internal("creating instances/", &e))?;
        let cache = ImageCache::open(data_dir.join("cache"), cfg.download)
            .map_err(|e| internal("cache", &e))?;
        let capacity = cfg.capacity.unwrap_or_else(|| host::measure(&data_dir));
        let events = cfg.callback_url.clone().map(|url| {
            let (tx, rx) = watch::channel(None);
            tokio::spawn(send_events(
                rx,
                url,
                cfg.token.clone(),
                cfg.callback_timeout,
                http::client(cfg.callback_timeout),
            ));
            tx
        });
        let cfg = NodeConfig {
            data_dir: data_dir.clone(),
            ..cfg
        };
        let node = Arc::new(Node {
            cfg,
            instances_root,
            hv,
            segnet,
            segnet_lock: tokio::sync::Mutex::new(()),
            cache,
            capacity,
            state: Mutex::new(State::default()),
            tap_guard: RwLock::new(()),
            ops: Arc::new(watch::channel(0).0),
            events,
            stopped: AtomicBool::new(false),
            volumes: Volumes::open(&data_dir),
        });
        node.adopt().await;
        // Tell the CC at once what survived the restart.
        node.notify();
        tracing::info!(
            node = %node.cfg.node_id,
            data = %node.cfg.data_dir.display(),
            capacity = ?node.capacity,
            "node controller started"
        );
        let weak = Arc::downgrade(&node);
        let interval = node.cfg.poll_interval;
        tokio::spawn(async move {
            loop {
                let Some(node) = weak.upgrade() else { break };
                if node.stopped.load(Ordering::Relaxed) {
                    break;
                }
                node.tick().await;
                drop(node);
                tokio::time::sleep(interval).await;
            }
        });
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn cache(&self) -> &ImageCache {
        &self.cache
    }

    /// `<data>/instances/<account>/<instance>`.
    pub fn instance_dir(&self, account_id: &str, instance_id: &str) -> PathBuf {
        self.instances_root.join(account_id).join(instance_id)
    }

    /// Stops the periodic tick. VMs keep running (they are daemons), so a
    /// restarted NC adopts them.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Waits until no start, teardown or reboot is under way.
    pub async fn settle(&self) {
        let mut rx = self.ops.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("node state lock")
    }

    fn begin_op(&self) -> OpGuard {
        self.ops.send_modify(|n| *n += 1);
        OpGuard(self.ops.clone())
    }

    /// Reconciles to `desired`; returns the report right after deciding
    /// (starts and teardowns continue in the background). A generation
    /// older than one already applied is ignored.
    pub async fn apply(self: &Arc<Self>, desired: DesiredInstances) -> NodeReport {
        // Bridges and tunnels before the taps that attach to them. Only a
        // set that is not stale may change them.
        if let Some(network) = &desired.network {
            let _one = self.segnet_lock.lock().await;
            if desired.generation >= self.lock().generation {
                match segnet::join(
                    self.segnet.as_ref(),
                    network,
                    self.cfg.underlay_interface.as_deref(),
                    true,
                )
                .await
                {
                    Ok(changes) => {
                        for c in changes {
                            tracing::info!("segments: {c}");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "joining segments failed"),
                }
            }
        }
        let mut to_start = Vec::new();
        let mut to_tear_down = Vec::new();
        {
            let mut st = self.lock();
            if desired.generation < st.generation {
                tracing::info!(
                    got = desired.generation,
                    have = st.generation,
                    "ignoring an older desired set"
                );
                drop(st);
                return self.report();
            }
            st.generation = desired.generation;
            let wanted: HashSet<String> = desired
                .instances
                .iter()
                .map(|s| s.instance_id.clone())
                .collect();
            for spec in desired.instances {
                let id = spec.instance_id.clone();
                if st.is_known(&id) {
                    continue;
                }
                if let Err(reason) = validate(&spec, &st) {
                    tracing::warn!(instance = %id, %reason, "refusing an invalid instance spec");
                    st.end(InstanceReport {
                        instance_id: id,
                        state: VmState::Failed,
                        error: Some(reason),
                        started_ms: None,
                    });
                    continue;
                }
                let dir = self.instance_dir(&spec.account_id, &id);
                tracing::info!(instance = %id, generation = desired.generation, "starting instance");
                st.live.insert(
                    id.clone(),
                    Live {
                        spec,
                        dir,
                        state: VmState::Pending,
                        busy: true,
                        started_ms: None,
                        error: None,
                        outcome: None,
                    },
                );
                to_start.push(id);
            }
            for (id, live) in st.live.iter_mut() {
                if wanted.contains(id) || live.state == VmState::ShuttingDown {
                    continue;
                }
                tracing::info!(instance = %id, generation = desired.generation, "terminating instance (no longer desired)");
                live.state = VmState::ShuttingDown;
                if !live.busy {
                    live.busy = true;
                    to_tear_down.push(id.clone());
                }
            }
        }
        for id in to_start {
            let guard = self.begin_op();
            let node = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                node.run_start(id).await;
            });
        }
        for id in to_tear_down {
            self.spawn_teardown(id);
        }
        self.report()
    }

    /// Explicit terminate (the CC's broadcast path): acknowledged whether or
    /// not the instance is here; `was_here` says which. The id will not be
    /// started here afterwards.
    pub async fn terminate(self: &Arc<Self>, instance_id: &str) -> TerminateAck {
        let mut st = self.lock();
        st.tombstone(instance_id);
        if let Some(live) = st.live.get_mut(instance_id) {
            if live.state != VmState::ShuttingDown {
                tracing::info!(instance = %instance_id, "terminating instance (explicit)");
                live.state = VmState::ShuttingDown;
                if !live.busy {
                    live.busy = true;
                    drop(st);
                    self.spawn_teardown(instance_id.to_string());
                }
            }
            return TerminateAck { was_here: true };
        }
        TerminateAck {
            was_here: st.ended.contains_key(instance_id),
        }
    }

    /// Takes the whole set of volumes the instances here should have
    /// (an older generation is ignored) and plugs and unplugs in the
    /// background; returns the report right away.
    pub async fn apply_volumes(
        self: &Arc<Self>,
        desired: DesiredVolumes,
    ) -> Result<VolumesReport, NodeError> {
        match self.volumes.set_desired(desired) {
            Ok(true) => self.spawn_volume_pass(),
            Ok(false) => tracing::info!("ignoring an older desired volume set"),
            Err(e) => return Err(NodeError::Conflict(e)),
        }
        Ok(self.volumes_report())
    }

    /// Each wanted or still plugged-in volume of the live instances.
    pub fn volumes_report(&self) -> VolumesReport {
        let live: Vec<String> = self.lock().live.keys().cloned().collect();
        VolumesReport {
            node_id: self.cfg.node_id.clone(),
            generation: self.volumes.generation(),
            attachments: self.volumes.report(&live),
        }
    }

    /// One attach/detach pass over the running instances; the tick runs
    /// one, tests call it directly.
    pub async fn reconcile_volumes(&self) {
        let running: Vec<(String, PathBuf)> = self
            .lock()
            .live
            .iter()
            .filter(|(_, l)| l.state == VmState::Running && !l.busy)
            .map(|(id, l)| (id.clone(), l.dir.clone()))
            .collect();
        self.volumes.reconcile(self.hv.as_ref(), &running).await;
    }

    fn spawn_volume_pass(self: &Arc<Self>) {
        let guard = self.begin_op();
        let node = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            node.reconcile_volumes().await;
        });
    }

    /// Hard-resets a running instance's VM.
    pub async fn reboot(self: &Arc<Self>, instance_id: &str) -> Result<(), NodeError> {
        let dir = {
            let mut st = self.lock();
            let live = st
                .live
                .get_mut(instance_id)
                .ok_or_else(|| NodeError::NotFound(instance_id.to_string()))?;
            if live.state != VmState::Running || live.busy {
                return Err(NodeError::Conflict(format!(
                    "instance {instance_id} is {} and cannot be rebooted now",
                    state_name(live.state)
                )));
            }
            live.busy = true;
            live.dir.clone()
        };
        let _guard = self.begin_op();
        tracing::info!(instance = %instance_id, "rebooting instance");
        let result = self.hv.reboot(&dir).await;
        self.finish_op(instance_id);
        result.map_err(|e| NodeError::Internal(format!("reboot of {instance_id}: {e}")))
    }

    /// The last [`CONSOLE_TAIL`] bytes of the instance's serial console.
    pub async fn console(&self, instance_id: &str) -> Result<String, NodeError> {
        let dir = self
            .lock()
            .live
            .get(instance_id)
            .map(|l| l.dir.clone())
            .ok_or_else(|| NodeError::NotFound(instance_id.to_string()))?;
        read_tail(&dir.join(CONSOLE_FILE), CONSOLE_TAIL)
            .await
            .map_err(|e| NodeError::Internal(format!("reading the console of {instance_id}: {e}")))
    }

    /// What this node offers and runs, including recently ended instances.
    pub fn report(&self) -> NodeReport {
        let st = self.lock();
        let mut instances: Vec<InstanceReport> = st
            .live
            .iter()
            .map(|(id, l)| InstanceReport {
                instance_id: id.clone(),
                state: l.state,
                error: l.error.clone(),
                started_ms: l.started_ms,
            })
            .chain(st.ended.values().map(|e| e.report.clone()))
            .collect();
        instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        NodeReport {
            node_id: self.cfg.node_id.clone(),
            cpus: self.capacity.cpus,
            memory_mib: self.capacity.memory_mib,
            disk_gib: self.capacity.disk_gib,
            generation: st.generation,
            instances,
        }
    }

    /// One round of the periodic checks (see the module docs). Runs on its
    /// own every poll interval; tests call it directly.
    pub async fn tick(self: &Arc<Self>) {
        // VMs that stopped without being asked to.
        let running: Vec<(String, PathBuf)> = self
            .lock()
            .live
            .iter()
            .filter(|(_, l)| l.state == VmState::Running && !l.busy)
            .map(|(id, l)| (id.clone(), l.dir.clone()))
            .collect();
        for (id, dir) in running {
            if self.hv.find(&dir).await.is_some() {
                continue;
            }
            let mut st = self.lock();
            let Some(live) = st.live.get_mut(&id) else {
                continue;
            };
            // Re-check: an operation may have begun while we looked.
            if live.state != VmState::Running || live.busy {
                continue;
            }
            tracing::warn!(instance = %id, "the VM stopped on its own; cleaning up");
            live.state = VmState::ShuttingDown;
            live.busy = true;
            live.outcome = Some((
                VmState::Terminated,
                Some("the VM stopped on its own (guest power-off or hypervisor crash)".into()),
            ));
            drop(st);
            self.spawn_teardown(id);
        }

        // Teardowns that failed earlier.
        let retry: Vec<String> = {
            let mut st = self.lock();
            st.live
                .iter_mut()
                .filter(|(_, l)| l.state == VmState::ShuttingDown && !l.busy)
                .map(|(id, l)| {
                    l.busy = true;
                    id.clone()
                })
                .collect()
        };
        for id in retry {
            self.spawn_teardown(id);
        }

        self.sweep_taps().await;
        self.reconcile_volumes().await;

        let retention = self.cfg.terminated_retention;
        self.lock().ended.retain(|_, e| e.at.elapsed() < retention);
    }

    /// Deletes taps that look like instance taps, belong to no instance
    /// here and are held by no process; puts running instances' taps back
    /// on their bridges when something removed them (a CC clean restart
    /// rebuilds bridges, and a new bridge has no ports).
    async fn sweep_taps(&self) {
        let _exclusive = self.tap_guard.write().await;
        let taps = match self.hv.list_taps().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "listing taps");
                return;
            }
        };
        let loose: Vec<ironbark_node_api::NicSpec> = {
            let st = self.lock();
            st.live
                .values()
                .filter(|l| l.state == VmState::Running && !l.busy)
                .flat_map(|l| l.spec.nics.iter())
                .filter(|n| {
                    taps.iter()
                        .any(|t| t.name == n.tap && t.master.as_deref() != Some(n.bridge.as_str()))
                })
                .cloned()
                .collect()
        };
        for nic in loose {
            match self.hv.attach_tap(&nic).await {
                Ok(()) => {
                    tracing::warn!(tap = %nic.tap, bridge = %nic.bridge, "tap was off its bridge; attached it again")
                }
                Err(e) => tracing::warn!(tap = %nic.tap, error = %e, "re-attaching a tap"),
            }
        }
        let owned: HashSet<String> = self
            .lock()
            .live
            .values()
            .flat_map(|l| l.spec.nics.iter().map(|n| n.tap.clone()))
            .collect();
        for tap in taps {
            if tap.in_use || owned.contains(&tap.name) || !is_instance_tap_name(&tap.name) {
                continue;
            }
            tracing::info!(tap = %tap.name, "removing orphan tap");
            if let Err(e) = self.hv.delete_tap(&tap.name).await {
                tracing::warn!(tap = %tap.name, error = %e, "removing orphan tap");
            }
        }
    }

    fn spawn_teardown(self: &Arc<Self>, id: String) {
        let guard = self.begin_op();
        let node = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            node.run_teardown(id).await;
        });
    }

    /// Ends an operation: the instance is free again, unless a terminate
    /// arrived meanwhile, in which case its teardown starts now.
    fn finish_op(self: &Arc<Self>, id: &str) {
        let mut st = self.lock();
        let Some(live) = st.live.get_mut(id) else {
            return;
        };
        if live.state == VmState::ShuttingDown {
            drop(st);
            self.spawn_teardown(id.to_string());
        } else {
            live.busy = false;
        }
    }

    fn live_spec(&self, id: &str) -> Option<(InstanceSpec, PathBuf)> {
        self.lock()
            .live
            .get(id)
            .map(|l| (l.spec.clone(), l.dir.clone()))
    }

    async fn run_start(self: Arc<Self>, id: String) {
        let Some((spec, dir)) = self.live_spec(&id) else {
            return;
        };
        let outcome = self.start_steps(&spec, &dir).await;
        {
            let mut st = self.lock();
            let Some(live) = st.live.get_mut(&id) else {
                return;
            };
            match outcome {
                Ok(Some(started_ms)) => {
                    live.started_ms = Some(started_ms);
                    if live.state == VmState::Pending {
                        live.state = VmState::Running;
                        live.busy = false;
                        drop(st);
                        tracing::info!(instance = %id, "instance running");
                        self.notify();
                        self.spawn_volume_pass();
                        return;
                    }
                    // Terminated while starting: tear down below.
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(instance = %id, %error, "instance failed to start");
                    let ended_as = if live.state == VmState::ShuttingDown {
                        VmState::Terminated
                    } else {
                        VmState::Failed
                    };
                    live.state = VmState::ShuttingDown;
                    live.error = Some(error.clone());
                    live.outcome = Some((ended_as, Some(error)));
                }
            }
        }
        // Still busy: this task goes on to tear the instance down.
        self.run_teardown(id).await;
    }

    /// Directory, spec, images, VM. `Ok(None)`: terminated before the VM
    /// was started, so it never was.
    async fn start_steps(&self, spec: &InstanceSpec, dir: &Path) -> Result<Option<i64>, String> {
        create_instance_dir(dir)
            .await
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let json = serde_json::to_vec_pretty(spec).map_err(|e| e.to_string())?;
        write_atomic(&dir.join(SPEC_FILE), &json)
            .await
            .map_err(|e| format!("writing {SPEC_FILE}: {e}"))?;

        let image = &spec.image;
        let (kernel, initrd, root) = tokio::try_join!(
            self.cache.fetch(&image.kernel),
            fetch_optional(&self.cache, image.ramdisk.as_ref()),
            fetch_optional(&self.cache, image.root.as_ref()),
        )
        .map_err(|e| e.to_string())?;

        if self.lock().live.get(&spec.instance_id).map(|l| l.state) != Some(VmState::Pending) {
            return Ok(None);
        }
        let launch = Launch {
            instance_id: spec.instance_id.clone(),
            dir: dir.to_path_buf(),
            cpus: spec.vm.cpus,
            memory_mib: spec.vm.memory_mib,
            disk_gib: spec.vm.disk_gib,
            kernel,
            initrd,
            root,
            cmdline: image.cmdline.clone(),
            nics: spec.nics.clone(),
        };
        {
            let _shared = self.tap_guard.read().await;
            self.hv.start(&launch).await.map_err(|e| e.to_string())?;
        }
        let started_ms = now_ms();
        write_atomic(&dir.join(STARTED_FILE), started_ms.to_string().as_bytes())
            .await
            .map_err(|e| format!("writing {STARTED_FILE}: {e}"))?;
        Ok(Some(started_ms))
    }

    async fn run_teardown(self: Arc<Self>, id: String) {
        let Some((spec, dir)) = self.live_spec(&id) else {
            return;
        };
        let result = self.teardown(&spec, &dir).await;
        let mut st = self.lock();
        match result {
            Ok(()) => {
                let Some(live) = st.live.remove(&id) else {
                    return;
                };
                let (state, error) = live.outcome.unwrap_or((VmState::Terminated, None));
                tracing::info!(instance = %id, state = state_name(state), "instance ended");
                st.end(InstanceReport {
                    instance_id: id,
                    state,
                    error,
                    started_ms: live.started_ms,
                });
                drop(st);
                self.notify();
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "teardown failed; will retry");
                if let Some(live) = st.live.get_mut(&id) {
                    live.busy = false;
                    live.error = Some(format!("terminating: {e} (will retry)"));
                }
            }
        }
    }

    /// Stop the VM, delete its taps, delete its directory: each step is
    /// idempotent, and the order means a crash part-way leaves something the
    /// next attempt (or the startup scan) finishes.
    async fn teardown(&self, spec: &InstanceSpec, dir: &Path) -> Result<(), String> {
        self.hv
            .stop(dir)
            .await
            .map_err(|e| format!("stopping the VM: {e}"))?;
        for nic in &spec.nics {
            self.hv
                .delete_tap(&nic.tap)
                .await
                .map_err(|e| format!("deleting tap {}: {e}", nic.tap))?;
        }
        remove_instance_dir(dir)
            .await
            .map_err(|e| format!("deleting {}: {e}", dir.display()))
    }

    /// The startup scan (see the module docs).
    async fn adopt(self: &Arc<Self>) {
        let mut dirs = Vec::new();
        for account in read_dirs(&self.instances_root) {
            dirs.extend(read_dirs(&account));
        }
        for dir in dirs {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spec: Option<InstanceSpec> = std::fs::read(dir.join(SPEC_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .filter(|s: &InstanceSpec| s.instance_id == id);
            let started_ms: Option<i64> = std::fs::read_to_string(dir.join(STARTED_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let running = self.hv.find(&dir).await.is_some();
            match (spec, running) {
                (Some(spec), true) => {
                    tracing::info!(instance = %id, "adopting a running VM");
                    self.lock().live.insert(
                        id,
                        Live {
                            spec,
                            dir,
                            state: VmState::Running,
                            busy: false,
                            started_ms,
                            error: None,
                            outcome: None,
                        },
                    );
                }
                (spec, running) => {
                    tracing::info!(instance = %id, running, "cleaning up an instance directory with no adoptable VM");
                    let spec = spec.unwrap_or_else(|| empty_spec(&id));
                    if let Err(e) = self.teardown(&spec, &dir).await {
                        tracing::warn!(instance = %id, error = %e, "cleanup failed");
                    }
                    // A VM that had run and is gone has ended; a start that
                    // never got that far is simply not here (the next
                    // desired set starts it afresh).
                    if started_ms.is_some() {
                        self.lock().end(InstanceReport {
                            instance_id: id,
                            state: VmState::Terminated,
                            error: Some(
                                "the VM was not running when the node controller started".into(),
                            ),
                            started_ms,
                        });
                    }
                }
            }
        }
    }

    /// Queues the current report for the CC (latest wins).
    fn notify(&self) {
        if let Some(tx) = &self.events {
            tx.send_replace(Some(self.report()));
        }
    }
}

/// Sends queued reports to the CC one at a time; ends with the node.
async fn send_events(
    mut rx: watch::Receiver<Option<NodeReport>>,
    url: String,
    token: String,
    timeout: Duration,
    client: HttpClient,
) {
    let uri = match http::parse_http_uri(&url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(url = %url, error = %e, "bad callback URL; events disabled");
            return;
        }
    };
    while rx.changed().await.is_ok() {
        let Some(report) = rx.borrow_and_update().clone() else {
            continue;
        };
        let body = match serde_json::to_vec(&report) {
            Ok(b) => Bytes::from(b),
            Err(_) => continue,
        };
        let request = hyper::Request::post(uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(body));
        let Ok(request) = request else { continue };
        match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(resp)) if resp.status().is_success() => tracing::debug!("event delivered"),
            Ok(Ok(resp)) => tracing::debug!(status = %resp.status(), "event refused"),
            Ok(Err(e)) => tracing::debug!(error = %e, "event not delivered"),
            Err(_) => tracing::debug!("event timed out"),
        }
    }
}

async fn fetch_optional(
    cache: &ImageCache,
    image: Option<&ImageRef>,
) -> Result<Option<PathBuf>, crate::CacheError> {
    match image {
        Some(i) => cache.fetch(i).await.map(Some),
        None => Ok(None),
    }
}

/// Checks what reaches file names, device names and QEMU options.
fn validate(spec: &InstanceSpec, st: &State) -> Result<(), String> {
    fn component(what: &str, s: &str) -> Result<(), String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{what} {s:?} must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'"
            ))
        }
    }
    fn ifname(what: &str, s: &str) -> Result<(), String> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{what} {s:?} must be 1-15 characters of [A-Za-z0-9._-]"
            ))
        }
    }
    component("instance id", &spec.instance_id)?;
    component("account id", &spec.account_id)?;
    if spec.vm.cpus == 0 || spec.vm.memory_mib < 16 {
        return Err("an instance needs at least 1 CPU and 16 MiB of memory".into());
    }
    if spec.image.cmdline.contains('\0') {
        return Err("the kernel command line contains a NUL byte".into());
    }
    let taken: HashSet<&str> = st
        .live
        .values()
        .flat_map(|l| l.spec.nics.iter().map(|n| n.tap.as_str()))
        .collect();
    let mut mine = HashSet::new();
    for nic in &spec.nics {
        ifname("tap", &nic.tap)?;
        ifname("bridge", &nic.bridge)?;
        if !is_mac(&nic.mac) {
            return Err(format!(
                "MAC address {:?} is not of the form 02:00:00:00:00:01",
                nic.mac
            ));
        }
        if taken.contains(nic.tap.as_str()) || !mine.insert(nic.tap.as_str()) {
            return Err(format!("tap {} is already in use on this node", nic.tap));
        }
    }
    Ok(())
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Taps the orphan sweep may delete: `tap` and 8 to 12 lowercase hex digits,
/// the shape [`ironbark_node_api::tap_name`] gives instance ids, so taps
/// other software made on the host are left alone.
pub fn is_instance_tap_name(name: &str) -> bool {
    name.strip_prefix("tap").is_some_and(|hex| {
        (8..=12).contains(&hex.len()) && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    })
}

fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Pending => "pending",
        VmState::Running => "running",
        VmState::ShuttingDown => "shutting-down",
        VmState::Terminated => "terminated",
        VmState::Failed => "failed",
    }
}

/// A spec with nothing to clean but the directory, for directories whose
/// spec is unreadable (the orphan sweep takes care of their taps).
fn empty_spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: id.to_string(),
        account_id: String::new(),
        vm: ironbark_node_api::VmResources {
            cpus: 0,
            memory_mib: 0,
            disk_gib: 0,
        },
        image: ironbark_node_api::BootImage {
            kernel: ImageRef {
                id: String::new(),
                url: String::new(),
                sha256: String::new(),
                size: 0,
            },
            ramdisk: None,
            root: None,
            cmdline: String::new(),
        },
        nics: Vec::new(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

async fn create_instance_dir(dir: &Path) -> std::io::Result<()> {
    // A teardown of this account's last instance may remove the account
    // directory between create_dir_all's steps; try again then.
    let mut last = None;
    for _ in 0..3 {
        match tokio::fs::create_dir_all(dir).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three attempts"))
}

async fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Deletes everything but the spec, then the spec, then the directory (and
/// the account directory if that leaves it empty): until the very end an
/// interrupted deletion still looks like an instance to the startup scan.
async fn remove_instance_dir(dir: &Path) -> std::io::Result<()> {
    fn ok_if_missing(r: std::io::Result<()>) -> std::io::Result<()> {
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_name() == SPEC_FILE {
            continue;
        }
        let path = entry.path();
        if entry.file_type().await?.is_dir() {
            ok_if_missing(tokio::fs::remove_dir_all(&path).await)?;
        } else {
            ok_if_missing(tokio::fs::remove_file(&path).await)?;
        }
    }
    ok_if_missing(tokio::fs::remove_file(dir.join(SPEC_FILE)).await)?;
    ok_if_missing(tokio::fs::remove_dir(dir).await)?;
    if let Some(account) = dir.parent() {
        // Fails, harmlessly, while the account has other instances.
        let _ = tokio::fs::remove_dir(account).await;
    }
    Ok(())
}

async fn read_tail(path: &Path, max: u64) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata().await?.len();
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)))
        .await?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_tap_names() {
        assert!(is_instance_tap_name(&ironbark_node_api::tap_name(
            "i-0123456789abcdef0"
        )));
        assert!(is_instance_tap_name("tap12345678"));
        for other in [
            "tap0",
            "tap-foo",
            "vnet0",
            "tapDEADBEEF",
            "tap0123456789abc",
        ] {
            assert!(!is_instance_tap_name(other), "{other}");
        }
    }

    #[test]
    fn macs() {
        assert!(is_mac("d0:0d:12:34:56:78"));
        assert!(!is_mac("d0:0d:12:34:56"));
        assert!(!is_mac("d0:0d:12:34:56:7g"));
    }

    #[tokio::test]
    async fn console_tail_is_bounded() {
        let dir = crate::testing::TempDir::new("tail");
        let p = dir.path().join("c.log");
        std::fs::write(&p, "a".repeat(100) + "END").unwrap();
        assert_eq!(read_tail(&p, 3).await.unwrap(), "END");
        assert_eq!(read_tail(&dir.path().join("none"), 3).await.unwrap(), "");
    }
}
