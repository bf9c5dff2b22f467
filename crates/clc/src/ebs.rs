//! EBS: volumes, attachments and snapshots, as the CLC decides them.
//!
//! The CLC owns every record; the zone's SC only makes real what the
//! desired state says ([`DesiredStorage`]: volumes, the attachment (NC and
//! instance) each is exported for, snapshots with the Walrus object to
//! upload) and reports what is
//! ([`StorageReport`]). The NC side of an attachment travels in the zone's
//! desired state (the instance's volumes, with the export's address and
//! key) and comes back in the NC's report. [`Cloud::ebs_tick`] is the one
//! place records advance from those reports:
//!
//! ```text
//! volume:     creating --SC made it--> available --DeleteVolume--> deleting --SC dropped it--> (erased)
//!                 \--SC failed--> error
//! attachment: attaching --NC plugged it--> attached --DetachVolume--> detaching --NC unplugged--> (none)
//!             (Force: none at the next report, the export withdrawn at once;
//!             NC or SC failing it for 60 s while attaching: none, volume available)
//!             (the instance terminated: none at once; its VM is gone)
//! snapshot:   pending --SC uploaded, checksummed--> completed      (or error)
//!             (CreateSnapshot answers once the SC has begun the copy, so
//!             the snapshot is the volume as of the call; if the SC cannot
//!             begin it in time, the call fails and nothing is left)
//! ```
//!
//! A snapshot's object reaches Walrus as a multipart upload the CLC creates
//! with the record (Walrus runs in this process, see
//! [`crate::ObjectSource`]) and keeps the id of while pending; every desired
//! state presigns its parts and completion for the SC, which holds no
//! Walrus secret and uploads parts while it still compresses. A failed or
//! deleted snapshot's upload is aborted here, so no parts are left behind.
//!
//! Requests change records under the EBS lock and then send both desired
//! states; a lost send or a crash is repaired by the next tick, which sends
//! them again from the records. Nothing is reported `available` or
//! `completed` before the SC says so, and a record in a transitional state
//! always names what is left to do, so a restart resumes rather than
//! guesses.

use std::collections::HashMap;

use ironbark_cluster_api::NodeVolumes;
use ironbark_node_api::MAX_VOLUMES_PER_INSTANCE;
use ironbark_sc_api::{
    Compression, DesiredStorage, ExportSpec, ExportState, SnapshotSource, SnapshotSpec,
    StorageReport, VolumeSpec, WalrusTarget, plan_parts,
};
use ironbark_types::*;

use crate::{Caller, Cloud};

/// The bucket snapshots are uploaded to (the administrator's, private).
pub const SNAPSHOT_BUCKET: &str = "ironbark-snapshots";

/// How often the SC gets the whole storage desired state when nothing is
/// in flight.
const STORAGE_RESEND: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest volume, in GiB (EC2's standard volumes stopped at 1 TiB).
const MAX_VOLUME_GIB: u32 = 1024;

/// How long CreateSnapshot waits for the SC to begin the copy (normally
/// well under a second: a daemon to start, a QMP call). Past it the
/// request fails and the snapshot is withdrawn rather than taken at some
/// later moment the caller did not ask for.
pub(crate) const SNAPSHOT_START_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long an attachment may keep failing (NC or SC reporting an error
/// each try) before it is dropped.
const ATTACH_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// Past a CreateSnapshot's longest wait, how long before a snapshot it
/// never answered is taken for one whose CLC died waiting.
const UNANSWERED_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// How often the snapshot bucket is swept of objects and uploads no
/// snapshot owns (and once when the CLC starts).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a presigned snapshot upload or download stays valid.
const PRESIGN_SECS: u32 = 6 * 3600;

/// The zone's SC, as the CLC drives it.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn apply(&self, desired: DesiredStorage) -> Result<StorageReport>;
    async fn report(&self) -> Result<StorageReport>;
}

/// No SC attached: volumes cannot be made.
pub struct NoStorage;

#[async_trait::async_trait]
impl Storage for NoStorage {
    async fn apply(&self, _desired: DesiredStorage) -> Result<StorageReport> {
        Err(Error::internal("no storage controller is attached"))
    }
    async fn report(&self) -> Result<StorageReport> {
        Err(Error::internal("no storage controller is attached"))
    }
}

pub struct AttachRequest<'a> {
    pub volume_id: &'a str,
    pub instance_id: &'a str,
    pub device: &'a str,
}

/// ModifySnapshotAttribute's createVolumePermission change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotPermissionChange {
    pub add_users: Vec<String>,
    pub remove_users: Vec<String>,
    pub add_all: bool,
    pub remove_all: bool,
}

fn volume_not_found(id: &str) -> Error {
    Error::new(
        ErrorKind::VolumeNotFound,
        format!("The volume '{id}' does not exist."),
    )
}

fn snapshot_not_found(id: &str) -> Error {
    Error::new(
        ErrorKind::SnapshotNotFound,
        format!("The snapshot '{id}' does not exist."),
    )
}

/// Devices a volume may be attached as: `/dev/sd[b-z]`, `/dev/xvd[b-z]`,
/// `/dev/vd[b-z]` (the root disk is `a`), as the original accepted.
pub fn valid_device(d: &str) -> bool {
    let rest = ["/dev/sd", "/dev/xvd", "/dev/vd"]
        .iter()
        .find_map(|p| d.strip_prefix(p));
    matches!(rest.map(str::as_bytes), Some([b'b'..=b'z']))
}

fn snapshot_key(id: &SnapshotId, c: Compression) -> String {
    format!("{id}.raw.{}", c.extension())
}

/// What in the snapshot bucket no snapshot record owns: objects whose key
/// is no record's location, and uploads that are not a record's current
/// one. Changes to a record and to Walrus cannot happen as one, so a crash
/// between them (a snapshot deleted before its object, an upload made
/// before its record, an abort that failed) leaves these behind. Only keys
/// shaped like a snapshot's (`snap-….raw.<ext>`) are considered: anything
/// else an administrator put in the bucket is theirs.
fn orphans(
    records: &[Snapshot],
    listing: &crate::SystemListing,
) -> (Vec<String>, Vec<(String, String)>) {
    let ours = |key: &str| {
        key.split_once(".raw.")
            .is_some_and(|(id, _)| SnapshotId::parse(id).is_ok())
    };
    let location = |key: &str| format!("{SNAPSHOT_BUCKET}/{key}");
    let objects = listing
        .keys
        .iter()
        .filter(|k| ours(k) && !records.iter().any(|r| r.location == location(k)))
        .cloned()
        .collect();
    let uploads = listing
        .uploads
        .iter()
        .filter(|(k, u)| {
            ours(k)
                && !records
                    .iter()
                    .any(|r| r.location == location(k) && r.upload_id.as_deref() == Some(u))
        })
        .cloned()
        .collect();
    (objects, uploads)
}

fn compression_of(s: &Snapshot) -> Compression {
    Compression::from_name(&s.compression).unwrap_or_default()
}

impl Cloud {
    /// A snapshot the caller may see and restore from.
    fn may_use_snapshot(caller: &Caller, s: &Snapshot) -> bool {
        s.account_id == caller.account.id
            || s.public
            || s.shared_with.contains(&caller.account.id)
            || caller.is_admin()
    }

    async fn own_volume(&self, caller: &Caller, id: &str) -> Result<Volume> {
        let vid = VolumeId::parse(id)?;
        self.store
            .list_volumes(Some(&caller.account.id))
            .await?
            .into_iter()
            .find(|v| v.id == vid)
            .ok_or_else(|| volume_not_found(id))
    }

    async fn own_snapshot(&self, caller: &Caller, id: &str) -> Result<Snapshot> {
        let sid = SnapshotId::parse(id)?;
        self.store
            .list_snapshots()
            .await?
            .into_iter()
            .find(|s| s.id == sid && s.account_id == caller.account.id)
            .ok_or_else(|| snapshot_not_found(id))
    }

