//! NBD throughput of real SC exports next to the local file:
//! `nbdbench DIR [MIB]`. Used by benches/ebs.sh.
//!
//! The SC serves two MIB-sized volumes (filled with random data, so reads
//! are real), one to each kind of NC:
//!
//! - **same host**: the NC on the SC's host (`local_nodes`, as `ironbark
//!   up` sets it), which gets the volume's Unix socket without TLS. This is
//!   exactly what a single-host install's VMs use, and `qemu-img bench`
//!   connects to it directly: no measuring artefact.
//! - **remote**: an NC on another host, TCP with its per-export TLS-PSK key
//!   and the TLS priority the NC uses. `qemu-img bench` cannot define the
//!   `tls-creds-psk` object a TLS connection needs, so QEMU's NBD client
//!   runs in a client-side `qemu-storage-daemon` (the NC's stand-in, same
//!   `blockdev-add` options as the NC's QEMU) that re-exports the disk on
//!   a unix socket for `qemu-img bench`. That relay costs much on its own,
//!   so it is measured alone too (the same relay in front of the local
//!   file), and the remote column is compared with that, not with the
//!   local file: the ratio is the TCP + TLS hop's share, the artefact cut
//!   out as far as a ratio can.
//!
//! Each row runs `qemu-img bench` (queue depth 64, the default) for one
//! request size and direction over: the local file through the page cache
//! (the way the SC's daemon opens volumes, so the like-for-like baseline)
//! and with `O_DIRECT` (what the disk itself gives), the same-host export,
//! the relay over the local file and the remote export through the relay.
//!
//! Then, for reads, the ceiling copying puts on any NBD read through QEMU's
//! server: three copies per byte (the daemon's read into its buffer, its
//! socket write, the client's socket read), each at the rate one core
//! copies that request size out of the page cache, spread over every core,
//! next to 70 % of the local read (the target).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ironbark_sc::ScSettings;
use ironbark_sc_api::{
    DesiredStorage, ExportSpec, ExportState, NBD_TLS_PRIORITY, NbdExport, VolumeSpec, VolumeState,
};

