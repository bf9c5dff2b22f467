//! Publishing a snapshot against a stand-in for Walrus' multipart upload,
//! which also misbehaves on demand: a snapshot is `completed` (has a
//! record) only once the store confirmed every part and the whole object,
//! a failed upload leaves no record and no file, and a retry into the same
//! upload completes it. Needs `zstd` on the PATH, not QEMU: the raw
//! copy is made by hand, as the backup would leave it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod common;

use ironbark_sc::backend::Backend;
use ironbark_sc::{Codec, FileBackend, FileBackendConfig};
use ironbark_sc_api::{Compression, SEGMENT_SIZE, SnapshotSpec};
use ironbark_walrus_standin::{Mode, StandIn};
use sha2::Digest;

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ironbark-sc-upload-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn backend(dir: &Path) -> FileBackend {
    let daemons = common::daemons(dir, "qemu-storage-daemon".into(), (1, 1), &[]);
    FileBackend::new(
        FileBackendConfig {
            dir: dir.to_path_buf(),
            qemu_img: "qemu-img".into(),
            codec: Codec::default(),
        },
        daemons,
    )
    .unwrap()
}

/// The raw copy a backup would have left: sparse, 40 MiB of noise from the
/// middle of the second of five segments (so the object takes three parts).
fn raw_copy(b: &FileBackend, id: &str) {
    let f = std::fs::File::create(b.snapshot_path(id)).unwrap();
    f.set_len(5 * SEGMENT_SIZE).unwrap();
    let noise: Vec<u8> = (0..40 << 20).map(|_| rand::random::<u8>()).collect();
    f.write_all_at(&noise, SEGMENT_SIZE + 4096).unwrap();
}

fn spec(id: &str, store: &StandIn) -> SnapshotSpec {
    SnapshotSpec {
        snapshot_id: id.into(),
        volume_id: "vol-x".into(),
        compression: Compression::Zstd,
        target: store.target(&format!("snapshots/{id}.zst"), 5 * SEGMENT_SIZE),
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".raw"))
        .collect()
}

#[tokio::test]
async fn a_failed_upload_leaves_no_record_and_a_retry_completes() {
    let dir = tmp("retry");
    let b = backend(&dir);
    let store = StandIn::start(Mode::DiesMidway, true).await;
    raw_copy(&b, "snap-a");
    let progress: ironbark_sc::backend::Progress = Arc::new(|_| {});
    let first = spec("snap-a", &store);
    let err = b
        .publish_snapshot(&first, progress.clone())
        .await
        .unwrap_err();
    eprintln!("failed as it should: {err}");
    assert!(b.snapshots().await.unwrap().is_empty());
    assert_eq!(leftovers(&dir), Vec::<String>::new());

    // The retry (as after an SC restart) sends every part again into the
    // same upload, which replaces the ones that made it the first time.
    *store.mode.lock().unwrap() = Mode::Walrus;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let r = b
        .publish_snapshot(&first, Arc::new(move |f| s2.lock().unwrap().push(f)))
        .await
        .unwrap();
    let (obj, etag) = store.object("snapshots/snap-a.zst").unwrap();
    assert_eq!(store.open_uploads(), 0);
    assert_eq!(r.sha256, hex::encode(sha2::Sha256::digest(&obj)));
    assert_eq!(r.md5, etag);
    assert!(r.md5.ends_with("-3"), "{}", r.md5);
    assert_eq!(r.compressed_size, obj.len() as u64);
    assert_eq!(
        r.raw_digest,
        ironbark_sc::sparse::digest_file(&b.snapshot_path("snap-a")).unwrap()
    );
    assert!(b.snapshots().await.unwrap().contains_key("snap-a"));
    assert_eq!(leftovers(&dir), vec!["snap-a.json".to_string()]);
    // Progress only grows, and the upload has its share of it.
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.iter().any(|f| *f > 0.5 && *f < 1.0), "{seen:?}");
    assert_eq!(seen.last().copied(), Some(1.0));
    // The object is standard zstd of the raw copy.
    std::fs::write(dir.join("obj.zst"), &obj).unwrap();
    let out = std::process::Command::new("zstd")
        .args(["-q", "-d", "-c"])
        .arg(dir.join("obj.zst"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == std::fs::read(b.snapshot_path("snap-a")).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_store_that_does_not_confirm_the_checksum_does_not_complete_a_snapshot() {
    let dir = tmp("careless");
    let b = backend(&dir);
    let store = StandIn::start(Mode::Careless, false).await;
    raw_copy(&b, "snap-b");
    let err = b
        .publish_snapshot(&spec("snap-b", &store), Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not confirm"), "{err}");
    assert!(b.snapshots().await.unwrap().is_empty());
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_completion_whose_answer_was_lost_is_confirmed_by_the_next_attempt() {
    let dir = tmp("lost");
    let b = backend(&dir);
    let store = StandIn::start(Mode::LosesCompletion, true).await;
    raw_copy(&b, "snap-c");
    let target = spec("snap-c", &store);
    // Walrus made the object, the SC never heard: no record, the parts it
    // listed kept beside the raw copy.
    let err = b
        .publish_snapshot(&target, Arc::new(|_| {}))
        .await
        .unwrap_err();
    eprintln!("failed as it should: {err}");
    assert!(b.snapshots().await.unwrap().is_empty());
    assert_eq!(leftovers(&dir), vec!["snap-c.completing".to_string()]);
    let (obj, etag) = store.object("snapshots/snap-c.zst").unwrap();
    assert_eq!(store.open_uploads(), 0);
    // The next attempt (after a restart, say) completes again, learns the
    // upload is gone, and records the object those parts made.
    *store.mode.lock().unwrap() = Mode::Walrus;
    let r = b.publish_snapshot(&target, Arc::new(|_| {})).await.unwrap();
    assert_eq!(r.md5, etag);
    assert_eq!(r.sha256, hex::encode(sha2::Sha256::digest(&obj)));
    assert_eq!(r.compressed_size, obj.len() as u64);
    assert_eq!(leftovers(&dir), vec!["snap-c.json".to_string()]);
    // Only the completion was sent again, no part.
    let completions = store
        .log()
        .iter()
        .filter(|e| matches!(e, ironbark_walrus_standin::Event::Completed(_)))
        .count();
    assert_eq!(completions, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
