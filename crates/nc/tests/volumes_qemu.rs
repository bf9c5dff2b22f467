//! EBS end to end on real QEMU: a real SC (qemu-storage-daemon, TLS-PSK
//! NBD) and an NC running two test-image guests inside a network namespace.
//!
//! 1. A volume is attached to guest A, which makes an ext2 file system on
//!    it and writes a file; its md5 is taken in the guest.
//! 2. It is detached (the guest releases the device) and attached to guest
//!    B, which reads the same md5.
//! 3. While B writes sequence-numbered 4 KiB blocks one after the other
//!    (O_DIRECT), a snapshot is taken; volumes restored from it through the
//!    SC's raw copy and through Walrus are identical and hold a consistent
//!    prefix of the sequence: blocks 0..n, then nothing.
//! 4. Both instances are terminated; the volume stays available.
//!
//! Runs only with `IRONBARK_QEMU_TESTS=1`, as root, with QEMU, dnsmasq,
//! zstd and an ssh client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ironbark_nc::testing::{FileServer, TempDir};
use ironbark_nc::{AccelMode, Node, NodeConfig, QemuConfig, QemuHypervisor};
use ironbark_node_api::{
    AttachState, BootImage, DesiredInstances, DesiredVolumes, InstanceSpec, NbdTarget, NicSpec,
    VmResources, VmState, VolumeAttachment, tap_name,
};
use ironbark_sc::{ScSettings, Storage};
use ironbark_sc_api::{
    Compression, DesiredStorage, ExportSpec, SnapshotSource, SnapshotSpec, SnapshotState,
    StorageReport, VolumeSpec, VolumeState,
};

const A: &str = "i-000000aa";
const B: &str = "i-000000bb";
const VOL: &str = "vol-e2e00001";
const NODE_ID: &str = "nc-e2e";
const BRIDGE: &str = "br0";
/// Blocks the sequence writer may write.
const WINDOW: usize = 8192;

fn enabled() -> bool {
    if std::env::var("IRONBARK_QEMU_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set IRONBARK_QEMU_TESTS=1 (as root, with QEMU and dnsmasq) to run");
    false
}

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap()
}

