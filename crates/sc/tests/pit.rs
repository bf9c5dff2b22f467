//! A snapshot's moment survives the SC: once a copy has begun (and the CLC
//! has told its caller so), an SC that dies and comes back follows that
//! copy to its end in the daemon that runs it, and the snapshot holds the
//! volume as it was at that moment, not as it is later. If the daemon died
//! too, the moment is lost and the snapshot fails rather than be taken
//! again later. Real `qemu-storage-daemon`s and `qemu-io`.
//!
//! Runs only with `IRONBARK_QEMU_TESTS=1` (needs `qemu-utils`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ironbark_sc::backend::{Fixed, Progress};
use ironbark_sc::{Backend, Codec, FileBackend, FileBackendConfig, Grant};
use ironbark_sc_api::{Compression, SnapshotSpec, WalrusTarget};

const NC: &str = "nc-here";
const MIB: usize = 1 << 20;

/// The scratch data dir, its daemons killed and files removed on drop.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        kill_daemons(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kill_daemons(data: &Path) {
    let Ok(rd) = std::fs::read_dir(data.join("run")) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with(".pid")
            && let Ok(p) = std::fs::read_to_string(e.path())
        {
            let _ = Command::new("kill").args(["-9", p.trim()]).status();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// An SC's file backend over `data`, as a fresh SC process makes it.
fn backend(data: &Path) -> FileBackend {
    let daemons = common::daemons(data, "qemu-storage-daemon".into(), (1, 1), &[NC]);
    FileBackend::new(
        FileBackendConfig {
            dir: data.to_path_buf(),
            qemu_img: "qemu-img".into(),
            codec: Codec::default(),
        },
        daemons,
    )
    .unwrap()
}

fn spec(id: &str) -> SnapshotSpec {
    SnapshotSpec {
        snapshot_id: id.into(),
        volume_id: "vol-p".into(),
        compression: Compression::Gzip,
        target: WalrusTarget::default(),
    }
}

fn qemu_io(image_opts: &str, cmd: &str) -> bool {
    let out = Command::new("qemu-io")
        .args(["--image-opts", image_opts, "-c", cmd])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && !text.contains("fail") && !text.contains("error")
}

/// A 64 MiB volume whose first MiB is 0xaa.
fn volume(data: &Path) -> PathBuf {
    std::fs::create_dir_all(data.join("volumes")).unwrap();
    let file = data.join("volumes/vol-p.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    assert!(qemu_io(
        &format!("driver=file,filename={}", file.display()),
        "write -P 0xaa 0 1M"
    ));
    file
}

