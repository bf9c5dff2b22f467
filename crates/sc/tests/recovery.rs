//! What a kill -9 leaves behind, on the real file backend: half-made
//! volume files, downloads and snapshot copies are removed at start, never
//! reported, and the volume still wanted is made again from scratch.
//! Needs no QEMU (nothing is exported or snapshotted).

use std::time::{Duration, Instant};

use ironbark_sc::ScSettings;
use ironbark_sc_api::{DesiredStorage, SnapshotState, VolumeSpec, VolumeState};

#[tokio::test]
async fn a_restart_after_a_crash_removes_half_made_files_and_remakes_wanted_volumes() {
    let dir = std::env::temp_dir().join(format!("ironbark-sc-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("sc");
    std::fs::create_dir_all(data.join("volumes")).unwrap();
    std::fs::create_dir_all(data.join("snapshots")).unwrap();
    // As a crash in the middle of CreateVolume (from a snapshot download)
    // and of CreateSnapshot (compression) would leave them.
    std::fs::write(data.join("volumes/vol-1.raw.part"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(data.join("volumes/vol-1.raw.download"), b"half a download").unwrap();
    std::fs::write(data.join("snapshots/snap-1.raw.part"), b"half a copy").unwrap();
    std::fs::write(data.join("snapshots/snap-1.qcow2.part"), b"half a backup").unwrap();
    std::fs::write(data.join("snapshots/snap-1.zst.part"), b"half compressed").unwrap();
    let desired = DesiredStorage {
        generation: 7,
        volumes: vec![VolumeSpec {
            volume_id: "vol-1".into(),
            size_gib: 1,
            source: None,
            exports: vec![],
        }],
        snapshots: vec![],
    };
    std::fs::write(
        data.join("desired.json"),
        serde_json::to_vec(&desired).unwrap(),
    )
    .unwrap();

    let s = ironbark_sc::open(&ScSettings::new(&data, "t", "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        s.settle().await;
        let r = s.report();
        assert_eq!(r.generation, 7);
        assert!(
            r.snapshots
                .iter()
                .all(|s| s.state != SnapshotState::Completed)
        );
        if r.volumes.iter().any(|v| v.state == VolumeState::Available) {
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for left in [
        "volumes/vol-1.raw.part",
        "volumes/vol-1.raw.download",
        "snapshots/snap-1.raw.part",
        "snapshots/snap-1.qcow2.part",
        "snapshots/snap-1.zst.part",
    ] {
        assert!(!data.join(left).exists(), "{left} was left behind");
    }
    // Made afresh: the half-made file's bytes are not in it.
    let vol = data.join("volumes/vol-1.raw");
    assert_eq!(std::fs::metadata(&vol).unwrap().len(), 1 << 30);
    assert_eq!(ironbark_sc::sparse::digest_file(&vol).unwrap(), {
        let mut d = ironbark_sc::sparse::RawDigest::default();
        for (_, n) in ironbark_sc::sparse::segments(1 << 30) {
            d.segment(&ironbark_sc::sparse::zero_digest(n));
        }
        d.finish()
    });
    s.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
