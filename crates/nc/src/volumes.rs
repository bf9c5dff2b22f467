//! EBS volumes on the NC: keeps each running VM's hot-plugged disks equal to
//! what the CC wants.
//!
//! # Data flow
//!
//! [`crate::node::Node::apply_volumes`] takes the whole
//! [`DesiredVolumes`] (per instance, the SC exports to attach), writes it
//! to `<data>/volumes.json` so a restarted NC knows it, and runs a pass in
//! the background. A pass, per running instance: asks the hypervisor which
//! volumes are plugged in ([`Hypervisor::attached_volumes`], from QEMU
//! itself, so it is right after an NC restart too), attaches the missing
//! ones (NBD over TLS-PSK, virtio-blk whose serial is the volume id) and
//! detaches the unwanted ones (the guest must release the device; until
//! it does the volume is `detaching`). Failures are reported as `error`
//! and retried by the next pass; the node's periodic tick runs one.
//!
//! A volume of an instance that is not running yet is `attaching` and is
//! plugged in by the first pass after the VM runs. When an instance ends,
//! its QEMU and with it the NBD connections go; the data is on the SC.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ironbark_node_api::{AttachState, DesiredVolumes, VolumeAttachReport, VolumeAttachment};

use crate::hypervisor::Hypervisor;

/// The desired volumes, kept across NC restarts.
pub const VOLUMES_FILE: &str = "volumes.json";

#[derive(Default)]
struct State {
    desired: DesiredVolumes,
    /// (instance, volume) → what was last seen or done.
    seen: BTreeMap<(String, String), (AttachState, Option<String>)>,
}

pub struct Volumes {
    file: PathBuf,
    state: Mutex<State>,
    /// Passes do not overlap.
    pass: tokio::sync::Mutex<()>,
}

