//! The boundary between the SC's reconciler and the files and daemons that
//! hold volumes.
//!
//! The [`crate::storage::Storage`] reconciler decides *what* to do; a
//! [`Backend`] does each step. Every step is idempotent and leaves either
//! its finished result or something [`Backend::recover`] removes: results
//! appear by `rename` of a fsynced `.part` file, so a volume or snapshot
//! that is listed is whole, whatever moment a crash hit. One exception: a
//! snapshot's copy whose moment was fixed (`<snap>.pit`) keeps its `.part`
//! files through `recover`, as its daemon may still be writing them; its
//! next step follows that copy, publishes it if `<snap>.copied` says it is
//! whole (written after the data is fsynced), or fails the snapshot.
//!
//! [`FileBackend`] is the real one: sparse files under `<data>/volumes/`
//! and `<data>/snapshots/`, a `qemu-storage-daemon` per served volume
//! ([`crate::daemon`]), compressed copies in Walrus ([`crate::walrus`]).
//! [`crate::fake::FakeBackend`] is an in-memory one for the reconciler's
//! tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ironbark_sc_api::{Compression, NbdExport, SnapshotSource, SnapshotSpec};
use serde::{Deserialize, Serialize};

use crate::compress::Codec;
use crate::daemon::{Daemons, Grant, Transport};
use crate::error::ScError;
use crate::multipart;
use crate::sparse;
use crate::walrus;

/// A snapshot whose compressed copy is whole in Walrus. Persisted only
/// after the upload was verified: its existence is what "completed" means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub snapshot_id: String,
    pub volume_id: String,
    pub volume_size: u64,
    pub compression: Compression,
    /// Hex SHA-256 of the object (Walrus verified the upload's CRC-32).
    pub sha256: String,
    /// The object's ETag as Walrus answered it (multipart: the MD5 of the
    /// parts' MD5s and `-N`); the field keeps its name for the API's `md5`.
    pub md5: String,
    pub compressed_size: u64,
    pub raw_digest: String,
}

/// A snapshot whose parts are all in Walrus, about to be completed.
#[derive(Serialize, Deserialize)]
struct Completing {
    record: SnapshotRecord,
    crc32: u32,
    parts: Vec<multipart::Uploaded>,
}

/// Reports fractions done (0.0-1.0) of a long step.
pub type Progress = Arc<dyn Fn(f64) + Send + Sync>;

/// Called once a snapshot's point in time is fixed: the copy under way
/// holds the volume as it was at that moment, whatever is written next.
pub type Fixed = Arc<dyn Fn() + Send + Sync>;

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Removes what an interrupted step left half-made. Called once, before
    /// anything else.
    async fn recover(&self) -> Result<(), ScError>;

    /// Whole volumes: id → size in bytes.
    async fn volumes(&self) -> Result<BTreeMap<String, u64>, ScError>;

    /// Makes volume `id` of `size` bytes, empty or from a snapshot. `Ok` at
    /// once if it exists.
    async fn create_volume(
        &self,
        id: &str,
        size: u64,
        source: Option<&SnapshotSource>,
    ) -> Result<(), ScError>;

    /// Stops serving and deletes the volume; `Ok` if it does not exist.
    async fn delete_volume(&self, id: &str) -> Result<(), ScError>;

    /// Serves exactly `grants` for volume `id` (none: stop serving);
    /// returns how to reach each, in order.
    async fn set_exports(&self, id: &str, grants: &[Grant]) -> Result<Vec<NbdExport>, ScError>;

    /// Volumes being served, whether or not anyone wants them (for the
    /// sweep after a restart).
    async fn served(&self) -> Result<Vec<String>, ScError>;

    /// The names of the exports volume `id` is served under now (none if
    /// it is not served).
    async fn export_names(&self, id: &str) -> Result<Vec<String>, ScError>;

    /// Completed snapshots.
    async fn snapshots(&self) -> Result<BTreeMap<String, SnapshotRecord>, ScError>;

    /// Takes the point-in-time raw copy of the snapshot's volume (while it
    /// may be exported and written). `Ok` at once if the copy exists.
    async fn snapshot_raw(
        &self,
        spec: &SnapshotSpec,
        progress: Progress,
        fixed: Fixed,
    ) -> Result<(), ScError>;

    /// Compresses the raw copy, uploads it and records the snapshot as
    /// completed. Returns the record (at once if it exists).
    async fn publish_snapshot(
        &self,
        spec: &SnapshotSpec,
        progress: Progress,
    ) -> Result<SnapshotRecord, ScError>;

    /// Deletes the SC's copy and record; `Ok` if there are none.
    async fn delete_snapshot(&self, id: &str) -> Result<(), ScError>;
}

