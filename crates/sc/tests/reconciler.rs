//! The SC's volume, export and snapshot state machines over the in-memory
//! backend: what is reported while steps run, fail and are retried, and
//! what a restart keeps.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::vol;
use ironbark_sc::{Backend, FakeBackend, Storage, StorageConfig};
use ironbark_sc_api::{
    Compression, DesiredStorage, ExportState, SnapshotSource, SnapshotSpec, SnapshotState,
    StorageReport, VolumeSpec, VolumeState, WalrusTarget,
};

struct Tmp(std::path::PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("ironbark-sc-rec-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cfg(dir: &Tmp) -> StorageConfig {
    let mut c = StorageConfig::new("sc-test", &dir.0, "token");
    c.poll_interval = Duration::from_secs(3600);
    c.retry_after = Duration::from_millis(200);
    c
}

fn snap(id: &str, vol: &str) -> SnapshotSpec {
    SnapshotSpec {
        snapshot_id: id.into(),
        volume_id: vol.into(),
        compression: Compression::Gzip,
        target: WalrusTarget {
            part_size: 16 << 20,
            part_urls: vec!["http://192.0.2.9/bucket/key?partNumber=1&uploadId=u".into()],
            complete_url: "http://192.0.2.9/bucket/key?uploadId=u".into(),
        },
    }
}

fn desired(
    generation: u64,
    volumes: Vec<VolumeSpec>,
    snapshots: Vec<SnapshotSpec>,
) -> DesiredStorage {
    DesiredStorage {
        generation,
        volumes,
        snapshots,
    }
}

fn vstate(r: &StorageReport, id: &str) -> Option<VolumeState> {
    r.volumes
        .iter()
        .find(|v| v.volume_id == id)
        .map(|v| v.state)
}

fn sstate(r: &StorageReport, id: &str) -> Option<SnapshotState> {
    r.snapshots
        .iter()
        .find(|s| s.snapshot_id == id)
        .map(|s| s.state)
}

async fn eventually(s: &Arc<Storage>, what: &str, f: impl Fn(&StorageReport) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // No settle(): a step held at a gate would never let it return.
        s.reconcile().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let r = s.report();
        if f(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {r:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_volume_is_creating_until_whole_then_available_and_exported() {
    let dir = Tmp::new("create");
    let fake = Arc::new(FakeBackend::default());
    fake.hold("create:vol-1");
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    let r = s
        .apply(desired(1, vec![vol("vol-1", &["nc-a"])], vec![]))
        .await
        .unwrap();
    assert_eq!(vstate(&r, "vol-1"), Some(VolumeState::Creating));
    // No export of a volume that is not whole.
    assert!(r.volumes[0].exports.is_empty());
    assert!(fake.exports("vol-1").is_empty());
    fake.release("create:vol-1");
    eventually(&s, "available and exported", |r| {
        vstate(r, "vol-1") == Some(VolumeState::Available)
            && r.volumes[0]
                .exports
                .first()
                .is_some_and(|e| e.state == ExportState::Ready)
    })
    .await;
    let r = s.report();
    let e = r.volumes[0].exports[0].nbd.clone().unwrap();
    assert_eq!(e.export, "vol-1.nc-a.i-on-nc-a");
    assert_eq!(e.tls_identity, "nc-a.i-on-nc-a.vol-1");
    assert_eq!(e.psk_hex.len(), 64);
    // Keys differ per NC and per volume, and are stable.
    s.apply(desired(
        2,
        vec![vol("vol-1", &["nc-a", "nc-b"]), vol("vol-2", &["nc-a"])],
        vec![],
    ))
    .await
    .unwrap();
    eventually(&s, "both exported", |r| {
        r.volumes
            .iter()
            .all(|v| v.exports.iter().all(|e| e.state == ExportState::Ready))
            && r.volumes.iter().map(|v| v.exports.len()).sum::<usize>() == 3
    })
    .await;
    let keys: Vec<String> = s
        .report()
        .volumes
        .iter()
        .flat_map(|v| v.exports.iter().map(|e| e.nbd.clone().unwrap().psk_hex))
        .collect();
    assert_eq!(keys[0], e.psk_hex);
    assert!(keys[0] != keys[1] && keys[0] != keys[2] && keys[1] != keys[2]);
    // Detach: the export goes, the volume stays.
    s.apply(desired(
        3,
        vec![vol("vol-1", &[]), vol("vol-2", &["nc-a"])],
        vec![],
    ))
    .await
    .unwrap();
    eventually(&s, "unexported", |r| r.volumes[0].exports.is_empty()).await;
    assert!(fake.exports("vol-1").is_empty());
    assert_eq!(vstate(&s.report(), "vol-1"), Some(VolumeState::Available));
}

#[tokio::test]
async fn a_failed_create_is_retried_and_still_creating() {
    let dir = Tmp::new("fail");
    let fake = Arc::new(FakeBackend::default());
    fake.fail("create:vol-1", true);
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.apply(desired(1, vec![vol("vol-1", &[])], vec![]))
        .await
        .unwrap();
    eventually(&s, "creating, with the failure", |r| {
        vstate(r, "vol-1") == Some(VolumeState::Creating) && r.volumes[0].error.is_some()
    })
    .await;
    assert!(
        s.report().volumes[0]
            .error
            .as_deref()
            .unwrap()
            .contains("fake")
    );
    fake.fail("create:vol-1", false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    eventually(&s, "available after retry", |r| {
        vstate(r, "vol-1") == Some(VolumeState::Available)
    })
    .await;
}

#[tokio::test]
async fn invalid_specs_are_errors_not_files() {
    let dir = Tmp::new("invalid");
    let fake = Arc::new(FakeBackend::default());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    let r = s
        .apply(desired(
            1,
            vec![vol("../etc", &[]), vol("vol-2", &["nc:x"])],
            vec![],
        ))
        .await
        .unwrap();
    assert_eq!(vstate(&r, "../etc"), Some(VolumeState::Error));
    assert_eq!(vstate(&r, "vol-2"), Some(VolumeState::Error));
    assert!(!fake.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test]
async fn deleting_closes_exports_and_forgets_the_volume() {
    let dir = Tmp::new("delete");
    let fake = Arc::new(FakeBackend::default());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.apply(desired(1, vec![vol("vol-1", &["nc-a"])], vec![]))
        .await
        .unwrap();
    eventually(&s, "exported", |r| {
        !r.volumes.is_empty() && !r.volumes[0].exports.is_empty()
    })
    .await;
    fake.hold("delete:vol-1");
    let r = s.apply(desired(2, vec![], vec![])).await.unwrap();
    assert_eq!(vstate(&r, "vol-1"), Some(VolumeState::Deleting));
    assert!(r.volumes[0].exports.is_empty());
    fake.release("delete:vol-1");
    eventually(&s, "gone", |r| r.volumes.is_empty()).await;
    assert!(fake.volumes().await.unwrap().is_empty());
    assert!(fake.exports("vol-1").is_empty());
}

#[tokio::test]
async fn a_snapshot_is_pending_until_published_then_completed() {
    let dir = Tmp::new("snap");
    let fake = Arc::new(FakeBackend::default());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.apply(desired(1, vec![vol("vol-1", &["nc-a"])], vec![]))
        .await
        .unwrap();
    eventually(&s, "available", |r| {
        vstate(r, "vol-1") == Some(VolumeState::Available)
    })
    .await;
    fake.hold("raw:snap-1");
    fake.hold("publish:snap-1");
    s.apply(desired(
        2,
        vec![vol("vol-1", &["nc-a"])],
        vec![snap("snap-1", "vol-1")],
    ))
    .await
    .unwrap();
    // The copy has begun: the moment is fixed (what the CLC waits for)
    // while the copy itself is still under way.
    eventually(&s, "moment fixed, copying", |r| {
        sstate(r, "snap-1") == Some(SnapshotState::Pending)
            && r.snapshots[0].point_in_time
            && r.snapshots[0].progress < 50
    })
    .await;
    fake.release("raw:snap-1");
    eventually(&s, "pending, half done", |r| {
        sstate(r, "snap-1") == Some(SnapshotState::Pending) && r.snapshots[0].progress >= 50
    })
    .await;
    let r = s.report();
    assert!(r.snapshots[0].sha256.is_none());
    // An upload that fails is tried again: the snapshot stays pending,
    // its last error shown, and completes once the fault has passed.
    fake.fail("publish:snap-1", true);
    fake.release("publish:snap-1");
    eventually(&s, "pending with the failure", |r| {
        sstate(r, "snap-1") == Some(SnapshotState::Pending) && r.snapshots[0].error.is_some()
    })
    .await;
    fake.fail("publish:snap-1", false);
    eventually(&s, "completed", |r| {
        sstate(r, "snap-1") == Some(SnapshotState::Completed)
    })
    .await;
    let r = s.report();
    assert_eq!(r.snapshots[0].progress, 100);
    assert!(r.snapshots[0].sha256.is_some() && r.snapshots[0].raw_digest.is_some());
    // The copy step ran once: the retry only published again.
    assert_eq!(
        fake.calls().iter().filter(|c| *c == "raw:snap-1").count(),
        1
    );

    // A volume from it.
    let mut v2 = vol("vol-2", &[]);
    v2.source = Some(SnapshotSource {
        snapshot_id: "snap-1".into(),
        download_url: None,
        compression: Compression::Gzip,
        sha256: None,
        raw_digest: None,
        force_download: false,
    });
    s.apply(desired(
        3,
        vec![vol("vol-1", &["nc-a"]), v2],
        vec![snap("snap-1", "vol-1")],
    ))
    .await
    .unwrap();
    eventually(&s, "restored", |r| {
        vstate(r, "vol-2") == Some(VolumeState::Available)
    })
    .await;
    // Forgetting the snapshot deletes the SC's copy.
    s.apply(desired(4, vec![vol("vol-1", &[])], vec![]))
        .await
        .unwrap();
    eventually(&s, "snapshot gone", |r| {
        r.snapshots.is_empty() && r.volumes.len() == 1
    })
    .await;
    assert!(fake.snapshots().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_snapshot_of_a_missing_volume_is_an_error() {
    let dir = Tmp::new("snap-missing");
    let fake = Arc::new(FakeBackend::default());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.apply(desired(1, vec![], vec![snap("snap-1", "vol-9")]))
        .await
        .unwrap();
    eventually(&s, "error", |r| {
        sstate(r, "snap-1") == Some(SnapshotState::Error)
    })
    .await;
}

/// A fault that lasts: a volume's create and a snapshot's upload are tried
/// a few times (reported `creating` / `pending` meanwhile), then `error`,
/// and then left alone, not tried every 30 s for ever.
#[tokio::test]
async fn a_lasting_failure_ends_in_error_after_a_few_tries() {
    let dir = Tmp::new("lasting");
    let fake = Arc::new(FakeBackend::default());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.apply(desired(1, vec![vol("vol-1", &[])], vec![]))
        .await
        .unwrap();
    eventually(&s, "available", |r| {
        vstate(r, "vol-1") == Some(VolumeState::Available)
    })
    .await;
    fake.fail("create:vol-2", true);
    fake.fail("publish:snap-1", true);
    s.apply(desired(
        2,
        vec![vol("vol-1", &[]), vol("vol-2", &[])],
        vec![snap("snap-1", "vol-1")],
    ))
    .await
    .unwrap();
    eventually(&s, "creating and pending after the first failures", |r| {
        vstate(r, "vol-2") == Some(VolumeState::Creating)
            && r.volumes.iter().any(|v| v.error.is_some())
            && sstate(r, "snap-1") == Some(SnapshotState::Pending)
            && r.snapshots[0].error.is_some()
    })
    .await;
    eventually(&s, "both errors", |r| {
        vstate(r, "vol-2") == Some(VolumeState::Error)
            && sstate(r, "snap-1") == Some(SnapshotState::Error)
    })
    .await;
    let tries = |step: &str| fake.calls().iter().filter(|c| *c == step).count();
    let (creates, publishes) = (tries("create:vol-2"), tries("publish:snap-1"));
    assert_eq!((creates, publishes), (4, 4));
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.settle().await;
    assert_eq!(
        (tries("create:vol-2"), tries("publish:snap-1")),
        (creates, publishes),
        "tried again after the failure was final"
    );
}

#[tokio::test]
async fn a_restart_keeps_desired_exports_and_closes_the_rest() {
    let dir = Tmp::new("restart");
    let fake = Arc::new(FakeBackend::default());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.apply(desired(
        5,
        vec![vol("vol-1", &["nc-a"]), vol("vol-2", &[])],
        vec![],
    ))
    .await
    .unwrap();
    eventually(&s, "exported", |r| {
        r.volumes
            .iter()
            .find(|v| v.volume_id == "vol-1")
            .is_some_and(|v| !v.exports.is_empty())
            && r.volumes.len() == 2
    })
    .await;
    let before = fake.exports("vol-1");
    s.shutdown();
    drop(s);
    // A stray export (of a volume that was being detached when the SC died)
    // and an export of a volume nobody wants.
    fake.put_export("vol-2", before.clone());
    fake.put_export("vol-gone", before.clone());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.settle().await;
    let r = s.report();
    assert_eq!(r.generation, 5);
    assert_eq!(fake.exports("vol-1"), before);
    assert!(fake.exports("vol-2").is_empty(), "{:?}", fake.calls());
    assert!(fake.exports("vol-gone").is_empty());
    // An older desired state is ignored.
    let r = s.apply(desired(4, vec![], vec![])).await.unwrap();
    assert_eq!(r.generation, 5);
    assert_eq!(r.volumes.len(), 2);
}

/// An attachment plugged in before exports were per instance (an SC and
/// CLC upgraded in place) keeps the per-NC export its guest is connected
/// to, through the new CLC's desired state and an SC restart, until it
/// ends; the next attachment gets a per-instance export.
#[tokio::test]
async fn an_attachment_from_before_per_instance_exports_keeps_its_export() {
    let dir = Tmp::new("legacy");
    let fake = Arc::new(FakeBackend::default());
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    let to = |instance: &str| {
        let mut v = vol("vol-1", &["nc-a"]);
        v.exports[0].instance_id = instance.into();
        v
    };
    let name = |r: &StorageReport| {
        r.volumes[0]
            .exports
            .first()
            .and_then(|e| e.nbd.as_ref())
            .map(|n| n.export.clone())
    };
    // As the old CLC asked: no instance.
    s.apply(desired(1, vec![to("")], vec![])).await.unwrap();
    eventually(&s, "exported per NC", |r| {
        name(r).as_deref() == Some("vol-1.nc-a")
    })
    .await;
    // The new CLC names the instance: the export stays.
    s.apply(desired(2, vec![to("i-1")], vec![])).await.unwrap();
    s.settle().await;
    s.reconcile().await;
    let r = s.report();
    assert_eq!(name(&r).as_deref(), Some("vol-1.nc-a"));
    assert_eq!(r.volumes[0].exports[0].instance_id, "i-1");
    // So it does through an SC restart.
    s.shutdown();
    drop(s);
    let s = Storage::start(cfg(&dir), fake.clone()).await.unwrap();
    s.settle().await;
    s.reconcile().await;
    assert_eq!(name(&s.report()).as_deref(), Some("vol-1.nc-a"));
    assert_eq!(fake.exports("vol-1")[0].export, "vol-1.nc-a");
    // Detached, then attached again: per instance.
    s.apply(desired(3, vec![vol("vol-1", &[])], vec![]))
        .await
        .unwrap();
    s.settle().await;
    s.apply(desired(4, vec![to("i-1")], vec![])).await.unwrap();
    eventually(&s, "exported per instance", |r| {
        name(r).as_deref() == Some("vol-1.nc-a.i-1")
    })
    .await;
}
