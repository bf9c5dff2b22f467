//! The boundary between the reconciler and whatever runs VMs.
//!
//! The [`crate::node::Node`] decides *what* runs; a [`Hypervisor`] knows *how*:
//! it turns a [`Launch`] (an instance directory plus resolved image paths)
//! into disks, tap devices and a running VM, and stops, resets and finds VMs
//! again by their directory. Everything is keyed by the instance directory
//! because that is what survives an NC restart: the real implementation
//! keeps its pidfile and QMP socket there, so a new NC process finds the
//! VMs the old one started.
//!
//! Three implementations: [`crate::qemu::QemuHypervisor`] (real QEMU, the
//! default), [`crate::netns_hv::NetnsHypervisor`] (an instance as a network
//! namespace, for data-path tests and benches) and
//! [`crate::fake::FakeHypervisor`] (in memory, for tests of the reconciler).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ironbark_node_api::{NicSpec, VolumeAttachment};

/// Everything needed to start one VM; paths are absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub instance_id: String,
    /// The instance directory; it exists (with `spec.json`) before `start`.
    pub dir: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Ephemeral disk size; 0 means none. Also the minimum root size.
    pub disk_gib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// A cached root disk image (raw or qcow2) to overlay copy-on-write.
    pub root: Option<PathBuf>,
    /// Appended to the hypervisor's own kernel arguments.
    pub cmdline: String,
    pub nics: Vec<NicSpec>,
}

/// A VM found running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    /// Its host process, when there is one.
    pub pid: Option<u32>,
}

/// A tap device on the host (or in the NC's network namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapInfo {
    pub name: String,
    /// A process holds it open (its carrier is up): some VM uses it.
    pub in_use: bool,
    /// The bridge it is attached to, if any.
    pub master: Option<String>,
}

/// A hypervisor operation that failed; the message says what and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HvError(pub String);

#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// Prepares disks and taps and starts the VM; returns once it runs and
    /// answers its control channel. Starting a VM whose directory already
    /// has one running returns that one. On error, what was made so far may
    /// remain: the caller cleans up with [`Hypervisor::stop`] and
    /// [`Hypervisor::delete_tap`], which are idempotent.
    async fn start(&self, launch: &Launch) -> Result<VmInfo, HvError>;

    /// The VM running from `dir`, if there is one (adoption after an NC
    /// restart, liveness checks).
    async fn find(&self, dir: &Path) -> Option<VmInfo>;

    /// Stops the VM running from `dir`: graceful first, forced after a
    /// timeout. `Ok` once no VM runs from `dir` (also when none did).
    async fn stop(&self, dir: &Path) -> Result<(), HvError>;

    /// Hard-resets the VM running from `dir`.
    async fn reboot(&self, dir: &Path) -> Result<(), HvError>;

    /// Deletes a tap device; `Ok` if it does not exist.
    async fn delete_tap(&self, tap: &str) -> Result<(), HvError>;

    /// The tap devices present, for the orphan sweep and the bridge check.
    async fn list_taps(&self) -> Result<Vec<TapInfo>, HvError>;

    /// Attaches an existing tap to its bridge and sets it up again (after
    /// the bridge was removed and rebuilt, as a CC clean restart does).
    async fn attach_tap(&self, nic: &NicSpec) -> Result<(), HvError>;

    /// Hot-plugs a volume into the VM running from `dir`; `Ok` if it is
    /// plugged in already. See [`crate::volumes`].
    async fn attach_volume(&self, dir: &Path, volume: &VolumeAttachment) -> Result<(), HvError> {
        let _ = (dir, volume);
        Err(HvError("this hypervisor cannot attach volumes".into()))
    }

    /// Unplugs a volume (the guest must release it) and closes its
    /// connection; `Ok` if it is not plugged in.
    async fn detach_volume(&self, dir: &Path, volume_id: &str) -> Result<(), HvError> {
        let _ = (dir, volume_id);
        Err(HvError("this hypervisor cannot detach volumes".into()))
    }

    /// The volume ids plugged into the VM running from `dir`.
    async fn attached_volumes(&self, dir: &Path) -> Result<Vec<String>, HvError> {
        let _ = dir;
        Ok(Vec::new())
    }
}
