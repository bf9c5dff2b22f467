//! The SC with real files, real `qemu-storage-daemon`s and QEMU's own NBD
//! client (`qemu-io`), and the in-process stand-in for Walrus' multipart
//! upload and presigned GET ([`ironbark_walrus_standin`]: it checks every
//! part's and the object's `x-amz-checksum-crc32`, the parts' ETags and
//! sizes, as Walrus does).
//!
//! Runs only with `IRONBARK_QEMU_TESTS=1` (needs `qemu-utils` with
//! `qemu-storage-daemon` and `qemu-io`, and `zstd`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironbark_sc::{ScSettings, Storage};
use ironbark_sc_api::{
    Compression, DesiredStorage, ExportSpec, ExportState, NbdExport, SnapshotSource, SnapshotSpec,
    SnapshotState, StorageReport, VolumeSpec, VolumeState,
};
use ironbark_walrus_standin::{Mode, StandIn};
use md5::Digest as _;
use sha2::Digest;

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        // Daemons first: they hold the files.
        for pid in find(&self.0, ".pid") {
            if let Ok(p) = std::fs::read_to_string(&pid) {
                let cmd = std::fs::read(format!("/proc/{}/cmdline", p.trim())).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains("qemu-storage-daemon") {
                    let _ = Command::new("kill").args(["-9", p.trim()]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(find(&p, suffix));
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

/// An attachment to an instance on NC `n`.
fn export_to(n: &str) -> ExportSpec {
    ExportSpec {
        node_id: n.into(),
        instance_id: format!("i-on-{n}"),
    }
}

fn vol(id: &str, gib: u64, exports: &[&str], source: Option<SnapshotSource>) -> VolumeSpec {
    VolumeSpec {
        volume_id: id.into(),
        size_gib: gib,
        source,
        exports: exports.iter().map(|n| export_to(n)).collect(),
    }
}

async fn wait(
    s: &Arc<Storage>,
    what: &str,
    timeout: Duration,
    f: impl Fn(&StorageReport) -> bool,
) -> StorageReport {
    let deadline = Instant::now() + timeout;
    loop {
        s.settle().await;
        s.reconcile().await;
        let r = s.report();
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "never {what}: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn nbd_of(r: &StorageReport, vol: &str) -> Option<NbdExport> {
    let v = r.volumes.iter().find(|v| v.volume_id == vol)?;
    if v.state != VolumeState::Available {
        return None;
    }
    let e = v.exports.first()?;
    (e.state == ExportState::Ready)
        .then(|| e.nbd.clone())
        .flatten()
}

/// Runs `qemu-io` against an export with the given identity and key.
fn qemu_io(
    scratch: &Path,
    nbd: &NbdExport,
    identity: &str,
    key: &str,
    cmd: &str,
) -> std::process::Output {
    let dir = scratch.join(format!("client-{identity}-{}", &key[..8]));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keys.psk"), format!("{identity}:{key}\n")).unwrap();
    Command::new("qemu-io")
        .arg("--object")
        .arg(format!(
            "tls-creds-psk,id=tls0,endpoint=client,dir={},username={identity}",
            dir.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,host={},port={},export={},tls-creds=tls0",
            nbd.host, nbd.port, nbd.export
        ))
        .args(["-c", cmd])
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> bool {
    // qemu-io reports some failures on stdout with status 0.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && !text.contains("failed") && !text.contains("error")
}

fn settings(dir: &Path, ports: (u16, u16)) -> ScSettings {
    let mut s = ScSettings::new(dir, "token", "127.0.0.1:0".parse().unwrap());
    s.nbd_ports = ports;
    s
}

fn snapshot(id: &str, vol: &str, kind: Compression, walrus: &StandIn) -> SnapshotSpec {
    SnapshotSpec {
        snapshot_id: id.into(),
        volume_id: vol.into(),
        compression: kind,
        target: walrus.target(&format!("snapshots/{id}.{}", kind.extension()), 1 << 30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_exported_only_to_their_nc_and_snapshots_round_trip_through_walrus() {
    if !common::qemu_tests() {
        return;
    }
    let root = Tmp(std::env::temp_dir().join(format!("ironbark-sc-real-{}", std::process::id())));
    // Longer than a Unix socket path may be: QMP sockets must live elsewhere.
    let data = root
        .0
        .join("a-data-directory-whose-path-is-long-enough".repeat(3))
        .join("sc");
    assert!(data.to_string_lossy().len() > 110);
    let scratch = root.0.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let base = 20000 + (std::process::id() % 200) as u16 * 50;
    let ports = (base, base + 49);
    let walrus = StandIn::start(Mode::Walrus, true).await;
    let waddr = walrus.addr();

    let s = ironbark_sc::open(&settings(&data, ports)).await.unwrap();
    s.apply(DesiredStorage {
        generation: 1,
        volumes: vec![vol("vol-1", 1, &["nc-a"], None)],
        snapshots: vec![],
    })
    .await
    .unwrap();
    let r = wait(&s, "vol-1 exported", Duration::from_secs(30), |r| {
        nbd_of(r, "vol-1").is_some()
    })
    .await;
    let nbd = nbd_of(&r, "vol-1").unwrap();
    assert_eq!(nbd.tls_identity, "nc-a.i-on-nc-a.vol-1");
    let raw = data.canonicalize().unwrap().join("volumes/vol-1.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 30);

    // The NC named, with its key: reads and writes.
    let w = qemu_io(
        &scratch,
        &nbd,
        &nbd.tls_identity,
        &nbd.psk_hex,
        "write -P 0x5a 0 4M",
    );
    assert!(ok(&w), "write failed: {w:?}");
    let w = qemu_io(
        &scratch,
        &nbd,
        &nbd.tls_identity,
        &nbd.psk_hex,
        "write -P 0xa5 600M 1M",
    );
    assert!(ok(&w), "write failed: {w:?}");
    let rd = qemu_io(
        &scratch,
        &nbd,
        &nbd.tls_identity,
        &nbd.psk_hex,
        "read -P 0x5a 0 4M",
    );
    assert!(ok(&rd), "read failed: {rd:?}");
    // Another identity, a wrong key, or no TLS at all: refused.
    let other_key = "ab".repeat(32);
    let bad = qemu_io(
        &scratch,
        &nbd,
        "nc-b.i-on-nc-b.vol-1",
        &other_key,
        "read 0 4k",
    );
    assert!(!ok(&bad), "another NC got in: {bad:?}");
    let bad = qemu_io(&scratch, &nbd, &nbd.tls_identity, &other_key, "read 0 4k");
    assert!(!ok(&bad), "a wrong key got in: {bad:?}");
    let plain = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4k"])
        .arg(format!("nbd://{}:{}/{}", nbd.host, nbd.port, nbd.export))
        .output()
        .unwrap();
    assert!(!ok(&plain), "a client without TLS got in: {plain:?}");

    // Snapshots, gzip and zstd, while exported.
    let d = |g, snaps: Vec<SnapshotSpec>, vols: Vec<VolumeSpec>| DesiredStorage {
        generation: g,
        volumes: vols,
        snapshots: snaps,
    };
    let snaps = vec![
        snapshot("snap-1", "vol-1", Compression::Gzip, &walrus),
        snapshot("snap-2", "vol-1", Compression::Zstd, &walrus),
    ];
    s.apply(d(2, snaps.clone(), vec![vol("vol-1", 1, &["nc-a"], None)]))
        .await
        .unwrap();
    let r = wait(&s, "snapshots completed", Duration::from_secs(120), |r| {
        r.snapshots.len() == 2
            && r.snapshots
                .iter()
                .all(|s| s.state == SnapshotState::Completed)
    })
    .await;
    let vol_digest = ironbark_sc::sparse::digest_file(&raw).unwrap();
    for sr in &r.snapshots {
        assert_eq!(sr.raw_digest.as_deref(), Some(vol_digest.as_str()));
        assert_eq!(sr.volume_size, 1 << 30);
        let key = format!(
            "snapshots/{}.{}",
            sr.snapshot_id,
            sr.compression.extension()
        );
        let (obj, etag) = walrus.object(&key).expect("object in walrus");
        assert_eq!(Some(hex::encode(sha2::Sha256::digest(&obj))), sr.sha256);
        assert_eq!(Some(obj.len() as u64), sr.compressed_size);
        // The multipart ETag the store answered is recorded.
        assert_eq!(Some(etag), sr.md5);
        // The SC's point-in-time copy is the volume, and as sparse: the
        // backup's holes never became allocated zeroes.
        let copy = data
            .canonicalize()
            .unwrap()
            .join(format!("snapshots/{}.raw", sr.snapshot_id));
        assert_eq!(ironbark_sc::sparse::digest_file(&copy).unwrap(), vol_digest);
        let used = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&copy).unwrap().blocks() * 512
        };
        assert!(used < 16 << 20, "{} allocates {used} bytes", sr.snapshot_id);
        // Holes cost (almost) nothing.
        assert!(
            obj.len() < 4 << 20,
            "{} is {} bytes",
            sr.snapshot_id,
            obj.len()
        );
    }
    // The export survived the snapshots.
    let after = qemu_io(
        &scratch,
        &nbd,
        &nbd.tls_identity,
        &nbd.psk_hex,
        "read -P 0xa5 600M 1M",
    );
    assert!(ok(&after), "read after the snapshots: {after:?}");

    // Restore: from the SC's raw copy, and from Walrus.
    let sr2 = r
        .snapshots
        .iter()
        .find(|s| s.snapshot_id == "snap-2")
        .unwrap()
        .clone();
    let from_sc = SnapshotSource {
        snapshot_id: "snap-1".into(),
        download_url: None,
        compression: Compression::Gzip,
        sha256: None,
        raw_digest: None,
        force_download: false,
    };
    let from_walrus =
        |id: &str, kind: Compression, sha: Option<String>, digest: Option<String>| SnapshotSource {
            snapshot_id: id.into(),
            download_url: Some(format!(
                "http://{waddr}/snapshots/{id}.{}?sig=1",
                kind.extension()
            )),
            compression: kind,
            sha256: sha,
            raw_digest: digest,
            force_download: true,
        };
    let sr1 = r
        .snapshots
        .iter()
        .find(|s| s.snapshot_id == "snap-1")
        .unwrap()
        .clone();
    let vols = vec![
        vol("vol-1", 1, &["nc-a"], None),
        vol("vol-2", 2, &[], Some(from_sc)),
        vol(
            "vol-3",
            1,
            &[],
            Some(from_walrus(
                "snap-2",
                Compression::Zstd,
                sr2.sha256.clone(),
                sr2.raw_digest.clone(),
            )),
        ),
        vol(
            "vol-4",
            1,
            &[],
            Some(from_walrus(
                "snap-1",
                Compression::Gzip,
                sr1.sha256.clone(),
                sr1.raw_digest.clone(),
            )),
        ),
        // A corrupt checksum: refused, never available.
        vol(
            "vol-5",
            1,
            &[],
            Some(from_walrus(
                "snap-1",
                Compression::Gzip,
                Some("00".repeat(32)),
                None,
            )),
        ),
    ];
    s.apply(d(3, snaps.clone(), vols.clone())).await.unwrap();
    let r = wait(&s, "restored", Duration::from_secs(120), |r| {
        ["vol-2", "vol-3", "vol-4"].iter().all(|id| {
            r.volumes
                .iter()
                .any(|v| &v.volume_id == id && v.state == VolumeState::Available)
        }) && r
            .volumes
            .iter()
            .any(|v| v.volume_id == "vol-5" && v.state == VolumeState::Error)
    })
    .await;
    let vdir = data.canonicalize().unwrap().join("volumes");
    let first = |p: &Path| -> Vec<u8> {
        let mut b = vec![0u8; 1 << 30];
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(p).unwrap();
        f.read_exact_at(&mut b, 0).unwrap();
        b
    };
    let want = md5::Md5::digest(first(&raw));
    for id in ["vol-2", "vol-3", "vol-4"] {
        assert_eq!(
            md5::Md5::digest(first(&vdir.join(format!("{id}.raw")))),
            want,
            "{id}"
        );
    }
    assert_eq!(
        std::fs::metadata(vdir.join("vol-2.raw")).unwrap().len(),
        2 << 30
    );
    assert!(!vdir.join("vol-5.raw").exists());
    assert!(
        r.volumes
            .iter()
            .find(|v| v.volume_id == "vol-5")
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("SHA-256")
    );

    // An SC restart keeps the wanted export open (same daemon).
    let pidfile = data.canonicalize().unwrap().join("run/vol-1.pid");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    s.shutdown();
    drop(s);
    let s = ironbark_sc::open(&settings(&data, ports)).await.unwrap();
    let r = wait(&s, "re-exported", Duration::from_secs(30), |r| {
        nbd_of(r, "vol-1").is_some()
    })
    .await;
    assert_eq!(nbd_of(&r, "vol-1").unwrap(), nbd);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid);
    assert!(ok(&qemu_io(
        &scratch,
        &nbd,
        &nbd.tls_identity,
        &nbd.psk_hex,
        "read -P 0x5a 0 4M"
    )));

    // Detach: the export closes (the daemon goes).
    let mut vols2 = vols.clone();
    vols2[0].exports.clear();
    vols2.pop();
    s.apply(d(4, snaps.clone(), vols2)).await.unwrap();
    wait(&s, "unexported", Duration::from_secs(30), |r| {
        r.volumes[0].exports.is_empty()
    })
    .await;
    assert!(!pidfile.exists());
    assert!(!ok(&qemu_io(
        &scratch,
        &nbd,
        &nbd.tls_identity,
        &nbd.psk_hex,
        "read 0 4k"
    )));

    // Delete everything: files go.
    s.apply(d(5, vec![], vec![])).await.unwrap();
    wait(&s, "all gone", Duration::from_secs(30), |r| {
        r.volumes.is_empty() && r.snapshots.is_empty()
    })
    .await;
    assert!(find(&data, ".raw").is_empty(), "{:?}", find(&data, ".raw"));
}
