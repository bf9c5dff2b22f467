//! One `qemu-storage-daemon` per volume that is exported or being
//! snapshotted, controlled over QMP.
//!
//! # Why one per volume
//!
//! QEMU's NBD server takes one TLS credential object for all its exports,
//! and authorizes a client for the server, not for an export. A daemon per
//! volume, whose PSK file lists only the identities of the NCs that volume
//! is exported to, makes the handshake itself the per-volume access check:
//! an NC holding another volume's key is refused before it can name an
//! export. It also confines a daemon crash to one volume, and the daemon
//! that serves a volume is the one process that can take a point-in-time
//! copy of it while a guest writes (`blockdev-backup`, whose
//! copy-before-write filter preserves the old data of every block the guest
//! overwrites before the copy reached it).
//!
//! # Two transports
//!
//! QEMU has one NBD server per process, listening on one address, so a
//! daemon serves all its exports one way, chosen when it starts:
//!
//! - **TCP with TLS-PSK** for NCs on other hosts (the per-volume key file
//!   above), on a listening socket the SC makes with `TCP_NODELAY`, so
//!   no QEMU version's NBD server can leave Nagle's algorithm on its
//!   connections ([`crate::listen`] says why that matters and how the
//!   socket gets into the daemon: `--nbd-server addr.type=fd`);
//! - **a Unix socket, without TLS**, when every NC the volume is exported
//!   to runs on this host ([`DaemonConfig::local_nodes`]): the socket is in
//!   the QMP socket directory, which only root may enter (0700), so the
//!   filesystem is the access check, no other host can reach it, and the
//!   guest's I/O pays neither TLS nor TCP. The same daemon serves snapshots
//!   of volumes nobody has attached: no port, no TLS set-up.
//!
//! # Serving threads
//!
//! A daemon serves its exports from an iothread of its own and reads and
//! writes the volume through io_uring. In QEMU's main loop, with its
//! thread pool, every NBD request woke a pool thread for the file I/O and
//! shared the loop with QMP; on the iothread with io_uring, 4 KiB reads
//! through the Unix socket went from about 150 to about 400 MiB/s and
//! 64 KiB reads from 0.9-1.6 to about 2.6 GiB/s on the bench machine
//! (`benches/ebs.sh`). An export pins the volume's node to that iothread
//! (`fixed-iothread`): a snapshot's copy-before-write filter then joins
//! the node there, where QEMU 10 aborts if the filter may pull a movable
//! node back to the main loop. Where io_uring is unusable (disabled by
//! sysctl or a seccomp filter) the first daemon that fails says so and
//! the rest use the thread pool. A daemon adopted from an SC that
//! predates the iothread (none on its command line) gets its exports
//! without one.
//!
//! # Files
//!
//! - `<run>/<vol>.pid`: pidfile; with the daemon's command line (checked
//!   through /proc, which also names the pidfile) it identifies the daemon
//!   after an SC restart, so exports survive one.
//! - `<run>/<vol>.port`: the TCP port it serves NBD on, or `unix`. The
//!   daemon's command line names only descriptor 3, so after an SC restart
//!   this file is what says which port an adopted daemon holds; it is
//!   written once the daemon serves. A daemon without it (the SC died in
//!   between) is not adopted but stopped, and replaced if its volume is
//!   wanted: it would otherwise hold the volume and QEMU's lock on it.
//! - `<run>/<vol>.psk/keys.psk`: `identity:hexkey` lines, rewritten
//!   atomically when the exports change. GnuTLS reads the file at each
//!   handshake, so a change applies to the next connection without a
//!   restart. `dh-params.pem` beside it: a fixed public group, so the
//!   daemon does not generate one at start.
//! - `<sockets>/<vol>.qmp`: the QMP socket, in a short runtime directory
//!   because a Unix socket path may not exceed 107 bytes; `<vol>.nbd`
//!   beside it, the NBD socket of a Unix-socket daemon (0600; the
//!   directory is root's, 0700).

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ironbark_qmp::{Qmp, QmpError};
use ironbark_sc_api::NBD_TLS_PRIORITY;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::error::ScError;

