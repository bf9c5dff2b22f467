//! The SC's reconciler: the volume, export and snapshot state machines.
//!
//! # Data flow
//!
//! [`Storage::apply`] takes the CLC's whole [`DesiredStorage`], writes it to
//! `<data>/desired.json` (so a restarted SC knows which exports to keep
//! before the CLC calls again) and runs a reconcile pass, which compares it
//! with what the [`Backend`] holds:
//!
//! - **Volumes**: `creating` (a task makes the file, empty or from a
//!   snapshot) → `available`; a failed create is `error` and is retried
//!   after [`StorageConfig::retry_after`]. A volume held but no longer
//!   desired is `deleting` (a task closes its exports and deletes it) and
//!   then gone. Only the backend's list of whole volumes makes a volume
//!   `available`, so a half-made one never is.
//! - **Exports** of an available volume are applied in the pass itself
//!   (quick QMP calls): the set of [`Grant`]s, one per attachment (NC and
//!   instance) named, each with its own export name, TLS-PSK identity and
//!   key. Keys are derived, HMAC-SHA256 of the volume, NC and instance
//!   under a per-SC secret (`<data>/psk.secret`), so they are stable
//!   across restarts without being stored per export, and an attachment
//!   to another instance never opens with the last one's name or key.
//! - **Snapshots**: `pending` while a saga runs — point-in-time raw copy
//!   (holding the volume's lock, so no export change or delete runs
//!   meanwhile), then compression and upload (without it) — and
//!   `completed` once the backend lists its record, which it writes only
//!   after Walrus confirmed the object. A snapshot no longer desired loses
//!   its SC copy.
//!
//! At most one task runs per volume and per snapshot (`busy`); a periodic
//! tick (and the end of every task) runs another pass, so failures are
//! retried and state converges whatever order things happened in.
//!
//! # Restart
//!
//! [`Storage::start`] lets the backend remove half-made files, reloads
//! `desired.json`, and runs a pass: desired volumes are (re)made, exports
//! that are still desired stay open (an attached guest keeps its disk
//! through an SC restart), every other daemon is stopped. An interrupted
//! snapshot whose copy had not begun starts over; one whose copy had begun
//! (its moment fixed, and reported so) is followed to its end in the
//! daemon still running it, or fails if that daemon is gone too: a new
//! copy would hold later writes (see [`crate::backend`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use ironbark_sc_api::{
    DesiredStorage, ExportReport, ExportState, SnapshotReport, SnapshotSpec, SnapshotState,
    StorageReport, VolumeReport, VolumeSpec, VolumeState, export_name, tls_identity,
};
use sha2::Sha256;
use tokio::sync::{Notify, watch};

use crate::backend::{Backend, Fixed, Progress, SnapshotRecord};
use crate::daemon::{Grant, write_private};
use crate::error::ScError;

pub const DESIRED_FILE: &str = "desired.json";
pub const SECRET_FILE: &str = "psk.secret";

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub sc_id: String,
    /// `<data>`: desired state and the PSK secret live here.
    pub data_dir: PathBuf,
    /// The bearer token the API requires.
    pub token: String,
    pub poll_interval: Duration,
    /// How long a failed create or snapshot waits before another try.
    pub retry_after: Duration,
}

