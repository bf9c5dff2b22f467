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
//! - **CreateSnapshot**: create a multipart upload in Walrus for the
//!   snapshot's object (CRC-32, full-object checksum type) and add a
//!   [`SnapshotSpec`] with a [`WalrusTarget`]: the part size
//!   ([`plan_parts`]), presigned UploadPart URLs for every part the object
//!   may need and a presigned CompleteMultipartUpload URL. The SC uploads
//!   each part, with its `x-amz-checksum-crc32`, as soon as compression has
//!   produced it, then completes the upload with the whole object's CRC-32.
//!   It is `completed` once [`SnapshotReport::state`] is
//!   [`SnapshotState::Completed`]: the point-in-time raw copy is on the SC
//!   and the compressed object is whole in Walrus, every part's CRC-32 and
//!   the object's checked by Walrus, its SHA-256 reported. Keep the spec
//!   listed for as long as the snapshot exists (the SC keeps the raw copy
//!   while it is listed); presigned URLs may be refreshed in later
//!   generations (the SC uses those of the state it started with, valid
//!   for hours), and once completed the target may be left empty. A failed
//!   or deleted snapshot's upload is the CLC's to abort.
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
    /// Its name, as records and settings spell it (`gzip`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The method [`Compression::name`] names.
    pub fn from_name(name: &str) -> Option<Compression> {
        [Compression::Gzip, Compression::Zstd]
            .into_iter()
            .find(|c| c.name() == name)
    }

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

/// One attachment of the volume: the NC allowed to attach it, for one
/// instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    /// The NC's node id (as in its `NodeReport`).
    pub node_id: String,
    /// The instance the volume is attached to on that NC. The export's
    /// name, TLS-PSK identity and key are derived from the volume, the NC
    /// and the instance, so an attachment to another instance on the same
    /// NC is a new export: the VM of a force-detached or terminated
    /// attachment, whose QEMU may still be reconnecting, cannot get back
    /// in. Empty from a CLC that predates it (one export per NC).
    #[serde(default)]
    pub instance_id: String,
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

/// A Walrus (S3) multipart upload the SC fills: the CLC created it (the
/// SC holds no Walrus credentials) and presigned every request the SC
/// makes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalrusTarget {
    /// Every part but the last has exactly this many bytes
    /// ([`PartPlan::part_size`]).
    #[serde(default)]
    pub part_size: u64,
    /// Presigned UploadPart URLs (`PUT …/bucket/key?partNumber=N&uploadId=…
    /// &X-Amz-…`), part 1 first; as many as the largest object the volume
    /// can compress to needs ([`PartPlan::parts`]). The SC sends each part
    /// with `x-amz-checksum-crc32`, which Walrus checks, and requires it
    /// echoed.
    #[serde(default)]
    pub part_urls: Vec<String>,
    /// Presigned CompleteMultipartUpload URL (`POST …?uploadId=…&X-Amz-…`).
    /// The SC sends the parts' ETags and CRC-32s and the whole object's
    /// CRC-32, which Walrus combines from the parts' and compares.
    #[serde(default)]
    pub complete_url: String,
}

/// How a snapshot's object is cut into multipart parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartPlan {
    pub part_size: u64,
    pub parts: u32,
}

/// S3's limits on a multipart upload.
pub const MAX_PARTS: u64 = 10_000;
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The part size when the count allows it: a segment, so a part leaves
/// for Walrus about as often as compression finishes a segment, and the
/// last part, the only one not overlapped with compression, is short.
pub const PREFERRED_PART_SIZE: u64 = SEGMENT_SIZE;