/// Settings of [`FileBackend`].
#[derive(Clone, Debug)]
pub struct FileBackendConfig {
    /// `<data>`; volumes and snapshots live in subdirectories.
    pub dir: PathBuf,
    pub qemu_img: PathBuf,
    pub codec: Codec,
}

pub struct FileBackend {
    volumes: PathBuf,
    snapshots: PathBuf,
    cfg: FileBackendConfig,
    daemons: Daemons,
    http: walrus::HttpClient,
}

impl FileBackend {
    pub fn new(cfg: FileBackendConfig, daemons: Daemons) -> Result<FileBackend, ScError> {
        let volumes = cfg.dir.join("volumes");
        let snapshots = cfg.dir.join("snapshots");
        for d in [&volumes, &snapshots] {
            std::fs::create_dir_all(d).map_err(|e| ScError::io(d.display(), e))?;
        }
        Ok(FileBackend {
            volumes,
            snapshots,
            cfg,
            daemons,
            http: walrus::client(),
        })
    }

    pub fn daemons(&self) -> &Daemons {
        &self.daemons
    }

    /// `<data>/volumes/<id>.raw`: the volume's file.
    pub fn volume_path(&self, id: &str) -> PathBuf {
        self.volumes.join(format!("{id}.raw"))
    }

    /// `<data>/snapshots/<id>.raw`: a snapshot's point-in-time raw copy.
    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        self.snapshots.join(format!("{id}.raw"))
    }

    /// `<data>/snapshots/<id>.pit`: present once the snapshot's copy has
    /// begun, so its moment is fixed; gone with the snapshot.
    fn point_in_time_path(&self, id: &str) -> PathBuf {
        self.snapshots.join(format!("{id}.pit"))
    }

    /// Whether `path` belongs to a snapshot whose point-in-time copy began
    /// and has not been published.
    fn copy_in_flight(&self, path: &Path) -> bool {
        path.parent() == Some(self.snapshots.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('.'))
                .is_some_and(|(id, _)| {
                    self.point_in_time_path(id).is_file() && !self.snapshot_path(id).is_file()
                })
    }

    /// `<data>/snapshots/<id>.copied`: present once the copy has ended
    /// well (see [`FileBackend::point_in_time_path`]).
    fn copied_path(&self, id: &str) -> PathBuf {
        self.snapshots.join(format!("{id}.copied"))
    }

    /// Stops the volume's daemon if it serves no export: one started (or
    /// kept) for a snapshot's copy alone goes away after it.
    async fn stop_if_unexported(&self, vol: &str) -> Result<(), ScError> {
        if self.daemons.exports(vol).await.is_ok_and(|e| e.is_empty()) {
            self.daemons.stop(vol).await?;
        }
        Ok(())
    }

    /// The end of a finished copy: the data file flushed and published as
    /// the snapshot's raw copy.
    async fn finish_raw(
        &self,
        spec: &SnapshotSpec,
        meta: &Path,
        part: &Path,
        done: &Path,
        progress: &(dyn Fn(f64) + Send + Sync),
    ) -> Result<(), ScError> {
        let _ = remove(meta).await;
        // Closing the target flushed it; this makes the contract explicit
        // and costs nothing then.
        std::fs::File::open(part)
            .and_then(|f| f.sync_all())
            .map_err(|e| ScError::io(part.display(), e))?;
        progress(1.0);
        publish_file(part, done).await?;
        remove(&self.point_in_time_path(&spec.snapshot_id)).await?;
        remove(&self.copied_path(&spec.snapshot_id)).await?;
        tracing::info!(snapshot = %spec.snapshot_id, volume = %spec.volume_id, "point-in-time copy taken");
        Ok(())
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.snapshots.join(format!("{id}.json"))
    }

    /// `<data>/snapshots/<id>.completing`: the record to be and the parts
    /// listed, written before CompleteMultipartUpload (see
    /// [`crate::multipart`] on the window it closes).
    fn completing_path(&self, id: &str) -> PathBuf {
        self.snapshots.join(format!("{id}.completing"))
    }

    /// Sends the completion and, once Walrus has the object, writes the
    /// record (and drops the marker).
    async fn finish_upload(
        &self,
        url: &str,
        mut pending: Completing,
    ) -> Result<SnapshotRecord, ScError> {
        let id = pending.record.snapshot_id.clone();
        let crc = pending.crc32;
        let etag = match multipart::complete(&self.http, url, &pending.parts, crc).await? {
            multipart::Completion::Done(etag) => etag,
            multipart::Completion::Gone => multipart::multipart_etag(&pending.parts)
                .ok_or_else(|| ScError::Io(format!("snapshot {id}: a part's ETag is not hex")))?,
        };
        pending.record.md5 = etag;
        let record = pending.record;
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ScError::io("record", e))?;
        crate::daemon::write_private(&self.record_path(&id), &json)?;
        sparse::sync_dir(&self.snapshots).map_err(|e| ScError::io("snapshots dir", e))?;
        remove(&self.completing_path(&id)).await?;
        Ok(record)
    }

    async fn qemu_img(&self, args: &[&str]) -> Result<(), ScError> {
        let out = tokio::process::Command::new(&self.cfg.qemu_img)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| ScError::io("running qemu-img", e))?;
        if !out.status.success() {
            return Err(ScError::Io(format!(
                "qemu-img {}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Fills `part` (a new file of `size` bytes) from a snapshot.
    async fn fill_from(&self, part: &Path, size: u64, src: &SnapshotSource) -> Result<(), ScError> {
        let local = self.snapshot_path(&src.snapshot_id);
        if !src.force_download && local.is_file() {
            let len = std::fs::metadata(&local)
                .map_err(|e| ScError::io(local.display(), e))?
                .len();
            if len > size {
                return Err(ScError::Invalid(format!(
                    "snapshot {} ({len} bytes) is larger than the volume ({size} bytes)",
                    src.snapshot_id
                )));
            }
            let (from, to) = (local.clone(), part.to_path_buf());
            tokio::task::spawn_blocking(move || sparse::copy_sparse(&from, &to, size))
                .await
                .map_err(|e| ScError::io("copy task", e))?
                .map_err(|e| ScError::io(format!("copying {}", local.display()), e))?;
            return Ok(());
        }
        let Some(url) = &src.download_url else {
            return Err(ScError::Invalid(format!(
                "snapshot {} is not on this SC and no download URL was given",
                src.snapshot_id
            )));
        };
        let download = part.with_extension("download");
        let result = async {
            let sha = walrus::get_file(&self.http, url, &download).await?;
            if let Some(want) = &src.sha256
                && !want.eq_ignore_ascii_case(&sha)
            {
                // Whole but not the snapshot: trying again gets the same.
                return Err(ScError::Invalid(format!(
                    "snapshot {} from Walrus has SHA-256 {sha}, expected {want}",
                    src.snapshot_id
                )));
            }
            let (codec, kind, from, to) = (
                self.cfg.codec.clone(),
                src.compression,
                download.clone(),
                part.to_path_buf(),
            );
            let (digest, _) =
                tokio::task::spawn_blocking(move || codec.decompress(&from, kind, &to, size))
                    .await
                    .map_err(|e| ScError::io("decompress task", e))?
                    .map_err(|e| ScError::io(format!("decompressing {}", src.snapshot_id), e))?;
            if let Some(want) = &src.raw_digest
                && !want.eq_ignore_ascii_case(&digest)
            {
                return Err(ScError::Io(format!(
                    "snapshot {} decompressed to digest {digest}, expected {want}",
                    src.snapshot_id
                )));
            }
            Ok(())
        }
        .await;
        let _ = tokio::fs::remove_file(&download).await;
        result
    }
}

/// A value for a QEMU `-o key=value,...` list: commas are doubled.
fn qemu_opt(v: &str) -> String {
    v.replace(',', ",,")
}

fn list_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<(String, PathBuf)>, ScError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ScError::io(dir.display(), e))?;
    Ok(rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(suffix)
                .map(|id| (id.to_string(), e.path()))
        })
        .collect())
}