/// Starts the copy in its own task, and returns once its moment is fixed,
/// with the task still running (the caller aborts it: the SC dies there).
async fn begin_copy(b: Arc<FileBackend>, id: &str) -> tokio::task::JoinHandle<()> {
    let fixed_flag = Arc::new(AtomicBool::new(false));
    let f = fixed_flag.clone();
    let fixed: Fixed = Arc::new(move || f.store(true, Ordering::SeqCst));
    let progress: Progress = Arc::new(|_| {});
    let s = spec(id);
    let task = tokio::spawn(async move {
        let _ = b.snapshot_raw(&s, progress, fixed).await;
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fixed_flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the copy never began");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sc_finishes_the_copy_at_its_moment_or_fails_it() {
    if !common::qemu_tests() {
        return;
    }
    let root =
        Scratch(std::env::temp_dir().join(format!("ironbark-sc-pit-{}", std::process::id())));
    let data = root.0.join("sc");
    std::fs::create_dir_all(&data).unwrap();
    volume(&data);

    // The volume is attached (exported to this host's NC) while the first
    // SC begins the copy and dies.
    let first = Arc::new(backend(&data));
    let grant = Grant {
        node_id: NC.into(),
        instance_id: "i-p".into(),
        export: "e-p".into(),
        identity: String::new(),
        psk_hex: String::new(),
    };
    let nbd = first
        .set_exports("vol-p", std::slice::from_ref(&grant))
        .await
        .unwrap()
        .remove(0);
    let sock = nbd.socket.clone().unwrap();
    let over_nbd = format!("driver=nbd,server.type=unix,server.path={sock},export=e-p");
    let task = begin_copy(first.clone(), "snap-p").await;
    task.abort();
    let _ = task.await;
    drop(first);
    // The guest writes on after the moment.
    assert!(qemu_io(&over_nbd, "write -P 0xbb 0 1M"));

    // A new SC process: its start-up sweep leaves the copy's files, and
    // the snapshot is the volume as of the moment.
    let second = backend(&data);
    second.recover().await.unwrap();
    let progress: Progress = Arc::new(|_| {});
    let fixed: Fixed = Arc::new(|| {});
    second
        .snapshot_raw(&spec("snap-p"), progress.clone(), fixed.clone())
        .await
        .unwrap();
    let raw = data.join("snapshots/snap-p.raw");
    let copy = std::fs::read(&raw).unwrap();
    assert_eq!(copy.len(), 64 << 20);
    assert!(
        copy[..MIB].iter().all(|b| *b == 0xaa),
        "the copy shows a later write"
    );
    assert!(
        qemu_io(&over_nbd, "read -P 0xbb 0 1M"),
        "the volume kept the write"
    );

    // The daemon dies with the SC this time: the moment is gone, and the
    // snapshot fails instead of being copied again from later data.
    let third = Arc::new(backend(&data));
    let task = begin_copy(third.clone(), "snap-q").await;
    task.abort();
    let _ = task.await;
    drop(third);
    kill_daemons(&data);
    let fourth = backend(&data);
    fourth.recover().await.unwrap();
    let err = fourth
        .snapshot_raw(&spec("snap-q"), progress, fixed)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cut off"), "{err}");
    assert!(!data.join("snapshots/snap-q.raw").exists());
    fourth.delete_snapshot("snap-q").await.unwrap();
    let left: Vec<_> = std::fs::read_dir(data.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap-q"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A volume nobody has attached: the restarted SC's first pass closes
    // its (no) exports, which must leave the daemon to its copy.
    let sixth = Arc::new(backend(&data));
    let task = begin_copy(sixth.clone(), "snap-s").await;
    task.abort();
    let _ = task.await;
    drop(sixth);
    let seventh = backend(&data);
    seventh.recover().await.unwrap();
    seventh.set_exports("vol-p", &[]).await.unwrap();
    seventh
        .snapshot_raw(&spec("snap-s"), Arc::new(|_| {}), Arc::new(|| {}))
        .await
        .unwrap();
    assert!(data.join("snapshots/snap-s.raw").is_file());
    assert!(
        seventh.served().await.unwrap().is_empty(),
        "the daemon outlived the copy"
    );

    // The SC died after the job ended well but before it published the
    // copy, and the daemon forgot the job: the copy was recorded whole,
    // so it is published, not failed.
    let snaps = data.join("snapshots");
    std::fs::write(snaps.join("snap-r.pit"), b"").unwrap();
    std::fs::write(snaps.join("snap-r.copied"), b"").unwrap();
    std::fs::write(snaps.join("snap-r.raw.part"), vec![0x5au8; MIB]).unwrap();
    std::fs::write(snaps.join("snap-r.qcow2.part"), b"metadata").unwrap();
    let fifth = backend(&data);
    fifth.recover().await.unwrap();
    fifth
        .snapshot_raw(&spec("snap-r"), Arc::new(|_| {}), Arc::new(|| {}))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(snaps.join("snap-r.raw")).unwrap(),
        vec![0x5au8; MIB]
    );
    for gone in [
        "snap-r.pit",
        "snap-r.copied",
        "snap-r.raw.part",
        "snap-r.qcow2.part",
    ] {
        assert!(!snaps.join(gone).exists(), "{gone} left behind");
    }
}
