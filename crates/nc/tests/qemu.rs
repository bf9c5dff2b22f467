//! The NC with real QEMU: a network namespace with a bridge and dnsmasq
//! stands in for what the CC sets up; the test image (a Debian kernel and a
//! busybox initramfs, built by `ironbark-testimage`) is served over HTTP as
//! the instance's kernel and ramdisk, with a small raw root disk under a
//! qcow2 overlay. The instance must boot to its readiness line with a DHCP
//! address, answer on its SSH port, be adopted (not restarted) by a
//! restarted NC, reboot to a second readiness line and, once no longer
//! desired, leave no QEMU, tap or directory behind.
//!
//! Runs only with `IRONBARK_QEMU_TESTS=1`, as root (namespaces, taps), with
//! `qemu-system-x86`, `qemu-utils`, `dnsmasq-base` and `iproute2`
//! installed. Everything it creates is removed by a drop guard, also when
//! it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ironbark_nc::testing::{FileServer, TempDir};
use ironbark_nc::{Accel, AccelMode, Node, NodeConfig, QemuConfig, QemuHypervisor};
use ironbark_node_api::{
    BootImage, DesiredInstances, InstanceSpec, NicSpec, VmResources, VmState, tap_name,
};
use ironbark_testimage::{READY_PREFIX, SSH_KEY_PARAM, parse_ready_line};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const INSTANCE: &str = "i-0123456789abcdef0";
const ACCOUNT: &str = "000000000001";
const BRIDGE: &str = "br0";

fn enabled() -> bool {
    if std::env::var("IRONBARK_QEMU_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set IRONBARK_QEMU_TESTS=1 (as root, with QEMU and dnsmasq) to run");
    false
}

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn must(program: &str, args: &[&str]) {
    let out = sh(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The simulated host network: a namespace, a bridge with 10.123.0.1/24 and
/// dnsmasq serving DHCP on it. Dropping it kills every QEMU started from
/// `data_dir`, dnsmasq, and deletes the namespace.
struct HostNet {
    netns: String,
    dnsmasq: Option<Child>,
    data_dir: PathBuf,
    scratch: PathBuf,
}

impl HostNet {
    fn new(scratch: &Path, data_dir: &Path) -> HostNet {
        let netns = format!("ibnc{}", std::process::id());
        let _ = sh("ip", &["netns", "del", &netns]);
        let mut net = HostNet {
            netns: netns.clone(),
            dnsmasq: None,
            data_dir: data_dir.to_path_buf(),
            scratch: scratch.to_path_buf(),
        };
        must("ip", &["netns", "add", &netns]);
        must("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        must(
            "ip",
            &["-n", &netns, "link", "add", BRIDGE, "type", "bridge"],
        );
        must(
            "ip",
            &["-n", &netns, "addr", "add", "10.123.0.1/24", "dev", BRIDGE],
        );
        must("ip", &["-n", &netns, "link", "set", BRIDGE, "up"]);
        // No metadata service here, but the address answers (with a TCP
        // reset) so the guest gives up on it at once instead of timing out.
        must(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                "169.254.169.254/32",
                "dev",
                "lo",
            ],
        );
        let log = std::fs::File::create(scratch.join("dnsmasq.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
            ])
            .args(["--port=0", "--user=root", "--bind-interfaces", "--log-dhcp"])
            .arg(format!("--interface={BRIDGE}"))
            .arg("--dhcp-range=10.123.0.50,10.123.0.150,255.255.255.0,1h")
            .arg(format!(
                "--dhcp-leasefile={}",
                scratch.join("leases").display()
            ))
            .arg(format!(
                "--pid-file={}",
                scratch.join("dnsmasq.pid").display()
            ))
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        net.dnsmasq = Some(child);
        net
    }

    fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.scratch.join("dnsmasq.log")).unwrap_or_default()
    }

    fn link_exists(&self, name: &str) -> bool {
        sh("ip", &["-n", &self.netns, "link", "show", "dev", name])
            .status
            .success()
    }
}

impl Drop for HostNet {
    fn drop(&mut self) {
        // QEMUs first: they keep the namespace alive otherwise.
        for pidfile in find_files(&self.data_dir, "qemu.pid") {
            let Ok(pid) = std::fs::read_to_string(&pidfile) else {
                continue;
            };
            let pid = pid.trim();
            // Only if the pid is still a QEMU (not a recycled pid).
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("qemu-system") {
                let _ = sh("kill", &["-9", pid]);
            }
        }
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.scratch.join("dnsmasq.pid")) {
            let _ = sh("kill", &["-9", pid.trim()]);
        }
        let _ = sh("ip", &["netns", "del", &self.netns]);
    }
}

fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_files(&path, name));
        } else if entry.file_name() == name {
            found.push(path);
        }
    }
    found
}

fn testimage_cache() -> PathBuf {
    // Shared with ironbark-testimage's own tests (same target directory).
    std::env::var_os("IRONBARK_TESTIMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("ironbark-testimage")
                .join("deb-cache")
        })
}

/// Polls `f` until it gives a value, or `None` after `timeout`.
async fn wait_until<T>(timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn state(node: &Node) -> Option<VmState> {
    node.report()
        .instances
        .iter()
        .find(|i| i.instance_id == INSTANCE)
        .map(|i| i.state)
}

fn readiness_lines(console: &str) -> Vec<ironbark_testimage::Ready> {
    console.lines().filter_map(parse_ready_line).collect()
}

fn build_image(dir: &Path) -> ironbark_testimage::BuiltImage {
    ironbark_testimage::build_test_image(&dir.join("image"), &testimage_cache())
        .expect("building the test image")
}

/// `auto` boots the kernel under KVM and keeps KVM only if the kernel gets
/// through its boot; where it cannot (no /dev/kvm, or a nested KVM that
/// hangs guests, as on ironbark's dev hosts) the verdict is TCG, within the
/// probe timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auto_accelerator_is_decided_by_a_real_boot() {
    if !enabled() {
        return;
    }
    let tmp = TempDir::new("probe");
    let dir = tmp.path().to_path_buf();
    let image = tokio::task::spawn_blocking(move || build_image(&dir))
        .await
        .unwrap();
    let qemu = QemuHypervisor::new(QemuConfig {
        accel: AccelMode::Auto,
        probe_timeout: Duration::from_secs(10),
        ..QemuConfig::default()
    });
    let started = Instant::now();
    let accel = qemu.accelerator(&image.kernel, tmp.path()).await;
    eprintln!("auto chose {accel:?} in {:.1?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15));
    if std::fs::metadata("/dev/kvm").is_err() {
        assert_eq!(accel, Accel::Tcg);
    }
    // Decided once.
    let again = Instant::now();
    assert_eq!(qemu.accelerator(&image.kernel, tmp.path()).await, accel);
    assert!(again.elapsed() < Duration::from_secs(1));
    assert!(!tmp.path().join("accel-probe.log").exists());
}

async fn console(node: &Node) -> String {
    node.console(INSTANCE).await.unwrap()
}

fn pid_of(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn is_qemu(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains("qemu-system")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_boots_reboots_and_terminates_under_qemu() {
    if !enabled() {
        return;
    }
    let tmp = TempDir::new("qemu");
    let data_dir = tmp.path().join("data");
    let net = HostNet::new(tmp.path(), &data_dir);

    let dir = tmp.path().to_path_buf();
    let image = tokio::task::spawn_blocking(move || build_image(&dir))
        .await
        .unwrap();
    let files = FileServer::start().await;
    let kernel = files.image("eki-7e570001", std::fs::read(&image.kernel).unwrap());
    let ramdisk = files.image("eri-7e570001", std::fs::read(&image.initrd).unwrap());
    // A small raw root disk, to exercise the copy-on-write overlay.
    let root = files.image("emi-7e570001", vec![0u8; 4 << 20]);

    let qemu_cfg = QemuConfig {
        accel: AccelMode::Tcg,
        netns: Some(net.netns.clone()),
        // The busybox guest has no ACPI daemon: don't wait long for it.
        powerdown_timeout: Duration::from_secs(2),
        ..QemuConfig::default()
    };
    let mut cfg = NodeConfig::new("nc-qemu", &data_dir, "token");
    cfg.poll_interval = Duration::from_secs(1);
    let node = Node::start(cfg.clone(), Arc::new(QemuHypervisor::new(qemu_cfg.clone())))
        .await
        .unwrap();

    let key = base64::engine::general_purpose::STANDARD
        .encode("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA test");
    let spec = InstanceSpec {
        instance_id: INSTANCE.into(),
        account_id: ACCOUNT.into(),
        vm: VmResources {
            cpus: 1,
            memory_mib: 256,
            disk_gib: 1,
        },
        image: BootImage {
            kernel,
            ramdisk: Some(ramdisk),
            root: Some(root),
            cmdline: format!("{SSH_KEY_PARAM}={key}"),
        },
        nics: vec![NicSpec {
            mac: "d0:0d:01:23:45:67".into(),
            bridge: BRIDGE.into(),
            tap: tap_name(INSTANCE),
        }],
    };
    let started = Instant::now();
    node.apply(DesiredInstances {
        generation: 1,
        instances: vec![spec],
        network: None,
    })
    .await;

    let run_state = wait_until(Duration::from_secs(60), async || match state(&node) {
        Some(VmState::Running) => Some(VmState::Running),
        Some(VmState::Failed) => Some(VmState::Failed),
        _ => None,
    })
    .await;
    assert_eq!(
        run_state,
        Some(VmState::Running),
        "report: {:?}",
        node.report()
    );
    eprintln!("Running after {:.1?}", started.elapsed());
    let dir = node.instance_dir(ACCOUNT, INSTANCE);
    let pid = pid_of(&dir);
    assert!(net.link_exists(&tap_name(INSTANCE)));
    assert!(dir.join("ephemeral.qcow2").is_file());
    let info = sh(
        "qemu-img",
        &["info", "-U", dir.join("root.qcow2").to_str().unwrap()],
    );
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(
        info.contains("backing file: ") && info.contains("emi-7e570001-"),
        "{info}"
    );

    let ready = wait_until(READY_TIMEOUT, async || {
        readiness_lines(&console(&node).await).into_iter().next()
    })
    .await;
    let text = console(&node).await;
    let Some(ready) = ready else {
        panic!("no {READY_PREFIX} within {READY_TIMEOUT:?}; console:\n{text}");
    };
    eprintln!(
        "boot to {READY_PREFIX} took {:.1?} (from apply)",
        started.elapsed()
    );
    // Root overlay and ephemeral disk, both virtio-blk.
    assert!(text.contains("[vda]") && text.contains("[vdb]"), "{text}");
    let ip = ready.ip.unwrap_or_else(|| {
        panic!(
            "no DHCP address\nconsole:\n{text}\ndnsmasq:\n{}",
            net.dnsmasq_log()
        )
    });
    assert!(ip.to_string().starts_with("10.123.0."), "{ip}");
    // dropbear's banner, through the bridge (bash's /dev/tcp: no extra tools).
    let probe = format!("exec 3<>/dev/tcp/{ip}/22 && head -c 16 <&3");
    let banner = sh(
        "ip",
        &[
            "netns", "exec", &net.netns, "timeout", "20", "bash", "-c", &probe,
        ],
    );
    let banner = String::from_utf8_lossy(&banner.stdout).into_owned();
    assert!(
        banner.starts_with("SSH-2.0-"),
        "no SSH banner from {ip}: {banner:?}"
    );

    // An NC restart adopts the running VM: same QEMU, no second one.
    node.shutdown();
    drop(node);
    let node = Node::start(cfg, Arc::new(QemuHypervisor::new(qemu_cfg)))
        .await
        .unwrap();
    assert_eq!(state(&node), Some(VmState::Running), "{:?}", node.report());
    assert_eq!(pid_of(&dir), pid);
    assert!(is_qemu(pid));

    // Reboot (through the adopted VM's QMP socket) to a second readiness line.
    let rebooted = Instant::now();
    node.reboot(INSTANCE).await.unwrap();
    let again = wait_until(READY_TIMEOUT, async || {
        (readiness_lines(&console(&node).await).len() >= 2).then_some(())
    })
    .await;
    assert!(
        again.is_some(),
        "no second {READY_PREFIX} after reboot; console:\n{}",
        console(&node).await
    );
    eprintln!("reboot to {READY_PREFIX} took {:.1?}", rebooted.elapsed());
    assert_eq!(state(&node), Some(VmState::Running));
    let text = console(&node).await;

    let stopping = Instant::now();
    node.apply(DesiredInstances {
        generation: 2,
        instances: vec![],
        network: None,
    })
    .await;
    let ended = wait_until(Duration::from_secs(60), async || {
        (state(&node) == Some(VmState::Terminated)).then_some(())
    })
    .await;
    assert!(ended.is_some(), "not terminated: {:?}", node.report());
    eprintln!("terminated in {:.1?}", stopping.elapsed());
    eprintln!("--- console ---\n{text}\n---");
    assert!(!is_qemu(pid), "QEMU {pid} still runs");
    assert!(!net.link_exists(&tap_name(INSTANCE)), "tap left behind");
    assert!(!dir.exists(), "instance directory left behind");
    drop(net);
}