async fn remove(path: &Path) -> Result<(), ScError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ScError::io(path.display(), e)),
        _ => Ok(()),
    }
}

async fn publish_file(part: &Path, done: &Path) -> Result<(), ScError> {
    tokio::fs::rename(part, done)
        .await
        .map_err(|e| ScError::io(done.display(), e))?;
    if let Some(dir) = done.parent() {
        sparse::sync_dir(dir).map_err(|e| ScError::io(dir.display(), e))?;
    }
    Ok(())
}

#[async_trait]
impl Backend for FileBackend {
    async fn recover(&self) -> Result<(), ScError> {
        for dir in [&self.volumes, &self.snapshots] {
            for suffix in [".part", ".download", ".tmp"] {
                for (_, path) in list_with_suffix(dir, suffix)? {
                    if self.copy_in_flight(&path) {
                        // A daemon may still be copying into it; the
                        // snapshot's next step follows or fails it.
                        continue;
                    }
                    tracing::info!(file = %path.display(), "removing what an interrupted step left");
                    remove(&path).await?;
                }
            }
        }
        Ok(())
    }

    async fn volumes(&self) -> Result<BTreeMap<String, u64>, ScError> {
        Ok(list_with_suffix(&self.volumes, ".raw")?
            .into_iter()
            .filter_map(|(id, p)| std::fs::metadata(p).ok().map(|m| (id, m.len())))
            .collect())
    }