impl StorageConfig {
    pub fn new(
        sc_id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        token: impl Into<String>,
    ) -> Self {
        StorageConfig {
            sc_id: sc_id.into(),
            data_dir: data_dir.into(),
            token: token.into(),
            poll_interval: Duration::from_secs(5),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// Tries of a step that can fail for a while (a volume's create, a
/// snapshot's upload) before its failure is final ([`ScError::Invalid`],
/// what no retry changes, is final at once): until then the SC
/// reports the volume `creating` or the snapshot `pending`, with the last
/// error, and tries again after [`StorageConfig::retry_after`]; the CLC
/// takes `error` as final, so a passing fault (Walrus restarting) must not
/// reach it as one.
const TRIES: u32 = 4;

/// Whether a step's `failures`-th failure in a row, `err`, ends its tries.
fn is_final(failures: u32, err: &ScError) -> bool {
    failures >= TRIES || matches!(err, ScError::Invalid(_))
}

struct Vol {
    state: VolumeState,
    size_gib: u64,
    busy: bool,
    error: Option<(String, Instant)>,
    /// Failed creates in a row; at [`TRIES`] the volume is `error` for good.
    failures: u32,
    exports: Vec<ExportReport>,
    /// The grants last applied; `None` until the first pass applies them.
    applied: Option<Vec<Grant>>,
}

struct Snap {
    volume_id: String,
    spec: SnapshotSpec,
    state: SnapshotState,
    progress: Arc<AtomicU8>,
    /// The copy has begun: see [`ironbark_sc_api::SnapshotReport::point_in_time`].
    fixed: Arc<AtomicBool>,
    busy: bool,
    error: Option<(String, Instant)>,
    /// Failed uploads in a row; at [`TRIES`] the snapshot is `error` for
    /// good. A failed copy is final at once: its moment cannot be had again.
    failures: u32,
    record: Option<SnapshotRecord>,
}

#[derive(Default)]
struct State {
    desired: DesiredStorage,
    vols: BTreeMap<String, Vol>,
    snaps: BTreeMap<String, Snap>,
}

struct OpGuard(Arc<watch::Sender<usize>>);

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// See the module docs.
pub struct Storage {
    cfg: StorageConfig,
    backend: Arc<dyn Backend>,
    secret: Vec<u8>,
    state: Mutex<State>,
    /// One per volume: held by creates, deletes, export changes and a
    /// snapshot's copy step.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Passes do not overlap.
    pass: tokio::sync::Mutex<()>,
    kick: Notify,
    ops: Arc<watch::Sender<usize>>,
    stopped: AtomicBool,
}

fn valid_id(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} must be 1-64 characters of [A-Za-z0-9_-], starting with a letter or digit"
        ))
    }
}

impl Storage {
    /// Opens the data directory, cleans up after a crash, reloads the last
    /// desired state, runs a first pass and starts the periodic tick (which
    /// ends with [`Storage::shutdown`] or when the storage is dropped).
    pub async fn start(
        cfg: StorageConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<Arc<Storage>, ScError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| ScError::io(cfg.data_dir.display(), e))?;
        let secret_path = cfg.data_dir.join(SECRET_FILE);
        let secret = match std::fs::read(&secret_path) {
            Ok(s) if s.len() >= 32 => s,
            _ => {
                let s: [u8; 32] = rand::random();
                write_private(&secret_path, &s)?;
                s.to_vec()
            }
        };
        backend.recover().await?;
        let desired: DesiredStorage = std::fs::read(cfg.data_dir.join(DESIRED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let storage = Arc::new(Storage {
            cfg,
            backend,
            secret,
            state: Mutex::new(State {
                desired,
                ..State::default()
            }),
            locks: Mutex::new(HashMap::new()),
            pass: tokio::sync::Mutex::new(()),
            kick: Notify::new(),
            ops: Arc::new(watch::channel(0).0),
            stopped: AtomicBool::new(false),
        });
        storage.reconcile().await;
        tracing::info!(sc = %storage.cfg.sc_id, data = %storage.cfg.data_dir.display(), "storage controller started");
        let weak = Arc::downgrade(&storage);
        let interval = storage.cfg.poll_interval;
        tokio::spawn(async move {
            loop {
                let Some(s) = weak.upgrade() else { break };
                if s.stopped.load(Ordering::Relaxed) {
                    break;
                }
                let kicked = async {
                    s.kick.notified().await;
                };
                tokio::select! {
                    _ = kicked => {}
                    _ = tokio::time::sleep(interval) => {}
                }
                if s.stopped.load(Ordering::Relaxed) {
                    break;
                }
                s.reconcile().await;
            }
        });
        Ok(storage)
    }

    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Stops the tick; daemons keep serving (a restarted SC adopts them).
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.kick.notify_one();
    }