/// The block node exports and backups use.
const NODE: &str = "vol";
const FILE_NODE: &str = "vol-file";
const TLS_ID: &str = "tls0";
/// The thread exports serve from; see "Serving threads" above.
const IOTHREAD: &str = "io0";
const BACKUP_NODE: &str = "snap-target";
const BACKUP_FILE_NODE: &str = "snap-target-file";
const BACKUP_DATA_NODE: &str = "snap-target-data";
const BACKUP_JOB: &str = "snap";
/// Where a TCP daemon finds the listener the SC made for it.
const LISTEN_FD: u32 = 3;

/// The RFC 7919 `ffdhe2048` group, as QEMU's TLS credentials read it from
/// `dh-params.pem`. Without that file QEMU generates fresh parameters at
/// every daemon start: 0.4-0.9 s of CPU on a 2-core host, paid by every
/// attach and by every snapshot of a volume nobody has attached, for no
/// security gain over a vetted public group.
const FFDHE2048: &str = "-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

/// glibc malloc settings for the daemons. QEMU reads each NBD request into
/// a bounce buffer from `posix_memalign`; glibc serves the large ones
/// (1 MiB requests and up) with a fresh `mmap` and gives the memory back
/// on free, so every such request page-faults and zeroes its buffer again
/// (`perf`: `exc_page_fault` and `clear_page_erms` were a fifth of the
/// daemon's time under 1 MiB reads). Keeping buffers up to NBD's 32 MiB
/// request limit on the heap, and up to 64 MiB of freed heap for the next
/// requests, roughly halved 1 MiB read and write times over the Unix
/// socket; the daemon's RSS stayed under 30 MiB after the bench.
pub const DAEMON_MALLOC: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864";

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub binary: PathBuf,
    pub ip_binary: PathBuf,
    /// Run daemons inside this network namespace (tests, simulated hosts).
    pub netns: Option<String>,
    /// Address the NBD servers listen on.
    pub listen_host: String,
    /// Address NCs are told to connect to.
    pub advertise_host: String,
    /// Ports handed to daemons, `first..=last`.
    pub ports: (u16, u16),
    /// Pidfiles, port files, PSK files.
    pub run_dir: PathBuf,
    /// QMP sockets and NBD Unix sockets (short path; made 0700).
    pub socket_dir: PathBuf,
    /// Node ids of the NCs on this host (`ironbark up`'s own NC,
    /// `SC_LOCAL_NODES`): volumes exported only to them are served over a
    /// Unix socket instead of TCP + TLS.
    pub local_nodes: Vec<String>,
}

impl DaemonConfig {
    /// Whether the NC `node_id` shares this host, so it can use the
    /// volume's Unix socket.
    pub fn is_local(&self, node_id: &str) -> bool {
        self.local_nodes.iter().any(|n| n == node_id)
    }
}

/// One export a daemon should serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub node_id: String,
    pub instance_id: String,
    pub export: String,
    pub identity: String,
    pub psk_hex: String,
}

/// How a daemon serves NBD (see the module's doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with TLS-PSK on this port.
    Tcp(u16),
    /// Plain NBD on this Unix socket.
    Unix(PathBuf),
}

/// A daemon found running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub transport: Transport,
}

pub struct Daemons {
    cfg: DaemonConfig,
    /// Set once a daemon could not open a volume with io_uring (a kernel
    /// with it disabled, a seccomp filter): later daemons use QEMU's
    /// thread pool instead.
    no_io_uring: std::sync::atomic::AtomicBool,
}

fn qmp_err(what: &str) -> impl Fn(QmpError) -> ScError + '_ {
    move |e| ScError::io(what, e)
}

