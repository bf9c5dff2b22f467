//! The storage controller's control API, as data.
//!
//! The CLC sends the SC the whole storage state of its zone
//! ([`DesiredStorage`], `PUT /v1/storage`): every volume that should exist,
//! which NCs each volume should be exported to, and every snapshot that
//! should exist. The SC reconciles its files and `qemu-storage-daemon`s to
//! it and reports what really is ([`StorageReport`], `GET /v1/storage`; the
//! `PUT` answers with the report too). Anything the SC holds that the
//! desired state does not name is removed: a volume missing from
//! `volumes` is deleted, an export missing from a volume's `exports` is
//! closed, a snapshot missing from `snapshots` loses its raw copy on the SC
//! (its Walrus object belongs to the CLC, which deletes it itself).
//!
//! # How the CLC drives it
//!
//! - **CreateVolume**: add a [`VolumeSpec`] (`source: None`, or a
//!   [`SnapshotSource`] for `--snapshot-id`). The volume is `available`
//!   once its [`VolumeReport::state`] is [`VolumeState::Available`].
//! - **AttachVolume**: add an [`ExportSpec`] naming the NC that runs the
//!   instance. When the report shows the export [`ExportState::Ready`],
//!   copy its [`NbdExport`] (address, export name, TLS-PSK identity and
//!   key) into the NC's `InstanceSpec.volumes` (ironbark-node-api). Only
//!   that NC gets the key; the SC serves each export with its own
//!   identity and key, so another NC (or anyone else) is refused at the TLS
//!   handshake.
//! - **DetachVolume**: remove the volume from the NC's instance spec first,
//!   wait until the NC no longer reports it attached (or `Force`: don't
//!   wait), then remove the export here.
//! - **DeleteVolume**: remove the volume (refuse while attached: the SC
//!   would close the exports under a running guest).
//! - **CreateSnapshot**: add a [`SnapshotSpec`] with a [`WalrusTarget`]
//!   (presigned PUT URL of the object the SC uploads). It is `completed`
//!   once [`SnapshotReport::state`] is [`SnapshotState::Completed`]: the
//!   point-in-time raw copy is on the SC and the compressed object is in
//!   Walrus, its CRC-32 checked by Walrus and its SHA-256 reported. Keep the
//!   spec listed for as long as the snapshot exists (the SC keeps the raw
//!   copy while it is listed); presigned URLs may be refreshed in later
//!   generations, the SC only uses the one of the current state.
//! - **CreateVolume from a snapshot** the SC no longer holds: give
//!   [`SnapshotSource::download_url`] (presigned GET) with the compression
//!   and checksums from the snapshot's completed report.
//!
//! Every request carries `Authorization: Bearer <cluster token>`.

use serde::{Deserialize, Serialize};

/// Default TCP port of the SC's control API.
pub const DEFAULT_PORT: u16 = 8776;

/// The unit of the raw image digest and of compression (bytes).
pub const SEGMENT_SIZE: u64 = 16 << 20;

/// How the snapshot's copy in Walrus is compressed. Both are streams of
/// independently compressed members/frames, so `gunzip`/`zstd -d` restore
/// the raw image with the standard tools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// What the original did; the default.
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    /// The usual file name extension, for object keys.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Zstd => "zst",
        }
    }
}

/// The whole storage state the CLC wants. `generation` only grows; the SC
/// ignores a set older than the one it has applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredStorage {
    pub generation: u64,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// `vol-…`: also the file name, the NBD export name's stem and the
    /// serial the guest sees.
    pub volume_id: String,
    /// Size in GiB; at least the source snapshot's size.
    pub size_gib: u64,
    /// Fill it from a snapshot; `None` makes an empty (all-zero) volume.
    #[serde(default)]
    pub source: Option<SnapshotSource>,
    /// NCs that should be able to connect now. Usually zero or one.
    #[serde(default)]
    pub exports: Vec<ExportSpec>,
}

/// Where a volume's initial content comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSource {
    pub snapshot_id: String,
    /// Presigned GET URL of the compressed object in Walrus, used when the
    /// SC no longer has the raw copy (or `force_download`).
    #[serde(default)]
    pub download_url: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// Hex SHA-256 of the compressed object ([`SnapshotReport::sha256`]);
    /// a download that does not match is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The raw image's digest ([`SnapshotReport::raw_digest`]), checked
    /// after decompression.
    #[serde(default)]
    pub raw_digest: Option<String>,
    /// Restore from Walrus even if the SC has the raw copy (tests, and
    /// distrust of the local copy).
    #[serde(default)]
    pub force_download: bool,
}

/// One NC allowed to attach the volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    /// The NC's node id (as in its `NodeReport`). The export's TLS-PSK
    /// identity is derived from it; its key is made by the SC.
    pub node_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// `snap-…`.
    pub snapshot_id: String,
    /// The volume to take it from; it must exist on this SC when the
    /// snapshot is first seen. Once taken, the snapshot no longer needs it.
    pub volume_id: String,
    #[serde(default)]
    pub compression: Compression,
    /// Where the compressed copy goes.
    pub target: WalrusTarget,
}