    /// Waits until no task runs.
    pub async fn settle(&self) {
        let mut rx = self.ops.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("storage state lock")
    }

    fn vol_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn begin_op(&self) -> OpGuard {
        self.ops.send_modify(|n| *n += 1);
        OpGuard(self.ops.clone())
    }

    /// Takes a new desired state (older generations are ignored), runs a
    /// pass and returns the report.
    pub async fn apply(
        self: &Arc<Self>,
        desired: DesiredStorage,
    ) -> Result<StorageReport, ScError> {
        {
            let mut st = self.lock();
            if desired.generation < st.desired.generation {
                tracing::info!(
                    got = desired.generation,
                    have = st.desired.generation,
                    "ignoring an older desired state"
                );
                drop(st);
                return Ok(self.report());
            }
            let json = serde_json::to_vec(&desired).map_err(|e| ScError::io("desired state", e))?;
            write_private(&self.cfg.data_dir.join(DESIRED_FILE), &json)?;
            st.desired = desired;
        }
        self.reconcile().await;
        Ok(self.report())
    }

    /// The PSK grants of a volume's exports. `serving` are the export
    /// names the volume is served under now: an attachment made before
    /// exports were per instance keeps the per-NC export it was plugged in
    /// under (renaming it would cut its guest off) until it ends.
    fn grants(&self, v: &VolumeSpec, serving: &[String]) -> Vec<Grant> {
        v.exports
            .iter()
            .map(|e| {
                let per_nc = export_name(&v.volume_id, &e.node_id, "");
                let instance = if serving.contains(&per_nc) {
                    ""
                } else {
                    e.instance_id.as_str()
                };
                let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
                mac.update(b"ironbark-sc-psk\0");
                mac.update(v.volume_id.as_bytes());
                mac.update(b"\0");
                mac.update(e.node_id.as_bytes());
                if !instance.is_empty() {
                    mac.update(b"\0");
                    mac.update(instance.as_bytes());
                }
                Grant {
                    node_id: e.node_id.clone(),
                    instance_id: e.instance_id.clone(),
                    export: export_name(&v.volume_id, &e.node_id, instance),
                    identity: tls_identity(&v.volume_id, &e.node_id, instance),
                    psk_hex: hex::encode(mac.finalize().into_bytes()),
                }
            })
            .collect()
    }

