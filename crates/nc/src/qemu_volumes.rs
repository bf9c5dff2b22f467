//! Hot-plugging SC volumes into a running QEMU, over its QMP socket.
//!
//! Attach: the export's TLS-PSK key goes into
//! `<instance dir>/volumes/<vol>/keys.psk` (0600), then `object-add
//! tls-creds-psk` (client end, the export's identity), `blockdev-add` of a
//! raw node over QEMU's NBD client (with `reconnect-delay`, so a restarted
//! storage daemon does not fail the guest's I/O at once), and `device_add
//! virtio-blk-pci` with the volume id as serial on the `pc` machine's root
//! bus, which the guest learns of through ACPI hot-plug (see
//! [`MAX_VOLUMES`]). VMs started by older NCs on `q35` have empty PCIe root
//! ports instead (`vport<slot>`): a volume goes on its slot's port there.
//! An export of the SC on this host comes as a Unix socket instead of TCP:
//! no key, no credentials object, the NBD client dials the socket (root's,
//! like this QEMU).
//!
//! Detach: `device_del`, then wait for QEMU's `DEVICE_DELETED`, which comes
//! once the guest has released the device; only then `blockdev-del` and
//! `object-del` (QEMU refuses to delete a node a device still uses).
//!
//! What is plugged in is read back from QEMU (`qom-list
//! /machine/peripheral`): device ids are `vdisk<slot>-<volume id>`, so the
//! list says both which volumes are attached and which slots are taken,
//! with nothing to keep on the NC's side.

use std::path::Path;
use std::time::Duration;

use ironbark_node_api::VolumeAttachment;
use ironbark_qmp::Qmp;
use serde_json::json;

use crate::hypervisor::HvError;

/// Volume slots per VM (device ids `vdisk0-…` to `vdisk7-…`).
const MAX_VOLUMES: usize = ironbark_node_api::MAX_VOLUMES_PER_INSTANCE;
/// Ids of the PCIe root ports q35 VMs of older NCs were given per slot.
const PORT_PREFIX: &str = "vport";
const DEVICE_PREFIX: &str = "vdisk";
/// How long a guest gets to release a device on detach.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);
/// virtio-blk serials are at most 20 bytes.
const SERIAL_MAX: usize = 20;

/// The disk serial a guest sees for a volume: its id without the dash, as
/// EC2 names EBS disks (`vol-0123…` is `vol0123…`), which makes ironbark's
/// 17-digit ids fit the 20 bytes whole, so guest tools that map disks to
/// volumes by serial work unchanged. Longer ids are cut.
pub fn disk_serial(volume_id: &str) -> String {
    volume_id
        .replacen('-', "", 1)
        .chars()
        .take(SERIAL_MAX)
        .collect()
}

fn hv(what: &str) -> impl Fn(ironbark_qmp::QmpError) -> HvError + '_ {
    move |e| HvError(format!("{what}: {e}"))
}

fn node(vol: &str) -> String {
    format!("blk-{vol}")
}

fn creds(vol: &str) -> String {
    format!("tls-{vol}")
}

/// Ids of the VM's user-created devices.
async fn peripherals(q: &mut Qmp) -> Result<Vec<String>, HvError> {
    let list = q
        .execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
        .await
        .map_err(hv("qom-list"))?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some(p["name"].as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default())
}

/// (slot, volume id) of every volume device.
async fn devices(q: &mut Qmp) -> Result<Vec<(usize, String)>, HvError> {
    Ok(peripherals(q)
        .await?
        .iter()
        .filter_map(|id| parse_device_id(id))
        .collect())
}

fn parse_device_id(id: &str) -> Option<(usize, String)> {
    let rest = id.strip_prefix(DEVICE_PREFIX)?;
    let (port, vol) = rest.split_once('-')?;
    Some((port.parse().ok()?, vol.to_string()))
}

/// Where a volume goes, given the VM's device ids: its free slot and, on a
/// q35 VM of an older NC, the root port to plug it into; `None` if it is
/// plugged in already.
fn placement(ids: &[String], vol: &str) -> Result<Option<(usize, Option<String>)>, HvError> {
    let present: Vec<(usize, String)> = ids.iter().filter_map(|id| parse_device_id(id)).collect();
    if present.iter().any(|(_, v)| v == vol) {
        return Ok(None);
    }
    let slot = (0..MAX_VOLUMES)
        .find(|s| !present.iter().any(|(used, _)| used == s))
        .ok_or_else(|| HvError(format!("all {MAX_VOLUMES} volume slots are in use")))?;
    let port = format!("{PORT_PREFIX}{slot}");
    Ok(Some((slot, ids.contains(&port).then_some(port))))
}

/// Volume ids plugged into the VM.
pub async fn attached(qmp: &Path) -> Result<Vec<String>, HvError> {
    let mut q = Qmp::connect(qmp).await.map_err(hv("QMP"))?;
    Ok(devices(&mut q).await?.into_iter().map(|(_, v)| v).collect())
}

/// Removes the block node and credentials of a volume no device uses
/// (leftovers of a failed attach, or after the device went).
async fn drop_backend(q: &mut Qmp, dir: &Path, vol: &str) {
    let _ = q
        .execute("blockdev-del", Some(json!({"node-name": node(vol)})))
        .await;
    let _ = q
        .execute("object-del", Some(json!({"id": creds(vol)})))
        .await;
    let _ = tokio::fs::remove_dir_all(dir.join("volumes").join(vol)).await;
}

