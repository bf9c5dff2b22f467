//! Boots the test image under QEMU (TCG: this project's /dev/kvm hangs stock
//! guests) and checks what the instance tests rely on: the readiness line,
//! SSH logins, and the metadata-service path (instance id, key, user-data).
//!
//! Ignored unless `IRONBARK_QEMU_TESTS=1` is set when the tests are built
//! (see build.rs). Needs `qemu-system-x86_64`, `ssh`, `ssh-keygen` and, for
//! the metadata test, `python3`; the builder's own tools (apt-get, dpkg-deb,
//! ldd) and Debian's mirror unless the .deb cache is warm. The cache lives in
//! `IRONBARK_TESTIMAGE_CACHE`, else under the target directory.
//!
//! Networking is QEMU user mode with `restrict=on`: DHCP and the explicit
//! forwards below work, but nothing the guest sends leaves the QEMU process.
//! That matters here because the guest asks 169.254.169.254 for metadata, and
//! an unrestricted user-mode network would pass that on to whatever answers
//! at that address on the host's own network.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use base64::Engine;
use ironbark_testimage::{BuiltImage, READY_PREFIX, Ready, SSH_KEY_PARAM, parse_ready_line};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ironbark-testimage")
}

/// Builds the image once per test process; both tests boot the same files.
fn image() -> &'static BuiltImage {
    static IMAGE: OnceLock<BuiltImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let cache = std::env::var_os("IRONBARK_TESTIMAGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| tmp_root().join("deb-cache"));
        // A fixed directory, so runs do not pile up images; the builder
        // replaces files by rename, so a concurrent run cannot see torn ones.
        let out = tmp_root().join("image");
        let t = Instant::now();
        let img = ironbark_testimage::build_test_image(&out, &cache).expect("build test image");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "built {} in {:.1?}: vmlinuz {} bytes, initrd.img {} bytes",
            img.kernel_version,
            t.elapsed(),
            size(&img.kernel),
            size(&img.initrd)
        );
        img
    })
}

/// A scratch directory for one test, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = tmp_root().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running QEMU whose serial console arrives line by line; killed on drop
/// so a failing test leaves no VM behind.
struct Vm {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    started: Instant,
}