    async fn create_volume(
        &self,
        id: &str,
        size: u64,
        source: Option<&SnapshotSource>,
    ) -> Result<(), ScError> {
        let done = self.volume_path(id);
        if done.is_file() {
            return Ok(());
        }
        let part = self.volumes.join(format!("{id}.raw.part"));
        remove(&part).await?;
        let made = match source {
            None => std::fs::File::create(&part)
                .and_then(|f| f.set_len(size).and_then(|_| f.sync_all()))
                .map_err(|e| ScError::io(part.display(), e)),
            Some(src) => self.fill_from(&part, size, src).await,
        };
        if let Err(e) = made {
            let _ = remove(&part).await;
            return Err(e);
        }
        publish_file(&part, &done).await?;
        tracing::info!(volume = %id, size, from = ?source.map(|s| &s.snapshot_id), "volume created");
        Ok(())
    }

    async fn delete_volume(&self, id: &str) -> Result<(), ScError> {
        self.daemons.stop(id).await?;
        remove(&self.volume_path(id)).await?;
        remove(&self.volumes.join(format!("{id}.raw.part"))).await?;
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    async fn set_exports(&self, id: &str, grants: &[Grant]) -> Result<Vec<NbdExport>, ScError> {
        if grants.is_empty() {
            if self.daemons.backup_running(id).await {
                // Its exports close; the daemon stays for the copy, and the
                // snapshot's step stops it after.
                self.daemons.set_exports(id, &[]).await?;
                return Ok(Vec::new());
            }
            self.daemons.stop(id).await?;
            return Ok(Vec::new());
        }
        let file = self.volume_path(id);
        if !file.is_file() {
            return Err(ScError::Invalid(format!("volume {id} does not exist")));
        }
        // A Unix socket only when every NC named is on this host: one
        // remote NC needs TCP + TLS, and a daemon has one NBD server.
        let cfg = self.daemons.config();
        let unix = grants.iter().all(|g| cfg.is_local(&g.node_id));
        let mut running = self.daemons.ensure(id, &file, unix).await?;
        let is_unix = matches!(running.transport, Transport::Unix(_));
        if is_unix != unix {
            // A restart cuts every connection, and an attached NC keeps
            // the address it attached with. TCP + TLS serves local NCs
            // too, so a TCP daemon with a still-wanted export open stays
            // (e.g. one started before an upgrade that brought Unix
            // sockets); otherwise it was started for a snapshot, or the
            // volume moves between a local and a remote NC. A Unix daemon
            // serving a local NC while a remote one is added is restarted
            // too: the CLC exports a volume to one NC at a time, so that
            // only happens when asked for by hand.
            let open = self.daemons.exports(id).await.unwrap_or_default();
            let keeps = grants.iter().any(|g| open.contains(&g.export));
            if is_unix || !keeps {
                tracing::info!(volume = %id, unix, "restarting the daemon for another transport");
                self.daemons.stop(id).await?;
                running = self.daemons.ensure(id, &file, unix).await?;
            }
        }
        self.daemons.set_exports(id, grants).await?;
        Ok(grants
            .iter()
            .map(|g| match &running.transport {
                Transport::Tcp(port) => NbdExport {
                    host: cfg.advertise_host.clone(),
                    port: *port,
                    export: g.export.clone(),
                    tls_identity: g.identity.clone(),
                    psk_hex: g.psk_hex.clone(),
                    socket: None,
                },
                Transport::Unix(path) => NbdExport {
                    host: String::new(),
                    port: 0,
                    export: g.export.clone(),
                    tls_identity: String::new(),
                    psk_hex: String::new(),
                    socket: Some(path.to_string_lossy().into_owned()),
                },
            })
            .collect())
    }

    async fn export_names(&self, id: &str) -> Result<Vec<String>, ScError> {
        if !self.daemons.running().iter().any(|v| v == id) {
            return Ok(Vec::new());
        }
        self.daemons.exports(id).await
    }

    async fn served(&self) -> Result<Vec<String>, ScError> {
        Ok(self.daemons.running())
    }

    async fn snapshots(&self) -> Result<BTreeMap<String, SnapshotRecord>, ScError> {
        let mut out = BTreeMap::new();
        for (id, path) in list_with_suffix(&self.snapshots, ".json")? {
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<SnapshotRecord>(&b).ok())
            {
                Some(r) if r.snapshot_id == id => {
                    out.insert(id, r);
                }
                _ => {
                    tracing::warn!(file = %path.display(), "ignoring an unreadable snapshot record")
                }
            }
        }
        Ok(out)
    }

