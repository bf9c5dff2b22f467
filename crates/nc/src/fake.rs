//! A fake hypervisor, for testing what sits above [`Hypervisor`] without
//! QEMU or root: the reconciler here, and the CC's tests of its NC traffic.
//!
//! It keeps its "VMs" and "taps" in memory and records every call. Clones
//! share state, which is how a test simulates an NC restart: the VMs of a
//! dropped [`crate::node::Node`] are still "running" for the next one built
//! over a clone. It can be told to fail a start (after creating the taps, as
//! a QEMU that refuses its arguments would) or to make a VM die.
//!
//! A started fake VM writes a `console.log` in its instance directory with a
//! readiness line like the test image's, so console plumbing can be tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use ironbark_node_api::NicSpec;

use crate::hypervisor::{HvError, Hypervisor, Launch, TapInfo, VmInfo};

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    Start { instance_id: String },
    Stop { dir: PathBuf },
    Reboot { dir: PathBuf },
    DeleteTap { tap: String },
    AttachTap { tap: String, bridge: String },
}

#[derive(Default)]
struct Inner {
    /// Running VMs by directory: instance id and taps.
    vms: BTreeMap<PathBuf, (String, Vec<String>)>,
    taps: BTreeSet<String>,
    /// The bridge each tap is attached to.
    masters: HashMap<String, String>,
    calls: Vec<FakeCall>,
    failures: HashMap<String, String>,
    start_delay: Duration,
    next_pid: u32,
    /// Volumes plugged into each VM, by directory.
    volumes: BTreeMap<PathBuf, BTreeSet<String>>,
    /// Volume ids whose attach or detach fails.
    volume_failures: BTreeSet<String>,
}

/// See the module docs.
#[derive(Clone, Default)]
pub struct FakeHypervisor {
    inner: Arc<Mutex<Inner>>,
}