/// A Walrus (S3) object the SC writes with one HTTP PUT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalrusTarget {
    /// Presigned PUT URL (`http://…/bucket/key?X-Amz-…`), valid long enough
    /// for the upload. The SC sends `x-amz-checksum-crc32`, which Walrus
    /// checks, and requires it echoed in the answer.
    pub put_url: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    /// The file is being made (or filled from a snapshot).
    Creating,
    /// Whole and usable.
    Available,
    /// Being removed (exports closing, file deleting).
    Deleting,
    /// Could not be made; `error` says why. The CLC may delete it.
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportState {
    /// The daemon serving it is being started or told about it.
    Pending,
    /// The NC may connect with [`ExportReport::nbd`].
    Ready,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    Pending,
    /// Raw copy on the SC and a whole, checksummed object in Walrus.
    Completed,
    Error,
}

/// How an NC reaches an export: QEMU's NBD client over TCP with TLS-PSK,
/// or, for an NC on the SC's own host, over a Unix socket without TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdExport {
    /// TCP address; unused (empty, 0) when `socket` is set.
    pub host: String,
    pub port: u16,
    /// NBD export name.
    pub export: String,
    /// TLS-PSK identity (QEMU's `tls-creds-psk` `username`); empty with
    /// `socket`.
    pub tls_identity: String,
    /// The pre-shared key, hex. A secret: only for the NC named. Empty with
    /// `socket`.
    pub psk_hex: String,
    /// Set for an NC on the SC's host (the SC's `local_nodes`): the path of
    /// the volume's NBD Unix socket, in a directory only root can enter.
    /// Filesystem permissions are the access check there, and no other
    /// host can reach the socket at all, so there is no TLS to pay for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReport {
    pub node_id: String,
    pub state: ExportState,
    /// Set when `Ready`.
    pub nbd: Option<NbdExport>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    pub volume_id: String,
    pub state: VolumeState,
    pub size_gib: u64,
    pub exports: Vec<ExportReport>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub snapshot_id: String,
    pub volume_id: String,
    pub state: SnapshotState,
    /// 0-100: the copy counts for half, compression and upload for the rest.
    pub progress: u8,
    /// The volume's size, i.e. the raw image's length in bytes.
    pub volume_size: u64,
    pub compression: Compression,
    /// Once completed: hex SHA-256 (computed by the SC), the ETag Walrus
    /// answered (the hex MD5 of a single PUT) and length of the object in
    /// Walrus.
    pub sha256: Option<String>,
    pub md5: Option<String>,
    pub compressed_size: Option<u64>,
    /// Once completed: the raw image's digest, hex SHA-256 over the
    /// SHA-256s of its 16 MiB segments (see [`SEGMENT_SIZE`]); a segment
    /// digest list lets the SC skip hashing the holes of a sparse volume.
    pub raw_digest: Option<String>,
    pub error: Option<String>,
}

/// What the SC holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageReport {
    pub sc_id: String,
    /// The highest desired-state generation applied.
    pub generation: u64,
    pub volumes: Vec<VolumeReport>,
    pub snapshots: Vec<SnapshotReport>,
}

/// The NBD export name of a volume for one NC: unguessable names are not
/// the protection (TLS-PSK is), but one name per NC keeps exports of a
/// volume to two NCs (a live move) apart.
pub fn export_name(volume_id: &str, node_id: &str) -> String {
    format!("{volume_id}.{node_id}")
}

/// The TLS-PSK identity of an export.
pub fn tls_identity(volume_id: &str, node_id: &str) -> String {
    format!("{node_id}.{volume_id}")
}

/// The GnuTLS priority both ends of an export's TLS session use (QEMU's
/// `tls-creds-psk` `priority`). GnuTLS' default order lets the client pick
/// ChaCha20-Poly1305, which nettle runs in plain C: measured on loopback,
/// it made 1 MiB NBD reads 3-4x slower than plain TCP with both ends
/// CPU-bound in `_nettle_chacha_core`. AES-GCM runs on the CPU's AES
/// instructions; ChaCha20 stays as the fallback for hosts without them,
/// and the server's order decides, so an older client list cannot bring
/// it back first.
pub const NBD_TLS_PRIORITY: &str =
    "NORMAL:%SERVER_PRECEDENCE:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_state_defaults_keep_old_clients_working() {
        let d: DesiredStorage = serde_json::from_str(
            r#"{"generation": 3, "volumes": [{"volume_id": "vol-1", "size_gib": 1}]}"#,
        )
        .unwrap();
        assert_eq!(d.generation, 3);
        assert!(d.snapshots.is_empty());
        assert!(d.volumes[0].exports.is_empty() && d.volumes[0].source.is_none());
    }

    #[test]
    fn enums_are_kebab_case_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&VolumeState::Available).unwrap(),
            "\"available\""
        );
        assert_eq!(
            serde_json::to_string(&Compression::Zstd).unwrap(),
            "\"zstd\""
        );
        assert_eq!(Compression::default(), Compression::Gzip);
    }
}
