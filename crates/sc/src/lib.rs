//! The ironbark storage controller (SC): EBS volumes and snapshots.
//!
//! # How data flows
//!
//! The CLC sends the whole storage state of the zone
//! ([`ironbark_sc_api::DesiredStorage`], `PUT /v1/storage`, served by
//! [`api`]). The [`storage::Storage`] reconciler compares it with what the
//! [`backend::Backend`] holds and runs the steps that close the gap:
//!
//! - a volume is a sparse file `<data>/volumes/<vol>.raw`, made empty or
//!   filled from a snapshot (the SC's raw copy, or the compressed copy
//!   downloaded from Walrus, checked and decompressed);
//! - an export is an NBD export of a per-volume `qemu-storage-daemon`
//!   ([`daemon`]) that only the NC named can open (TLS-PSK, one export
//!   name, identity and key per attachment: volume, NC and instance; an NC
//!   on the SC's own host gets a Unix socket only root can reach instead); the TCP listener is the SC's own, made
//!   with `TCP_NODELAY` ([`listen`]); the NC hot-plugs it into its VM;
//! - a snapshot is a point-in-time copy made by that daemon while the guest
//!   writes (`blockdev-backup` into a qcow2 whose external data file is the
//!   sparse raw copy), kept as `<data>/snapshots/<snap>.raw`, then
//!   compressed segment by segment, skipping holes, hashing in parallel
//!   ([`compress`], [`sparse`]), each multipart part uploaded to a
//!   presigned Walrus URL with `x-amz-checksum-crc32` as soon as it is
//!   compressed, then the upload completed with the object's CRC-32, all of
//!   which Walrus checks ([`multipart`], [`walrus`]).
//!
//! What the SC holds is reported back (`GET /v1/storage`); every result
//! appears atomically, so a crash at any point leaves nothing reported that
//! is not whole. [`fake::FakeBackend`] stands in for the files and daemons
//! in the reconciler's tests, and the ironbark-walrus-standin crate (a
//! dev-dependency) for Walrus' side of the upload in the upload tests and
//! the bench; [`client::ScClient`] is the CLC's client.

pub mod api;
pub mod backend;
pub mod client;
pub mod compress;
pub mod daemon;
pub mod error;
pub mod fake;
pub mod listen;
pub mod multipart;
pub mod sparse;
pub mod storage;
pub mod walrus;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use api::{router, serve};
pub use backend::{Backend, FileBackend, FileBackendConfig, SnapshotRecord};
pub use client::ScClient;
pub use compress::Codec;
pub use daemon::{DaemonConfig, Daemons, Grant};
pub use error::ScError;
pub use fake::FakeBackend;
pub use storage::{Storage, StorageConfig};

/// Where the SC's QMP sockets go: a short directory per data directory,
/// since Unix socket paths are limited to 107 bytes and data directories
/// can be long. `/run/ironbark/<12 hex of the data dir's hash>`, or under
/// the temp dir where /run is not writable.
pub fn runtime_dir(data_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(
        data_dir.as_os_str().as_encoded_bytes(),
    ));
    let tag = &hash[..12];
    let run = PathBuf::from("/run/ironbark").join(tag);
    if std::fs::create_dir_all(&run).is_ok() {
        return run;
    }
    std::env::temp_dir().join("ironbark-run").join(tag)
}

/// Everything `ironbark sc` / `ironbark up` need to run an SC.
#[derive(Clone, Debug)]
pub struct ScSettings {
    pub sc_id: String,
    /// `<data>` of the SC (e.g. `<cloud data>/sc`).
    pub data_dir: PathBuf,
    pub token: String,
    pub listen: SocketAddr,
    /// NBD: where daemons listen and what NCs are told.
    pub nbd_listen_host: String,
    pub nbd_advertise_host: String,
    pub nbd_ports: (u16, u16),
    /// Node ids of the NCs on this host: their exports go over a Unix
    /// socket, without TLS (see [`daemon`]).
    pub local_nodes: Vec<String>,
    pub netns: Option<String>,
}

impl ScSettings {
    pub fn new(data_dir: impl Into<PathBuf>, token: &str, listen: SocketAddr) -> ScSettings {
        ScSettings {
            sc_id: "sc-1".into(),
            data_dir: data_dir.into(),
            token: token.into(),
            listen,
            nbd_listen_host: "127.0.0.1".into(),
            nbd_advertise_host: "127.0.0.1".into(),
            nbd_ports: (10900, 10999),
            local_nodes: Vec::new(),
            netns: None,
        }
    }
}

/// Builds the real storage (files and daemons) without serving it.
pub async fn open(s: &ScSettings) -> Result<Arc<Storage>, ScError> {
    std::fs::create_dir_all(&s.data_dir).map_err(|e| ScError::io(s.data_dir.display(), e))?;
    let data_dir =
        std::fs::canonicalize(&s.data_dir).map_err(|e| ScError::io(s.data_dir.display(), e))?;
    let daemons = Daemons::new(DaemonConfig {
        binary: "qemu-storage-daemon".into(),
        ip_binary: "ip".into(),
        netns: s.netns.clone(),
        listen_host: s.nbd_listen_host.clone(),
        advertise_host: s.nbd_advertise_host.clone(),
        ports: s.nbd_ports,
        run_dir: data_dir.join("run"),
        socket_dir: runtime_dir(&data_dir),
        local_nodes: s.local_nodes.clone(),
    })?;
    let backend = FileBackend::new(
        FileBackendConfig {
            dir: data_dir.clone(),
            qemu_img: "qemu-img".into(),
            codec: Codec::default(),
        },
        daemons,
    )?;
    Storage::start(
        StorageConfig::new(&s.sc_id, &data_dir, &s.token),
        Arc::new(backend),
    )
    .await
}

/// Starts an SC and serves its API on `s.listen`; returns once it serves.
pub async fn start(s: &ScSettings) -> Result<Arc<Storage>, ScError> {
    let storage = open(s).await?;
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| ScError::io(format!("listening on {}", s.listen), e))?;
    tracing::info!(listen = %s.listen, "SC listening");
    let st = storage.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(st, listener).await {
            tracing::error!(error = %e, "SC server stopped");
        }
    });
    Ok(storage)
}