impl FakeHypervisor {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake hypervisor lock")
    }

    /// Every later start of `instance_id` fails with `message`.
    pub fn fail_start(&self, instance_id: &str, message: &str) {
        self.lock()
            .failures
            .insert(instance_id.to_string(), message.to_string());
    }

    /// Makes starts take this long (to catch a terminate mid-start).
    pub fn set_start_delay(&self, delay: Duration) {
        self.lock().start_delay = delay;
    }

    /// The VM of `instance_id` dies (as if the guest powered off or QEMU
    /// crashed); its taps stay, as a real tap outlives its QEMU.
    pub fn crash(&self, instance_id: &str) {
        self.lock().vms.retain(|_, (id, _)| id != instance_id);
    }

    /// The bridge `bridge` was deleted: its taps hang loose (as the kernel
    /// leaves them when a CC clean restart removes a bridge).
    pub fn drop_bridge(&self, bridge: &str) {
        self.lock().masters.retain(|_, b| b != bridge);
    }

    /// Adds a tap no instance owns.
    pub fn add_tap(&self, name: &str) {
        self.lock().taps.insert(name.to_string());
    }

    /// Attaching or detaching `volume_id` fails (or works again).
    pub fn fail_volume(&self, volume_id: &str, fail: bool) {
        let mut i = self.lock();
        if fail {
            i.volume_failures.insert(volume_id.to_string());
        } else {
            i.volume_failures.remove(volume_id);
        }
    }

    /// The volumes plugged into the VM of `instance_id`.
    pub fn volumes_of(&self, instance_id: &str) -> Vec<String> {
        let i = self.lock();
        i.vms
            .iter()
            .filter(|(_, (id, _))| id == instance_id)
            .flat_map(|(dir, _)| i.volumes.get(dir).cloned().unwrap_or_default())
            .collect()
    }

    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// How many times `instance_id` was started.
    pub fn starts(&self, instance_id: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| matches!(c, FakeCall::Start { instance_id: i } if i == instance_id))
            .count()
    }

    /// Instance ids with a running VM, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().vms.values().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    }

    pub fn taps(&self) -> Vec<String> {
        self.lock().taps.iter().cloned().collect()
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    async fn start(&self, launch: &Launch) -> Result<VmInfo, HvError> {
        let delay = {
            let mut s = self.lock();
            s.calls.push(FakeCall::Start {
                instance_id: launch.instance_id.clone(),
            });
            s.start_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut s = self.lock();
        if s.vms.contains_key(&launch.dir) {
            return Ok(VmInfo { pid: None });
        }
        let taps: Vec<String> = launch.nics.iter().map(|n| n.tap.clone()).collect();
        s.taps.extend(taps.iter().cloned());
        for n in &launch.nics {
            s.masters.insert(n.tap.clone(), n.bridge.clone());
        }
        if let Some(message) = s.failures.get(&launch.instance_id) {
            return Err(HvError(message.clone()));
        }
        s.next_pid += 1;
        let pid = 10_000 + s.next_pid;
        s.vms
            .insert(launch.dir.clone(), (launch.instance_id.clone(), taps));
        let console = format!(
            "fake boot of {id}\nIRONBARK-READY instance-id={id} ip=10.0.0.{n}\n",
            id = launch.instance_id,
            n = s.next_pid % 250 + 2
        );
        std::fs::write(launch.dir.join("console.log"), console)
            .map_err(|e| HvError(format!("writing the fake console: {e}")))?;
        Ok(VmInfo { pid: Some(pid) })
    }

    async fn find(&self, dir: &Path) -> Option<VmInfo> {
        self.lock()
            .vms
            .contains_key(dir)
            .then_some(VmInfo { pid: None })
    }

    async fn stop(&self, dir: &Path) -> Result<(), HvError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Stop {
            dir: dir.to_path_buf(),
        });
        s.vms.remove(dir);
        s.volumes.remove(dir);
        Ok(())
    }

    async fn reboot(&self, dir: &Path) -> Result<(), HvError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Reboot {
            dir: dir.to_path_buf(),
        });
        let Some((id, _)) = s.vms.get(dir) else {
            return Err(HvError("no VM is running".into()));
        };
        let line = format!("fake reboot\nIRONBARK-READY instance-id={id} ip=10.0.0.2\n");
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("console.log"))
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| HvError(e.to_string()))
    }

    async fn delete_tap(&self, tap: &str) -> Result<(), HvError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::DeleteTap {
            tap: tap.to_string(),
        });
        s.taps.remove(tap);
        s.masters.remove(tap);
        Ok(())
    }

    async fn attach_tap(&self, nic: &NicSpec) -> Result<(), HvError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::AttachTap {
            tap: nic.tap.clone(),
            bridge: nic.bridge.clone(),
        });
        if !s.taps.contains(&nic.tap) {
            return Err(HvError(format!("no tap {}", nic.tap)));
        }
        s.masters.insert(nic.tap.clone(), nic.bridge.clone());
        Ok(())
    }

    async fn list_taps(&self) -> Result<Vec<TapInfo>, HvError> {
        let s = self.lock();
        Ok(s.taps
            .iter()
            .map(|t| TapInfo {
                name: t.clone(),
                in_use: s.vms.values().any(|(_, taps)| taps.contains(t)),
                master: s.masters.get(t).cloned(),
            })
            .collect())
    }

    async fn attach_volume(
        &self,
        dir: &Path,
        volume: &ironbark_node_api::VolumeAttachment,
    ) -> Result<(), HvError> {
        let mut s = self.lock();
        if !s.vms.contains_key(dir) {
            return Err(HvError("no VM is running".into()));
        }
        if s.volume_failures.contains(&volume.volume_id) {
            return Err(HvError(format!(
                "attaching {} failed (fake)",
                volume.volume_id
            )));
        }
        s.volumes
            .entry(dir.to_path_buf())
            .or_default()
            .insert(volume.volume_id.clone());
        Ok(())
    }

    async fn detach_volume(&self, dir: &Path, volume_id: &str) -> Result<(), HvError> {
        let mut s = self.lock();
        if s.volume_failures.contains(volume_id) {
            return Err(HvError(format!("detaching {volume_id} failed (fake)")));
        }
        if let Some(v) = s.volumes.get_mut(dir) {
            v.remove(volume_id);
        }
        Ok(())
    }

    async fn attached_volumes(&self, dir: &Path) -> Result<Vec<String>, HvError> {
        let s = self.lock();
        if !s.vms.contains_key(dir) {
            return Err(HvError("no VM is running".into()));
        }
        Ok(s.volumes
            .get(dir)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default())
    }
}
