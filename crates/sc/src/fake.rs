//! An in-memory [`Backend`] for tests of the reconciler's state machines:
//! volumes, exports and snapshots are map entries; steps can be made to
//! fail, or held at a gate until released, to look at intermediate states.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use ironbark_sc_api::{NbdExport, SnapshotSource, SnapshotSpec};
use tokio::sync::watch;

use crate::backend::{Backend, Fixed, Progress, SnapshotRecord};
use crate::daemon::Grant;
use crate::error::ScError;

#[derive(Default)]
struct Inner {
    volumes: BTreeMap<String, u64>,
    exports: BTreeMap<String, Vec<Grant>>,
    raws: HashSet<String>,
    records: BTreeMap<String, SnapshotRecord>,
    /// Step names ("create:vol-1", "publish:snap-1", …) that fail.
    failing: HashSet<String>,
    calls: Vec<String>,
}

pub struct FakeBackend {
    inner: Mutex<Inner>,
    /// Step names held until released.
    gates: watch::Sender<HashSet<String>>,
}

impl Default for FakeBackend {
    fn default() -> Self {
        FakeBackend {
            inner: Mutex::default(),
            gates: watch::channel(HashSet::new()).0,
        }
    }
}

impl FakeBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake lock")
    }

    /// Steps named `step` wait until [`FakeBackend::release`].
    pub fn hold(&self, step: &str) {
        self.gates.send_modify(|g| {
            g.insert(step.to_string());
        });
    }

    pub fn release(&self, step: &str) {
        self.gates.send_modify(|g| {
            g.remove(step);
        });
    }

    pub fn fail(&self, step: &str, yes: bool) {
        let mut i = self.lock();
        if yes {
            i.failing.insert(step.to_string());
        } else {
            i.failing.remove(step);
        }
    }

    /// Every step run so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn exports(&self, vol: &str) -> Vec<Grant> {
        self.lock().exports.get(vol).cloned().unwrap_or_default()
    }

    /// Puts a volume in place as if made before (restart tests).
    pub fn put_volume(&self, vol: &str, size: u64) {
        self.lock().volumes.insert(vol.to_string(), size);
    }

    /// Puts a serving export in place as if left by a previous process.
    pub fn put_export(&self, vol: &str, grants: Vec<Grant>) {
        self.lock().exports.insert(vol.to_string(), grants);
    }

    async fn step(&self, step: String) -> Result<(), ScError> {
        self.lock().calls.push(step.clone());
        let mut rx = self.gates.subscribe();
        let _ = rx.wait_for(|g| !g.contains(&step)).await;
        if self.lock().failing.contains(&step) {
            return Err(ScError::Io(format!("{step} failed (fake)")));
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for FakeBackend {
    async fn recover(&self) -> Result<(), ScError> {
        self.step("recover".into()).await
    }

    async fn volumes(&self) -> Result<BTreeMap<String, u64>, ScError> {
        Ok(self.lock().volumes.clone())
    }

    async fn create_volume(
        &self,
        id: &str,
        size: u64,
        source: Option<&SnapshotSource>,
    ) -> Result<(), ScError> {
        if let Some(s) = source {
            let i = self.lock();
            if !i.raws.contains(&s.snapshot_id) && s.download_url.is_none() {
                return Err(ScError::Invalid(format!("no snapshot {}", s.snapshot_id)));
            }
        }
        self.step(format!("create:{id}")).await?;
        self.lock().volumes.insert(id.to_string(), size);
        Ok(())
    }

    async fn delete_volume(&self, id: &str) -> Result<(), ScError> {
        self.step(format!("delete:{id}")).await?;
        let mut i = self.lock();
        i.exports.remove(id);
        i.volumes.remove(id);
        Ok(())
    }

    async fn export_names(&self, id: &str) -> Result<Vec<String>, ScError> {
        Ok(self.exports(id).into_iter().map(|g| g.export).collect())
    }

    async fn set_exports(&self, id: &str, grants: &[Grant]) -> Result<Vec<NbdExport>, ScError> {
        self.step(format!("exports:{id}:{}", grants.len())).await?;
        let mut i = self.lock();
        if grants.is_empty() {
            i.exports.remove(id);
            return Ok(Vec::new());
        }
        if !i.volumes.contains_key(id) {
            return Err(ScError::Invalid(format!("volume {id} does not exist")));
        }
        i.exports.insert(id.to_string(), grants.to_vec());
        Ok(grants
            .iter()
            .map(|g| NbdExport {
                host: "192.0.2.1".into(),
                port: 10809,
                export: g.export.clone(),
                tls_identity: g.identity.clone(),
                psk_hex: g.psk_hex.clone(),
                socket: None,
            })
            .collect())
    }

    async fn served(&self) -> Result<Vec<String>, ScError> {
        Ok(self.lock().exports.keys().cloned().collect())
    }

    async fn snapshots(&self) -> Result<BTreeMap<String, SnapshotRecord>, ScError> {
        Ok(self.lock().records.clone())
    }

    async fn snapshot_raw(
        &self,
        spec: &SnapshotSpec,
        progress: Progress,
        fixed: Fixed,
    ) -> Result<(), ScError> {
        if self.lock().raws.contains(&spec.snapshot_id) {
            fixed();
            return Ok(());
        }
        if !self.lock().volumes.contains_key(&spec.volume_id) {
            return Err(ScError::Invalid(format!(
                "volume {} does not exist",
                spec.volume_id
            )));
        }
        // The moment is fixed as the copy begins; the step holds the copy.
        fixed();
        progress(0.5);
        self.step(format!("raw:{}", spec.snapshot_id)).await?;
        self.lock().raws.insert(spec.snapshot_id.clone());
        Ok(())
    }

    async fn publish_snapshot(
        &self,
        spec: &SnapshotSpec,
        progress: Progress,
    ) -> Result<SnapshotRecord, ScError> {
        if let Some(r) = self.lock().records.get(&spec.snapshot_id) {
            return Ok(r.clone());
        }
        progress(0.5);
        self.step(format!("publish:{}", spec.snapshot_id)).await?;
        let mut i = self.lock();
        let size = i.volumes.get(&spec.volume_id).copied().unwrap_or(0);
        let r = SnapshotRecord {
            snapshot_id: spec.snapshot_id.clone(),
            volume_id: spec.volume_id.clone(),
            volume_size: size,
            compression: spec.compression,
            sha256: "00".repeat(32),
            md5: "00".repeat(16),
            compressed_size: 1,
            raw_digest: "11".repeat(32),
        };
        i.records.insert(spec.snapshot_id.clone(), r.clone());
        Ok(r)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), ScError> {
        self.step(format!("delete-snapshot:{id}")).await?;
        let mut i = self.lock();
        i.records.remove(id);
        i.raws.remove(id);
        Ok(())
    }
}