    async fn snapshot_raw(
        &self,
        spec: &SnapshotSpec,
        progress: Progress,
        fixed: Fixed,
    ) -> Result<(), ScError> {
        let done = self.snapshot_path(&spec.snapshot_id);
        if done.is_file() {
            fixed();
            return Ok(());
        }
        let vol = &spec.volume_id;
        let file = self.volume_path(vol);
        let meta = self
            .snapshots
            .join(format!("{}.qcow2.part", spec.snapshot_id));
        let part = self
            .snapshots
            .join(format!("{}.raw.part", spec.snapshot_id));
        // Once a copy has begun, the snapshot is that moment's image and
        // no other: the CLC has told its caller so. A copy an earlier SC
        // process began is followed to its end in the daemon that runs
        // it; if that daemon is gone too, the moment is lost, and a new
        // copy would show later writes, so the snapshot fails instead.
        let pit = self.point_in_time_path(&spec.snapshot_id);
        let copied = self.copied_path(&spec.snapshot_id);
        if pit.is_file() {
            // The moment was fixed before the SC died; saying so again at
            // once keeps a CLC that is waiting for it from giving up.
            fixed();
            // A job still in the daemon is followed (or, ended, cleaned
            // up); without one, only a copy recorded as whole is kept.
            let followed = self.daemons.adopt_backup(vol, &meta, &*progress).await?;
            if !followed && !copied.is_file() {
                let _ = remove(&meta).await;
                let _ = remove(&part).await;
                return Err(ScError::Io(format!(
                    "the point-in-time copy of {vol} was cut off (the SC and its daemon stopped) and cannot be taken again at the same moment"
                )));
            }
            self.finish_raw(spec, &meta, &part, &done, &*progress)
                .await?;
            return self.stop_if_unexported(vol).await;
        }
        let size = std::fs::metadata(&file)
            .map_err(|_| ScError::Invalid(format!("volume {vol} does not exist")))?
            .len();
        // The copy's target is a qcow2 whose data lives in an external raw
        // file, the `.part` that becomes the SC's copy: the qcow2 keeps
        // only metadata (zero clusters for the holes), so the raw file
        // gets exactly the volume's data, at its offsets, and stays sparse.
        // A raw target would not: QEMU writes the holes as zeroes with
        // fallocate(ZERO_RANGE), which allocates them.
        remove(&meta).await?;
        remove(&part).await?;
        let result = async {
            let opts = format!(
                "data_file={},data_file_raw=off",
                qemu_opt(&part.to_string_lossy())
            );
            let meta_s = meta.to_string_lossy().into_owned();
            self.qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                &meta_s,
                &size.to_string(),
            ])
            .await?;
            // The daemon that serves the volume takes the copy, so guest
            // writes during it are handled by its copy-before-write filter.
            // A daemon started for the copy alone needs no TCP port or TLS.
            self.daemons.ensure(vol, &file, true).await?;
            let started = || {
                // Durable before anyone hears of it (see above).
                durable_marker(&pit)?;
                fixed();
                Ok(())
            };
            // The job's end, before the daemon forgets it: a restarted SC
            // that finds no job then still knows the copy is whole. The
            // data first: the daemon wrote it through the page cache, and
            // the marker must not outlive data a power cut took.
            let whole = || {
                std::fs::File::open(&part)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| ScError::io(part.display(), e))?;
                durable_marker(&copied)
            };
            let backup = self
                .daemons
                .backup(vol, &meta, &part, &started, &whole, &*progress)
                .await;
            let copied = match backup {
                Ok(()) => self.finish_raw(spec, &meta, &part, &done, &*progress).await,
                Err(e) => Err(e),
            };
            self.stop_if_unexported(vol).await?;
            copied
        }
        .await;
        if result.is_err() {
            let _ = remove(&meta).await;
            let _ = remove(&part).await;
        }
        result
    }

    async fn publish_snapshot(
        &self,
        spec: &SnapshotSpec,
        progress: Progress,
    ) -> Result<SnapshotRecord, ScError> {
        let id = &spec.snapshot_id;
        if let Some(r) = self.snapshots().await?.remove(id) {
            return Ok(r);
        }
        let target = &spec.target;
        // An earlier attempt listed its parts and may have completed.
        let marker = self.completing_path(id);
        if let Some(pending) = std::fs::read(&marker)
            .ok()
            .and_then(|b| serde_json::from_slice::<Completing>(&b).ok())
        {
            match self.finish_upload(&target.complete_url, pending).await {
                Ok(record) => {
                    progress(1.0);
                    tracing::info!(snapshot = %id, "snapshot completion confirmed after a restart");
                    return Ok(record);
                }
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "completing the earlier upload failed; uploading again");
                    remove(&marker).await?;
                }
            }
        }
        let raw = self.snapshot_path(id);
        let volume_size = std::fs::metadata(&raw)
            .map_err(|e| ScError::io(raw.display(), e))?
            .len();
        if target.part_size == 0 || target.part_urls.is_empty() || target.complete_url.is_empty() {
            return Err(ScError::Invalid(format!(
                "snapshot {id}: the desired state gives no multipart upload to fill"
            )));
        }
        // Compression runs on blocking threads and hands each part to the
        // uploader as soon as it is full (see crate::multipart).
        let (tx, rx) = multipart::channel();
        let writer =
            multipart::PartWriter::new(tx, target.part_size, target.part_urls.len() as u32);
        let (codec, kind, from, p) = (
            self.cfg.codec.clone(),
            spec.compression,
            raw.clone(),
            progress.clone(),
        );
        let compressing = tokio::task::spawn_blocking(move || {
            let (packed, w) = codec.compress(&from, writer, kind, &|f| p(f * 0.95))?;
            w.finish()?;
            Ok::<_, std::io::Error>(packed)
        });
        let uploaded = multipart::upload_parts(&self.http, target, rx, |_| {}).await;
        let packed = compressing
            .await
            .map_err(|e| ScError::io("compress task", e))?;
        // An upload error stops the compressor too; it is the one to tell.
        let parts = uploaded?;
        let packed = packed.map_err(|e| ScError::io(format!("compressing {id}"), e))?;
        let sent: u64 = parts.iter().map(|p| p.size).sum();
        if sent != packed.size {
            return Err(ScError::Io(format!(
                "snapshot {id}: {sent} bytes uploaded for an object of {}",
                packed.size
            )));
        }
        // The record is written only after Walrus confirmed the whole
        // object: a crash or error before leaves no record, so the
        // snapshot is not completed and the saga starts over (sending every
        // part again, which replaces them), or, once the parts are listed
        // in the marker, completes them again.
        let pending = Completing {
            record: SnapshotRecord {
                snapshot_id: id.clone(),
                volume_id: spec.volume_id.clone(),
                volume_size,
                compression: spec.compression,
                sha256: hex::encode(packed.sha256),
                md5: String::new(),
                compressed_size: packed.size,
                raw_digest: packed.raw_digest,
            },
            crc32: packed.crc32,
            parts,
        };
        let json = serde_json::to_vec(&pending).map_err(|e| ScError::io("completion", e))?;
        crate::daemon::write_private(&marker, &json)?;
        let parts = pending.parts.len();
        let record = self.finish_upload(&target.complete_url, pending).await?;
        progress(1.0);
        tracing::info!(snapshot = %id, size = record.compressed_size, parts, "snapshot uploaded and verified");
        Ok(record)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), ScError> {
        remove(&self.record_path(id)).await?;
        remove(&self.completing_path(id)).await?;
        remove(&self.snapshot_path(id)).await?;
        for part in [format!("{id}.qcow2.part"), format!("{id}.raw.part")] {
            remove(&self.snapshots.join(part)).await?;
        }
        remove(&self.point_in_time_path(id)).await?;
        remove(&self.copied_path(id)).await?;
        Ok(())
    }
}

/// An empty file that exists on disk before this returns.
fn durable_marker(path: &Path) -> Result<(), ScError> {
    std::fs::File::create(path)
        .and_then(|f| f.sync_all())
        .and_then(|()| path.parent().map_or(Ok(()), sparse::sync_dir))
        .map_err(|e| ScError::io(path.display(), e))
}