fn must(program: &str, args: &[&str]) {
    let o = sh(program, args);
    assert!(
        o.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Namespace, bridge, dnsmasq; on drop kills every QEMU and storage daemon
/// started under `root` and deletes the namespace.
struct Net {
    ns: String,
    dnsmasq: Option<Child>,
    root: PathBuf,
}

impl Net {
    fn new(root: &Path) -> Net {
        let ns = format!("ibvol{}", std::process::id());
        let _ = sh("ip", &["netns", "del", &ns]);
        must("ip", &["netns", "add", &ns]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        must("ip", &["-n", &ns, "link", "add", BRIDGE, "type", "bridge"]);
        must(
            "ip",
            &["-n", &ns, "addr", "add", "10.124.0.1/24", "dev", BRIDGE],
        );
        must("ip", &["-n", &ns, "link", "set", BRIDGE, "up"]);
        must(
            "ip",
            &["-n", &ns, "addr", "add", "169.254.169.254/32", "dev", "lo"],
        );
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
            ])
            .args(["--port=0", "--user=root", "--bind-interfaces"])
            .arg(format!("--interface={BRIDGE}"))
            .arg("--dhcp-range=10.124.0.50,10.124.0.150,255.255.255.0,1h")
            .arg(format!(
                "--dhcp-leasefile={}",
                root.join("leases").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Net {
            ns,
            dnsmasq: Some(child),
            root: root.to_path_buf(),
        }
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

impl Drop for Net {
    fn drop(&mut self) {
        for pidfile in find(&self.root, ".pid") {
            if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                let cmd =
                    std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("qemu-system") || cmd.contains("qemu-storage-daemon") {
                    let _ = sh("kill", &["-9", pid.trim()]);
                }
            }
        }
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh("ip", &["netns", "del", &self.ns]);
    }
}

async fn until<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Guest {
    ns: String,
    key: PathBuf,
    ip: String,
}

impl Guest {
    /// Runs a shell command in the guest over SSH; returns stdout.
    fn run(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "ssh", "-i"])
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("root@{}", self.ip))
            .arg(cmd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "guest {} `{cmd}`: {}{}",
            self.ip,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The guest's block device whose serial is the volume id.
const FIND_DEV: &str = "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = vole2e00001 ] && echo ${d##*/}; done; true";

fn snapshot_report(r: &StorageReport, id: &str) -> Option<ironbark_sc_api::SnapshotReport> {
    r.snapshots.iter().find(|s| s.snapshot_id == id).cloned()
}

async fn sc_wait(
    s: &Arc<Storage>,
    what: &str,
    f: impl Fn(&StorageReport) -> bool,
) -> StorageReport {
    until(what, Duration::from_secs(180), async || {
        s.reconcile().await;
        let r = s.report();
        f(&r).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_moves_between_guests_and_snapshots_are_point_in_time() {
    if !enabled() {
        return;
    }
    let tmp = TempDir::new("vol-e2e");
    let root = tmp.path().to_path_buf();
    let net = Net::new(&root);
    let image_dir = root.clone();
    let cache = std::env::var_os("IRONBARK_TESTIMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("ironbark-testimage")
                .join("deb-cache")
        });
    let image = tokio::task::spawn_blocking(move || {
        ironbark_testimage::build_test_image(&image_dir.join("image"), &cache)
    })
    .await
    .unwrap()
    .expect("test image");
    let files = FileServer::start().await;
    let kernel = files.image("eki-7e570002", std::fs::read(&image.kernel).unwrap());
    let ramdisk = files.image("eri-7e570002", std::fs::read(&image.initrd).unwrap());
    let key = root.join("id_ed25519");
    must(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let pubkey = base64::engine::general_purpose::STANDARD.encode(
        std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim(),
    );

    // The SC, its daemons in the namespace next to the VMs.
    let bucket =
        ironbark_walrus_standin::StandIn::start(ironbark_walrus_standin::Mode::Walrus, true).await;
    let waddr = bucket.addr();
    let mut sc = ScSettings::new(root.join("sc"), "t", "127.0.0.1:0".parse().unwrap());
    sc.netns = Some(net.ns.clone());
    let base = 22000 + (std::process::id() % 100) as u16 * 20;
    sc.nbd_ports = (base, base + 19);
    let storage = ironbark_sc::open(&sc).await.unwrap();
    let vol = |id: &str, exports: bool, source: Option<SnapshotSource>| VolumeSpec {
        volume_id: id.into(),
        size_gib: 1,
        source,
        exports: if exports {
            vec![ExportSpec {
                node_id: NODE_ID.into(),
                instance_id: "i-qemu".into(),
            }]
        } else {
            vec![]
        },
    };
    storage
        .apply(DesiredStorage {
            generation: 1,
            volumes: vec![vol(VOL, true, None)],
            snapshots: vec![],
        })
        .await
        .unwrap();

    // The NC with two guests.
    let qemu = QemuConfig {
        accel: AccelMode::Tcg,
        netns: Some(net.ns.clone()),
        powerdown_timeout: Duration::ZERO,
        ..QemuConfig::default()
    };
    let mut cfg = NodeConfig::new(NODE_ID, root.join("nc"), "t");
    cfg.poll_interval = Duration::from_secs(2);
    let node = Node::start(cfg, Arc::new(QemuHypervisor::new(qemu)))
        .await
        .unwrap();
    let spec = |id: &str, mac: &str| InstanceSpec {
        instance_id: id.into(),
        account_id: "000000000001".into(),
        vm: VmResources {
            cpus: 1,
            memory_mib: 256,
            disk_gib: 0,
        },
        image: BootImage {
            kernel: kernel.clone(),
            ramdisk: Some(ramdisk.clone()),
            root: None,
            cmdline: format!("{}={pubkey}", ironbark_testimage::SSH_KEY_PARAM),
        },
        nics: vec![NicSpec {
            mac: mac.into(),
            bridge: BRIDGE.into(),
            tap: tap_name(id),
        }],
    };
    node.apply(DesiredInstances {
        generation: 1,
        instances: vec![spec(A, "d0:0d:00:00:0a:0a"), spec(B, "d0:0d:00:00:0b:0b")],
        network: None,
    })
    .await;
    let mut guests = BTreeMap::new();
    for id in [A, B] {
        let ip = until(
            &format!("{id} ready"),
            Duration::from_secs(300),
            async || {
                let text = node.console(id).await.ok()?;
                text.lines()
                    .filter_map(ironbark_testimage::parse_ready_line)
                    .next()
                    .and_then(|r| r.ip)
            },
        )
        .await;
        guests.insert(
            id,
            Guest {
                ns: net.ns.clone(),
                key: key.clone(),
                ip: ip.to_string(),
            },
        );
    }

    let r = sc_wait(&storage, "exported", |r| {
        r.volumes
            .first()
            .is_some_and(|v| v.state == VolumeState::Available && !v.exports.is_empty())
    })
    .await;
    let e = r.volumes[0].exports[0].nbd.clone().unwrap();
    let attachment = VolumeAttachment {
        volume_id: VOL.into(),
        device: "/dev/sdf".into(),
        nbd: NbdTarget {
            host: e.host,
            port: e.port,
            export: e.export,
            tls_identity: e.tls_identity,
            psk_hex: e.psk_hex,
            socket: e.socket,
        },
    };
    let attach_to = |generation: u64, id: Option<&str>| DesiredVolumes {
        generation,
        instances: id
            .map(|id| (id.to_string(), vec![attachment.clone()]))
            .into_iter()
            .collect(),
    };
    let attached = async |id: &str| {
        until(
            &format!("attached to {id}"),
            Duration::from_secs(60),
            async || {
                node.reconcile_volumes().await;
                node.volumes_report()
                    .attachments
                    .iter()
                    .any(|a| a.instance_id == id && a.state == AttachState::Attached)
                    .then_some(())
            },
        )
        .await
    };

    // 1. Guest A: file system, data, md5.
    node.apply_volumes(attach_to(1, Some(A))).await.unwrap();
    attached(A).await;
    let ga = &guests[A];
    let dev = until("device in A", Duration::from_secs(30), async || {
        let d = ga.run(FIND_DEV);
        let d = d.trim().to_string();
        (!d.is_empty()).then_some(d)
    })
    .await;
    let md5_a = ga.run(&format!(
        "mke2fs -q /dev/{dev} && mkdir -p /mnt/v && mount /dev/{dev} /mnt/v && \
         dd if=/dev/urandom of=/mnt/v/data bs=1M count=4 2>/dev/null && md5sum /mnt/v/data && \
         umount /mnt/v && sync"
    ));
    let md5_of = |out: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.ends_with("/mnt/v/data"))
            .unwrap_or_else(|| panic!("no md5 in {out:?}"));
        line.split_whitespace().next().unwrap().to_string()
    };
    let md5_a = md5_of(&md5_a);

    // 2. Detach (the guest lets go), attach to B: same data.
    node.apply_volumes(attach_to(2, None)).await.unwrap();
    until("detached", Duration::from_secs(60), async || {
        node.reconcile_volumes().await;
        node.volumes_report().attachments.is_empty().then_some(())
    })
    .await;
    assert!(
        ga.run(FIND_DEV).trim().is_empty(),
        "A still sees the volume"
    );
    node.apply_volumes(attach_to(3, Some(B))).await.unwrap();
    attached(B).await;
    let gb = &guests[B];
    let dev = until("device in B", Duration::from_secs(30), async || {
        let d = gb.run(FIND_DEV);
        let d = d.trim().to_string();
        (!d.is_empty()).then_some(d)
    })
    .await;
    let md5_b = gb.run(&format!(
        "mkdir -p /mnt/v && mount /dev/{dev} /mnt/v && md5sum /mnt/v/data && umount /mnt/v"
    ));
    assert_eq!(md5_of(&md5_b), md5_a);
    eprintln!("md5 in A and in B: {md5_a}");

    // 3. Sequence-numbered blocks from 64 MiB on, one O_DIRECT write at a
    //    time, while a snapshot is taken.
    //    The window (32 MiB, 8192 blocks) is zeroed first, so "not written
    //    yet" reads as zeros whatever the file system left there.
    gb.run(&format!(
        "dd if=/dev/zero of=/dev/{dev} bs=1M count=32 seek=64 oflag=direct 2>/dev/null && sync"
    ));
    gb.run(&format!(
        "(i=0; while [ $i -lt {WINDOW} ]; do printf '%08d\\n' $i | \
          dd of=/dev/{dev} bs=4096 seek=$((16384+i)) conv=notrunc,sync oflag=direct 2>/dev/null || break; \
          i=$((i+1)); done) >/dev/null 2>&1 </dev/null & echo $! > /tmp/writer"
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snap = SnapshotSpec {
        snapshot_id: "snap-e2e1".into(),
        volume_id: VOL.into(),
        compression: Compression::Zstd,
        target: bucket.target("snaps/snap-e2e1.zst", 1 << 30),
    };
    storage
        .apply(DesiredStorage {
            generation: 2,
            volumes: vec![vol(VOL, true, None)],
            snapshots: vec![snap.clone()],
        })
        .await
        .unwrap();
    let r = sc_wait(&storage, "snapshot completed", |r| {
        snapshot_report(r, "snap-e2e1").is_some_and(|s| s.state == SnapshotState::Completed)
    })
    .await;
    let sr = snapshot_report(&r, "snap-e2e1").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    gb.run("kill $(cat /tmp/writer) 2>/dev/null; sleep 1; true");
    let sources = [
        SnapshotSource {
            snapshot_id: "snap-e2e1".into(),
            download_url: None,
            compression: Compression::Zstd,
            sha256: None,
            raw_digest: None,
            force_download: false,
        },
        SnapshotSource {
            snapshot_id: "snap-e2e1".into(),
            download_url: Some(format!("http://{waddr}/snaps/snap-e2e1.zst?sig=2")),
            compression: Compression::Zstd,
            sha256: sr.sha256.clone(),
            raw_digest: sr.raw_digest.clone(),
            force_download: true,
        },
    ];
    storage
        .apply(DesiredStorage {
            generation: 3,
            volumes: vec![
                vol(VOL, true, None),
                vol("vol-fromsc", false, Some(sources[0].clone())),
                vol("vol-fromw", false, Some(sources[1].clone())),
            ],
            snapshots: vec![snap.clone()],
        })
        .await
        .unwrap();
    sc_wait(&storage, "restored", |r| {
        r.volumes
            .iter()
            .filter(|v| v.state == VolumeState::Available)
            .count()
            == 3
    })
    .await;
    let vdir = std::fs::canonicalize(root.join("sc"))
        .unwrap()
        .join("volumes");
    let a = std::fs::read(vdir.join("vol-fromsc.raw")).unwrap();
    let b = std::fs::read(vdir.join("vol-fromw.raw")).unwrap();
    {
        use md5::Digest;
        assert_eq!(
            md5::Md5::digest(&a),
            md5::Md5::digest(&b),
            "SC and Walrus restores differ"
        );
    }
    let blocks = &a[64 << 20..(64 << 20) + WINDOW * 4096];
    let mut n = 0usize;
    while n * 4096 < blocks.len() {
        let block = &blocks[n * 4096..(n + 1) * 4096];
        if block.iter().all(|x| *x == 0) {
            break;
        }
        let want = format!("{n:08}\n");
        assert_eq!(
            &block[..9],
            want.as_bytes(),
            "block {n} is not the sequence"
        );
        assert!(block[9..].iter().all(|x| *x == 0), "block {n} is torn");
        n += 1;
    }
    assert!(n > 0, "the writer had written nothing before the snapshot");
    assert!(
        blocks[n * 4096..].iter().all(|x| *x == 0),
        "a block after {n} was in the snapshot: not a prefix"
    );
    let live = std::fs::read(vdir.join(format!("{VOL}.raw"))).unwrap();
    let mut m = n;
    while m < WINDOW && live[(64 << 20) + m * 4096] != 0 {
        m += 1;
    }
    eprintln!("snapshot holds blocks 0..{n}; the writer went on to {m}");
    assert!(
        m > n,
        "the writer did not go on writing during and after the snapshot"
    );

    // 4. Terminate both: the volume is still there and available.
    node.apply(DesiredInstances {
        generation: 2,
        instances: vec![],
        network: None,
    })
    .await;
    until("terminated", Duration::from_secs(60), async || {
        node.report()
            .instances
            .iter()
            .all(|i| i.state == VmState::Terminated)
            .then_some(())
    })
    .await;
    let r = storage.report();
    assert!(
        r.volumes
            .iter()
            .any(|v| v.volume_id == VOL && v.state == VolumeState::Available)
    );
    assert!(vdir.join(format!("{VOL}.raw")).exists());
    storage.shutdown();
    drop(net);
}
