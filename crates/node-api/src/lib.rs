//! The node controller's control API, as data.
//!
//! The CC tells an NC the whole set of instances it should run
//! ([`DesiredInstances`], `PUT /v1/instances`); the NC reconciles its QEMU
//! processes to it (starting what is missing, terminating what is no longer
//! wanted) and reports what it actually runs ([`NodeReport`],
//! `GET /v1/instances`, also pushed to the CC as events happen). Explicit
//! terminate (`POST /v1/instances/{id}/terminate`) exists for the
//! original's broadcast path: an NC acknowledges a terminate for an
//! instance it does not run, so the CC can send it to every NC.
//!
//! EBS volumes come separately ([`DesiredVolumes`], `PUT /v1/volumes`): for
//! each instance, the volumes that should be hot-plugged into its VM, as
//! NBD exports of the SC; the NC attaches and detaches to match and
//! reports each attachment ([`VolumesReport`], `GET /v1/volumes`). They are
//! a separate set, not a field of [`InstanceSpec`], so that adding them
//! changed no existing message and attaching never restarts anything.
//!
//! Every request carries `Authorization: Bearer <cluster token>`; the token
//! is a per-cloud secret shared by the CC and its NCs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default TCP port of the NC's control API.
pub const DEFAULT_PORT: u16 = 8775;

/// Something to boot, fetched by the NC into its image cache once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// `eki-…`, `eri-…` or `emi-…`: the cache key, with `sha256`.
    pub id: String,
    /// Where to GET it (a presigned Walrus URL made by the CLC).
    pub url: String,
    /// Hex SHA-256 of the whole object; the NC refuses anything else.
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootImage {
    pub kernel: ImageRef,
    pub ramdisk: Option<ImageRef>,
    /// A root disk image (raw or qcow2) for machine images; kernel+ramdisk
    /// images boot without one.
    pub root: Option<ImageRef>,
    /// Appended to the NC's own kernel command line (console, panic).
    pub cmdline: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResources {
    pub cpus: u32,
    pub memory_mib: u32,
    /// Size of the ephemeral disk (and of the root disk's overlay).
    pub disk_gib: u32,
}

/// One network interface: a tap device the NC creates and attaches to an
/// existing bridge (the CC made the bridge for the instance's group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    pub mac: String,
    pub bridge: String,
    /// At most 15 bytes (IFNAMSIZ); derived from the instance id.
    pub tap: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub instance_id: String,
    /// The owner's account id: instance files live under
    /// `<data>/instances/<account>/<instance-id>/`.
    pub account_id: String,
    pub vm: VmResources,
    pub image: BootImage,
    pub nics: Vec<NicSpec>,
}

/// The whole set of instances an NC should run; anything else it runs is
/// terminated. `generation` only grows, so a delayed older set is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstances {
    pub generation: u64,
    pub instances: Vec<InstanceSpec>,
    /// The segments this NC must join itself, when it is not on the CC's
    /// host. `None`: the CC's host network is this host's (one-host
    /// clouds), and the NC leaves bridges alone.
    #[serde(default)]
    pub network: Option<NodeNetwork>,
}

/// The security-group segments an NC on its own host joins: per segment a
/// bridge (the name the instances' NICs carry) and a VXLAN tunnel with the
/// segment's tag as VNI, flooding to every other host on the segment. The
/// NC removes bridges with `bridge_prefix` and tunnels not listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    pub bridge_prefix: String,
    pub segments: Vec<SegmentLink>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentLink {
    pub bridge: String,
    /// The VXLAN network identifier: the segment's tag.
    pub vni: u32,
    /// Underlay (VNET_PRIVINTERFACE) addresses of the other hosts on the
    /// segment: the CC's and those of the other NCs running its instances.
    pub peers: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Being prepared: image fetch, disks, tap, QEMU starting.
    Pending,
    Running,
    /// Stop under way (QEMU asked to quit, or being killed).
    ShuttingDown,
    /// The VM is gone and its directory deleted.
    Terminated,
    /// Could not be started; `error` says why. Its resources are released.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub instance_id: String,
    pub state: VmState,
    pub error: Option<String>,
    /// When QEMU started (Unix ms), for launch times.
    pub started_ms: Option<i64>,
}

/// What an NC is and runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node_id: String,
    /// Total resources the NC offers to instances.
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// The highest desired-state generation applied.
    pub generation: u64,
    pub instances: Vec<InstanceReport>,
}

/// The answer to a terminate: whether this NC ran the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateAck {
    pub was_here: bool,
}

/// An SC's NBD export, as the SC reported it for this NC (ironbark-sc-api's
/// `NbdExport`): QEMU's NBD client connects over TCP with TLS-PSK, or over
/// `socket` when the SC runs on this NC's host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdTarget {
    pub host: String,
    pub port: u16,
    pub export: String,
    pub tls_identity: String,
    /// The pre-shared key, hex. A secret.
    pub psk_hex: String,
    /// The export's Unix socket on this host; set, QEMU connects there
    /// without TLS and the TCP and TLS fields are empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// Volumes one instance can have attached at once: the NC's hot-plug
/// slots, and the CLC's AttachVolume limit.
pub const MAX_VOLUMES_PER_INSTANCE: usize = 8;

/// A volume to attach to an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    /// `vol-…`: also the virtio serial the guest sees (the first 20
    /// characters: virtio-blk's limit), as `/sys/block/vdX/serial` and
    /// `/dev/disk/by-id/virtio-<serial>`.
    pub volume_id: String,
    /// The device name the user asked for (`/dev/sdb`, `/dev/xvdf` …).
    /// Reported back; a virtio guest names its disks itself, in order.
    pub device: String,
    pub nbd: NbdTarget,
}

/// For every instance of this NC that should have volumes, the volumes.
/// An instance not named (or with an empty list) should have none; a
/// running instance's volume not listed is detached. `generation` only
/// grows, like [`DesiredInstances`]'s (a separate counter).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredVolumes {
    pub generation: u64,
    #[serde(default)]
    pub instances: BTreeMap<String, Vec<VolumeAttachment>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachState {
    /// Wanted, not (yet) plugged in: the instance is not running yet, or
    /// the hot-plug is under way.
    Attaching,
    /// Plugged into the VM.
    Attached,
    /// Unplug asked, the guest has not released the device yet.
    Detaching,
    /// The last attach or detach failed (`error`); it is retried.
    Error,
}

/// One volume of one instance; a volume neither wanted nor plugged in is
/// not listed (detached).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachReport {
    pub instance_id: String,
    pub volume_id: String,
    pub device: String,
    pub state: AttachState,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesReport {
    pub node_id: String,
    pub generation: u64,
    pub attachments: Vec<VolumeAttachReport>,
}

/// Tap device name for an instance: `tap-` and the id's hex digits, cut to
/// the 15 bytes Linux allows.
pub fn tap_name(instance_id: &str) -> String {
    let hex: String = instance_id
        .trim_start_matches("i-")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut t = format!("tap{hex}");
    t.truncate(15);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz() {
        assert_eq!(tap_name("i-0123456789abcdef0"), "tap0123456789ab");
        assert_eq!(tap_name("i-12345678"), "tap12345678");
        assert!(tap_name("i-0123456789abcdef0").len() <= 15);
    }
}