const LOCAL_VOL: &str = "vol-nbdlocal";
const REMOTE_VOL: &str = "vol-nbdremote";
const LOCAL_NODE: &str = "nc-here";
const REMOTE_NODE: &str = "nc-there";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(&args[1]);
    let mib: u64 = args.get(2).map(|a| a.parse().unwrap()).unwrap_or(1024);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();

    let mut settings = ScSettings::new(dir.join("sc"), "t", "127.0.0.1:0".parse().unwrap());
    settings.nbd_ports = (21800, 21899);
    settings.local_nodes = vec![LOCAL_NODE.into()];
    let s = ironbark_sc::open(&settings).await.unwrap();
    let gib = mib.div_ceil(1024);
    let spec = |id: &str, node: Option<&str>| VolumeSpec {
        volume_id: id.into(),
        size_gib: gib,
        source: None,
        exports: node
            .map(|n| ExportSpec {
                node_id: n.into(),
                instance_id: "i-nbdbench".into(),
            })
            .into_iter()
            .collect(),
    };
    s.apply(DesiredStorage {
        generation: 1,
        volumes: vec![spec(LOCAL_VOL, None), spec(REMOTE_VOL, None)],
        snapshots: vec![],
    })
    .await
    .unwrap();
    wait(&s, |r| {
        (r.volumes.len() == 2 && r.volumes.iter().all(|v| v.state == VolumeState::Available))
            .then_some(())
    })
    .await;

    // Random data over the part benched, in both volumes and in a local
    // copy with the same layout.
    let local = dir.join("local.raw");
    let vol_file = |id: &str| dir.join(format!("sc/volumes/{id}.raw"));
    sh(Command::new("dd").args([
        "if=/dev/urandom",
        &format!("of={}", vol_file(LOCAL_VOL).display()),
        "bs=1M",
        &format!("count={mib}"),
        "conv=notrunc,fsync",
        "status=none",
    ]));
    for to in [vol_file(REMOTE_VOL), local.clone()] {
        sh(Command::new("cp")
            .arg("--sparse=always")
            .arg(vol_file(LOCAL_VOL))
            .arg(&to));
    }

    s.apply(DesiredStorage {
        generation: 2,
        volumes: vec![
            spec(LOCAL_VOL, Some(LOCAL_NODE)),
            spec(REMOTE_VOL, Some(REMOTE_NODE)),
        ],
        snapshots: vec![],
    })
    .await
    .unwrap();
    let export_of = |vol: &'static str| {
        move |r: &ironbark_sc_api::StorageReport| {
            r.volumes
                .iter()
                .find(|v| v.volume_id == vol)?
                .exports
                .iter()
                .find(|e| e.state == ExportState::Ready)
                .and_then(|e| e.nbd.clone())
        }
    };
    let same_host = wait(&s, export_of(LOCAL_VOL)).await;
    let remote = wait(&s, export_of(REMOTE_VOL)).await;
    let sock = same_host
        .socket
        .as_deref()
        .expect("the same-host export is a Unix socket");
    assert!(remote.socket.is_none(), "the remote export is not TCP");
    let direct = format!(
        "driver=nbd,server.type=unix,server.path={sock},export={}",
        same_host.export
    );

    let local_relay = Relay::start(&dir.join("relay-local"), Upstream::File(&local));
    let sc_relay = Relay::start(&dir.join("relay-sc"), Upstream::Sc(&remote));

    println!(
        "{:>8} {:>5} {:>15} {:>15} {:>15} {:>7} {:>7} {:>15} {:>15} {:>7}",
        "request",
        "op",
        "local (cache)",
        "local (direct)",
        "same host",
        "/cache",
        "/direct",
        "relay (local)",
        "remote (relay)",
        "/relay"
    );
    let mut ceilings = Vec::new();
    let mut cpu = Vec::new();
    for (size, label) in [
        (4u64 << 10, "4 KiB"),
        (64 << 10, "64 KiB"),
        (1 << 20, "1 MiB"),
    ] {
        // 4 KiB requests are many: a quarter of the bytes keeps the run short.
        let bytes = if size == 4 << 10 {
            (mib << 20) / 4
        } else {
            mib << 20
        };
        for write in [false, true] {
            let count = bytes / size;
            let l = bench(&["-f", "raw", path(&local)], size, count, write);
            let d = bench(
                &["-t", "none", "-f", "raw", path(&local)],
                size,
                count,
                write,
            );
            let (client0, daemon0) = (children_cpu(), daemon_cpu(&dir, LOCAL_VOL));
            let h = bench(&["--image-opts", &direct], size, count, write);
            let gib = bytes as f64 / (1u64 << 30) as f64;
            let (client_s, daemon_s) = (
                (children_cpu() - client0) / gib,
                (daemon_cpu(&dir, LOCAL_VOL) - daemon0) / gib,
            );
            let r = bench(&local_relay.target(), size, count, write);
            let e = bench(&sc_relay.target(), size, count, write);
            let rate = |secs: f64| bytes as f64 / (1 << 20) as f64 / secs;
            if !write {
                ceilings.push((label, copy_rate(&local, size), 0.7 * rate(l)));
            }
            cpu.push((label, write, client_s, daemon_s, 0.7 * rate(l)));
            let mibs = |secs: f64| format!("{:.0} MiB/s", rate(secs));
            let pct = |base: f64, secs: f64| format!("{:.0}%", 100.0 * base / secs);
            println!(
                "{:>8} {:>5} {:>15} {:>15} {:>15} {:>7} {:>7} {:>15} {:>15} {:>7}",
                label,
                if write { "write" } else { "read" },
                mibs(l),
                mibs(d),
                mibs(h),
                pct(l, h),
                pct(d, h),
                mibs(r),
                mibs(e),
                pct(r, e)
            );
        }
    }
    // QEMU's NBD server copies every byte it serves three times: its read
    // into a bounce buffer, its write into the socket, and the client's
    // read out of it; a read of the local file copies it once. Whatever
    // else a request costs, the cores cannot copy faster than this.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "NBD read ceiling on {cores} cores (3 copies per byte, each at one core's page-cache copy rate for that request size) vs 70 % of the local (cache) read:"
    );
    for (label, copy, target) in ceilings {
        let ceiling = cores as f64 * copy / 3.0;
        println!(
            "{label:>8}  one core copies {copy:.0} MiB/s -> ceiling {ceiling:.0} MiB/s; 70 % of local {target:.0} MiB/s{}",
            if ceiling < target {
                "  (target above the ceiling)"
            } else {
                ""
            }
        );
    }
    // What the same-host runs cost: CPU seconds per GiB moved in QEMU's
    // client (`qemu-img`) and in the SC's daemon, and the rate the cores
    // could give were they busy with nothing else.
    println!(
        "Same-host CPU per GiB (client qemu-img + the SC's daemon) and the rate {cores} cores allow at that cost, vs 70 % of local:"
    );
    for (label, write, client, daemon, target) in cpu {
        let bound = cores as f64 * 1024.0 / (client + daemon);
        println!(
            "{label:>8} {:>5}  client {client:.2} s + daemon {daemon:.2} s -> at most {bound:.0} MiB/s; 70 % of local {target:.0} MiB/s{}",
            if write { "write" } else { "read" },
            if bound < target {
                "  (target above the bound)"
            } else {
                ""
            }
        );
    }
    drop(local_relay);
    drop(sc_relay);
    s.apply(DesiredStorage {
        generation: 3,
        volumes: vec![],
        snapshots: vec![],
    })
    .await
    .unwrap();
    wait(&s, |r| r.volumes.is_empty().then_some(())).await;
}