impl Daemons {
    pub fn new(cfg: DaemonConfig) -> Result<Daemons, ScError> {
        for d in [&cfg.run_dir, &cfg.socket_dir] {
            std::fs::create_dir_all(d).map_err(|e| ScError::io(d.display(), e))?;
        }
        private_dir(&cfg.socket_dir)?;
        Ok(Daemons {
            cfg,
            no_io_uring: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.cfg
    }

    fn pidfile(&self, vol: &str) -> PathBuf {
        self.cfg.run_dir.join(format!("{vol}.pid"))
    }
    fn portfile(&self, vol: &str) -> PathBuf {
        self.cfg.run_dir.join(format!("{vol}.port"))
    }
    fn pskdir(&self, vol: &str) -> PathBuf {
        self.cfg.run_dir.join(format!("{vol}.psk"))
    }
    fn socket(&self, vol: &str) -> PathBuf {
        self.cfg.socket_dir.join(format!("{vol}.qmp"))
    }
    /// The NBD socket of a Unix-socket daemon.
    pub fn nbd_socket(&self, vol: &str) -> PathBuf {
        self.cfg.socket_dir.join(format!("{vol}.nbd"))
    }

    /// The pid of `vol`'s daemon if one runs, whether or not it got as
    /// far as serving (see [`Daemons::find`]).
    fn alive(&self, vol: &str) -> Option<u32> {
        let pidfile = self.pidfile(vol);
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_our_daemon(pid, &pidfile).then_some(pid)
    }

    /// The daemon serving `vol`, if one runs and serves. A daemon without
    /// its port file (the SC died between starting it and recording where
    /// it serves) is alive but not found: [`Daemons::ensure`] replaces it
    /// and [`Daemons::stop`] ends it, so it never outlives its volume.
    pub fn find(&self, vol: &str) -> Option<Running> {
        let pid = self.alive(vol)?;
        let port = std::fs::read_to_string(self.portfile(vol)).ok()?;
        let transport = match port.trim() {
            "unix" => Transport::Unix(self.nbd_socket(vol)),
            p => Transport::Tcp(p.parse().ok()?),
        };
        Some(Running { pid, transport })
    }

    /// Volumes with a running daemon.
    pub fn running(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.cfg.run_dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".pid").map(str::to_string)
            })
            .filter(|vol| self.alive(vol).is_some())
            .collect()
    }

    /// Starts the daemon for `vol` over `file` unless one runs (with
    /// whichever transport); a new one serves on a Unix socket if `unix`,
    /// else on TCP with TLS. Returns the daemon.
    pub async fn ensure(&self, vol: &str, file: &Path, unix: bool) -> Result<Running, ScError> {
        use std::sync::atomic::Ordering;
        // What this attempt uses: another volume's daemon may set the flag
        // meanwhile, and this one must still get its retry.
        let tried_io_uring = !self.no_io_uring.load(Ordering::Relaxed);
        match self.ensure_once(vol, file, unix).await {
            Err(ScError::Io(e)) if tried_io_uring && io_uring_refused(&e) => {
                tracing::warn!(volume = %vol, error = %e, "io_uring unusable; daemons fall back to threads");
                self.no_io_uring.store(true, Ordering::Relaxed);
                self.ensure_once(vol, file, unix).await
            }
            r => r,
        }
    }

    async fn ensure_once(&self, vol: &str, file: &Path, unix: bool) -> Result<Running, ScError> {
        if let Some(r) = self.find(vol) {
            return Ok(r);
        }
        if self.alive(vol).is_some() {
            // Started by an SC that died before recording its port: it
            // holds the volume (and QEMU's lock on the file), so it goes.
            self.stop(vol).await?;
        }
        // Leftovers of a dead daemon.
        let _ = std::fs::remove_file(self.socket(vol));
        let _ = std::fs::remove_file(self.nbd_socket(vol));
        let _ = std::fs::remove_file(self.pidfile(vol));
        if unix {
            let _ = std::fs::remove_dir_all(self.pskdir(vol));
            return self
                .spawn(vol, file, None)
                .await
                .map_err(|e| ScError::Io(format!("starting qemu-storage-daemon for {vol}: {e}")));
        }
        let pskdir = self.pskdir(vol);
        std::fs::create_dir_all(&pskdir).map_err(|e| ScError::io(pskdir.display(), e))?;
        write_private(&pskdir.join("keys.psk"), b"")?;
        write_private(&pskdir.join("dh-params.pem"), FFDHE2048.as_bytes())?;
        let taken: Vec<u16> = self
            .running()
            .iter()
            .filter_map(|v| match self.find(v)?.transport {
                Transport::Tcp(p) => Some(p),
                Transport::Unix(_) => None,
            })
            .collect();
        let (first, last) = self.cfg.ports;
        // Start at a spot derived from the volume id so concurrent SCs on
        // one host (tests) rarely race for the same port.
        let span = u32::from(last - first) + 1;
        let seed = vol
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let mut last_err = String::from("no free port");
        for i in 0..span.min(64) {
            let port = first + ((seed + i) % span) as u16;
            if taken.contains(&port) {
                continue;
            }
            let (netns, host) = (self.cfg.netns.clone(), self.cfg.listen_host.clone());
            let listener = tokio::task::spawn_blocking(move || {
                crate::listen::nbd_listener(netns.as_deref(), &host, port)
            })
            .await
            .map_err(|e| ScError::Io(format!("NBD listener for {vol}: {e}")))?;
            let listener = match listener {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    last_err = e.to_string();
                    continue;
                }
                Err(e) => return Err(ScError::Io(format!("NBD listener for {vol}: {e}"))),
            };
            return self
                .spawn(vol, file, Some((port, listener)))
                .await
                .map_err(|e| ScError::Io(format!("starting qemu-storage-daemon for {vol}: {e}")));
        }
        Err(ScError::Io(format!(
            "starting qemu-storage-daemon for {vol}: {last_err}"
        )))
    }

    /// Starts a daemon serving NBD with TLS on `tcp`'s listener (made by
    /// [`crate::listen`], bound to the port given), or on its Unix socket
    /// without.
    async fn spawn(
        &self,
        vol: &str,
        file: &Path,
        tcp: Option<(u16, OwnedFd)>,
    ) -> Result<Running, String> {
        let port = tcp.as_ref().map(|(p, _)| *p);
        let pidfile = self.pidfile(vol);
        let socket = self.socket(vol);
        let path = |p: &Path| -> Result<String, String> {
            let s = p
                .to_str()
                .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
            if s.contains(',') {
                return Err(format!(
                    "{s} contains a comma, which QEMU options cannot carry"
                ));
            }
            Ok(s.to_string())
        };
        let mut program: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(ns) = &self.cfg.netns {
            program.extend([
                self.cfg.ip_binary.as_os_str(),
                "netns".as_ref(),
                "exec".as_ref(),
            ]);
            program.push(ns.as_ref());
        }
        program.push(self.cfg.binary.as_os_str());
        let mut c = match &tcp {
            // The listener goes in as stdin, the one descriptor besides
            // stdout and stderr a child can be given without unsafe code;
            // `--daemonize` points stdin at /dev/null once the NBD server
            // runs, so the shell moves it to descriptor 3 first.
            Some(_) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("exec \"$@\" {LISTEN_FD}<&0 </dev/null"))
                    .arg("sh");
                c.args(&program);
                c
            }
            None => {
                let mut c = Command::new(program[0]);
                c.args(&program[1..]);
                c
            }
        };
        c.args(["--daemonize", "--pidfile", &path(&pidfile)?])
            .arg("--chardev")
            .arg(format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                path(&socket)?
            ))
            .args(["--monitor", "chardev=qmp0"])
            .arg("--object")
            .arg(format!("iothread,id={IOTHREAD}"));
        let nbd_server = match port {
            Some(_) => {
                c.arg("--object").arg(format!(
                    "tls-creds-psk,id={TLS_ID},endpoint=server,dir={},priority={NBD_TLS_PRIORITY}",
                    path(&self.pskdir(vol))?
                ));
                format!("addr.type=fd,addr.str={LISTEN_FD},tls-creds={TLS_ID}")
            }
            None => format!("addr.type=unix,addr.path={}", path(&self.nbd_socket(vol))?),
        };
        c.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name={FILE_NODE},filename={},discard=unmap,aio={}",
                path(file)?,
                if self.no_io_uring.load(std::sync::atomic::Ordering::Relaxed) {
                    "threads"
                } else {
                    "io_uring"
                }
            ))
            .arg("--blockdev")
            .arg(format!(
                "driver=raw,node-name={NODE},file={FILE_NODE},discard=unmap"
            ))
            .arg("--nbd-server")
            .arg(nbd_server)
            .env("GLIBC_TUNABLES", DAEMON_MALLOC)
            .stdin(match tcp {
                // The SC's copy is close-on-exec, so only this child gets
                // the port; it closes with `c`, below.
                Some((_, listener)) => Stdio::from(listener),
                None => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), c.output())
            .await
            .map_err(|_| "qemu-storage-daemon did not daemonize within 30 s".to_string())?
            .map_err(|e| format!("running qemu-storage-daemon: {e}"))?;
        drop(c);
        if !out.status.success() {
            return Err(format!(
                "qemu-storage-daemon failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let transport = match port {
            Some(p) => Transport::Tcp(p),
            None => {
                // The directory already keeps everyone but root out; the
                // socket's own mode says so too, whatever QEMU's umask.
                let sock = self.nbd_socket(vol);
                std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("{}: {e}", sock.display()))?;
                Transport::Unix(sock)
            }
        };
        let port_s = port.map_or_else(|| "unix".to_string(), |p| p.to_string());
        write_private(&self.portfile(vol), port_s.as_bytes()).map_err(|e| e.to_string())?;
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("qemu-storage-daemon wrote no pidfile")?;
        // With --daemonize it returns once QMP listens; check anyway.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ironbark_qmp::command(&socket, "query-version", None, Duration::from_secs(2))
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("qemu-storage-daemon QMP: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        tracing::info!(volume = %vol, pid, ?transport, "qemu-storage-daemon started");
        Ok(Running { pid, transport })
    }

    /// Stops `vol`'s daemon (closing every connection) and removes its
    /// files; `Ok` if none ran.
    pub async fn stop(&self, vol: &str) -> Result<(), ScError> {
        if let Some(pid) = self.alive(vol) {
            let _ = ironbark_qmp::command(&self.socket(vol), "quit", None, Duration::from_secs(5))
                .await;
            if !wait_gone(pid, &self.pidfile(vol), Duration::from_secs(10)).await {
                tracing::warn!(volume = %vol, pid, "daemon did not quit; killing it");
                kill(pid);
                if !wait_gone(pid, &self.pidfile(vol), Duration::from_secs(10)).await {
                    return Err(ScError::Io(format!(
                        "qemu-storage-daemon {pid} of {vol} survived SIGKILL"
                    )));
                }
            }
            tracing::info!(volume = %vol, "qemu-storage-daemon stopped");
        }
        for f in [
            self.socket(vol),
            self.nbd_socket(vol),
            self.pidfile(vol),
            self.portfile(vol),
        ] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(self.pskdir(vol));
        Ok(())
    }

    /// Makes the daemon's exports exactly `grants` (the daemon must run).
    pub async fn set_exports(&self, vol: &str, grants: &[Grant]) -> Result<(), ScError> {
        // Keys first: an added export must find its identity, and a removed
        // identity must not open new connections while the export closes.
        // A Unix-socket daemon has no key file.
        let keyfile = self.pskdir(vol).join("keys.psk");
        if keyfile.exists() {
            let mut keys = String::new();
            for g in grants {
                keys.push_str(&format!("{}:{}\n", g.identity, g.psk_hex));
            }
            write_private(&keyfile, keys.as_bytes())?;
        }
        let mut qmp = Qmp::connect(&self.socket(vol))
            .await
            .map_err(qmp_err("daemon QMP"))?;
        let have: Vec<String> = qmp
            .execute("query-block-exports", None)
            .await
            .map_err(qmp_err("query-block-exports"))?
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for id in &have {
            if !grants.iter().any(|g| &g.export == id) {
                // `hard`: cut the connections of the NC losing the volume.
                qmp.execute("block-export-del", Some(json!({"id": id, "mode": "hard"})))
                    .await
                    .map_err(qmp_err("block-export-del"))?;
                tracing::info!(volume = %vol, export = %id, "export closed");
            }
        }
        let iothread = self.alive(vol).is_some_and(has_iothread);
        for g in grants {
            if have.contains(&g.export) {
                continue;
            }
            let mut export = json!({
                "type": "nbd",
                "id": g.export,
                "node-name": NODE,
                "name": g.export,
                "writable": true,
            });
            if iothread {
                // Fixed: a node in the iothread that QEMU may move gets
                // moved back to the main loop by the filter a snapshot
                // inserts, and QEMU 10 aborts on that (`bdrv_insert_node`
                // asserts the context held). A fixed export keeps the
                // volume where it is, so the filter and the snapshot
                // target follow it instead.
                export["iothread"] = json!(IOTHREAD);
                export["fixed-iothread"] = json!(true);
            }
            qmp.execute("block-export-add", Some(export))
                .await
                .map_err(qmp_err("block-export-add"))?;
            tracing::info!(volume = %vol, export = %g.export, node = %g.node_id, "export opened");
        }
        Ok(())
    }

    /// The daemon's open export ids.
    pub async fn exports(&self, vol: &str) -> Result<Vec<String>, ScError> {
        let v = ironbark_qmp::command(
            &self.socket(vol),
            "query-block-exports",
            None,
            Duration::from_secs(5),
        )
        .await
        .map_err(qmp_err("query-block-exports"))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A point-in-time copy of the volume, taken while the guest may
    /// write, into `data`: a fresh sparse raw file of the volume's size
    /// that is the external data file of the fresh qcow2 `meta` (see
    /// [`crate::backend`] for why). `started` runs once the job has begun,
    /// which is the instant the copy shows, and `copied` once it has ended
    /// well, before the target is closed (an error from either cancels);
    /// `progress` gets the fraction done. Leftovers of an interrupted
    /// backup are removed first. Returns once the target is closed, which
    /// flushes it.
    pub async fn backup(
        &self,
        vol: &str,
        meta: &Path,
        data: &Path,
        started: &(dyn Fn() -> Result<(), ScError> + Send + Sync),
        copied: &(dyn Fn() -> Result<(), ScError> + Send + Sync),
        progress: &(dyn Fn(f64) + Send + Sync),
    ) -> Result<(), ScError> {
        let mut qmp = Qmp::connect(&self.socket(vol))
            .await
            .map_err(qmp_err("daemon QMP"))?;
        clean_backup(&mut qmp).await;
        let utf8 = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| ScError::Io("snapshot path is not UTF-8".into()))
        };
        let (meta, data) = (utf8(meta)?, utf8(data)?);
        qmp.execute(
            "blockdev-add",
            Some(json!({
                "driver": "qcow2",
                "node-name": BACKUP_NODE,
                "file": {"driver": "file", "node-name": BACKUP_FILE_NODE, "filename": meta},
                "data-file": {"driver": "file", "node-name": BACKUP_DATA_NODE, "filename": data},
            })),
        )
        .await
        .map_err(qmp_err("blockdev-add (snapshot target)"))?;
        // sync=full copies every block as of this instant. Zero ranges of
        // the source become zero clusters in the qcow2's metadata and never
        // touch the data file, so its holes stay holes; data lands at its
        // own offset there (external data files are identity-mapped).
        qmp.execute(
            "blockdev-backup",
            Some(json!({
                "job-id": BACKUP_JOB,
                "device": NODE,
                "target": BACKUP_NODE,
                "sync": "full",
                "auto-dismiss": false,
            })),
        )
        .await
        .map_err(qmp_err("blockdev-backup"))?;
        if let Err(e) = started() {
            clean_backup(&mut qmp).await;
            return Err(e);
        }
        let outcome = wait_backup(&mut qmp, progress)
            .await
            .map_err(|e| ScError::Io(format!("backup of {vol}: {e}")))
            .and_then(|()| copied());
        clean_backup(&mut qmp).await;
        outcome
    }

    /// Whether the volume's daemon runs a snapshot copy (one an earlier SC
    /// process started, say): such a daemon must outlive its exports until
    /// the copy is followed to its end.
    pub async fn backup_running(&self, vol: &str) -> bool {
        match self.live_qmp(vol).await {
            Some(mut qmp) => backup_job(&mut qmp).await.is_ok_and(|j| j.is_some()),
            None => false,
        }
    }

    /// A QMP connection to the volume's daemon, if one is running.
    async fn live_qmp(&self, vol: &str) -> Option<Qmp> {
        self.alive(vol)?;
        Qmp::connect(&self.socket(vol)).await.ok()
    }

    /// Follows a backup into `meta` that an earlier SC process started and
    /// did not see end (it died; the daemon, a process of its own, went on
    /// copying). `Ok(false)` if the daemon has no such job, so the copy is
    /// lost; `Ok(true)` once it has finished well.
    pub async fn adopt_backup(
        &self,
        vol: &str,
        meta: &Path,
        progress: &(dyn Fn(f64) + Send + Sync),
    ) -> Result<bool, ScError> {
        let Some(mut qmp) = self.live_qmp(vol).await else {
            return Ok(false);
        };
        let nodes = qmp
            .execute("query-named-block-nodes", Some(json!({"flat": true})))
            .await
            .map_err(qmp_err("query-named-block-nodes"))?;
        let ours = nodes.as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["node-name"] == BACKUP_FILE_NODE && n["file"].as_str() == meta.to_str())
        });
        let has_job = backup_job(&mut qmp).await.map_err(ScError::Io)?.is_some();
        if !ours || !has_job {
            return Ok(false);
        }
        tracing::info!(volume = %vol, "following the point-in-time copy an earlier SC started");
        let outcome = wait_backup(&mut qmp, progress).await;
        clean_backup(&mut qmp).await;
        outcome
            .map(|()| true)
            .map_err(|e| ScError::Io(format!("backup of {vol}: {e}")))
    }
}