impl Volumes {
    /// Loads the last desired volumes from `data_dir`.
    pub fn open(data_dir: &Path) -> Volumes {
        let file = data_dir.join(VOLUMES_FILE);
        let desired = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Volumes {
            file,
            state: Mutex::new(State {
                desired,
                seen: BTreeMap::new(),
            }),
            pass: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("volumes lock")
    }

    pub fn generation(&self) -> u64 {
        self.lock().desired.generation
    }

    /// Takes a new desired set; `false` if it is older than the one held.
    pub fn set_desired(&self, desired: DesiredVolumes) -> Result<bool, String> {
        let mut st = self.lock();
        if desired.generation < st.desired.generation {
            return Ok(false);
        }
        for (id, vols) in &desired.instances {
            for v in vols {
                validate(v).map_err(|e| format!("instance {id}: {e}"))?;
            }
        }
        let json = serde_json::to_vec(&desired).map_err(|e| e.to_string())?;
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, &self.file))
            .map_err(|e| format!("writing {}: {e}", self.file.display()))?;
        st.desired = desired;
        Ok(true)
    }

    /// One pass over `running` (instance id, directory) instances.
    pub async fn reconcile(&self, hv: &dyn Hypervisor, running: &[(String, PathBuf)]) {
        let _pass = self.pass.lock().await;
        let desired = self.lock().desired.clone();
        for (id, dir) in running {
            let want = desired.instances.get(id).cloned().unwrap_or_default();
            let have = match hv.attached_volumes(dir).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(instance = %id, error = %e, "listing volumes");
                    continue;
                }
            };
            for v in &want {
                if have.contains(&v.volume_id) {
                    self.note(id, &v.volume_id, AttachState::Attached, None);
                    continue;
                }
                self.note(id, &v.volume_id, AttachState::Attaching, None);
                match hv.attach_volume(dir, v).await {
                    Ok(()) => {
                        tracing::info!(instance = %id, volume = %v.volume_id, "volume attached");
                        self.note(id, &v.volume_id, AttachState::Attached, None);
                    }
                    Err(e) => {
                        tracing::warn!(instance = %id, volume = %v.volume_id, error = %e, "attaching a volume");
                        self.note(id, &v.volume_id, AttachState::Error, Some(e.to_string()));
                    }
                }
            }
            for vol in have
                .iter()
                .filter(|h| !want.iter().any(|w| &w.volume_id == *h))
            {
                self.note(id, vol, AttachState::Detaching, None);
                match hv.detach_volume(dir, vol).await {
                    Ok(()) => {
                        tracing::info!(instance = %id, volume = %vol, "volume detached");
                        self.lock().seen.remove(&(id.clone(), vol.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(instance = %id, volume = %vol, error = %e, "detaching a volume");
                        self.note(id, vol, AttachState::Detaching, Some(e.to_string()));
                    }
                }
            }
        }
        // Forget instances that no longer run.
        self.lock()
            .seen
            .retain(|(i, _), _| running.iter().any(|(r, _)| r == i));
    }

    fn note(&self, instance: &str, volume: &str, state: AttachState, error: Option<String>) {
        self.lock()
            .seen
            .insert((instance.to_string(), volume.to_string()), (state, error));
    }

    /// Every wanted or still plugged-in volume of the instances in `live`.
    pub fn report(&self, live: &[String]) -> Vec<VolumeAttachReport> {
        let st = self.lock();
        let mut out = Vec::new();
        for (id, vols) in &st.desired.instances {
            if !live.contains(id) {
                continue;
            }
            for v in vols {
                let (state, error) = st
                    .seen
                    .get(&(id.clone(), v.volume_id.clone()))
                    .cloned()
                    .unwrap_or((AttachState::Attaching, None));
                // Seen detaching but wanted again: the next pass attaches.
                let state = if state == AttachState::Detaching {
                    AttachState::Attaching
                } else {
                    state
                };
                out.push(VolumeAttachReport {
                    instance_id: id.clone(),
                    volume_id: v.volume_id.clone(),
                    device: v.device.clone(),
                    state,
                    error,
                });
            }
        }
        for ((id, vol), (state, error)) in &st.seen {
            let wanted = st
                .desired
                .instances
                .get(id)
                .is_some_and(|v| v.iter().any(|a| &a.volume_id == vol));
            if !wanted && live.contains(id) {
                out.push(VolumeAttachReport {
                    instance_id: id.clone(),
                    volume_id: vol.clone(),
                    device: String::new(),
                    state: *state,
                    error: error.clone(),
                });
            }
        }
        out
    }
}

/// What reaches QEMU options and file names.
fn validate(v: &VolumeAttachment) -> Result<(), String> {
    let id_ok = !v.volume_id.is_empty()
        && v.volume_id.len() <= 64
        && v.volume_id.starts_with(|c: char| c.is_ascii_alphabetic())
        && v.volume_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !id_ok {
        return Err(format!(
            "volume id {:?} must be a letter then letters, digits and '-'",
            v.volume_id
        ));
    }
    let clean = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    };
    if !clean(&v.nbd.export) {
        return Err(format!("NBD target of {} has bad characters", v.volume_id));
    }
    if let Some(sock) = &v.nbd.socket {
        // The SC's socket directory: an absolute path QEMU can take as an
        // option value, to a socket named like the SC names them.
        let ok = sock.starts_with('/')
            && sock.ends_with(".nbd")
            && !sock.contains("/../")
            && sock
                .split('/')
                .skip(1)
                .all(|part| clean(part) && part != "." && part != "..");
        if !ok {
            return Err(format!("NBD socket of {} is malformed", v.volume_id));
        }
        return Ok(());
    }
    if !clean(&v.nbd.host) || !clean(&v.nbd.tls_identity) {
        return Err(format!("NBD target of {} has bad characters", v.volume_id));
    }
    if v.nbd.tls_identity.contains(':') || !v.nbd.psk_hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "TLS-PSK credentials of {} are malformed",
            v.volume_id
        ));
    }
    Ok(())
}