async fn wait<T>(
    s: &ironbark_sc::Storage,
    mut f: impl FnMut(&ironbark_sc_api::StorageReport) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        s.settle().await;
        if let Some(t) = f(&s.report()) {
            return t;
        }
        assert!(Instant::now() < deadline, "SC did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sh(c: &mut Command) {
    let st = c.status().unwrap();
    assert!(st.success(), "{c:?}: {st}");
}

/// MiB/s at which one thread copies `file` out of the page cache in
/// `size`-byte reads (the file was just written, so it is cached): the
/// cost of one of the copies an NBD read makes, on one core. Best of three
/// passes over up to 256 MiB.
fn copy_rate(file: &Path, size: u64) -> f64 {
    use std::io::Read;
    let mut buf = vec![0u8; size as usize];
    let total = std::fs::metadata(file).unwrap().len().min(256 << 20);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let mut f = std::fs::File::open(file).unwrap();
        let t = Instant::now();
        let mut done = 0;
        while done < total {
            f.read_exact(&mut buf).unwrap();
            done += size;
        }
        best = best.max(done as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// CPU seconds (user + system) of every child this process has waited
/// for: `qemu-img bench` runs are waited for one at a time, so the change
/// across one run is that run's.
fn children_cpu() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// CPU seconds (user + system, all threads) of the SC's daemon for `vol`.
fn daemon_cpu(dir: &Path, vol: &str) -> f64 {
    let pid = std::fs::read_to_string(dir.join(format!("sc/run/{vol}.pid"))).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = rest.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as f64;
    // utime and stime are fields 14 and 15 of stat: 12 and 13 here.
    (f[11] + f[12]) / tick
}

/// Seconds `qemu-img bench` took for `count` requests of `size` bytes.
fn bench(target: &[&str], size: u64, count: u64, write: bool) -> f64 {
    let mut c = Command::new("qemu-img");
    c.args([
        "bench",
        "-q",
        "-c",
        &count.to_string(),
        "-s",
        &size.to_string(),
    ]);
    if write {
        c.args(["-w", "--pattern", "165"]);
    }
    c.args(target).stdout(Stdio::null());
    let t = Instant::now();
    sh(&mut c);
    t.elapsed().as_secs_f64()
}

enum Upstream<'a> {
    File(&'a Path),
    Sc(&'a NbdExport),
}

/// A client-side `qemu-storage-daemon` re-exporting its upstream on a
/// unix socket.
struct Relay {
    dir: PathBuf,
    /// `qemu-img --image-opts` naming the relay's export.
    opts: String,
    pid: u32,
}

impl Relay {
    fn start(dir: &Path, up: Upstream) -> Relay {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("nbd.sock").to_str().unwrap().to_string();
        let pidfile = dir.join("pid");
        let mut c = Command::new("qemu-storage-daemon");
        // The relay is the measuring artefact: its bounce buffers get the
        // malloc settings the SC gives its daemons, to keep it small.
        c.env("GLIBC_TUNABLES", ironbark_sc::daemon::DAEMON_MALLOC);
        c.args(["--daemonize", "--pidfile", path(&pidfile)]);
        match up {
            Upstream::File(f) => {
                c.arg("--blockdev")
                    .arg(format!("driver=file,node-name=up,filename={}", path(f)));
            }
            Upstream::Sc(nbd) => {
                let keys = dir.join("keys");
                std::fs::create_dir_all(&keys).unwrap();
                std::fs::write(
                    keys.join("keys.psk"),
                    format!("{}:{}\n", nbd.tls_identity, nbd.psk_hex),
                )
                .unwrap();
                c.arg("--object").arg(format!(
                    "tls-creds-psk,id=tls0,endpoint=client,dir={},username={},priority={NBD_TLS_PRIORITY}",
                    path(&keys),
                    nbd.tls_identity
                ));
                c.arg("--blockdev").arg(format!(
                    "driver=nbd,node-name=up,server.type=inet,server.host={},server.port={},export={},tls-creds=tls0",
                    nbd.host, nbd.port, nbd.export
                ));
            }
        }
        c.args(["--nbd-server", &format!("addr.type=unix,addr.path={sock}")])
            .args(["--export", "type=nbd,id=e,node-name=up,name=v,writable=on"]);
        sh(&mut c);
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Relay {
            dir: dir.to_path_buf(),
            opts: format!("driver=nbd,server.type=unix,server.path={sock},export=v"),
            pid,
        }
    }

    fn target(&self) -> [&str; 2] {
        ["--image-opts", &self.opts]
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