/// The largest object a volume of `volume_size` bytes compresses to.
/// Both codecs give up on data that does not compress and store it, which
/// costs a few bytes per 64 KiB (deflate's stored blocks) or 128 KiB (zstd
/// raw blocks); level-1 deflate and zstd's worst cases are under 1/256 of
/// the input; a hole segment is at most one reused ~16 KiB piece. Twice
/// those margins, and a MiB for headers.
pub fn max_compressed_size(volume_size: u64) -> u64 {
    let segments = volume_size.div_ceil(SEGMENT_SIZE);
    volume_size + volume_size / 128 + segments * (64 << 10) + (1 << 20)
}

/// The parts for a volume of `volume_size` bytes: [`PREFERRED_PART_SIZE`],
/// or larger (whole MiB) when that would take more than [`MAX_PARTS`].
pub fn plan_parts(volume_size: u64) -> PartPlan {
    let bound = max_compressed_size(volume_size);
    let needed = bound.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    let part_size = needed.max(PREFERRED_PART_SIZE).max(MIN_PART_SIZE);
    PartPlan {
        part_size,
        parts: bound.div_ceil(part_size) as u32,
    }
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
    /// As in the [`ExportSpec`] it answers.
    #[serde(default)]
    pub instance_id: String,
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
    /// The snapshot's moment is fixed: its copy has begun (or is done), so
    /// it holds the volume as it was then, whatever is written next. The
    /// CLC answers CreateSnapshot once this is true, as EC2 lets writes
    /// resume once a snapshot is `pending`.
    #[serde(default)]
    pub point_in_time: bool,
    /// The volume's size, i.e. the raw image's length in bytes.
    pub volume_size: u64,
    pub compression: Compression,
    /// Once completed: hex SHA-256 (computed by the SC), the ETag Walrus
    /// answered (multipart: `hex-N`, the MD5 of the parts' MD5s) and length
    /// of the object in Walrus.
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

/// The NBD export name of a volume for one attachment: unguessable names
/// are not the protection (TLS-PSK, or the Unix socket's permissions,
/// is), but one name per NC and instance keeps exports of a volume apart,
/// and an export taken away stays away from the QEMU that had it (see
/// [`ExportSpec::instance_id`]).
pub fn export_name(volume_id: &str, node_id: &str, instance_id: &str) -> String {
    if instance_id.is_empty() {
        format!("{volume_id}.{node_id}")
    } else {
        format!("{volume_id}.{node_id}.{instance_id}")
    }
}

/// The TLS-PSK identity of an export.
pub fn tls_identity(volume_id: &str, node_id: &str, instance_id: &str) -> String {
    if instance_id.is_empty() {
        format!("{node_id}.{volume_id}")
    } else {
        format!("{node_id}.{instance_id}.{volume_id}")
    }
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
    fn parts_cover_the_worst_case_within_s3_limits() {
        const GIB: u64 = 1 << 30;
        for gib in [1u64, 10, 100, 1024, 4096, 16 * 1024] {
            let v = gib * GIB;
            let p = plan_parts(v);
            assert!(u64::from(p.parts) <= MAX_PARTS, "{gib} GiB: {p:?}");
            assert!(p.part_size >= MIN_PART_SIZE && p.part_size.is_multiple_of(1 << 20));
            // Room for the worst case, and not a part more.
            let bound = max_compressed_size(v);
            assert!(u64::from(p.parts) * p.part_size >= bound, "{gib} GiB");
            assert!(u64::from(p.parts - 1) * p.part_size < bound, "{gib} GiB");
            // Incompressible data stored whole, with its overheads, fits.
            assert!(bound > v + v / 1000 + v.div_ceil(SEGMENT_SIZE) * 20 * 1024);
        }
        // Small volumes keep segment-sized parts; a 10 GiB one needs 648.
        assert_eq!(plan_parts(10 * GIB).part_size, SEGMENT_SIZE);
        assert_eq!(plan_parts(10 * GIB).parts, 648);
        // Beyond ~1.5 TiB the count limit makes parts larger.
        let big = plan_parts(16 * 1024 * GIB);
        assert!(big.part_size > SEGMENT_SIZE && u64::from(big.parts) <= MAX_PARTS);
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