pub async fn attach(qmp: &Path, dir: &Path, v: &VolumeAttachment) -> Result<(), HvError> {
    let mut q = Qmp::connect(qmp).await.map_err(hv("QMP"))?;
    let Some((slot, legacy_port)) = placement(&peripherals(&mut q).await?, &v.volume_id)? else {
        return Ok(());
    };
    let vol = &v.volume_id;
    drop_backend(&mut q, dir, vol).await;

    let result = async {
        let nbd = match &v.nbd.socket {
            // The SC on this host: its socket, no TLS (see NbdTarget).
            Some(path) => json!({
                "driver": "nbd",
                "server": {"type": "unix", "path": path},
                "export": v.nbd.export,
                "reconnect-delay": 10,
            }),
            None => {
                let keydir = dir.join("volumes").join(vol);
                write_key(&keydir, &v.nbd.tls_identity, &v.nbd.psk_hex).await?;
                let keydir_s = keydir
                    .to_str()
                    .ok_or_else(|| HvError("instance directory is not UTF-8".into()))?;
                q.execute(
                    "object-add",
                    Some(json!({
                        "qom-type": "tls-creds-psk",
                        "id": creds(vol),
                        "endpoint": "client",
                        "dir": keydir_s,
                        "username": v.nbd.tls_identity,
                        "priority": ironbark_sc_api::NBD_TLS_PRIORITY,
                    })),
                )
                .await
                .map_err(hv("object-add tls-creds-psk"))?;
                json!({
                    "driver": "nbd",
                    "server": {"type": "inet", "host": v.nbd.host, "port": v.nbd.port.to_string()},
                    "export": v.nbd.export,
                    "tls-creds": creds(vol),
                    "reconnect-delay": 10,
                })
            }
        };
        q.execute(
            "blockdev-add",
            Some(json!({"driver": "raw", "node-name": node(vol), "file": nbd})),
        )
        .await
        .map_err(hv("blockdev-add nbd"))?;
        let mut dev = json!({
            "driver": "virtio-blk-pci",
            "id": format!("{DEVICE_PREFIX}{slot}-{vol}"),
            "drive": node(vol),
            "serial": disk_serial(vol),
        });
        if let Some(port) = &legacy_port {
            dev["bus"] = json!(port);
        }
        q.execute("device_add", Some(dev))
            .await
            .map_err(hv("device_add virtio-blk-pci"))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        drop_backend(&mut q, dir, vol).await;
    }
    result
}

pub async fn detach(qmp: &Path, dir: &Path, vol: &str) -> Result<(), HvError> {
    let mut q = Qmp::connect(qmp).await.map_err(hv("QMP"))?;
    let Some((slot, _)) = devices(&mut q).await?.into_iter().find(|(_, v)| v == vol) else {
        drop_backend(&mut q, dir, vol).await;
        return Ok(());
    };
    let id = format!("{DEVICE_PREFIX}{slot}-{vol}");
    // A repeated device_del while the guest is still releasing the device
    // is refused; the event is what counts.
    if let Err(e) = q.execute("device_del", Some(json!({"id": id}))).await {
        tracing::debug!(device = %id, error = %e, "device_del");
    }
    q.wait_event(
        "DEVICE_DELETED",
        |d| d["device"] == id.as_str(),
        UNPLUG_TIMEOUT,
    )
    .await
    .map_err(|_| {
        HvError(format!(
            "the guest has not released {vol} within {UNPLUG_TIMEOUT:?}"
        ))
    })?;
    drop_backend(&mut q, dir, vol).await;
    Ok(())
}

async fn write_key(dir: &Path, identity: &str, key: &str) -> Result<(), HvError> {
    use tokio::io::AsyncWriteExt;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| HvError(format!("{}: {e}", dir.display())))?;
    let path = dir.join("keys.psk");
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .await
        .map_err(|e| HvError(format!("{}: {e}", path.display())))?;
    f.write_all(format!("{identity}:{key}\n").as_bytes())
        .await
        .map_err(|e| HvError(format!("{}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_ec2_style_volume_ids() {
        assert_eq!(disk_serial("vol-0123456789abcdef0"), "vol0123456789abcdef0");
        assert_eq!(disk_serial("vol-e2e00001"), "vole2e00001");
        assert_eq!(disk_serial("vol-0123456789abcdef0123").len(), SERIAL_MAX);
    }

    #[test]
    fn volumes_take_the_first_free_slot_and_old_vms_ports() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // pc: the root bus, no port.
        assert_eq!(
            placement(&ids(&["vdisk0-vol-a", "vdisk2-vol-b"]), "vol-c").unwrap(),
            Some((1, None))
        );
        assert_eq!(placement(&ids(&["vdisk0-vol-a"]), "vol-a").unwrap(), None);
        // q35 of an older NC: the slot's root port.
        assert_eq!(
            placement(&ids(&["vport0", "vport1", "vdisk0-vol-a"]), "vol-c").unwrap(),
            Some((1, Some("vport1".to_string())))
        );
        let full: Vec<String> = (0..MAX_VOLUMES)
            .map(|i| format!("vdisk{i}-vol-{i}"))
            .collect();
        assert!(placement(&full, "vol-x").is_err());
    }

    #[test]
    fn device_ids_carry_port_and_volume() {
        assert_eq!(
            parse_device_id("vdisk3-vol-0123abcd"),
            Some((3, "vol-0123abcd".to_string()))
        );
        assert_eq!(parse_device_id("vport3"), None);
        assert_eq!(parse_device_id("vdiskx-vol-1"), None);
    }
}