impl Vm {
    fn boot(img: &BuiltImage, append: &str, netdev: &str) -> Vm {
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-m",
                "256",
                "-nographic",
            ])
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            .args(["-append", append])
            .args(["-netdev", netdev])
            .args(["-device", "virtio-net-pci,netdev=n0", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "qemu-system-x86_64 (apt-get install -y -t bookworm-backports \
                 qemu-system-x86 qemu-utils)",
            );
        let mut child = child;
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Vm {
            child,
            lines,
            log: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Waits for a console line matching `f`, up to `timeout` from now.
    fn wait_for<T>(&mut self, timeout: Duration, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.log.push(line);
                    if let Some(v) = hit {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out; console so far:\n{}", self.log.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("QEMU exited; console:\n{}", self.log.join("\n"))
                }
            }
        }
    }

    fn wait_ready(&mut self) -> Ready {
        let ready = self.wait_for(READY_TIMEOUT, parse_ready_line);
        eprintln!("boot to {READY_PREFIX} took {:.1?}", self.started.elapsed());
        let count = self.log.iter().filter(|l| l.contains(READY_PREFIX)).count();
        assert_eq!(count, 1, "exactly one readiness line");
        ready
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh ed25519 key pair; returns (private key path, public key line).
fn keypair(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ironbark-test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// Runs `cmd` as root in the guest, retrying while sshd is slow to answer
/// (every handshake is emulated), and returns its stdout.
fn ssh(key: &Path, port: u16, cmd: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &port.to_string(),
                "root@127.0.0.1",
                cmd,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("ssh");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// No metadata service: the id falls back to `unknown`, DHCP still gives an
/// address, and the key from the kernel command line lets us in.
#[test]
#[cfg_attr(
    not(qemu_tests),
    ignore = "boots QEMU under TCG; set IRONBARK_QEMU_TESTS=1 to run"
)]
fn boots_to_ready_and_accepts_ssh_with_cmdline_key() {
    let img = image();
    let scratch = Scratch::new("cmdline-key");
    let (key, public) = keypair(&scratch.0);
    let b64 = base64::engine::general_purpose::STANDARD.encode(public.as_bytes());
    let port = free_port();
    let mut vm = Vm::boot(
        img,
        &format!("console=ttyS0 panic=-1 {SSH_KEY_PARAM}={b64}"),
        &format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"),
    );
    let ready = vm.wait_ready();
    assert_eq!(ready.instance_id, "unknown");
    assert_eq!(ready.ip, Some("10.0.2.15".parse().unwrap()));
    let t = Instant::now();
    assert_eq!(ssh(&key, port, "echo ok"), "ok\n");
    eprintln!("ssh echo ok took {:.1?}", t.elapsed());
    // PID 1 is still the init script, and the modules it loaded are there.
    let out = ssh(&key, port, "cat /proc/1/cmdline | tr '\\0' ' '; lsmod");
    assert!(out.starts_with("/bin/sh /init"), "{out}");
    assert!(out.contains("virtio_net"), "{out}");
    assert!(out.contains("virtio_blk"), "{out}");
}

/// A stand-in metadata service: QEMU runs this once per guest connection to
/// 169.254.169.254:80 (`guestfwd=...-cmd:`), with the connection on
/// stdin/stdout, and it serves files under argv[1].
const FAKE_METADATA: &str = r#"
import os, sys
root = os.path.realpath(sys.argv[1])
req = sys.stdin.buffer.readline().decode("latin-1").split()
while sys.stdin.buffer.readline() not in (b"\r\n", b"\n", b""):
    pass
path = os.path.realpath(os.path.join(root, req[1].lstrip("/"))) if len(req) > 1 else root
if path.startswith(root + os.sep) and os.path.isfile(path):
    body, status = open(path, "rb").read(), "200 OK"
else:
    body, status = b"not found\n", "404 Not Found"
head = "HTTP/1.0 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (status, len(body))
sys.stdout.buffer.write(head.encode() + body)
sys.stdout.buffer.flush()
"#;

/// With a metadata service: the instance id, the SSH key and a user-data
/// script all come from it, as on a real node controller.
#[test]
#[cfg_attr(
    not(qemu_tests),
    ignore = "boots QEMU under TCG; set IRONBARK_QEMU_TESTS=1 to run"
)]
fn reads_instance_id_key_and_user_data_from_metadata() {
    let img = image();
    let scratch = Scratch::new("metadata");
    let (key, public) = keypair(&scratch.0);
    let md = scratch.0.join("md");
    let meta = md.join("latest/meta-data");
    std::fs::create_dir_all(meta.join("public-keys/0")).unwrap();
    std::fs::write(meta.join("instance-id"), "i-0123456789abcdef0").unwrap();
    std::fs::write(
        meta.join("public-keys/0/openssh-key"),
        format!("{public}\n"),
    )
    .unwrap();
    std::fs::write(
        md.join("latest/user-data"),
        "#!/bin/sh\necho \"USERDATA-RAN uid=$(id -u) host=$(hostname)\"\n",
    )
    .unwrap();
    let server = scratch.0.join("metadata.py");
    std::fs::write(&server, FAKE_METADATA).unwrap();
    let port = free_port();
    // The guest's network is 169.254.0.0/16 so that 169.254.169.254 is
    // on-link (restrict=on hands out no default route) and the guest
    // forward catches it.
    let netdev = format!(
        "user,id=n0,restrict=on,net=169.254.0.0/16,\
         hostfwd=tcp:127.0.0.1:{port}-:22,\
         guestfwd=tcp:169.254.169.254:80-cmd:python3 {} {}",
        server.display(),
        md.display()
    );
    let mut vm = Vm::boot(img, "console=ttyS0 panic=-1", &netdev);
    let ready = vm.wait_ready();
    assert_eq!(ready.instance_id, "i-0123456789abcdef0");
    assert!(ready.ip.is_some_and(|ip| ip.octets()[..2] == [169, 254]));
    let ran = vm.wait_for(Duration::from_secs(30), |l| {
        l.contains("USERDATA-RAN").then(|| l.to_string())
    });
    assert!(
        ran.contains("USERDATA-RAN uid=0 host=i-0123456789abcdef0"),
        "{ran}"
    );
    assert_eq!(ssh(&key, port, "hostname"), "i-0123456789abcdef0\n");
    let perms = ssh(&key, port, "stat -c '%a %n' /root/.ssh/authorized_keys");
    assert_eq!(perms, "600 /root/.ssh/authorized_keys\n");
}