/// The daemon's snapshot job, as `query-jobs` shows it, if it has one.
async fn backup_job(qmp: &mut Qmp) -> Result<Option<Value>, String> {
    let jobs = qmp
        .execute("query-jobs", None)
        .await
        .map_err(|e| format!("query-jobs: {e}"))?;
    Ok(jobs
        .as_array()
        .and_then(|a| a.iter().find(|j| j["id"] == BACKUP_JOB))
        .cloned())
}

/// Waits for the backup job to conclude, reporting its progress; its
/// error, if it ended with one.
async fn wait_backup(qmp: &mut Qmp, progress: &(dyn Fn(f64) + Send + Sync)) -> Result<(), String> {
    loop {
        let job = backup_job(qmp).await?.unwrap_or(Value::Null);
        let done = job["current-progress"].as_f64().unwrap_or(0.0);
        let total = job["total-progress"].as_f64().unwrap_or(1.0).max(1.0);
        progress(done / total);
        match job["status"].as_str() {
            Some("concluded") => {
                return match job["error"].as_str() {
                    None => Ok(()),
                    Some(e) => Err(e.to_string()),
                };
            }
            Some(_) => {}
            None => return Err("the backup job vanished".to_string()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dismisses a finished (or cancels a running) backup job and removes its
/// target nodes; errors mean there was nothing to clean.
async fn clean_backup(qmp: &mut Qmp) {
    if qmp
        .execute("job-cancel", Some(json!({"id": BACKUP_JOB})))
        .await
        .is_ok()
    {
        let _ = qmp
            .wait_event(
                "JOB_STATUS_CHANGE",
                |d| d["id"] == BACKUP_JOB && d["status"] == "concluded",
                Duration::from_secs(30),
            )
            .await;
    }
    let _ = qmp
        .execute("job-dismiss", Some(json!({"id": BACKUP_JOB})))
        .await;
    for node in [BACKUP_NODE, BACKUP_FILE_NODE, BACKUP_DATA_NODE] {
        let _ = qmp
            .execute("blockdev-del", Some(json!({"node-name": node})))
            .await;
    }
}

/// Makes `dir` enterable by its owner only, and checks that owner is us:
/// the Unix NBD sockets in it have no other protection.
fn private_dir(dir: &Path) -> Result<(), ScError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ScError::io(dir.display(), e))?;
    let meta = std::fs::metadata(dir).map_err(|e| ScError::io(dir.display(), e))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(ScError::Io(format!(
            "{} must be ours and private (uid {}, mode {:o})",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Writes a file readable by root only, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), ScError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ScError::io(tmp.display(), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| ScError::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| ScError::io(path.display(), e))
}

/// Whether a daemon's start failed because io_uring is unusable: QEMU's
/// own words when the kernel refuses it ("Unable to use io_uring"), or a
/// QEMU built without it rejecting the value. Not any error that quotes
/// the `--blockdev` option (QEMU repeats it, `aio=io_uring` included, when
/// the volume file cannot be opened at all).
fn io_uring_refused(error: &str) -> bool {
    error.contains("Unable to use io_uring") || error.contains("value 'io_uring'")
}

/// Whether daemon `pid` runs with the iothread exports serve from (daemons
/// adopted from an SC before it did have none, and QEMU refuses an export
/// naming a missing iothread).
fn has_iothread(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("iothread,id={IOTHREAD}")))
}

fn is_our_daemon(pid: u32, pidfile: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Some(want) = pidfile.to_str() else {
        return false;
    };
    let is_qsd = args
        .first()
        .is_some_and(|a| String::from_utf8_lossy(a).contains("qemu-storage-daemon"));
    is_qsd
        && args
            .windows(2)
            .any(|w| w[0] == b"--pidfile" && w[1] == want.as_bytes())
}

async fn wait_gone(pid: u32, pidfile: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_our_daemon(pid, pidfile) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

fn kill(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
}