    /// CreateVolume: an empty volume of `size` GiB, or one filled from a
    /// completed snapshot the caller may use (at least its size).
    pub async fn create_volume(
        &self,
        caller: &Caller,
        size: Option<&str>,
        snapshot: Option<&str>,
        zone: &str,
    ) -> Result<Volume> {
        if !self.config.zones.iter().any(|z| z == zone) {
            return Err(Error::invalid_value(format!(
                "Invalid availability zone: [{zone}]"
            )));
        }
        let size = match size {
            Some(s) => Some(
                s.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_VOLUME_GIB).contains(n))
                    .ok_or_else(|| {
                        Error::invalid_value(format!(
                            "Invalid value '{s}' for Size: a volume is 1 to {MAX_VOLUME_GIB} GiB"
                        ))
                    })?,
            ),
            None => None,
        };
        let source = match snapshot {
            Some(id) => {
                let sid = SnapshotId::parse(id)?;
                let s = self
                    .store
                    .list_snapshots()
                    .await?
                    .into_iter()
                    .find(|s| s.id == sid && Self::may_use_snapshot(caller, s))
                    .ok_or_else(|| snapshot_not_found(id))?;
                if s.state != SnapshotState::Completed {
                    return Err(Error::new(
                        ErrorKind::IncorrectState,
                        format!("Snapshot {id} is {}, not completed", s.state.as_str()),
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let size_gib = match (size, &source) {
            (Some(n), Some(s)) if n < s.volume_size_gib => {
                return Err(Error::invalid_value(format!(
                    "Volume of {n} GiB is smaller than snapshot {}, {} GiB",
                    s.id, s.volume_size_gib
                )));
            }
            (Some(n), _) => n,
            (None, Some(s)) => s.volume_size_gib,
            (None, None) => return Err(Error::missing("Size")),
        };
        let v = Volume {
            id: VolumeId::generate(),
            account_id: caller.account.id.clone(),
            size_gib,
            snapshot_id: source.map(|s| s.id),
            zone: zone.to_string(),
            state: VolumeState::Creating,
            error: None,
            created_ms: now_ms(),
            attachment: None,
        };
        {
            let _serial = self.ebs_lock.lock().await;
            // Looked up again under the lock: a DeleteSnapshot since then
            // would leave the SC a volume with no data to fill it from.
            if let Some(sid) = &v.snapshot_id
                && !self
                    .store
                    .list_snapshots()
                    .await?
                    .iter()
                    .any(|s| &s.id == sid && Self::may_use_snapshot(caller, s))
            {
                return Err(snapshot_not_found(sid.as_str()));
            }
            self.store.put_volume(&v).await?;
        }
        tracing::info!(volume = %v.id, size_gib, "volume created");
        self.push_storage_logged().await;
        Ok(v)
    }

    /// DeleteVolume: refused while attached; the record goes once the SC
    /// has dropped the data.
    pub async fn delete_volume(&self, caller: &Caller, id: &str) -> Result<()> {
        {
            let _serial = self.ebs_lock.lock().await;
            let mut v = self.own_volume(caller, id).await?;
            if let Some(a) = &v.attachment {
                return Err(Error::new(
                    ErrorKind::VolumeInUse,
                    format!("Volume {id} is attached to {}", a.instance_id),
                ));
            }
            if v.state == VolumeState::Deleting {
                return Ok(());
            }
            v.state = VolumeState::Deleting;
            self.store.put_volume(&v).await?;
        }
        self.push_storage_logged().await;
        Ok(())
    }

    /// AttachVolume: validated as the original did (same zone, device
    /// valid and free on the instance, volume available, instance running).
    pub async fn attach_volume(&self, caller: &Caller, req: AttachRequest<'_>) -> Result<Volume> {
        let v = {
            let _serial = self.ebs_lock.lock().await;
            let mut v = self.own_volume(caller, req.volume_id).await?;
            let iid = InstanceId::parse(req.instance_id)?;
            let inst = self
                .store
                .list_instances(Some(&caller.account.id))
                .await?
                .into_iter()
                .find(|i| i.id == iid && i.state != InstanceState::Terminated)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InstanceNotFound,
                        format!("The instance ID '{}' does not exist", req.instance_id),
                    )
                })?;
            if !valid_device(req.device) {
                return Err(Error::invalid_value(format!(
                    "Value ({}) for parameter device is invalid. Use /dev/sd[b-z], /dev/vd[b-z] or /dev/xvd[b-z]",
                    req.device
                )));
            }
            if let Some(a) = &v.attachment {
                return Err(Error::new(
                    ErrorKind::VolumeInUse,
                    format!("{} is already attached to {}", v.id, a.instance_id),
                ));
            }
            if v.state != VolumeState::Available {
                return Err(Error::new(
                    ErrorKind::IncorrectState,
                    format!("Volume {} is '{}', not available", v.id, v.state.as_str()),
                ));
            }
            if inst.state != InstanceState::Running {
                // EC2's code and words, which tools wait and retry on.
                return Err(Error::new(
                    ErrorKind::IncorrectState,
                    format!("Instance '{}' is not 'running'.", inst.id),
                ));
            }
            if inst.zone != v.zone {
                return Err(Error::new(
                    ErrorKind::VolumeZoneMismatch,
                    format!(
                        "The volume '{}' is in {} and the instance in {}",
                        v.id, v.zone, inst.zone
                    ),
                ));
            }
            let on_instance: Vec<_> = self
                .store
                .list_volumes(None)
                .await?
                .into_iter()
                .filter_map(|o| o.attachment.filter(|a| a.instance_id == iid))
                .collect();
            if on_instance
                .iter()
                .any(|a| same_device(&a.device, req.device))
            {
                return Err(Error::invalid_value(format!(
                    "Attachment point {} is already in use",
                    req.device
                )));
            }
            if on_instance.len() >= MAX_VOLUMES_PER_INSTANCE {
                return Err(Error::new(
                    ErrorKind::AttachmentLimitExceeded,
                    format!(
                        "Instance '{}' already has {MAX_VOLUMES_PER_INSTANCE} volumes attached, the most it can have",
                        inst.id
                    ),
                ));
            }
            v.attachment = Some(VolumeAttachment {
                instance_id: iid,
                device: req.device.to_string(),
                state: AttachState::Attaching,
                attach_ms: now_ms(),
                force_detach: false,
            });
            self.store.put_volume(&v).await?;
            v
        };
        tracing::info!(volume = %v.id, instance = req.instance_id, device = req.device, "attaching");
        // The SC opens the export; once it is ready the NC is told to plug
        // it in (now if the SC answered ready, else by the EBS tick).
        self.push_storage_logged().await;
        if let Err(e) = self.push_desired().await {
            tracing::warn!(error = %e, "sending the zone's desired state failed; the EBS tick retries");
        }
        let v = self.own_volume(caller, req.volume_id).await?;
        Ok(v)
    }

    /// DetachVolume: the NC unplugs it, then the SC closes the export.
    /// `instance`/`device`, when given, must match the attachment.
    pub async fn detach_volume(
        &self,
        caller: &Caller,
        volume: &str,
        instance: Option<&str>,
        device: Option<&str>,
        force: bool,
    ) -> Result<Volume> {
        let v = {
            let _serial = self.ebs_lock.lock().await;
            let mut v = self.own_volume(caller, volume).await?;
            let Some(a) = v.attachment.as_mut() else {
                return Err(Error::new(
                    ErrorKind::IncorrectState,
                    format!("Volume '{volume}' is in the '{}' state.", v.state.as_str()),
                ));
            };
            if instance.is_some_and(|i| i != a.instance_id.as_str())
                || device.is_some_and(|d| !same_device(d, &a.device))
            {
                return Err(Error::new(
                    ErrorKind::AttachmentNotFound,
                    format!(
                        "Volume '{volume}' is not attached to {}",
                        instance.or(device).unwrap_or("that")
                    ),
                ));
            }
            a.state = AttachState::Detaching;
            a.force_detach |= force;
            self.store.put_volume(&v).await?;
            v
        };
        tracing::info!(volume = %v.id, force, "detaching");
        if force {
            self.push_storage_logged().await;
        }
        if let Err(e) = self.push_desired().await {
            tracing::warn!(error = %e, "sending the zone's desired state failed; the EBS tick retries");
        }
        Ok(v)
    }

    /// DescribeVolumes: the caller's volumes.
    pub async fn describe_volumes(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<(Volume, Vec<Tag>)>> {
        let verbose = caller.is_admin() && ids.iter().any(|i| i == "verbose");
        let ids: Vec<&String> = ids.iter().filter(|i| *i != "verbose").collect();
        let scope = (!verbose).then_some(&caller.account.id);
        let all = self.store.list_volumes(scope).await?;
        for id in &ids {
            VolumeId::parse(id)?;
            if !all.iter().any(|v| v.id.as_str() == id.as_str()) {
                return Err(volume_not_found(id));
            }
        }
        let tags = self.tags_by_resource(scope).await?;
        let selected: Vec<(Volume, Vec<Tag>)> = all
            .into_iter()
            .filter(|v| ids.is_empty() || ids.iter().any(|x| x.as_str() == v.id.as_str()))
            .map(|v| {
                let t = tags.get(v.id.as_str()).cloned().unwrap_or_default();
                (v, t)
            })
            .collect();
        filter::apply(selected, filters, |(v, t), name| {
            let one = |s: &str| Some(vec![s.to_string()]);
            let a = v.attachment.as_ref();
            let opt = |s: Option<&str>| Some(s.map(|x| vec![x.to_string()]).unwrap_or_default());
            match name {
                "volume-id" => one(v.id.as_str()),
                "status" => one(v.api_state()),
                "size" => one(&v.size_gib.to_string()),
                "availability-zone" => one(&v.zone),
                "snapshot-id" => opt(v.snapshot_id.as_ref().map(|s| s.as_str())),
                "volume-type" => one("standard"),
                "attachment.instance-id" => opt(a.map(|a| a.instance_id.as_str())),
                "attachment.device" => opt(a.map(|a| a.device.as_str())),
                "attachment.status" => opt(a.map(|a| a.state.as_str())),
                "attachment.delete-on-termination" => opt(a.map(|_| "false")),
                other => crate::tags::tag_filter(t, other),
            }
        })
    }

    /// CreateSnapshot: a point-in-time copy, taken by the SC while the
    /// volume may be attached and written.
    pub async fn create_snapshot(
        &self,
        caller: &Caller,
        volume: &str,
        description: &str,
    ) -> Result<Snapshot> {
        if description.len() > 255 {
            return Err(Error::invalid_value(
                "Description is longer than 255 characters",
            ));
        }
        let s = {
            let _serial = self.ebs_lock.lock().await;
            let v = self.own_volume(caller, volume).await?;
            if v.state != VolumeState::Available {
                return Err(Error::new(
                    ErrorKind::IncorrectState,
                    format!("Volume {} is '{}', not available", v.id, v.state.as_str()),
                ));
            }
            let id = SnapshotId::generate();
            let compression = crate::properties::compression(
                self.store
                    .property(crate::properties::SNAPSHOT_COMPRESSION)
                    .await?
                    .as_deref(),
            )
            .unwrap_or_else(|e| {
                // Only a value stored around `admin property set`.
                tracing::warn!(error = %e, "snapshot compression: using gzip");
                Compression::Gzip
            });
            let key = snapshot_key(&id, compression);
            self.objects.ensure_system_bucket(SNAPSHOT_BUCKET).await?;
            let upload_id = self.objects.create_upload(SNAPSHOT_BUCKET, &key).await?;
            let s = Snapshot {
                location: format!("{SNAPSHOT_BUCKET}/{key}"),
                id,
                account_id: caller.account.id.clone(),
                volume_id: v.id.clone(),
                volume_size_gib: v.size_gib,
                description: description.to_string(),
                state: SnapshotState::Pending,
                progress: 0,
                started_ms: now_ms(),
                compression: compression.name().into(),
                sha256: None,
                raw_digest: None,
                error: None,
                upload_id: Some(upload_id),
                answered: false,
                public: false,
                shared_with: Vec::new(),
            };
            if let Err(e) = self.store.put_snapshot(&s).await {
                self.abort_upload_logged(&s).await;
                return Err(e);
            }
            s
        };
        tracing::info!(snapshot = %s.id, volume = %s.volume_id, "snapshot started");
        // EC2 lets the caller resume writes (unfreeze a file system) once
        // CreateSnapshot has answered, so the answer waits until the SC has
        // fixed the snapshot's moment; one it cannot fix in time is
        // withdrawn (record, upload, the SC's task) and the call fails,
        // rather than being taken later than asked.
        match self.await_point_in_time(&s.id).await {
            Ok(progress) => {
                let _serial = self.ebs_lock.lock().await;
                if let Some(mut now) = self.snapshot_record(&s.id).await? {
                    now.answered = true;
                    self.store.put_snapshot(&now).await?;
                }
                Ok(Snapshot {
                    progress,
                    answered: true,
                    ..s
                })
            }
            Err(e) => {
                tracing::warn!(snapshot = %s.id, error = %e, "snapshot withdrawn");
                self.withdraw_snapshot(&s).await?;
                Err(e)
            }
        }
    }

    /// Waits for the SC to report snapshot `id`'s moment fixed; its
    /// progress then.
    async fn await_point_in_time(&self, id: &SnapshotId) -> Result<u8> {
        let deadline = std::time::Instant::now() + self.snapshot_start_wait;
        let mut report = self
            .push_storage()
            .await
            .map(|()| self.last_storage_report());
        loop {
            match report {
                Ok(Some(r)) => {
                    if let Some(s) = r.snapshots.iter().find(|s| s.snapshot_id == id.as_str())
                        && s.point_in_time
                        && s.state != ironbark_sc_api::SnapshotState::Error
                    {
                        return Ok(s.progress.min(99));
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(snapshot = %id, error = %e, "asking the SC"),
            }
            // Every report went through `observe_storage`, which records
            // the SC's failure (as does the EBS tick, which may see it first).
            if let Some(s) = self.snapshot_record(id).await?
                && s.state == SnapshotState::Error
            {
                return Err(Error::internal(format!(
                    "the storage controller could not take snapshot {id}: {}",
                    s.error.as_deref().unwrap_or("no reason given")
                )));
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::internal(format!(
                    "the storage controller did not begin snapshot {id} within {} s; try again",
                    self.snapshot_start_wait.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            report = match self.storage.report().await {
                Ok(r) => self.observe_storage(&r).await.map(|()| Some(r)),
                Err(e) => Err(e),
            };
        }
    }

    /// The record of snapshot `id`, whoever owns it.
    async fn snapshot_record(&self, id: &SnapshotId) -> Result<Option<Snapshot>> {
        Ok(self
            .store
            .list_snapshots()
            .await?
            .into_iter()
            .find(|s| &s.id == id))
    }

    /// Withdraws snapshot `s` as if never asked for: its record, the SC's
    /// task (told at once) and its multipart upload.
    async fn withdraw_snapshot(&self, s: &Snapshot) -> Result<()> {
        {
            let _serial = self.ebs_lock.lock().await;
            self.store.delete_snapshot(&s.id).await?;
        }
        self.push_storage_logged().await;
        self.abort_upload_logged(s).await;
        Ok(())
    }

    fn last_storage_report(&self) -> Option<StorageReport> {
        self.storage_report
            .lock()
            .expect("storage report lock")
            .clone()
    }

    /// DeleteSnapshot: the record, the SC's raw copy and the Walrus object.
    pub async fn delete_snapshot(&self, caller: &Caller, id: &str) -> Result<()> {
        let s = {
            let _serial = self.ebs_lock.lock().await;
            let s = self.own_snapshot(caller, id).await?;
            // A volume being made from it still needs its data (the SC
            // may have to start the restore over after a restart).
            if let Some(v) =
                self.store.list_volumes(None).await?.into_iter().find(|v| {
                    v.state == VolumeState::Creating && v.snapshot_id.as_ref() == Some(&s.id)
                })
            {
                return Err(Error::new(
                    ErrorKind::SnapshotInUse,
                    format!(
                        "The snapshot {} is in use by volume {}, which is being created from it",
                        s.id, v.id
                    ),
                ));
            }
            self.store.delete_snapshot(&s.id).await?;
            s
        };
        self.push_storage_logged().await;
        self.abort_upload_logged(&s).await;
        if let Some((b, k)) = s.location.split_once('/')
            && let Err(e) = self.objects.remove(b, k).await
        {
            tracing::warn!(snapshot = %s.id, error = %e, "removing the snapshot's object failed");
        }
        Ok(())
    }

    /// Aborts the snapshot's multipart upload, if it has one; whether it
    /// worked is only logged (an upload left behind costs disk, not
    /// correctness). Returns whether the upload is gone.
    async fn abort_upload_logged(&self, s: &Snapshot) -> bool {
        let (Some(upload), Some((b, k))) = (&s.upload_id, s.location.split_once('/')) else {
            return true;
        };
        match self.objects.abort_upload(b, k, upload).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(snapshot = %s.id, error = %e, "aborting the snapshot's upload failed");
                false
            }
        }
    }

    /// DescribeSnapshots: what the caller may restore (its own, shared
    /// with it, public), narrowed by ids, owners and restorable-by.
    pub async fn describe_snapshots(
        &self,
        caller: &Caller,
        ids: &[String],
        owners: &[String],
        restorable_by: &[String],
        filters: &[Filter],
    ) -> Result<Vec<(Snapshot, Vec<Tag>)>> {
        let all: Vec<Snapshot> = self
            .store
            .list_snapshots()
            .await?
            .into_iter()
            .filter(|s| Self::may_use_snapshot(caller, s))
            .collect();
        for id in ids {
            SnapshotId::parse(id)?;
            if !all.iter().any(|s| s.id.as_str() == id) {
                return Err(snapshot_not_found(id));
            }
        }
        let me = caller.account.id.as_str();
        let owner_ok = |s: &Snapshot| {
            owners.is_empty()
                || owners.iter().any(|o| {
                    let o = if o == "self" { me } else { o.as_str() };
                    o == s.account_id.as_str()
                })
        };
        let restorable_ok = |s: &Snapshot| {
            restorable_by.is_empty()
                || restorable_by.iter().any(|r| match r.as_str() {
                    "all" => s.public,
                    // Its own and those shared with it explicitly, as EC2.
                    "self" => {
                        s.account_id.as_str() == me
                            || s.shared_with.iter().any(|a| a.as_str() == me)
                    }
                    other => {
                        s.public
                            || s.account_id.as_str() == other
                            || s.shared_with.iter().any(|a| a.as_str() == other)
                    }
                })
        };
        let tags = self.tags_by_resource(None).await?;
        let selected: Vec<(Snapshot, Vec<Tag>)> = all
            .into_iter()
            .filter(|s| ids.is_empty() || ids.iter().any(|x| x == s.id.as_str()))
            .filter(|s| owner_ok(s) && restorable_ok(s))
            .map(|s| {
                // Tags are the owner's; others see none of them.
                let t = if s.account_id.as_str() == me {
                    tags.get(s.id.as_str()).cloned().unwrap_or_default()
                } else {
                    Vec::new()
                };
                (s, t)
            })
            .collect();
        filter::apply(selected, filters, |(s, t), name| {
            let one = |v: &str| Some(vec![v.to_string()]);
            match name {
                "snapshot-id" => one(s.id.as_str()),
                "volume-id" => one(s.volume_id.as_str()),
                "status" => one(s.state.as_str()),
                "owner-id" => one(s.account_id.as_str()),
                "progress" => one(&format!("{}%", s.progress)),
                "volume-size" => one(&s.volume_size_gib.to_string()),
                "description" => one(&s.description),
                other => crate::tags::tag_filter(t, other),
            }
        })
    }

    /// DescribeSnapshotAttribute createVolumePermission (owner only).
    pub async fn snapshot_permissions(&self, caller: &Caller, id: &str) -> Result<Snapshot> {
        self.own_snapshot(caller, id).await
    }

    /// ModifySnapshotAttribute / ResetSnapshotAttribute (`reset` clears all).
    pub async fn modify_snapshot_permissions(
        &self,
        caller: &Caller,
        id: &str,
        change: &SnapshotPermissionChange,
        reset: bool,
    ) -> Result<()> {
        let _serial = self.ebs_lock.lock().await;
        let mut s = self.own_snapshot(caller, id).await?;
        let mut add = Vec::new();
        for u in &change.add_users {
            let a = AccountId::parse(u).map_err(|_| {
                Error::invalid_value(format!("Invalid value '{u}' for UserId: not an account id"))
            })?;
            if self.store.account_by_id(&a).await?.is_none() {
                return Err(Error::invalid_value(format!(
                    "Invalid value '{u}' for UserId: no such account"
                )));
            }
            add.push(a);
        }
        if reset {
            s.public = false;
            s.shared_with.clear();
        }
        for a in add {
            if !s.shared_with.contains(&a) {
                s.shared_with.push(a);
            }
        }
        s.shared_with
            .retain(|a| !change.remove_users.iter().any(|r| r == a.as_str()));
        if change.add_all {
            s.public = true;
        }
        if change.remove_all {
            s.public = false;
        }
        self.store.put_snapshot(&s).await
    }

    /// The zone's whole storage state, from the records.
    pub async fn desired_storage(&self) -> Result<DesiredStorage> {
        let instances: HashMap<InstanceId, Instance> = self
            .store
            .list_instances(None)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let snapshots = self.store.list_snapshots().await?;
        let mut volumes = Vec::new();
        for v in self.store.list_volumes(None).await? {
            if v.state == VolumeState::Deleting {
                continue;
            }
            let source = match (&v.snapshot_id, v.state) {
                (Some(sid), VolumeState::Creating) => match snapshots.iter().find(|s| s.id == *sid)
                {
                    Some(s) => {
                        let (b, k) = s.location.split_once('/').unwrap_or((&s.location, ""));
                        Some(SnapshotSource {
                            snapshot_id: s.id.to_string(),
                            download_url: self.objects.presign_get(b, k, PRESIGN_SECS).await.ok(),
                            compression: compression_of(s),
                            sha256: s.sha256.clone(),
                            raw_digest: s.raw_digest.clone(),
                            force_download: false,
                        })
                    }
                    // The snapshot went (not possible through the API
                    // any more): the SC fails the volume, which has nothing
                    // to be filled from, rather than make it blank.
                    None => Some(SnapshotSource {
                        snapshot_id: sid.to_string(),
                        download_url: None,
                        compression: Compression::Gzip,
                        sha256: None,
                        raw_digest: None,
                        force_download: false,
                    }),
                },
                _ => None,
            };
            // A forced detach withdraws the export at once: the guest is
            // not waited for, so its VM is cut off rather than left on it.
            let exports = v
                .attachment
                .as_ref()
                .filter(|a| !a.force_detach)
                .and_then(|a| instances.get(&a.instance_id))
                .filter(|i| i.state != InstanceState::Terminated)
                .map(|i| {
                    vec![ExportSpec {
                        node_id: i.node_id.clone(),
                        instance_id: i.id.to_string(),
                    }]
                })
                .unwrap_or_default();
            volumes.push(VolumeSpec {
                volume_id: v.id.to_string(),
                size_gib: u64::from(v.size_gib),
                source,
                exports,
            });
        }
        let mut specs = Vec::new();
        for s in snapshots.iter().filter(|s| s.state != SnapshotState::Error) {
            let (b, k) = s.location.split_once('/').unwrap_or((&s.location, ""));
            // Only a pending snapshot's SC needs where to upload: the URLs
            // are presigned anew each time, cheap next to the resend, and
            // the upload id stays, so the SC may use any generation's.
            let target = match (&s.upload_id, s.state) {
                (Some(upload), SnapshotState::Pending) => {
                    let plan = plan_parts(u64::from(s.volume_size_gib) << 30);
                    let (part_urls, complete_url) = self
                        .objects
                        .presign_upload(b, k, upload, plan.parts, PRESIGN_SECS)
                        .await?;
                    WalrusTarget {
                        part_size: plan.part_size,
                        part_urls,
                        complete_url,
                    }
                }
                _ => WalrusTarget::default(),
            };
            specs.push(SnapshotSpec {
                snapshot_id: s.id.to_string(),
                volume_id: s.volume_id.to_string(),
                compression: compression_of(s),
                target,
            });
        }
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        Ok(DesiredStorage {
            generation,
            volumes,
            snapshots: specs,
        })
    }

    /// Sends the storage desired state and takes the report it answers with.
    pub async fn push_storage(&self) -> Result<()> {
        let desired = self.desired_storage().await?;
        let report = self.storage.apply(desired).await?;
        *self.storage_pushed.lock().expect("storage push lock") = Some(std::time::Instant::now());
        self.observe_storage(&report).await
    }

    pub(crate) async fn push_storage_logged(&self) {
        if let Err(e) = self.push_storage().await {
            tracing::warn!(error = %e, "sending the storage desired state failed; the EBS tick retries");
        }
    }

    /// The SC's last word on the export of `volume` to `node` for
    /// `instance`.
    fn export_report(
        &self,
        volume: &VolumeId,
        node: &str,
        instance: &InstanceId,
    ) -> Option<ironbark_sc_api::ExportReport> {
        let report = self.storage_report.lock().expect("storage report lock");
        report
            .as_ref()?
            .volumes
            .iter()
            .find(|v| v.volume_id == volume.as_str())?
            .exports
            .iter()
            .find(|e| {
                // An SC from before exports were per instance answers
                // without one.
                e.node_id == node
                    && (e.instance_id == instance.as_str() || e.instance_id.is_empty())
            })
            .cloned()
    }

    /// The NBD export an NC should attach for `volume` on `node` for
    /// `instance`, once the SC has it ready.
    pub(crate) fn ready_export(
        &self,
        volume: &VolumeId,
        node: &str,
        instance: &InstanceId,
    ) -> Option<ironbark_sc_api::NbdExport> {
        self.export_report(volume, node, instance)
            .filter(|e| e.state == ExportState::Ready)?
            .nbd
    }

    /// Whether the snapshot's object in Walrus is the one the SC says it
    /// completed: there, with the size and the multipart ETag (the MD5 of
    /// the parts' MD5s) of what the SC sent. Walrus checked the whole
    /// object's CRC-32 as it completed it; this catches the completion the
    /// SC only inferred (an upload gone after a crash) being another's.
    async fn object_matches(
        &self,
        s: &Snapshot,
        r: &ironbark_sc_api::SnapshotReport,
    ) -> Result<bool> {
        let Some((b, k)) = s.location.split_once('/') else {
            return Ok(false);
        };
        let unquoted = |e: &str| e.trim_matches('"').to_string();
        Ok(match self.objects.system_head(b, k).await? {
            Some((size, etag)) => {
                Some(size) == r.compressed_size
                    && Some(unquoted(&etag)) == r.md5.as_deref().map(unquoted)
            }
            None => false,
        })
    }

    /// The SC's reason for failing to export `volume` to `node` for
    /// `instance`, if it did.
    fn export_error(&self, volume: &VolumeId, node: &str, instance: &InstanceId) -> Option<String> {
        let e = self.export_report(volume, node, instance)?;
        (e.state == ExportState::Error).then(|| e.error.unwrap_or_default())
    }

    /// Advances volume and snapshot records from the SC's report.
    /// Idempotent: the same report twice changes nothing the second time.
    pub async fn observe_storage(&self, report: &StorageReport) -> Result<()> {
        *self.storage_report.lock().expect("storage report lock") = Some(report.clone());
        let _serial = self.ebs_lock.lock().await;
        for mut v in self.store.list_volumes(None).await? {
            let r = report.volumes.iter().find(|r| r.volume_id == v.id.as_str());
            use ironbark_sc_api::VolumeState as Sc;
            match (v.state, r.map(|r| r.state)) {
                (VolumeState::Creating, Some(Sc::Available)) => {
                    v.state = VolumeState::Available;
                    self.store.put_volume(&v).await?;
                    tracing::info!(volume = %v.id, "volume available");
                }
                (VolumeState::Creating, Some(Sc::Error)) => {
                    v.state = VolumeState::Error;
                    v.error = r.and_then(|r| r.error.clone());
                    self.store.put_volume(&v).await?;
                    tracing::warn!(volume = %v.id, error = ?v.error, "volume failed");
                }
                (VolumeState::Deleting, None) => {
                    self.store.delete_volume(&v.id).await?;
                    tracing::info!(volume = %v.id, "volume deleted");
                }
                _ => {}
            }
        }
        for mut s in self.store.list_snapshots().await? {
            let Some(r) = report
                .snapshots
                .iter()
                .find(|r| r.snapshot_id == s.id.as_str())
            else {
                continue;
            };
            use ironbark_sc_api::SnapshotState as Sc;
            if s.state != SnapshotState::Pending {
                continue;
            }
            let before = s.clone();
            match r.state {
                Sc::Pending => s.progress = r.progress.min(99),
                Sc::Completed if r.sha256.is_some() => match self.object_matches(&s, r).await {
                    Ok(true) => {
                        s.state = SnapshotState::Completed;
                        s.progress = 100;
                        s.sha256 = r.sha256.clone();
                        s.raw_digest = r.raw_digest.clone();
                        // Completing it consumed the upload.
                        s.upload_id = None;
                        tracing::info!(snapshot = %s.id, "snapshot completed");
                    }
                    Ok(false) => {
                        s.state = SnapshotState::Error;
                        s.error = Some(
                            "the snapshot's object in Walrus is missing or is not the one the SC uploaded"
                                .into(),
                        );
                        tracing::warn!(snapshot = %s.id, "snapshot failed: its object does not match");
                    }
                    // Asked again at the next report.
                    Err(e) => {
                        tracing::warn!(snapshot = %s.id, error = %e, "checking the snapshot's object")
                    }
                },
                Sc::Completed => {}
                Sc::Error => {
                    s.state = SnapshotState::Error;
                    s.error = r.error.clone();
                    if self.abort_upload_logged(&s).await {
                        s.upload_id = None;
                    }
                    tracing::warn!(snapshot = %s.id, error = ?s.error, "snapshot failed");
                }
            }
            if s != before {
                self.store.put_snapshot(&s).await?;
            }
        }
        Ok(())
    }

    /// Advances attachments from the NCs' reports: `attached` once the
    /// instance's NC has the volume plugged in, gone once a detaching
    /// volume is unplugged (or at once with Force, or when the instance is
    /// no longer running). Unplugged means the instance's NC said so:
    /// `reporting` are the nodes whose volume report is in hand, and after
    /// a restart a detaching volume waits for its NC's first report rather
    /// than have its export closed under a guest that may still hold it.
    /// An attachment still failing (its NC cannot plug the volume in, or
    /// the SC cannot export it) after [`ATTACH_GIVE_UP`] is dropped, so the
    /// volume is `available` again, as EC2 does with an attach that fails.
    /// Returns whether anything changed.
    pub(crate) async fn observe_attachments(&self, seen: &NodeVolumes) -> Result<bool> {
        let (plugged, reporting) = (&seen.plugged, &seen.reporting);
        let _serial = self.ebs_lock.lock().await;
        let instances: HashMap<InstanceId, Instance> = self
            .store
            .list_instances(None)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let mut changed = false;
        for mut v in self.store.list_volumes(None).await? {
            let Some(a) = v.attachment.clone() else {
                continue;
            };
            let inst = instances.get(&a.instance_id);
            let gone = !inst.is_some_and(|i| {
                matches!(i.state, InstanceState::Pending | InstanceState::Running)
            });
            let is_plugged = plugged
                .get(a.instance_id.as_str())
                .is_some_and(|vols| vols.iter().any(|x| x == v.id.as_str()));
            let known = inst.is_some_and(|i| reporting.contains(&i.node_id));
            let failure = (a.state == AttachState::Attaching
                && now_ms() - a.attach_ms >= ATTACH_GIVE_UP.as_millis() as i64)
                .then(|| {
                    seen.failed
                        .get(&(a.instance_id.to_string(), v.id.to_string()))
                        .cloned()
                        .or_else(|| inst.and_then(|i| self.export_error(&v.id, &i.node_id, &i.id)))
                })
                .flatten();
            if let Some(why) = &failure {
                tracing::warn!(volume = %v.id, instance = %a.instance_id, error = %why, "attach failed; the volume is available again");
            }
            let next = match a.state {
                _ if gone => None,
                _ if failure.is_some() => None,
                AttachState::Attaching if is_plugged => Some(AttachState::Attached),
                AttachState::Detaching if (known && !is_plugged) || a.force_detach => None,
                s => Some(s),
            };
            if next == Some(a.state) {
                continue;
            }
            v.attachment = next.map(|state| VolumeAttachment { state, ..a.clone() });
            self.store.put_volume(&v).await?;
            tracing::info!(volume = %v.id, instance = %a.instance_id, state = next.map(|s| s.as_str()).unwrap_or("detached"), "attachment");
            changed = true;
        }
        Ok(changed)
    }

    /// The EBS safety net and driver, run every second by the CLC's loop:
    /// while anything is in a transitional state, polls the SC, advances
    /// records and re-sends both desired states.
    pub async fn ebs_tick(&self) -> Result<()> {
        if let Err(e) = self.sweep_snapshot_bucket(false).await {
            tracing::warn!(error = %e, "sweeping the snapshot bucket");
        }
        self.withdraw_unanswered().await?;
        let volumes = self.store.list_volumes(None).await?;
        let snapshots = self.store.list_snapshots().await?;
        let busy = volumes.iter().any(|v| {
            matches!(v.state, VolumeState::Creating | VolumeState::Deleting)
                || v.attachment
                    .as_ref()
                    .is_some_and(|a| a.state != AttachState::Attached)
        }) || snapshots.iter().any(|s| s.state == SnapshotState::Pending);
        // Even with nothing in flight the SC gets the whole state now and
        // then, and at once after a CLC restart: a change whose push a
        // crash cut off (an export to close after a detach) would
        // otherwise wait for the next EBS request.
        let stale = self
            .storage_pushed
            .lock()
            .expect("storage push lock")
            .is_none_or(|at| at.elapsed() >= STORAGE_RESEND);
        if !busy && !stale {
            return Ok(());
        }
        if snapshots
            .iter()
            .any(|s| s.state == SnapshotState::Pending && s.upload_id.is_none())
        {
            self.give_uploads().await?;
        }
        self.push_storage().await?;
        self.push_desired().await
    }

    /// Removes from the snapshot bucket what no snapshot owns
    /// ([`orphans`]); at most every [`SWEEP_EVERY`], unless `now`.
    pub async fn sweep_snapshot_bucket(&self, now: bool) -> Result<()> {
        {
            let mut last = self.snapshots_swept.lock().expect("sweep lock");
            if !now && last.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        // Under the EBS lock, a record and its upload are made and erased
        // together as far as this can see.
        let (objects, uploads) = {
            let _serial = self.ebs_lock.lock().await;
            let listing = self.objects.system_listing(SNAPSHOT_BUCKET).await?;
            let records = self.store.list_snapshots().await?;
            orphans(&records, &listing)
        };
        // One that fails (a DeleteSnapshot got there first) does not keep
        // the rest waiting for the next sweep.
        for key in objects {
            match self.objects.remove(SNAPSHOT_BUCKET, &key).await {
                Ok(()) => tracing::info!(key = %key, "removed a snapshot object no snapshot owns"),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "removing a snapshot object no snapshot owns")
                }
            }
        }
        for (key, upload) in uploads {
            match self
                .objects
                .abort_upload(SNAPSHOT_BUCKET, &key, &upload)
                .await
            {
                Ok(()) => {
                    tracing::info!(key = %key, upload = %upload, "aborted a snapshot upload no snapshot owns")
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "aborting a snapshot upload no snapshot owns")
                }
            }
        }
        Ok(())
    }

    /// Withdraws pending snapshots whose CreateSnapshot never answered and
    /// no longer waits (a CLC died in the wait): their moment is not known
    /// to be the call's, and the caller, who got no answer, retries.
    async fn withdraw_unanswered(&self) -> Result<()> {
        // No wait runs this long, so no record seen here can be answered
        // meanwhile.
        let cutoff = now_ms() - (self.snapshot_start_wait + UNANSWERED_GRACE).as_millis() as i64;
        for s in self.store.list_snapshots().await? {
            if s.state == SnapshotState::Pending && !s.answered && s.started_ms < cutoff {
                tracing::warn!(snapshot = %s.id, "withdrawn: its CreateSnapshot never answered");
                self.withdraw_snapshot(&s).await?;
            }
        }
        Ok(())
    }

    /// Pending snapshots recorded before snapshots had multipart uploads
    /// get one, so their SC has somewhere to upload. Under the EBS lock,
    /// so two ticks do not make two.
    async fn give_uploads(&self) -> Result<()> {
        let _serial = self.ebs_lock.lock().await;
        for mut s in self.store.list_snapshots().await? {
            if s.state != SnapshotState::Pending || s.upload_id.is_some() {
                continue;
            }
            let Some((b, k)) = s.location.split_once('/') else {
                continue;
            };
            self.objects.ensure_system_bucket(b).await?;
            s.upload_id = Some(self.objects.create_upload(b, k).await?);
            self.store.put_snapshot(&s).await?;
            tracing::info!(snapshot = %s.id, "snapshot given a multipart upload");
        }
        Ok(())
    }
}

/// `/dev/sdb` and `/dev/xvdb` name the same slot, as on EC2.
fn same_device(a: &str, b: &str) -> bool {
    let slot = |d: &str| {
        ["/dev/sd", "/dev/xvd", "/dev/vd"]
            .iter()
            .find_map(|p| d.strip_prefix(p))
            .map(str::to_string)
            .unwrap_or_else(|| d.to_string())
    };
    slot(a) == slot(b)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ironbark_sc_api::{
        ExportReport, NbdExport, SnapshotReport, VolumeReport, VolumeState as ScVolume,
    };

    use super::*;
    use crate::instances::tests::{run, setup};
    use crate::testutil::caller;

    /// A fake SC: makes volumes, exports and snapshots as soon as it is
    /// told, unless `hold` keeps everything where it is; `stuck` keeps a
    /// snapshot's copy from beginning at all.
    #[derive(Default)]
    struct FakeSc {
        hold: Mutex<bool>,
        stuck: Mutex<bool>,
        /// The ETag the SC says Walrus gave its uploads (`None`: the fake
        /// Walrus' own).
        etag: Mutex<Option<String>>,
        /// Every snapshot id ever desired.
        seen: Mutex<Vec<String>>,
        report: Mutex<StorageReport>,
        last: Mutex<Option<DesiredStorage>>,
    }

    #[async_trait::async_trait]
    impl Storage for FakeSc {
        async fn apply(&self, d: DesiredStorage) -> Result<StorageReport> {
            *self.last.lock().unwrap() = Some(d.clone());
            for s in &d.snapshots {
                let mut seen = self.seen.lock().unwrap();
                if !seen.contains(&s.snapshot_id) {
                    seen.push(s.snapshot_id.clone());
                }
            }
            let hold = *self.hold.lock().unwrap();
            let mut r = self.report.lock().unwrap();
            // Held, volumes no longer desired are still being deleted.
            if !hold {
                r.volumes
                    .retain(|v| d.volumes.iter().any(|w| w.volume_id == v.volume_id));
            }
            r.snapshots
                .retain(|s| d.snapshots.iter().any(|w| w.snapshot_id == s.snapshot_id));
            for v in &d.volumes {
                let state = if hold {
                    ScVolume::Creating
                } else {
                    ScVolume::Available
                };
                let exports = v
                    .exports
                    .iter()
                    .map(|e| ExportReport {
                        node_id: e.node_id.clone(),
                        instance_id: e.instance_id.clone(),
                        state: if hold {
                            ExportState::Pending
                        } else {
                            ExportState::Ready
                        },
                        nbd: (!hold).then(|| NbdExport {
                            host: "10.0.0.1".into(),
                            port: 10809,
                            export: format!("{}.{}", v.volume_id, e.node_id),
                            tls_identity: e.node_id.clone(),
                            psk_hex: "00".into(),
                            socket: None,
                        }),
                        error: None,
                    })
                    .collect();
                match r.volumes.iter_mut().find(|x| x.volume_id == v.volume_id) {
                    Some(x) => {
                        if !hold {
                            x.state = ScVolume::Available;
                        }
                        x.exports = exports;
                    }
                    None => r.volumes.push(VolumeReport {
                        volume_id: v.volume_id.clone(),
                        state,
                        size_gib: v.size_gib,
                        exports,
                        error: None,
                    }),
                }
            }
            for s in &d.snapshots {
                if !r.snapshots.iter().any(|x| x.snapshot_id == s.snapshot_id) {
                    r.snapshots.push(SnapshotReport {
                        snapshot_id: s.snapshot_id.clone(),
                        volume_id: s.volume_id.clone(),
                        state: ironbark_sc_api::SnapshotState::Pending,
                        progress: 40,
                        point_in_time: !*self.stuck.lock().unwrap(),
                        volume_size: 1 << 30,
                        compression: s.compression,
                        sha256: None,
                        md5: None,
                        compressed_size: None,
                        raw_digest: None,
                        error: None,
                    });
                }
                if !hold {
                    let x = r
                        .snapshots
                        .iter_mut()
                        .find(|x| x.snapshot_id == s.snapshot_id)
                        .unwrap();
                    x.state = ironbark_sc_api::SnapshotState::Completed;
                    x.progress = 100;
                    x.sha256 = Some("5".repeat(64));
                    x.compressed_size = Some(7);
                    x.md5 = Some(self.etag.lock().unwrap().clone().unwrap_or_else(|| {
                        crate::instances::tests::FAKE_ETAG.trim_matches('"').into()
                    }));
                    x.raw_digest = Some("6".repeat(64));
                }
            }
            Ok(r.clone())
        }
        async fn report(&self) -> Result<StorageReport> {
            Ok(self.report.lock().unwrap().clone())
        }
    }

    /// CreateSnapshot answers once the SC has fixed the snapshot's moment;
    /// one whose copy does not begin in time is withdrawn and the call
    /// fails, leaving no record, no upload and nothing for the SC to do.
    #[tokio::test]
    async fn create_snapshot_answers_once_the_moment_is_fixed() {
        let (c, _fake, _admin, alice, _img) = setup(1).await;
        let sc = Arc::new(FakeSc::default());
        let mut c = c.with_storage(sc.clone());
        c.snapshot_start_wait = std::time::Duration::from_millis(300);
        let v = c
            .create_volume(&alice, Some("1"), None, "zone1")
            .await
            .unwrap();
        c.ebs_tick().await.unwrap();
        let vid = v.id.to_string();
        *sc.hold.lock().unwrap() = true;
        let s = c.create_snapshot(&alice, &vid, "fixed").await.unwrap();
        assert_eq!(s.state, SnapshotState::Pending);
        let stored = |id: SnapshotId| {
            let c = &c;
            async move { c.snapshot_record(&id).await.unwrap() }
        };
        assert!(stored(s.id.clone()).await.unwrap().answered);

        // One a CLC left unanswered when it died in the wait: withdrawn
        // once no wait can still be running, not before.
        let mut orphan = stored(s.id.clone()).await.unwrap();
        orphan.id = SnapshotId::generate();
        orphan.answered = false;
        orphan.started_ms = now_ms();
        c.store.put_snapshot(&orphan).await.unwrap();
        c.ebs_tick().await.unwrap();
        assert!(
            stored(orphan.id.clone()).await.is_some(),
            "a wait may still run"
        );
        let young = orphan.id.clone();
        orphan.id = SnapshotId::generate();
        orphan.started_ms = now_ms() - 60_000;
        c.store.put_snapshot(&orphan).await.unwrap();
        c.ebs_tick().await.unwrap();
        assert!(stored(orphan.id.clone()).await.is_none());
        c.store.delete_snapshot(&young).await.unwrap();
        assert!(stored(s.id.clone()).await.is_some());

        *sc.stuck.lock().unwrap() = true;
        let seen_before = sc.seen.lock().unwrap().len();
        let err = c
            .create_snapshot(&alice, &vid, "never begins")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal, "{err}");
        let left: Vec<String> = c
            .store
            .list_snapshots()
            .await
            .unwrap()
            .into_iter()
            .map(|x| x.description)
            .collect();
        assert_eq!(left, vec!["fixed".to_string()]);
        let d = sc.last.lock().unwrap().clone().unwrap();
        assert_eq!(d.snapshots.len(), 1, "the SC is told to drop it");
        let seen = sc.seen.lock().unwrap().clone();
        let withdrawn = &seen[seen_before];
        let aborted = crate::instances::tests::ABORTED.lock().unwrap().clone();
        assert!(
            aborted.contains(&format!("up-{SNAPSHOT_BUCKET}-{withdrawn}.raw.gz")),
            "the withdrawn snapshot's upload is aborted: {aborted:?}"
        );

        // The SC says it completed, but Walrus holds another object under
        // the key: not completed.
        *sc.stuck.lock().unwrap() = false;
        *sc.hold.lock().unwrap() = false;
        *sc.etag.lock().unwrap() = Some("ffffffff-1".into());
        let other = c.create_snapshot(&alice, &vid, "other").await.unwrap();
        c.ebs_tick().await.unwrap();
        let got = c
            .store
            .list_snapshots()
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.id == other.id)
            .unwrap();
        assert_eq!(got.state, SnapshotState::Error, "{got:?}");
        assert!(got.error.unwrap().contains("not the one the SC uploaded"));
    }

    #[tokio::test]
    async fn the_sc_gets_the_whole_state_after_a_restart_and_now_and_then_when_idle() {
        let (c, _fake, _admin, _alice, _img) = setup(1).await;
        let sc = Arc::new(FakeSc::default());
        let c = c.with_storage(sc.clone());
        // Nothing in flight, but this process has not told the SC yet:
        // its stale desired state (an export a crash kept open) goes now.
        c.ebs_tick().await.unwrap();
        assert!(sc.last.lock().unwrap().take().is_some());
        // Told a moment ago and nothing in flight: no traffic each second.
        c.ebs_tick().await.unwrap();
        assert!(sc.last.lock().unwrap().is_none());
        // Once the last push is old, the whole state again.
        *c.storage_pushed.lock().unwrap() =
            Some(std::time::Instant::now() - STORAGE_RESEND - std::time::Duration::from_secs(1));
        c.ebs_tick().await.unwrap();
        assert!(sc.last.lock().unwrap().is_some());
    }

    #[tokio::test]
    async fn an_instance_takes_as_many_volumes_as_the_nc_has_slots() {
        let (c, _fake, _admin, alice, img) = setup(1).await;
        let sc = Arc::new(FakeSc::default());
        let c = c.with_storage(sc.clone());
        let inst = c.run_instances(&alice, run(&img, 1, 1)).await.unwrap()[0]
            .id
            .to_string();
        let mut vols = Vec::new();
        for _ in 0..=MAX_VOLUMES_PER_INSTANCE {
            let v = c
                .create_volume(&alice, Some("1"), None, "zone1")
                .await
                .unwrap();
            vols.push(v.id.to_string());
        }
        c.ebs_tick().await.unwrap();
        for (i, vol) in vols.iter().take(MAX_VOLUMES_PER_INSTANCE).enumerate() {
            let device = format!("/dev/sd{}", (b'b' + i as u8) as char);
            let req = AttachRequest {
                volume_id: vol,
                instance_id: &inst,
                device: &device,
            };
            c.attach_volume(&alice, req).await.unwrap();
        }
        let last = &vols[MAX_VOLUMES_PER_INSTANCE];
        let req = AttachRequest {
            volume_id: last,
            instance_id: &inst,
            device: "/dev/sdz",
        };
        let e = c.attach_volume(&alice, req).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::AttachmentLimitExceeded, "{e:?}");
        let v = c
            .describe_volumes(&alice, std::slice::from_ref(last), &[])
            .await
            .unwrap();
        assert!(
            v[0].0.attachment.is_none(),
            "the refused attach changed nothing"
        );
    }

    #[tokio::test]
    async fn volumes_attachments_and_snapshots_follow_their_state_machines() {
        let (c, fake, _admin, alice, img) = setup(4).await;
        let sc = Arc::new(FakeSc::default());
        let c = c.with_storage(sc.clone());
        let bob = caller(&c, "bob").await;
        let kind = |r: Result<Volume>| r.unwrap_err().kind;

        // Bad requests change nothing.
        assert_eq!(
            kind(c.create_volume(&alice, Some("1"), None, "nowhere").await),
            ErrorKind::InvalidParameterValue
        );
        for bad in ["0", "1025", "x"] {
            assert_eq!(
                kind(c.create_volume(&alice, Some(bad), None, "zone1").await),
                ErrorKind::InvalidParameterValue
            );
        }
        assert_eq!(
            kind(c.create_volume(&alice, None, None, "zone1").await),
            ErrorKind::MissingParameter
        );
        assert_eq!(
            kind(
                c.create_volume(&alice, None, Some("snap-12345678"), "zone1")
                    .await
            ),
            ErrorKind::SnapshotNotFound
        );
        assert!(c.store.list_volumes(None).await.unwrap().is_empty());

        // creating until the SC has made it.
        *sc.hold.lock().unwrap() = true;
        let v = c
            .create_volume(&alice, Some("2"), None, "zone1")
            .await
            .unwrap();
        assert_eq!(v.api_state(), "creating");
        c.ebs_tick().await.unwrap();
        let state = |id: &VolumeId| {
            let c = &c;
            let id = id.clone();
            async move {
                c.store
                    .list_volumes(None)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|v| v.id == id)
            }
        };
        assert_eq!(state(&v.id).await.unwrap().state, VolumeState::Creating);
        *sc.hold.lock().unwrap() = false;
        c.ebs_tick().await.unwrap();
        assert_eq!(state(&v.id).await.unwrap().state, VolumeState::Available);
        let vid = v.id.to_string();

        // Another account cannot see or touch it.
        assert!(c.describe_volumes(&bob, &[], &[]).await.unwrap().is_empty());
        assert_eq!(
            c.delete_volume(&bob, &vid).await.unwrap_err().kind,
            ErrorKind::VolumeNotFound
        );
        assert_eq!(
            c.delete_volume(&alice, "vol-xyz").await.unwrap_err().kind,
            ErrorKind::VolumeIdMalformed
        );

        // Attach: validated, then attaching with an export to the node.
        let inst = c.run_instances(&alice, run(&img, 1, 1)).await.unwrap()[0]
            .id
            .to_string();
        let bobs = c.run_instances(&bob, run(&img, 1, 1)).await.unwrap()[0]
            .id
            .to_string();
        fn att<'a>(vol: &'a str, i: &'a str, d: &'a str) -> AttachRequest<'a> {
            AttachRequest {
                volume_id: vol,
                instance_id: i,
                device: d,
            }
        }
        let v2 = c
            .create_volume(&alice, Some("1"), None, "zone1")
            .await
            .unwrap();
        let v2id = v2.id.to_string();
        assert_eq!(
            kind(c.attach_volume(&alice, att(&vid, &inst, "/dev/sda")).await),
            ErrorKind::InvalidParameterValue
        );
        assert_eq!(
            kind(c.attach_volume(&alice, att(&vid, &bobs, "/dev/sdb")).await),
            ErrorKind::InstanceNotFound
        );
        *sc.hold.lock().unwrap() = true;
        let got = c
            .attach_volume(&alice, att(&vid, &inst, "/dev/sdb"))
            .await
            .unwrap();
        assert_eq!(got.api_state(), "in-use");
        assert_eq!(
            got.attachment.as_ref().unwrap().state,
            AttachState::Attaching,
            "not attached before the NC says so"
        );
        let d = sc.last.lock().unwrap().clone().unwrap();
        let spec = d.volumes.iter().find(|s| s.volume_id == vid).unwrap();
        assert_eq!(
            spec.exports,
            vec![ExportSpec {
                node_id: "node-1".into(),
                instance_id: inst.clone(),
            }]
        );
        assert!(
            c.ready_export(&v.id, "node-1", &InstanceId::parse(&inst).unwrap())
                .is_none(),
            "the SC has not opened it yet"
        );
        assert_eq!(
            kind(c.attach_volume(&alice, att(&vid, &inst, "/dev/sdc")).await),
            ErrorKind::VolumeInUse
        );
        assert_eq!(
            kind(
                c.attach_volume(&alice, att(&v2id, &inst, "/dev/xvdb"))
                    .await
            ),
            ErrorKind::InvalidParameterValue,
            "/dev/xvdb is /dev/sdb's slot"
        );
        assert_eq!(
            c.delete_volume(&alice, &vid).await.unwrap_err().kind,
            ErrorKind::VolumeInUse
        );
        // The NC gets the export with the instance, plugs it in: attached.
        *sc.hold.lock().unwrap() = false;
        c.ebs_tick().await.unwrap();
        let z = fake.last.lock().unwrap().clone().unwrap();
        let d = z
            .instances
            .iter()
            .find(|d| d.spec.instance_id == inst)
            .unwrap();
        assert_eq!(d.volumes.len(), 1);
        assert_eq!(
            (
                d.volumes[0].volume_id.as_str(),
                d.volumes[0].device.as_str()
            ),
            (vid.as_str(), "/dev/sdb")
        );
        assert_eq!(d.volumes[0].nbd.port, 10809);
        assert_eq!(
            state(&v.id).await.unwrap().attachment.unwrap().state,
            AttachState::Attached
        );
        let plugged = NodeVolumes {
            plugged: [(inst.clone(), vec![vid.clone()])].into_iter().collect(),
            reporting: ["node-1".to_string()].into(),
            failed: HashMap::new(),
        };
        let unplugged = NodeVolumes {
            plugged: HashMap::new(),
            ..plugged.clone()
        };
        assert!(
            !c.observe_attachments(&plugged).await.unwrap(),
            "idempotent"
        );

        // Detach: the attachment must match; detaching until unplugged.
        assert_eq!(
            c.detach_volume(&alice, &vid, Some(&bobs), None, false)
                .await
                .unwrap_err()
                .kind,
            ErrorKind::AttachmentNotFound
        );
        let dv = c
            .detach_volume(&alice, &vid, Some(&inst), Some("/dev/sdb"), false)
            .await
            .unwrap();
        assert_eq!(dv.attachment.unwrap().state, AttachState::Detaching);
        assert!(
            !c.observe_attachments(&plugged).await.unwrap(),
            "still plugged"
        );

        // The NC no longer has it in the instance's set: unplugged, gone.
        c.ebs_tick().await.unwrap();
        let z = fake.last.lock().unwrap().clone().unwrap();
        assert!(z.instances.iter().all(|d| d.volumes.is_empty()));
        let after = state(&v.id).await.unwrap();
        assert!(after.attachment.is_none());
        assert_eq!(after.api_state(), "available");
        assert_eq!(
            c.detach_volume(&alice, &vid, None, None, false)
                .await
                .unwrap_err()
                .kind,
            ErrorKind::IncorrectState
        );

        // Detaching, and the node has not reported since a restart: it has
        // not said it let go, so the volume stays detaching (its export
        // open) until it does.
        c.attach_volume(&alice, att(&vid, &inst, "/dev/sdb"))
            .await
            .unwrap();
        c.ebs_tick().await.unwrap();
        let mut held = state(&v.id).await.unwrap();
        held.attachment.as_mut().unwrap().state = AttachState::Detaching;
        c.store.put_volume(&held).await.unwrap();
        assert!(
            !c.observe_attachments(&NodeVolumes::default())
                .await
                .unwrap(),
            "detached on the word of a node that has not reported"
        );
        assert!(
            c.observe_attachments(&unplugged).await.unwrap(),
            "its node reports it unplugged"
        );
        assert!(state(&v.id).await.unwrap().attachment.is_none());

        // An attach that keeps failing: attaching while young, then given
        // up (EC2's volume goes back to available), with the NC's reason
        // in the log.
        c.attach_volume(&alice, att(&vid, &inst, "/dev/sdb"))
            .await
            .unwrap();
        let mut young = state(&v.id).await.unwrap();
        young.attachment.as_mut().unwrap().state = AttachState::Attaching;
        c.store.put_volume(&young).await.unwrap();
        let failing = NodeVolumes {
            failed: [(
                (inst.clone(), vid.clone()),
                "device_add: no slot".to_string(),
            )]
            .into(),
            ..unplugged.clone()
        };
        assert!(!c.observe_attachments(&failing).await.unwrap(), "too soon");
        let mut old = state(&v.id).await.unwrap();
        old.attachment.as_mut().unwrap().attach_ms -= 2 * ATTACH_GIVE_UP.as_millis() as i64;
        c.store.put_volume(&old).await.unwrap();
        assert!(c.observe_attachments(&failing).await.unwrap());
        assert_eq!(state(&v.id).await.unwrap().api_state(), "available");

        // Force: the attachment and the export go at once (the guest is not
        // asked). Attached again to another instance on the same NC, the
        // volume is exported for that instance, not under the export the
        // first VM's QEMU may still try to reconnect to.
        let inst2 = c.run_instances(&alice, run(&img, 1, 1)).await.unwrap()[0]
            .id
            .to_string();
        c.attach_volume(&alice, att(&vid, &inst, "/dev/sdb"))
            .await
            .unwrap();
        c.ebs_tick().await.unwrap();
        assert_eq!(
            state(&v.id).await.unwrap().attachment.unwrap().state,
            AttachState::Attached
        );
        let exports_of = |vid: &str| {
            let d = sc.last.lock().unwrap().clone().unwrap();
            d.volumes
                .iter()
                .find(|x| x.volume_id == vid)
                .unwrap()
                .exports
                .clone()
        };
        assert_eq!(exports_of(&vid)[0].instance_id, inst);
        let forced = c
            .detach_volume(&alice, &vid, None, None, true)
            .await
            .unwrap();
        assert_eq!(forced.attachment.unwrap().state, AttachState::Detaching);
        assert!(
            exports_of(&vid).is_empty(),
            "the export is withdrawn at once"
        );
        // Withdrawn while the record still says detaching, not only once
        // the NC's report ends the attachment.
        let mut still = state(&v.id).await.unwrap();
        still.attachment = Some(VolumeAttachment {
            instance_id: InstanceId::parse(&inst).unwrap(),
            device: "/dev/sdb".into(),
            state: AttachState::Detaching,
            attach_ms: now_ms(),
            force_detach: true,
        });
        c.store.put_volume(&still).await.unwrap();
        let d = c.desired_storage().await.unwrap();
        let spec = d.volumes.iter().find(|x| x.volume_id == vid).unwrap();
        assert!(spec.exports.is_empty(), "{spec:?}");
        still.attachment = None;
        c.store.put_volume(&still).await.unwrap();
        c.ebs_tick().await.unwrap();
        assert!(state(&v.id).await.unwrap().attachment.is_none());
        c.attach_volume(&alice, att(&vid, &inst2, "/dev/sdb"))
            .await
            .unwrap();
        assert_eq!(
            exports_of(&vid),
            vec![ExportSpec {
                node_id: "node-1".into(),
                instance_id: inst2.clone(),
            }]
        );
        c.detach_volume(&alice, &vid, None, None, true)
            .await
            .unwrap();
        c.ebs_tick().await.unwrap();
        c.terminate_instances(&alice, std::slice::from_ref(&inst2))
            .await
            .unwrap();
        c.ebs_tick().await.unwrap();
        assert_eq!(state(&v.id).await.unwrap().api_state(), "available");

        // A terminated instance's volumes become available, data intact.
        c.attach_volume(&alice, att(&v2id, &inst, "/dev/vdc"))
            .await
            .unwrap();
        c.terminate_instances(&alice, std::slice::from_ref(&inst))
            .await
            .unwrap();
        c.ebs_tick().await.unwrap();
        let v2now = state(&v2.id).await.unwrap();
        assert!(v2now.attachment.is_none() && v2now.state == VolumeState::Available);
        // An instance not yet running is refused as EC2 refuses it.
        let mut pending = c
            .store
            .instance(&InstanceId::parse(&inst).unwrap())
            .await
            .unwrap()
            .unwrap();
        pending.id = InstanceId::generate();
        pending.state = InstanceState::Pending;
        c.store
            .insert_instances(std::slice::from_ref(&pending))
            .await
            .unwrap();
        let refused = c
            .attach_volume(&alice, att(&v2id, pending.id.as_str(), "/dev/vdc"))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.kind, refused.message),
            (
                ErrorKind::IncorrectState,
                format!("Instance '{}' is not 'running'.", pending.id)
            )
        );
        assert!(state(&v2.id).await.unwrap().attachment.is_none());

        // Snapshot: pending until the SC has uploaded it, then completed.
        *sc.hold.lock().unwrap() = true;
        let s = c.create_snapshot(&alice, &vid, "first").await.unwrap();
        assert_eq!(s.state, SnapshotState::Pending);
        let d = sc.last.lock().unwrap().clone().unwrap();
        // The SC gets the upload the CLC made: every part it may need and
        // the completion, presigned; the record keeps the upload's id.
        let t = &d.snapshots[0].target;
        let upload = s.upload_id.clone().unwrap();
        let plan = plan_parts(u64::from(s.volume_size_gib) << 30);
        assert_eq!(
            (t.part_size, t.part_urls.len()),
            (plan.part_size, plan.parts as usize)
        );
        assert!(
            t.part_urls[0].contains(SNAPSHOT_BUCKET) && t.part_urls[0].contains("partNumber=1&")
        );
        assert!(t.part_urls.iter().all(|u| u.contains(&upload)));
        assert!(t.complete_url.contains(&format!("uploadId={upload}")));
        // Resent: the same upload.
        c.push_storage().await.unwrap();
        let again = sc.last.lock().unwrap().clone().unwrap();
        assert_eq!(again.snapshots[0].target, *t);
        let listed = c
            .describe_snapshots(&alice, &[], &["self".into()], &[], &[])
            .await
            .unwrap();
        assert_eq!(listed[0].0.progress, 40);
        *sc.hold.lock().unwrap() = false;
        c.ebs_tick().await.unwrap();
        let sid = s.id.to_string();
        let done = &c
            .describe_snapshots(&alice, std::slice::from_ref(&sid), &[], &[], &[])
            .await
            .unwrap()[0]
            .0;
        assert_eq!((done.state, done.progress), (SnapshotState::Completed, 100));
        // Completing consumed the upload: nothing to abort, no URLs sent.
        assert_eq!(done.upload_id, None);
        c.push_storage().await.unwrap();
        let d = sc.last.lock().unwrap().clone().unwrap();
        assert_eq!(d.snapshots[0].target, WalrusTarget::default());

        // The operator's choice of compression applies to new snapshots;
        // each keeps the one it started with.
        c.store
            .set_property(crate::properties::SNAPSHOT_COMPRESSION, "zstd")
            .await
            .unwrap();
        *sc.hold.lock().unwrap() = true;
        let z = c.create_snapshot(&alice, &vid, "zstd").await.unwrap();
        assert_eq!(z.compression, "zstd");
        assert!(z.location.ends_with(".raw.zst"), "{}", z.location);
        let d = sc.last.lock().unwrap().clone().unwrap();
        let spec = d.snapshots.iter().find(|x| x.snapshot_id == z.id.as_str());
        assert_eq!(spec.unwrap().compression, Compression::Zstd);
        c.store
            .set_property(crate::properties::SNAPSHOT_COMPRESSION, "gzip")
            .await
            .unwrap();
        c.push_storage().await.unwrap();
        let d = sc.last.lock().unwrap().clone().unwrap();
        let spec = d.snapshots.iter().find(|x| x.snapshot_id == z.id.as_str());
        assert_eq!(spec.unwrap().compression, Compression::Zstd);
        c.delete_snapshot(&alice, z.id.as_str()).await.unwrap();
        *sc.hold.lock().unwrap() = false;

        // A snapshot that fails, and one deleted while pending, have their
        // uploads aborted.
        *sc.hold.lock().unwrap() = true;
        let failing = c.create_snapshot(&alice, &vid, "fails").await.unwrap();
        let deleted = c.create_snapshot(&alice, &vid, "deleted").await.unwrap();
        let mut report = sc.report().await.unwrap();
        for r in &mut report.snapshots {
            if r.snapshot_id == failing.id.as_str() {
                r.state = ironbark_sc_api::SnapshotState::Error;
                r.error = Some("disk on fire".into());
            }
        }
        c.observe_storage(&report).await.unwrap();
        c.delete_snapshot(&alice, deleted.id.as_str())
            .await
            .unwrap();
        let aborted = crate::instances::tests::ABORTED.lock().unwrap().clone();
        for s in [&failing, &deleted] {
            assert!(
                aborted.contains(s.upload_id.as_ref().unwrap()),
                "{aborted:?}"
            );
        }
        let failed = c
            .describe_snapshots(&alice, &[failing.id.to_string()], &[], &[], &[])
            .await
            .unwrap()[0]
            .0
            .clone();
        assert_eq!(
            (failed.state, failed.upload_id),
            (SnapshotState::Error, None)
        );
        c.delete_snapshot(&alice, failing.id.as_str())
            .await
            .unwrap();
        *sc.hold.lock().unwrap() = false;

        // Sharing: bob sees it only once shared, and restores from it.
        assert!(
            c.describe_snapshots(&bob, &[], &[], &[], &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            kind(c.create_volume(&bob, None, Some(&sid), "zone1").await),
            ErrorKind::SnapshotNotFound
        );
        let share = SnapshotPermissionChange {
            add_users: vec![bob.account.id.to_string()],
            ..Default::default()
        };
        assert_eq!(
            c.modify_snapshot_permissions(&bob, &sid, &share, false)
                .await
                .unwrap_err()
                .kind,
            ErrorKind::SnapshotNotFound
        );
        c.modify_snapshot_permissions(&alice, &sid, &share, false)
            .await
            .unwrap();
        assert_eq!(
            c.describe_snapshots(&bob, &[], &[], &[], &[])
                .await
                .unwrap()
                .len(),
            1
        );
        let restorable = |by: &str| {
            let (c, bob, by) = (&c, &bob, vec![by.to_string()]);
            async move {
                c.describe_snapshots(bob, &[], &[], &by, &[])
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(s, _)| s.id.to_string())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(restorable("self").await, vec![sid.clone()]);
        assert!(restorable("all").await.is_empty(), "not public");
        assert_eq!(
            kind(c.create_volume(&bob, Some("1"), Some(&sid), "zone1").await),
            ErrorKind::InvalidParameterValue,
            "smaller than the snapshot"
        );
        *sc.hold.lock().unwrap() = true;
        let restored = c
            .create_volume(&bob, None, Some(&sid), "zone1")
            .await
            .unwrap();
        assert_eq!(restored.size_gib, 2);
        // Not deleted from under a volume still being made from it.
        assert_eq!(
            c.delete_snapshot(&alice, &sid).await.unwrap_err().kind,
            ErrorKind::SnapshotInUse
        );
        let d = sc.last.lock().unwrap().clone().unwrap();
        let spec = d
            .volumes
            .iter()
            .find(|x| x.volume_id == restored.id.as_str())
            .unwrap();
        let src = spec.source.as_ref().unwrap();
        assert_eq!(src.snapshot_id, sid);
        assert_eq!(src.sha256.as_deref(), Some("5".repeat(64).as_str()));
        assert!(
            src.download_url
                .as_deref()
                .unwrap()
                .contains(SNAPSHOT_BUCKET)
        );
        *sc.hold.lock().unwrap() = false;
        c.ebs_tick().await.unwrap();
        c.modify_snapshot_permissions(&alice, &sid, &Default::default(), true)
            .await
            .unwrap();
        assert!(
            c.describe_snapshots(&bob, &[], &[], &[], &[])
                .await
                .unwrap()
                .is_empty()
        );

        // Delete: the snapshot at once, the volume once the SC dropped it.
        c.delete_snapshot(&alice, &sid).await.unwrap();
        assert_eq!(
            c.delete_snapshot(&alice, &sid).await.unwrap_err().kind,
            ErrorKind::SnapshotNotFound
        );
        *sc.hold.lock().unwrap() = true;
        c.delete_volume(&alice, &vid).await.unwrap();
        assert_eq!(state(&v.id).await.unwrap().api_state(), "deleting");
        *sc.hold.lock().unwrap() = false;
        c.ebs_tick().await.unwrap();
        assert!(
            state(&v.id).await.is_none(),
            "erased once the SC no longer has it"
        );

        // A volume the SC fails to make is `error`.
        *sc.hold.lock().unwrap() = true;
        let bad = c
            .create_volume(&alice, Some("1"), None, "zone1")
            .await
            .unwrap();
        let mut report = sc.report().await.unwrap();
        for x in &mut report.volumes {
            if x.volume_id == bad.id.as_str() {
                x.state = ScVolume::Error;
                x.error = Some("disk full".into());
            }
        }
        c.observe_storage(&report).await.unwrap();
        assert_eq!(state(&bad.id).await.unwrap().api_state(), "error");
        *sc.hold.lock().unwrap() = false;

        // A volume in another zone than the instance's is refused.
        let mut far = c
            .create_volume(&alice, Some("1"), None, "zone1")
            .await
            .unwrap();
        c.ebs_tick().await.unwrap();
        far = state(&far.id).await.unwrap();
        // (A second zone's volume, as its own record: a zone never changes.)
        far.id = VolumeId::generate();
        far.zone = "zone2".into();
        c.store.put_volume(&far).await.unwrap();
        let live = c.run_instances(&alice, run(&img, 1, 1)).await.unwrap()[0]
            .id
            .to_string();
        assert_eq!(
            kind(
                c.attach_volume(&alice, att(far.id.as_str(), &live, "/dev/sdb"))
                    .await
            ),
            ErrorKind::VolumeZoneMismatch
        );
        assert!(state(&far.id).await.unwrap().attachment.is_none());
    }

    #[test]
    fn only_what_no_snapshot_owns_is_swept() {
        let snap = |id: &SnapshotId, upload: Option<&str>| Snapshot {
            id: id.clone(),
            location: format!("{SNAPSHOT_BUCKET}/{}", snapshot_key(id, Compression::Gzip)),
            account_id: AccountId::parse("123456789012").unwrap(),
            volume_id: VolumeId::generate(),
            volume_size_gib: 1,
            description: String::new(),
            state: SnapshotState::Pending,
            progress: 0,
            started_ms: 0,
            compression: "gzip".into(),
            sha256: None,
            raw_digest: None,
            error: None,
            upload_id: upload.map(str::to_string),
            answered: true,
            public: false,
            shared_with: Vec::new(),
        };
        let (done, pending, gone) = (
            SnapshotId::generate(),
            SnapshotId::generate(),
            SnapshotId::generate(),
        );
        let key = |id: &SnapshotId| snapshot_key(id, Compression::Gzip);
        let records = vec![snap(&done, None), snap(&pending, Some("u-now"))];
        let listing = crate::SystemListing {
            keys: vec![key(&done), key(&gone), "notes.txt".into()],
            uploads: vec![
                (key(&pending), "u-now".into()),
                (key(&pending), "u-earlier".into()),
                (key(&gone), "u-gone".into()),
                ("notes.txt".into(), "u-admin".into()),
            ],
        };
        let (objects, uploads) = orphans(&records, &listing);
        assert_eq!(objects, vec![key(&gone)]);
        assert_eq!(
            uploads,
            vec![
                (key(&pending), "u-earlier".to_string()),
                (key(&gone), "u-gone".to_string())
            ]
        );
    }

    #[test]
    fn devices_as_the_original_accepted() {
        for ok in ["/dev/sdb", "/dev/vdz", "/dev/xvdf"] {
            assert!(valid_device(ok), "{ok}");
        }
        for bad in [
            "/dev/sda",
            "/dev/sdb1",
            "/dev/hdb",
            "sdb",
            "/dev/sd",
            "/dev/sdbb",
        ] {
            assert!(!valid_device(bad), "{bad}");
        }
        assert!(same_device("/dev/sdf", "/dev/xvdf"));
        assert!(!same_device("/dev/sdf", "/dev/sdg"));
    }
}
