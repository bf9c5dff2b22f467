//! The EBS actions: volumes, attachments, snapshots and their sharing.
//! Element names and order follow EC2's responses for API 2016-11-15.

use ironbark_clc::{AttachRequest, Caller, Cloud, SnapshotPermissionChange};
use ironbark_types::*;

use super::{Response, filters, tag_set, tag_specs};
use crate::Params;

/// Runs `action` if it is an EBS action; `Ok(false)` if it is not one.
pub(super) async fn handle(
    action: &str,
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<bool> {
    match action {
        "CreateVolume" => create_volume(cloud, caller, p, r).await?,
        "DescribeVolumes" => describe_volumes(cloud, caller, p, r).await?,
        "DeleteVolume" => {
            let id = p.required("VolumeId")?;
            cloud.delete_volume(caller, id).await?;
            r.w.elem("return", "true");
        }
        "AttachVolume" => {
            let req = AttachRequest {
                volume_id: p.required("VolumeId")?,
                instance_id: p.required("InstanceId")?,
                device: p.required("Device")?,
            };
            let v = cloud.attach_volume(caller, req).await?;
            attachment_fields(r, &v);
        }
        "DetachVolume" => {
            let id = p.required("VolumeId")?;
            let force = p.flag("Force")?.unwrap_or(false);
            let v = cloud
                .detach_volume(caller, id, p.get("InstanceId"), p.get("Device"), force)
                .await?;
            attachment_fields(r, &v);
        }
        "CreateSnapshot" => {
            let id = p.required("VolumeId")?;
            let tags = tag_specs(p, "snapshot")?;
            cloud.check_new_tags(&tags)?;
            let s = cloud
                .create_snapshot(caller, id, p.get("Description").unwrap_or(""))
                .await?;
            if !tags.is_empty() {
                cloud
                    .create_tags(caller, &[s.id.to_string()], &tags)
                    .await?;
            }
            snapshot_fields(r, &s);
        }
        "DescribeSnapshots" => describe_snapshots(cloud, caller, p, r).await?,
        "DeleteSnapshot" => {
            let id = p.required("SnapshotId")?;
            cloud.delete_snapshot(caller, id).await?;
            r.w.elem("return", "true");
        }
        "DescribeSnapshotAttribute" => {
            let id = p.required("SnapshotId")?;
            match p.get("Attribute") {
                Some("createVolumePermission") => {}
                other => {
                    return Err(Error::invalid_value(format!(
                        "Invalid value '{}' for Attribute: createVolumePermission is supported",
                        other.unwrap_or("")
                    )));
                }
            }
            let s = cloud.snapshot_permissions(caller, id).await?;
            r.w.elem("snapshotId", s.id.as_str());
            r.w.open("createVolumePermission");
            if s.public {
                r.w.open("item");
                r.w.elem("group", "all");
                r.w.close("item");
            }
            for a in &s.shared_with {
                r.w.open("item");
                r.w.elem("userId", a.as_str());
                r.w.close("item");
            }
            r.w.close("createVolumePermission");
        }
        "ModifySnapshotAttribute" => {
            let id = p.required("SnapshotId")?;
            let change = permission_change(p)?;
            cloud
                .modify_snapshot_permissions(caller, id, &change, false)
                .await?;
            r.w.elem("return", "true");
        }
        "ResetSnapshotAttribute" => {
            let id = p.required("SnapshotId")?;
            cloud
                .modify_snapshot_permissions(caller, id, &Default::default(), true)
                .await?;
            r.w.elem("return", "true");
        }
        _ => return Ok(false),
    }
    Ok(true)
}

async fn create_volume(cloud: &Cloud, caller: &Caller, p: &Params, r: &mut Response) -> Result<()> {
    let zone = p.required("AvailabilityZone")?;
    match p.get("VolumeType") {
        None | Some("standard") | Some("gp2") => {}
        Some(t) => {
            return Err(Error::invalid_value(format!(
                "Invalid value '{t}' for VolumeType: standard volumes only"
            )));
        }
    }
    let tags = tag_specs(p, "volume")?;
    cloud.check_new_tags(&tags)?;
    let v = cloud
        .create_volume(caller, p.get("Size"), p.get("SnapshotId"), zone)
        .await?;
    if !tags.is_empty() {
        cloud
            .create_tags(caller, &[v.id.to_string()], &tags)
            .await?;
    }
    r.w.elem("volumeId", v.id.as_str());
    r.w.elem("size", &v.size_gib.to_string());
    r.w.elem(
        "snapshotId",
        v.snapshot_id.as_ref().map(|s| s.as_str()).unwrap_or(""),
    );
    r.w.elem("availabilityZone", &v.zone);
    r.w.elem("status", v.api_state());
    r.w.elem("createTime", &iso8601_ms(v.created_ms));
    r.w.elem("volumeType", "standard");
    r.w.elem("encrypted", "false");
    Ok(())
}

fn attachment_fields(r: &mut Response, v: &Volume) {
    r.w.elem("volumeId", v.id.as_str());
    if let Some(a) = &v.attachment {
        r.w.elem("instanceId", a.instance_id.as_str());
        r.w.elem("device", &a.device);
        r.w.elem("status", a.state.as_str());
        r.w.elem("attachTime", &iso8601_ms(a.attach_ms));
    }
}

async fn describe_volumes(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let vols = cloud
        .describe_volumes(caller, &p.list("VolumeId"), &filters(p)?)
        .await?;
    r.w.open("volumeSet");
    for (v, tags) in vols {
        r.w.open("item");
        r.w.elem("volumeId", v.id.as_str());
        r.w.elem("size", &v.size_gib.to_string());
        r.w.elem(
            "snapshotId",
            v.snapshot_id.as_ref().map(|s| s.as_str()).unwrap_or(""),
        );
        r.w.elem("availabilityZone", &v.zone);
        r.w.elem("status", v.api_state());
        r.w.elem("createTime", &iso8601_ms(v.created_ms));
        r.w.open("attachmentSet");
        if let Some(a) = &v.attachment {
            r.w.open("item");
            r.w.elem("volumeId", v.id.as_str());
            r.w.elem("instanceId", a.instance_id.as_str());
            r.w.elem("device", &a.device);
            r.w.elem("status", a.state.as_str());
            r.w.elem("attachTime", &iso8601_ms(a.attach_ms));
            r.w.elem("deleteOnTermination", "false");
            r.w.close("item");
        }
        r.w.close("attachmentSet");
        tag_set(&mut r.w, &tags);
        r.w.elem("volumeType", "standard");
        r.w.elem("encrypted", "false");
        r.w.close("item");
    }
    r.w.close("volumeSet");
    Ok(())
}

fn snapshot_fields(r: &mut Response, s: &Snapshot) {
    r.w.elem("snapshotId", s.id.as_str());
    r.w.elem("volumeId", s.volume_id.as_str());
    r.w.elem("status", s.state.as_str());
    r.w.elem("startTime", &iso8601_ms(s.started_ms));
    r.w.elem("progress", &format!("{}%", s.progress));
    r.w.elem("ownerId", s.account_id.as_str());
    r.w.elem("volumeSize", &s.volume_size_gib.to_string());
    r.w.elem("description", &s.description);
    r.w.elem("encrypted", "false");
}

async fn describe_snapshots(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let snaps = cloud
        .describe_snapshots(
            caller,
            &p.list("SnapshotId"),
            &p.list("Owner"),
            &p.list("RestorableBy"),
            &filters(p)?,
        )
        .await?;
    r.w.open("snapshotSet");
    for (s, tags) in snaps {
        r.w.open("item");
        snapshot_fields(r, &s);
        if let Some(e) = &s.error {
            r.w.elem("stateMessage", e);
        }
        tag_set(&mut r.w, &tags);
        r.w.close("item");
    }
    r.w.close("snapshotSet");
    Ok(())
}

/// `CreateVolumePermission.Add|Remove.N.UserId|Group`, or the legacy
/// `Attribute=createVolumePermission&OperationType=add&UserId.N`.
fn permission_change(p: &Params) -> Result<SnapshotPermissionChange> {
    let mut change = SnapshotPermissionChange::default();
    let mut any = false;
    let mut put = |add: bool, user: Option<String>, group: Option<&str>| -> Result<()> {
        any = true;
        if let Some(u) = user {
            if add {
                change.add_users.push(u);
            } else {
                change.remove_users.push(u);
            }
        }
        match group {
            None => {}
            Some("all") if add => change.add_all = true,
            Some("all") => change.remove_all = true,
            Some(g) => {
                return Err(Error::invalid_value(format!(
                    "Invalid value '{g}' for Group: only 'all'"
                )));
            }
        }
        Ok(())
    };
    for (which, add) in [
        ("CreateVolumePermission.Add", true),
        ("CreateVolumePermission.Remove", false),
    ] {
        for m in p.members(which) {
            put(add, m.get("UserId").map(str::to_string), m.get("Group"))?;
        }
    }
    if let Some(attr) = p.get("Attribute") {
        if attr != "createVolumePermission" {
            return Err(Error::invalid_value(format!(
                "Invalid value '{attr}' for Attribute"
            )));
        }
        let add = match p.get("OperationType") {
            Some("add") => true,
            Some("remove") => false,
            _ => return Err(Error::missing("OperationType")),
        };
        for u in p.list("UserId") {
            put(add, Some(u), None)?;
        }
        for g in p.list("UserGroup") {
            put(add, None, Some(&g))?;
        }
    }
    if !any {
        return Err(Error::missing("CreateVolumePermission"));
    }
    Ok(change)
}