    /// One reconcile pass (see the module docs). Runs on its own; tests
    /// call it directly.
    pub async fn reconcile(self: &Arc<Self>) {
        let _pass = self.pass.lock().await;
        let have_vols = match self.backend.volumes().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing volumes");
                return;
            }
        };
        let have_snaps = match self.backend.snapshots().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "listing snapshots");
                return;
            }
        };
        let retry = self.cfg.retry_after;
        // What each exported volume is served under now: from the grants
        // applied, or, first after a start, from its daemon.
        let unknown: Vec<String> = {
            let st = self.lock();
            st.desired
                .volumes
                .iter()
                .filter(|v| {
                    !v.exports.is_empty()
                        && st
                            .vols
                            .get(&v.volume_id)
                            .is_none_or(|e| e.applied.is_none())
                })
                .map(|v| v.volume_id.clone())
                .collect()
        };
        let mut serving: HashMap<String, Vec<String>> = HashMap::new();
        for id in unknown {
            if let Ok(names) = self.backend.export_names(&id).await {
                serving.insert(id, names);
            }
        }
        let mut creates = Vec::new();
        let mut deletes = Vec::new();
        let mut exports = Vec::new();
        let mut snapshots = Vec::new();
        let mut drop_snaps = Vec::new();
        let desired_ids: Vec<String>;
        {
            let mut st = self.lock();
            let desired = st.desired.clone();
            desired_ids = desired
                .volumes
                .iter()
                .map(|v| v.volume_id.clone())
                .collect();
            for v in &desired.volumes {
                let invalid = valid_id("volume id", &v.volume_id)
                    .and_then(|_| {
                        v.exports.iter().try_for_each(|e| {
                            valid_id("node id", &e.node_id)?;
                            if e.instance_id.is_empty() {
                                Ok(())
                            } else {
                                valid_id("instance id", &e.instance_id)
                            }
                        })
                    })
                    .err()
                    .or_else(|| (v.size_gib == 0).then(|| "a volume needs at least 1 GiB".into()));
                let entry = st.vols.entry(v.volume_id.clone()).or_insert_with(|| Vol {
                    state: VolumeState::Creating,
                    size_gib: v.size_gib,
                    busy: false,
                    error: None,
                    failures: 0,
                    exports: Vec::new(),
                    applied: None,
                });
                if entry.busy {
                    continue;
                }
                if let Some(why) = invalid {
                    entry.state = VolumeState::Error;
                    entry.error = Some((why, Instant::now()));
                    continue;
                }
                if let Some(size) = have_vols.get(&v.volume_id) {
                    entry.state = VolumeState::Available;
                    entry.error = None;
                    entry.size_gib = size.div_ceil(1 << 30);
                    let now: Vec<String> = match &entry.applied {
                        Some(applied) => applied.iter().map(|g| g.export.clone()).collect(),
                        None => serving.remove(&v.volume_id).unwrap_or_default(),
                    };
                    let grants = self.grants(v, &now);
                    if entry.applied.as_ref() != Some(&grants) {
                        entry.busy = true;
                        exports.push((v.volume_id.clone(), grants));
                    }
                } else {
                    if entry.failures >= TRIES
                        || entry
                            .error
                            .as_ref()
                            .is_some_and(|(_, at)| at.elapsed() < retry)
                    {
                        continue;
                    }
                    entry.state = VolumeState::Creating;
                    entry.busy = true;
                    creates.push(v.clone());
                }
            }
            for id in have_vols.keys() {
                if desired_ids.contains(id) {
                    continue;
                }
                let entry = st.vols.entry(id.clone()).or_insert_with(|| Vol {
                    state: VolumeState::Deleting,
                    size_gib: 0,
                    busy: false,
                    error: None,
                    failures: 0,
                    exports: Vec::new(),
                    applied: None,
                });
                entry.state = VolumeState::Deleting;
                if !entry.busy {
                    entry.busy = true;
                    deletes.push(id.clone());
                }
            }
            st.vols
                .retain(|id, v| v.busy || desired_ids.contains(id) || have_vols.contains_key(id));

            let wanted_snaps: Vec<String> = desired
                .snapshots
                .iter()
                .map(|s| s.snapshot_id.clone())
                .collect();
            for s in &desired.snapshots {
                let invalid = valid_id("snapshot id", &s.snapshot_id)
                    .and_then(|_| valid_id("volume id", &s.volume_id))
                    .err();
                let entry = st
                    .snaps
                    .entry(s.snapshot_id.clone())
                    .or_insert_with(|| Snap {
                        volume_id: s.volume_id.clone(),
                        spec: s.clone(),
                        state: SnapshotState::Pending,
                        progress: Arc::new(AtomicU8::new(0)),
                        fixed: Arc::new(AtomicBool::new(false)),
                        busy: false,
                        error: None,
                        failures: 0,
                        record: None,
                    });
                if entry.busy {
                    continue;
                }
                entry.spec = s.clone();
                if let Some(why) = invalid {
                    entry.state = SnapshotState::Error;
                    entry.error = Some((why, Instant::now()));
                    continue;
                }
                if let Some(r) = have_snaps.get(&s.snapshot_id) {
                    entry.state = SnapshotState::Completed;
                    entry.progress.store(100, Ordering::Relaxed);
                    entry.record = Some(r.clone());
                    entry.error = None;
                    continue;
                }
                if entry.state == SnapshotState::Error
                    || entry
                        .error
                        .as_ref()
                        .is_some_and(|(_, at)| at.elapsed() < retry)
                {
                    continue;
                }
                entry.state = SnapshotState::Pending;
                entry.busy = true;
                snapshots.push((s.clone(), entry.progress.clone(), entry.fixed.clone()));
            }
            for id in have_snaps.keys() {
                if !wanted_snaps.contains(id) && !st.snaps.get(id).is_some_and(|s| s.busy) {
                    drop_snaps.push(id.clone());
                }
            }
            st.snaps.retain(|id, s| s.busy || wanted_snaps.contains(id));
        }

        for (id, grants) in exports {
            self.apply_exports(&id, grants).await;
        }
        // Daemons of volumes nobody wants served (after a restart, or a
        // file deleted behind the SC's back).
        if let Ok(served) = self.backend.served().await {
            for id in served {
                let busy = self.lock().vols.get(&id).is_some_and(|v| v.busy);
                if desired_ids.contains(&id) || busy {
                    continue;
                }
                let lock = self.vol_lock(&id);
                let _held = lock.lock().await;
                if let Err(e) = self.backend.set_exports(&id, &[]).await {
                    tracing::warn!(volume = %id, error = %e, "stopping an unwanted export server");
                }
            }
        }
        for id in drop_snaps {
            if let Err(e) = self.backend.delete_snapshot(&id).await {
                tracing::warn!(snapshot = %id, error = %e, "deleting a snapshot's SC copy");
            }
        }
        for v in creates {
            self.spawn_create(v);
        }
        for id in deletes {
            self.spawn_delete(id);
        }
        for (s, progress, fixed) in snapshots {
            self.spawn_snapshot(s, progress, fixed);
        }
    }

    async fn apply_exports(self: &Arc<Self>, id: &str, grants: Vec<Grant>) {
        let lock = self.vol_lock(id);
        let result = {
            let _held = lock.lock().await;
            self.backend.set_exports(id, &grants).await
        };
        let mut st = self.lock();
        let Some(v) = st.vols.get_mut(id) else { return };
        v.busy = false;
        match result {
            Ok(nbd) => {
                v.exports = grants
                    .iter()
                    .zip(nbd)
                    .map(|(g, n)| ExportReport {
                        node_id: g.node_id.clone(),
                        instance_id: g.instance_id.clone(),
                        state: ExportState::Ready,
                        nbd: Some(n),
                        error: None,
                    })
                    .collect();
                v.applied = Some(grants);
            }
            Err(e) => {
                tracing::warn!(volume = %id, error = %e, "applying exports");
                v.exports = grants
                    .iter()
                    .map(|g| ExportReport {
                        node_id: g.node_id.clone(),
                        instance_id: g.instance_id.clone(),
                        state: ExportState::Error,
                        nbd: None,
                        error: Some(e.to_string()),
                    })
                    .collect();
                v.applied = None;
            }
        }
    }

    fn spawn_create(self: &Arc<Self>, v: VolumeSpec) {
        let guard = self.begin_op();
        let me = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let lock = me.vol_lock(&v.volume_id);
            let result = {
                let _held = lock.lock().await;
                me.backend
                    .create_volume(&v.volume_id, v.size_gib << 30, v.source.as_ref())
                    .await
            };
            {
                let mut st = me.lock();
                if let Some(e) = st.vols.get_mut(&v.volume_id) {
                    e.busy = false;
                    match result {
                        Ok(()) => {
                            e.state = VolumeState::Available;
                            e.error = None;
                            e.failures = 0;
                        }
                        Err(err) => {
                            tracing::warn!(volume = %v.volume_id, error = %err, "creating a volume");
                            e.failures += 1;
                            if is_final(e.failures, &err) {
                                e.state = VolumeState::Error;
                            }
                            e.error = Some((err.to_string(), Instant::now()));
                        }
                    }
                }
            }
            me.kick.notify_one();
        });
    }

    fn spawn_delete(self: &Arc<Self>, id: String) {
        let guard = self.begin_op();
        let me = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let lock = me.vol_lock(&id);
            let result = {
                let _held = lock.lock().await;
                me.backend.delete_volume(&id).await
            };
            {
                let mut st = me.lock();
                match result {
                    Ok(()) => {
                        st.vols.remove(&id);
                    }
                    Err(err) => {
                        tracing::warn!(volume = %id, error = %err, "deleting a volume");
                        if let Some(e) = st.vols.get_mut(&id) {
                            e.busy = false;
                            e.error = Some((err.to_string(), Instant::now()));
                        }
                    }
                }
            }
            me.kick.notify_one();
        });
    }

    fn spawn_snapshot(
        self: &Arc<Self>,
        spec: SnapshotSpec,
        progress: Arc<AtomicU8>,
        fixed: Arc<AtomicBool>,
    ) {
        let guard = self.begin_op();
        let me = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let scaled = |lo: f64, hi: f64| -> Progress {
                let p = progress.clone();
                Arc::new(move |f: f64| {
                    let v = (lo + (hi - lo) * f.clamp(0.0, 1.0)) as u8;
                    p.fetch_max(v.min(99), Ordering::Relaxed);
                })
            };
            let result = async {
                {
                    let lock = me.vol_lock(&spec.volume_id);
                    let _held = lock.lock().await;
                    let fixed: Fixed = Arc::new(move || fixed.store(true, Ordering::Release));
                    me.backend
                        .snapshot_raw(&spec, scaled(0.0, 50.0), fixed)
                        .await
                        .map_err(|e| (true, e))?;
                }
                me.backend
                    .publish_snapshot(&spec, scaled(50.0, 100.0))
                    .await
                    .map_err(|e| (false, e))
            }
            .await;
            {
                let mut st = me.lock();
                if let Some(s) = st.snaps.get_mut(&spec.snapshot_id) {
                    s.busy = false;
                    match result {
                        Ok(record) => {
                            s.state = SnapshotState::Completed;
                            s.progress.store(100, Ordering::Relaxed);
                            s.record = Some(record);
                            s.error = None;
                        }
                        Err((copying, err)) => {
                            tracing::warn!(snapshot = %spec.snapshot_id, error = %err, copying, "taking a snapshot");
                            s.failures += 1;
                            if copying || is_final(s.failures, &err) {
                                s.state = SnapshotState::Error;
                            }
                            s.error = Some((err.to_string(), Instant::now()));
                        }
                    }
                }
            }
            me.kick.notify_one();
        });
    }

    /// What the SC holds, as the API reports it.
    pub fn report(&self) -> StorageReport {
        let st = self.lock();
        let volumes = st
            .vols
            .iter()
            .map(|(id, v)| VolumeReport {
                volume_id: id.clone(),
                state: v.state,
                size_gib: v.size_gib,
                exports: if v.state == VolumeState::Available {
                    v.exports.clone()
                } else {
                    Vec::new()
                },
                error: v.error.as_ref().map(|(e, _)| e.clone()),
            })
            .collect();
        let snapshots = st
            .snaps
            .iter()
            .map(|(id, s)| {
                let r = s.record.as_ref();
                SnapshotReport {
                    snapshot_id: id.clone(),
                    volume_id: s.volume_id.clone(),
                    state: s.state,
                    progress: s.progress.load(Ordering::Relaxed),
                    point_in_time: s.record.is_some() || s.fixed.load(Ordering::Acquire),
                    volume_size: r.map_or(0, |r| r.volume_size),
                    compression: r.map_or(s.spec.compression, |r| r.compression),
                    sha256: r.map(|r| r.sha256.clone()),
                    md5: r.map(|r| r.md5.clone()),
                    compressed_size: r.map(|r| r.compressed_size),
                    raw_digest: r.map(|r| r.raw_digest.clone()),
                    error: s.error.as_ref().map(|(e, _)| e.clone()),
                }
            })
            .collect();
        StorageReport {
            sc_id: self.cfg.sc_id.clone(),
            generation: st.desired.generation,
            volumes,
            snapshots,
        }
    }
}
