//! Which transport an export gets, with real `qemu-storage-daemon`s and
//! QEMU's NBD client (`qemu-io`): an NC on the SC's host (`local_nodes`)
//! gets a Unix socket only root can reach, without TLS; any other NC gets
//! TCP with its own TLS-PSK key, and nothing else gets in. A volume moving
//! between the two kinds of NC switches transport, but never under an NC
//! that keeps its export.
//!
//! Also how the daemons serve: exports on an iothread, volumes through
//! io_uring where QEMU allows it (threads where not), and daemons an earlier
//! SC left behind adopted or replaced.
//!
//! Runs only with `IRONBARK_QEMU_TESTS=1` (needs `qemu-utils`).

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::vol;
use ironbark_sc::{ScSettings, Storage};
use ironbark_sc_api::{DesiredStorage, ExportState, NbdExport, StorageReport, VolumeState};

const LOCAL: &str = "nc-here";
const REMOTE: &str = "nc-there";

/// Removes the scratch directory, daemons first (they hold the files).
struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.0.join("sc/run")) {
            for e in rd.flatten() {
                if !e.file_name().to_string_lossy().ends_with(".pid") {
                    continue;
                }
                if let Ok(p) = std::fs::read_to_string(e.path()) {
                    let cmd =
                        std::fs::read(format!("/proc/{}/cmdline", p.trim())).unwrap_or_default();
                    if String::from_utf8_lossy(&cmd).contains("qemu-storage-daemon") {
                        let _ = Command::new("kill").args(["-9", p.trim()]).status();
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn desired(generation: u64, exports: &[&str]) -> DesiredStorage {
    DesiredStorage {
        generation,
        volumes: vec![vol("vol-t", exports)],
        snapshots: vec![],
    }
}

/// The exports once all are ready, by node.
async fn ready(s: &Arc<Storage>, nodes: &[&str]) -> Vec<NbdExport> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        s.settle().await;
        s.reconcile().await;
        let r: StorageReport = s.report();
        let v = &r.volumes[0];
        let got: Vec<NbdExport> = nodes
            .iter()
            .filter_map(|n| {
                let e = v.exports.iter().find(|e| e.node_id == *n)?;
                (e.state == ExportState::Ready).then(|| e.nbd.clone())?
            })
            .collect();
        if v.state == VolumeState::Available && got.len() == nodes.len() {
            return got;
        }
        assert!(Instant::now() < deadline, "exports never ready: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn qemu_io(opts: &str, object: Option<String>, cmd: &str) -> Output {
    let mut c = Command::new("qemu-io");
    if let Some(o) = object {
        c.arg("--object").arg(o);
    }
    c.args(["--image-opts", opts, "-c", cmd]).output().unwrap()
}

fn ok(out: &Output) -> bool {
    // qemu-io reports some failures on stdout with status 0.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && !text.contains("failed") && !text.contains("error")
}

fn over_unix(nbd: &NbdExport, cmd: &str) -> Output {
    let sock = nbd.socket.as_deref().expect("a Unix export");
    qemu_io(
        &format!(
            "driver=nbd,server.type=unix,server.path={sock},export={}",
            nbd.export
        ),
        None,
        cmd,
    )
}

fn over_tls(scratch: &Path, nbd: &NbdExport, cmd: &str) -> Output {
    let dir = scratch.join(&nbd.tls_identity);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("keys.psk"),
        format!("{}:{}\n", nbd.tls_identity, nbd.psk_hex),
    )
    .unwrap();
    qemu_io(
        &format!(
            "driver=nbd,server.type=inet,server.host={},server.port={},export={},tls-creds=tls0",
            nbd.host, nbd.port, nbd.export
        ),
        Some(format!(
            "tls-creds-psk,id=tls0,endpoint=client,dir={},username={}",
            dir.display(),
            nbd.tls_identity
        )),
        cmd,
    )
}

fn plain_tcp(nbd: &NbdExport) -> Output {
    qemu_io(
        &format!(
            "driver=nbd,server.type=inet,server.host={},server.port={},export={}",
            nbd.host, nbd.port, nbd.export
        ),
        None,
        "read 0 4k",
    )
}

/// A scratch root for one test (removed, daemons first, when dropped) and
/// the SC data directory in it.
fn scratch(name: &str) -> (Tmp, PathBuf) {
    let root = Tmp(std::env::temp_dir().join(format!("ironbark-sc-{name}-{}", std::process::id())));
    let data = root.0.join("sc");
    std::fs::create_dir_all(&data).unwrap();
    (root, data)
}

/// A blank 4 MiB volume file `vol-t.raw` in `data`.
fn blank_volume(data: &Path) -> PathBuf {
    let file = data.join("vol-t.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    file
}

/// Export `e-local` to the NC on this host (a Unix socket, no key).
fn local_grant() -> ironbark_sc::Grant {
    ironbark_sc::Grant {
        node_id: LOCAL.into(),
        instance_id: "i-local".into(),
        export: "e-local".into(),
        identity: String::new(),
        psk_hex: String::new(),
    }
}

/// What the NC on this host is told for [`local_grant`]'s export.
fn local_export(d: &ironbark_sc::Daemons) -> NbdExport {
    NbdExport {
        host: String::new(),
        port: 0,
        export: "e-local".into(),
        tls_identity: String::new(),
        psk_hex: String::new(),
        socket: Some(d.nbd_socket("vol-t").display().to_string()),
    }
}

/// Makes a stand-in daemon script runnable.
fn executable(path: &Path) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// The command line of the daemon serving the volume.
fn daemon_cmdline(data: &Path) -> String {
    let pid = std::fs::read_to_string(data.join("run/vol-t.pid")).unwrap();
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap())
        .replace('\0', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_nc_gets_a_private_unix_socket_and_a_remote_one_tls() {
    if !common::qemu_tests() {
        return;
    }
    let root = Tmp(std::env::temp_dir().join(format!("ironbark-sc-tr-{}", std::process::id())));
    let scratch = root.0.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut settings = ScSettings::new(root.0.join("sc"), "token", "127.0.0.1:0".parse().unwrap());
    let base = 23000 + (std::process::id() % 200) as u16 * 10;
    settings.nbd_ports = (base, base + 9);
    settings.local_nodes = vec![LOCAL.into()];
    let s = ironbark_sc::open(&settings).await.unwrap();
    let data = root.0.join("sc").canonicalize().unwrap();

    // 1. The NC on this host: a Unix socket, no TCP, no key.
    s.apply(desired(1, &[LOCAL])).await.unwrap();
    let local = ready(&s, &[LOCAL]).await.remove(0);
    let sock = PathBuf::from(local.socket.clone().expect("a Unix socket"));
    assert!(local.psk_hex.is_empty() && local.tls_identity.is_empty() && local.port == 0);
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode");
    let dir = std::fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o700, "socket directory mode");
    assert_eq!(dir.uid(), meta.uid());
    assert_eq!(dir.uid(), euid(), "the socket directory is not ours");
    let cmd = daemon_cmdline(&data);
    assert!(
        !cmd.contains("addr.type=inet") && !cmd.contains("tls-creds"),
        "a local-only daemon listens on TCP: {cmd}"
    );
    // Served from an iothread, through io_uring (this host allows it).
    assert!(
        cmd.contains("iothread,id=") && cmd.contains("aio=io_uring"),
        "{cmd}"
    );
    let w = over_unix(&local, "write -P 0x5a 0 1M");
    assert!(ok(&w), "write over the socket: {w:?}");
    let rd = over_unix(&local, "read -P 0x5a 0 1M");
    assert!(ok(&rd), "read over the socket: {rd:?}");

    // 2. The volume moves to an NC on another host: TCP with its key only;
    //    the socket is gone.
    s.apply(desired(2, &[REMOTE])).await.unwrap();
    let remote = ready(&s, &[REMOTE]).await.remove(0);
    assert_eq!(remote.socket, None);
    assert_eq!(remote.tls_identity, format!("{REMOTE}.i-on-{REMOTE}.vol-t"));
    assert!(remote.port >= base && remote.port <= base + 9);
    assert!(!sock.exists(), "the Unix socket outlived the local export");
    let rd = over_tls(&scratch, &remote, "read -P 0x5a 0 1M");
    assert!(ok(&rd), "read over TLS: {rd:?}");
    let plain = plain_tcp(&remote);
    assert!(!ok(&plain), "a client without TLS got in: {plain:?}");
    // Served on the listener the SC made, whose TCP_NODELAY every
    // connection inherits, not on one QEMU opened itself (QEMU 7.2's
    // connections would meet Nagle's algorithm).
    let cmd = daemon_cmdline(&data);
    assert!(
        cmd.contains("addr.type=fd") && !cmd.contains("addr.type=inet"),
        "the daemon opens its own TCP listener: {cmd}"
    );
    assert_eq!(
        listeners_nodelay(&data, remote.port),
        vec![true],
        "the daemon's listener on port {} and its TCP_NODELAY",
        remote.port
    );
    let mut stolen = remote.clone();
    stolen.tls_identity = format!("{LOCAL}.i-on-{LOCAL}.vol-t");
    let bad = over_tls(&scratch, &stolen, "read 0 4k");
    assert!(!ok(&bad), "another NC's identity got in: {bad:?}");

    // 3. Both at once (not something the CLC asks for): one NBD server per
    //    daemon, so the remote NC's need wins and both go over TLS.
    s.apply(desired(3, &[LOCAL, REMOTE])).await.unwrap();
    let both = ready(&s, &[LOCAL, REMOTE]).await;
    assert!(
        both.iter()
            .all(|e| e.socket.is_none() && !e.psk_hex.is_empty())
    );
    let rd = over_tls(&scratch, &both[0], "read -P 0x5a 0 1M");
    assert!(ok(&rd), "the local NC over TLS: {rd:?}");

    // 4. The remote NC goes: the local one keeps the TCP connection it
    //    has (a restart would cut it, and an attached NC keeps its address).
    s.apply(desired(4, &[LOCAL])).await.unwrap();
    let kept = ready(&s, &[LOCAL]).await.remove(0);
    assert_eq!(kept, both[0], "the local NC's export changed under it");
    let rd = over_tls(&scratch, &kept, "read -P 0x5a 0 1M");
    assert!(
        ok(&rd),
        "the local NC over TLS after the remote left: {rd:?}"
    );

    // 5. Detached, then attached again: back on the socket, no TCP.
    s.apply(desired(5, &[])).await.unwrap();
    s.settle().await;
    s.apply(desired(6, &[LOCAL])).await.unwrap();
    let local = ready(&s, &[LOCAL]).await.remove(0);
    assert!(local.socket.is_some());
    let plain = plain_tcp(&kept);
    assert!(!ok(&plain), "TCP still served: {plain:?}");
    let rd = over_unix(&local, "read -P 0x5a 0 1M");
    assert!(ok(&rd), "read over the socket again: {rd:?}");

    s.apply(desired(7, &[])).await.unwrap();
    s.settle().await;
    s.shutdown();
}

/// For each TCP socket the volume's daemon listens on at `port`, whether it
/// has TCP_NODELAY: the test takes a copy of the daemon's descriptor
/// (`pidfd_getfd`, which needs root or ptrace rights) and asks the socket.
fn listeners_nodelay(data: &Path, port: u16) -> Vec<bool> {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
    use std::os::fd::AsRawFd;
    let pid: i32 = std::fs::read_to_string(data.join("run/vol-t.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Ok(n) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let fd = rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())
            .unwrap();
        let Ok(addr) = getsockname::<SockaddrStorage>(fd.as_raw_fd()) else {
            continue;
        };
        let at = addr
            .as_sockaddr_in()
            .map(|a| a.port())
            .or_else(|| addr.as_sockaddr_in6().map(|a| a.port()));
        let tcp = matches!(
            addr.family(),
            Some(nix::sys::socket::AddressFamily::Inet | nix::sys::socket::AddressFamily::Inet6)
        );
        if tcp && at == Some(port) && getsockopt(&fd, sockopt::AcceptConn).unwrap() {
            found.push(getsockopt(&fd, sockopt::TcpNoDelay).unwrap());
        }
    }
    found
}

fn euid() -> u32 {
    // /proc/self is ours: its owner is the effective uid.
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Where io_uring is unusable (a sysctl, a seccomp filter), the daemon
/// that meets it says so and every daemon from then on, over either
/// transport, serves through QEMU's thread pool instead of failing the
/// volume. A stand-in binary refuses `aio=io_uring` the way QEMU does and
/// runs the real daemon otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_fall_back_to_threads_where_io_uring_is_refused() {
    if !common::qemu_tests() {
        return;
    }
    let (root, data) = scratch("uring");
    let wrapper = root.0.join("qsd");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \"$*\" in *aio=io_uring*)\n  echo \"qemu-storage-daemon: --blockdev driver=file,aio=io_uring: Unable to use io_uring: Operation not permitted\" >&2; exit 1;;\nesac\nexec qemu-storage-daemon \"$@\"\n",
    )
    .unwrap();
    executable(&wrapper);
    let base = 24000 + (std::process::id() % 200) as u16 * 5;
    let d = common::daemons(&data, wrapper, (base, base + 4), &[LOCAL]);
    let file = blank_volume(&data);

    d.ensure("vol-t", &file, true).await.unwrap();
    let cmd = daemon_cmdline(&data);
    assert!(
        cmd.contains("aio=threads") && cmd.contains("iothread"),
        "{cmd}"
    );
    d.set_exports("vol-t", &[local_grant()]).await.unwrap();
    let nbd = local_export(&d);
    let w = over_unix(&nbd, "write -P 0x3c 0 1M");
    assert!(ok(&w), "write through the thread pool: {w:?}");
    let r = over_unix(&nbd, "read -P 0x3c 0 1M");
    assert!(ok(&r), "read through the thread pool: {r:?}");
    d.stop("vol-t").await.unwrap();

    // The next daemon, on TCP, goes straight to threads.
    d.ensure("vol-t", &file, false).await.unwrap();
    let cmd = daemon_cmdline(&data);
    assert!(
        cmd.contains("aio=threads") && cmd.contains("addr.type=fd"),
        "{cmd}"
    );
    d.stop("vol-t").await.unwrap();
}

/// An SC that dies between starting a daemon and recording where it
/// serves (its `.port` file) leaves a daemon holding the volume and
/// QEMU's lock on its file. The next SC must neither adopt it blindly nor
/// leave it running: it is listed as running (so the sweep of unwanted
/// daemons stops it), replaced when the volume is wanted, and ended by
/// `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_port_was_never_recorded_is_replaced_not_leaked() {
    if !common::qemu_tests() {
        return;
    }
    let (_root, data) = scratch("port");
    let d = common::daemons(&data, "qemu-storage-daemon".into(), (1, 1), &[LOCAL]);
    let file = blank_volume(&data);
    // A zombie (not yet reaped by whoever adopted the daemon) has an
    // empty command line: it has stopped.
    let alive =
        |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());

    // With an export open, the daemon holds QEMU's write lock on the file.
    let first = d.ensure("vol-t", &file, true).await.unwrap();
    d.set_exports("vol-t", &[local_grant()]).await.unwrap();
    std::fs::remove_file(data.join("run/vol-t.port")).unwrap();
    assert_eq!(
        d.find("vol-t"),
        None,
        "a daemon with no port file was adopted"
    );
    assert_eq!(
        d.running(),
        vec!["vol-t".to_string()],
        "the daemon is not listed"
    );
    let second = d.ensure("vol-t", &file, true).await.unwrap();
    assert_ne!(first.pid, second.pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(first.pid) {
        assert!(
            Instant::now() < deadline,
            "the unrecorded daemon still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replacement can open a writable export: the old daemon and its
    // lock are gone.
    d.set_exports("vol-t", &[local_grant()]).await.unwrap();

    std::fs::remove_file(data.join("run/vol-t.port")).unwrap();
    d.stop("vol-t").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(second.pid) {
        assert!(
            Instant::now() < deadline,
            "stop left the unrecorded daemon running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.running().is_empty());
}

/// A volume file that cannot be opened fails its daemon, and QEMU quotes
/// the whole `--blockdev` option, `aio=io_uring` included: that is not
/// io_uring being refused, and later daemons keep using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_volume_file_does_not_turn_io_uring_off() {
    if !common::qemu_tests() {
        return;
    }
    let (_root, data) = scratch("missing");
    let d = common::daemons(&data, "qemu-storage-daemon".into(), (1, 1), &[LOCAL]);
    let err = d
        .ensure("vol-t", &data.join("vol-t.raw"), true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("aio=io_uring"), "{err}");
    let file = blank_volume(&data);
    d.ensure("vol-t", &file, true).await.unwrap();
    let cmd = daemon_cmdline(&data);
    assert!(cmd.contains("aio=io_uring"), "{cmd}");
    d.stop("vol-t").await.unwrap();
}

/// A daemon started by an SC from before exports had an iothread (adopted
/// after an upgrade, command line without it) still gets new exports:
/// QEMU refuses an export naming an iothread the daemon does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_without_the_iothread_still_gets_exports() {
    if !common::qemu_tests() {
        return;
    }
    let (root, data) = scratch("old");
    // The daemon as an older SC started it: the same, minus the iothread.
    let wrapper = root.0.join("qsd-old");
    std::fs::write(
        &wrapper,
        r#"#!/bin/sh
held=0
for a do
  shift
  if [ $held = 1 ]; then
    held=0
    case "$a" in iothread,*) continue;; esac
    set -- "$@" --object
  fi
  if [ "$a" = "--object" ]; then held=1; else set -- "$@" "$a"; fi
done
[ $held = 1 ] && set -- "$@" --object
exec qemu-storage-daemon "$@"
"#,
    )
    .unwrap();
    executable(&wrapper);
    let d = common::daemons(&data, wrapper, (1, 1), &[LOCAL]);
    let file = blank_volume(&data);
    d.ensure("vol-t", &file, true).await.unwrap();
    let cmd = daemon_cmdline(&data);
    assert!(!cmd.contains("iothread"), "{cmd}");
    d.set_exports("vol-t", &[local_grant()]).await.unwrap();
    let nbd = local_export(&d);
    let w = over_unix(&nbd, "write -P 0x7e 0 64k");
    assert!(ok(&w), "write to the old daemon's export: {w:?}");
    d.stop("vol-t").await.unwrap();
}

/// CPU ticks (user + system) of each thread of process `pid`, the main
/// thread (whose id is the pid) first.
fn thread_ticks(pid: &str) -> Vec<u64> {
    let mut ticks = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
        // Fields after the command name, which is in parentheses and may
        // hold spaces: utime and stime are the 12th and 13th of those.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        let n = f[0] + f[1];
        if t.file_name().to_str() == Some(pid) {
            ticks.insert(0, n);
        } else {
            ticks.push(n);
        }
    }
    ticks
}

/// The daemon serves NBD from its iothread, not its main loop: what took
/// same-host 4 KiB reads from about 150 to about 400 MiB/s. Without the
/// export's `iothread`, the main thread does the protocol's work (nearly
/// all of the daemon's CPU time under small writes); with it, almost none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_served_from_the_iothread() {
    if !common::qemu_tests() {
        return;
    }
    let (_root, data) = scratch("iothread");
    let d = common::daemons(&data, "qemu-storage-daemon".into(), (1, 1), &[LOCAL]);
    let file = blank_volume(&data);
    d.ensure("vol-t", &file, true).await.unwrap();
    d.set_exports("vol-t", &[local_grant()]).await.unwrap();
    let nbd = local_export(&d);
    let pid = std::fs::read_to_string(data.join("run/vol-t.pid")).unwrap();
    let pid = pid.trim();
    let before = thread_ticks(pid)[0];
    let out = Command::new("qemu-img")
        .args(["bench", "-w", "-c", "40000", "-s", "4096", "-f", "raw"])
        .arg(format!(
            "nbd+unix:///{}?socket={}",
            nbd.export,
            nbd.socket.as_deref().unwrap()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ticks = thread_ticks(pid);
    let main = ticks[0] - before;
    let all: u64 = ticks.iter().sum::<u64>() - before;
    assert!(all >= 10, "too little work to judge: {ticks:?}");
    assert!(
        main * 4 <= all,
        "the main loop did {main} of the daemon's {all} ticks: {ticks:?}"
    );
    d.stop("vol-t").await.unwrap();
}

/// The volume attached to `instance` on NC `node`.
fn attached_to(generation: u64, node: &str, instance: &str) -> DesiredStorage {
    let mut v = vol("vol-t", &[node]);
    v.exports[0].instance_id = instance.into();
    DesiredStorage {
        generation,
        volumes: vec![v],
        snapshots: vec![],
    }
}

/// An attachment to another instance on the same NC is another export:
/// the VM that had the volume (force-detached, or terminated while its
/// QEMU still runs) reconnects to its own export name, or with its own
/// TLS identity and key, and is refused, so two VMs never write the
/// volume at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_on_the_same_nc_gets_its_own_export() {
    if !common::qemu_tests() {
        return;
    }
    let (root, data) = scratch("reattach");
    let mut settings = ScSettings::new(data.clone(), "token", "127.0.0.1:0".parse().unwrap());
    let base = 25000 + (std::process::id() % 200) as u16 * 10;
    settings.nbd_ports = (base, base + 9);
    settings.local_nodes = vec![LOCAL.into()];
    let s = ironbark_sc::open(&settings).await.unwrap();

    // On this host's NC: the first instance's export name stops working.
    s.apply(attached_to(1, LOCAL, "i-first")).await.unwrap();
    let first = ready(&s, &[LOCAL]).await.remove(0);
    assert!(ok(&over_unix(&first, "write -P 0x33 0 64k")));
    s.apply(attached_to(2, LOCAL, "i-second")).await.unwrap();
    let second = ready(&s, &[LOCAL]).await.remove(0);
    assert_ne!(first.export, second.export);
    let old = over_unix(&first, "read 0 4k");
    assert!(
        !ok(&old),
        "the first instance's export still opens: {old:?}"
    );
    let rd = over_unix(&second, "read -P 0x33 0 64k");
    assert!(ok(&rd), "the second instance reads the data: {rd:?}");

    // On another host's NC: the first instance's identity and key stop
    // working, and the new key is not the old one.
    let scratch = root.0.join("scratch");
    s.apply(attached_to(3, REMOTE, "i-first")).await.unwrap();
    let first = ready(&s, &[REMOTE]).await.remove(0);
    assert!(ok(&over_tls(&scratch, &first, "read -P 0x33 0 64k")));
    s.apply(attached_to(4, REMOTE, "i-second")).await.unwrap();
    let second = ready(&s, &[REMOTE]).await.remove(0);
    assert_ne!(first.tls_identity, second.tls_identity);
    assert_ne!(first.psk_hex, second.psk_hex);
    let old = over_tls(&scratch, &first, "read 0 4k");
    assert!(!ok(&old), "the first instance's key still opens: {old:?}");
    let mut old_key = second.clone();
    old_key.psk_hex = first.psk_hex.clone();
    let bad = over_tls(&scratch, &old_key, "read 0 4k");
    assert!(!ok(&bad), "the old key opens the new export: {bad:?}");
    let rd = over_tls(&scratch, &second, "read -P 0x33 0 64k");
    assert!(ok(&rd), "the second instance reads the data: {rd:?}");

    s.apply(attached_to(5, REMOTE, "i-second")).await.unwrap();
    s.apply(DesiredStorage {
        generation: 6,
        volumes: vec![vol("vol-t", &[])],
        snapshots: vec![],
    })
    .await
    .unwrap();
    s.settle().await;
    s.shutdown();
}
