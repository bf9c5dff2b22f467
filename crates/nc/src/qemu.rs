//! The real hypervisor: one daemonized `qemu-system-x86_64` per instance.
//!
//! # Start
//!
//! In the instance directory: a qcow2 overlay `root.qcow2` over the cached
//! root image (copy-on-write, so one cached image serves every instance), a
//! sparse qcow2 `ephemeral.qcow2`, both virtio-blk. For each NIC a tap
//! device, created here and enslaved to the bridge the CC made, wired to a
//! virtio-net device (no vhost: the host kernel lacks it). QEMU boots the
//! kernel directly (`-kernel`/`-initrd`/`-append`), logs the serial console
//! to `console.log`, listens for QMP on a socket in the short runtime
//! directory ([`QemuConfig::runtime_dir`], named by a hash of the instance
//! directory, since a Unix socket path may not exceed 107 bytes and data
//! directories can be long), writes `qemu.pid` and
//! daemonizes, so the VM is nobody's child and survives an NC restart. The
//! start returns once QMP answers `query-status`.
//!
//! # Finding a VM again
//!
//! A VM runs from a directory if `qemu.pid` names a live process whose
//! command line is QEMU's with `-pidfile <that very file>`; checking the
//! command line guards against a recycled pid.
//!
//! # Stop
//!
//! ACPI power button (`system_powerdown`) and a grace period, then QMP
//! `quit`, then SIGKILL.
//!
//! # Accelerator
//!
//! `kvm`, `tcg`, or `auto`: a real probe, once per process, with the first
//! kernel launched. `/dev/kvm` existing is not enough: on a nested
//! paravirtual KVM stock guests hang without a word. The probe boots the
//! kernel under KVM with no root disk and waits for it to get to the end of
//! its boot (mounting a root fs, i.e. panicking, or running init); if that
//! does not happen within the probe timeout, TCG it is.
//!
//! # Network namespaces
//!
//! With [`QemuConfig::netns`] set, taps are made and QEMU runs inside that
//! namespace (`ip -n`, `ip netns exec`): tests and multi-host simulations
//! give each simulated host one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ironbark_node_api::NicSpec;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::hypervisor::{HvError, Hypervisor, Launch, TapInfo, VmInfo};
use crate::qmp;

/// File names inside an instance directory.
pub const PIDFILE: &str = "qemu.pid";
pub const QMP_SOCKET: &str = "qmp.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const ROOT_DISK: &str = "root.qcow2";
pub const EPHEMERAL_DISK: &str = "ephemeral.qcow2";

/// Kernel arguments every guest gets before the image's own: the console on
/// the serial port QEMU logs, and reboot (not hang) on panic.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1";

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Which accelerator to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    Kvm,
    Tcg,
    /// Probe KVM with a real boot; fall back to TCG.
    #[default]
    Auto,
}

impl FromStr for AccelMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            "auto" => Ok(AccelMode::Auto),
            other => Err(format!(
                "accelerator must be kvm, tcg or auto, not {other:?}"
            )),
        }
    }
}

impl fmt::Display for AccelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelMode::Kvm => "kvm",
            AccelMode::Tcg => "tcg",
            AccelMode::Auto => "auto",
        })
    }
}

/// An accelerator actually used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub qemu_binary: PathBuf,
    pub qemu_img: PathBuf,
    pub ip_binary: PathBuf,
    pub accel: AccelMode,
    /// Run taps and QEMU inside this network namespace.
    pub netns: Option<String>,
    /// How long the `auto` probe gives a kernel to boot under KVM.
    pub probe_timeout: Duration,
    /// Grace period after the ACPI power button; zero skips it.
    pub powerdown_timeout: Duration,
    /// Grace period after QMP `quit`, before SIGKILL.
    pub quit_timeout: Duration,
    /// How long a starting QEMU gets to answer QMP.
    pub qmp_timeout: Duration,
    /// Where QMP sockets live (short, see the module docs).
    pub runtime_dir: PathBuf,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            ip_binary: "ip".into(),
            accel: AccelMode::Auto,
            netns: None,
            probe_timeout: Duration::from_secs(10),
            powerdown_timeout: Duration::from_secs(10),
            quit_timeout: Duration::from_secs(5),
            qmp_timeout: Duration::from_secs(15),
            runtime_dir: "/run/ironbark/qmp".into(),
        }
    }
}

/// See the module docs.
pub struct QemuHypervisor {
    cfg: QemuConfig,
    /// The `auto` decision, made once.
    probed: OnceCell<Accel>,
}

impl QemuHypervisor {
    pub fn new(cfg: QemuConfig) -> Self {
        QemuHypervisor {
            cfg,
            probed: OnceCell::new(),
        }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    /// The QMP socket of the VM running from `dir`: derived from the
    /// directory alone, so a restarted NC finds it again.
    pub fn qmp_socket(&self, dir: &Path) -> PathBuf {
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes()));
        self.cfg.runtime_dir.join(format!("{}.qmp", &hash[..20]))
    }

    fn files(&self, dir: &Path) -> VmFiles {
        let mut f = VmFiles::new(dir);
        f.qmp = self.qmp_socket(dir);
        f
    }

    /// A command for `program`, inside the namespace if there is one.
    fn command_in_netns(&self, program: &Path) -> Command {
        match &self.cfg.netns {
            Some(ns) => {
                let mut c = Command::new(&self.cfg.ip_binary);
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// `ip [-n ns] <args>`, returning stdout.
    async fn ip(&self, args: &[&str]) -> Result<String, HvError> {
        let mut c = Command::new(&self.cfg.ip_binary);
        if let Some(ns) = &self.cfg.netns {
            c.args(["-n", ns]);
        }
        c.args(args);
        run(
            c,
            &format!("ip {}", args.join(" ")),
            Duration::from_secs(30),
        )
        .await
    }

    async fn create_tap(&self, nic: &NicSpec) -> Result<(), HvError> {
        // A tap of this name can only be a leftover (a crash between
        // creating it and recording the instance): start from scratch.
        self.delete_tap(&nic.tap).await?;
        self.ip(&["tuntap", "add", "dev", &nic.tap, "mode", "tap"])
            .await?;
        self.ip(&["link", "set", "dev", &nic.tap, "master", &nic.bridge, "up"])
            .await?;
        Ok(())
    }

    /// The accelerator VMs get: the configured one, or for `auto` the
    /// probe's verdict (probing with `kernel`, scratch files in `scratch`,
    /// the first time only).
    pub async fn accelerator(&self, kernel: &Path, scratch: &Path) -> Accel {
        match self.cfg.accel {
            AccelMode::Kvm => Accel::Kvm,
            AccelMode::Tcg => Accel::Tcg,
            AccelMode::Auto => {
                *self
                    .probed
                    .get_or_init(|| probe_kvm(&self.cfg, kernel, scratch))
                    .await
            }
        }
    }

    async fn create_disks(&self, launch: &Launch, files: &VmFiles) -> Result<(), HvError> {
        if let Some(root) = &launch.root {
            let format = image_format(root).await?;
            let mut args = vec![
                "create".to_string(),
                "-q".into(),
                "-f".into(),
                "qcow2".into(),
                "-F".into(),
                format.into(),
                "-b".into(),
                path_str(root)?.into(),
                path_str(&files.root)?.into(),
            ];
            // The overlay is as large as the backing image, or disk_gib if
            // that is more (only known cheaply for raw images).
            let want = u64::from(launch.disk_gib) << 30;
            let have = tokio::fs::metadata(root)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if format == "raw" && want > have {
                args.push(want.to_string());
            }
            let mut c = Command::new(&self.cfg.qemu_img);
            c.args(&args);
            run(c, "qemu-img create (root overlay)", Duration::from_secs(60)).await?;
        }
        if launch.disk_gib > 0 {
            let mut c = Command::new(&self.cfg.qemu_img);
            c.args(["create", "-q", "-f", "qcow2"])
                .arg(&files.ephemeral)
                .arg(format!("{}G", launch.disk_gib));
            run(
                c,
                "qemu-img create (ephemeral disk)",
                Duration::from_secs(60),
            )
            .await?;
        }
        Ok(())
    }

    /// The pid of the QEMU running from `dir`, if any.
    fn live_pid(&self, dir: &Path) -> Option<u32> {
        let pidfile = dir.join(PIDFILE);
        let pid = read_pidfile(&pidfile)?;
        is_our_qemu(pid, &pidfile).then_some(pid)
    }

    /// Waits up to `timeout` for `pid` to stop being our QEMU.
    async fn wait_gone(&self, pid: u32, pidfile: &Path, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !is_our_qemu(pid, pidfile) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl Hypervisor for QemuHypervisor {
    async fn start(&self, launch: &Launch) -> Result<VmInfo, HvError> {
        if let Some(pid) = self.live_pid(&launch.dir) {
            return Ok(VmInfo { pid: Some(pid) });
        }
        let files = self.files(&launch.dir);
        tokio::fs::create_dir_all(&self.cfg.runtime_dir)
            .await
            .map_err(|e| HvError(format!("{}: {e}", self.cfg.runtime_dir.display())))?;
        let qmp_path = path_str(&files.qmp)?;
        if qmp_path.len() > MAX_SOCKET_PATH {
            return Err(HvError(format!(
                "QMP socket path {qmp_path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter data directory"
            )));
        }
        if path_str(&launch.dir)?.contains(',') {
            return Err(HvError(format!(
                "instance directory {} contains a comma, which QEMU options cannot carry",
                launch.dir.display()
            )));
        }
        // Stale files of a previous, dead QEMU would confuse the checks below.
        for stale in [&files.pidfile, &files.qmp] {
            let _ = tokio::fs::remove_file(stale).await;
        }
        // Disks and taps do not depend on each other: made side by side, as
        // every launch waits for both before QEMU can start.
        let taps = async {
            for nic in &launch.nics {
                self.create_tap(nic).await?;
            }
            Ok::<(), HvError>(())
        };
        let (disks, taps) = tokio::join!(self.create_disks(launch, &files), taps);
        disks?;
        taps?;
        let accel = self.accelerator(&launch.kernel, &launch.dir).await;
        let args = qemu_args(launch, &files, accel)?;
        let mut c = self.command_in_netns(&self.cfg.qemu_binary);
        c.args(&args);
        tracing::info!(instance = %launch.instance_id, ?accel, "starting QEMU");
        tracing::debug!(?args, "QEMU arguments");
        // With -daemonize this returns once QEMU has initialised (pidfile
        // written, QMP listening) and detached.
        run(c, "qemu-system-x86_64", Duration::from_secs(60)).await?;
        let pid = read_pidfile(&files.pidfile).ok_or_else(|| {
            HvError(format!(
                "QEMU exited without writing {}",
                files.pidfile.display()
            ))
        })?;
        // Wait until QMP answers and the VM is running.
        let deadline = Instant::now() + self.cfg.qmp_timeout;
        loop {
            match qmp::command(&files.qmp, "query-status", None, Duration::from_secs(5)).await {
                Ok(status) if status["status"] == "running" => break,
                Ok(status) => tracing::debug!(%status, "VM not running yet"),
                Err(e) => tracing::debug!(error = %e, "QMP not answering yet"),
            }
            if !is_our_qemu(pid, &files.pidfile) {
                return Err(HvError("QEMU exited right after starting".into()));
            }
            if Instant::now() >= deadline {
                return Err(HvError(format!(
                    "QEMU (pid {pid}) did not answer QMP within {:?}",
                    self.cfg.qmp_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(VmInfo { pid: Some(pid) })
    }

    async fn find(&self, dir: &Path) -> Option<VmInfo> {
        self.live_pid(dir).map(|pid| VmInfo { pid: Some(pid) })
    }

    async fn stop(&self, dir: &Path) -> Result<(), HvError> {
        let files = self.files(dir);
        let Some(pid) = self.live_pid(dir) else {
            return Ok(());
        };
        if !self.cfg.powerdown_timeout.is_zero() {
            match qmp::command(&files.qmp, "system_powerdown", None, Duration::from_secs(5)).await {
                Ok(_) => {
                    if self
                        .wait_gone(pid, &files.pidfile, self.cfg.powerdown_timeout)
                        .await
                    {
                        tracing::info!(pid, "VM powered off");
                        return Ok(());
                    }
                    tracing::info!(pid, "VM ignored the power button; quitting QEMU");
                }
                Err(e) => tracing::warn!(pid, error = %e, "system_powerdown failed"),
            }
        }
        // QEMU may close the socket before answering `quit`; the wait below
        // is what counts.
        if let Err(e) = qmp::command(&files.qmp, "quit", None, Duration::from_secs(5)).await {
            tracing::debug!(pid, error = %e, "QMP quit");
        }
        if self
            .wait_gone(pid, &files.pidfile, self.cfg.quit_timeout)
            .await
        {
            return Ok(());
        }
        tracing::warn!(pid, "QEMU did not quit; killing it");
        kill(pid);
        if self
            .wait_gone(pid, &files.pidfile, Duration::from_secs(10))
            .await
        {
            Ok(())
        } else {
            Err(HvError(format!("QEMU pid {pid} survived SIGKILL")))
        }
    }

    async fn reboot(&self, dir: &Path) -> Result<(), HvError> {
        if self.live_pid(dir).is_none() {
            return Err(HvError("no VM is running".into()));
        }
        qmp::command(
            &self.qmp_socket(dir),
            "system_reset",
            None,
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|e| HvError(e.to_string()))
    }

    async fn delete_tap(&self, tap: &str) -> Result<(), HvError> {
        match self.ip(&["link", "del", "dev", tap]).await {
            Ok(_) => Ok(()),
            Err(HvError(m)) if m.contains("Cannot find device") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_taps(&self) -> Result<Vec<TapInfo>, HvError> {
        let out = self.ip(&["-j", "link", "show", "type", "tun"]).await?;
        parse_tap_list(&out)
    }

    async fn attach_tap(&self, nic: &NicSpec) -> Result<(), HvError> {
        self.ip(&["link", "set", "dev", &nic.tap, "master", &nic.bridge, "up"])
            .await
            .map(drop)
    }

    async fn attach_volume(
        &self,
        dir: &Path,
        volume: &ironbark_node_api::VolumeAttachment,
    ) -> Result<(), HvError> {
        if self.live_pid(dir).is_none() {
            return Err(HvError("no VM is running".into()));
        }
        crate::qemu_volumes::attach(&self.qmp_socket(dir), dir, volume).await
    }

    async fn detach_volume(&self, dir: &Path, volume_id: &str) -> Result<(), HvError> {
        if self.live_pid(dir).is_none() {
            return Ok(());
        }
        crate::qemu_volumes::detach(&self.qmp_socket(dir), dir, volume_id).await
    }

    async fn attached_volumes(&self, dir: &Path) -> Result<Vec<String>, HvError> {
        if self.live_pid(dir).is_none() {
            return Err(HvError("no VM is running".into()));
        }
        crate::qemu_volumes::attached(&self.qmp_socket(dir)).await
    }
}

/// Paths of one VM's files.
struct VmFiles {
    pidfile: PathBuf,
    qmp: PathBuf,
    console: PathBuf,
    root: PathBuf,
    ephemeral: PathBuf,
}

impl VmFiles {
    fn new(dir: &Path) -> Self {
        VmFiles {
            pidfile: dir.join(PIDFILE),
            qmp: dir.join(QMP_SOCKET),
            console: dir.join(CONSOLE_LOG),
            root: dir.join(ROOT_DISK),
            ephemeral: dir.join(EPHEMERAL_DISK),
        }
    }
}

fn path_str(p: &Path) -> Result<&str, HvError> {
    p.to_str()
        .ok_or_else(|| HvError(format!("path {} is not UTF-8", p.display())))
}

/// The QEMU command line for a launch (without the program).
fn qemu_args(launch: &Launch, files: &VmFiles, accel: Accel) -> Result<Vec<String>, HvError> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let (accel_name, cpu) = match accel {
        // `host` passes the real CPU through; `max` gives TCG guests every
        // feature QEMU can emulate (x86-64-v2+ userlands need them).
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    push(&["-name", &launch.instance_id]);
    // `pc` (i440fx) rather than q35: its root bus takes hot-plugged
    // volumes through ACPI with no port devices, and the guest boots
    // faster without PCIe (0.27 s less under TCG, benches/README.md).
    push(&["-machine", "pc", "-accel", accel_name, "-cpu", cpu]);
    push(&[
        "-smp",
        &launch.cpus.to_string(),
        "-m",
        &launch.memory_mib.to_string(),
    ]);
    // `-display none` rather than `-nographic`: the latter wants stdio,
    // which a daemonized QEMU has not got.
    push(&["-display", "none", "-nodefaults", "-no-user-config"]);
    push(&["-kernel", path_str(&launch.kernel)?]);
    if let Some(initrd) = &launch.initrd {
        push(&["-initrd", path_str(initrd)?]);
    }
    let cmdline = if launch.cmdline.trim().is_empty() {
        BASE_CMDLINE.to_string()
    } else {
        format!("{BASE_CMDLINE} {}", launch.cmdline.trim())
    };
    push(&["-append", &cmdline]);
    push(&["-serial", &format!("file:{}", path_str(&files.console)?)]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path_str(&files.qmp)?),
    ]);
    push(&["-pidfile", path_str(&files.pidfile)?, "-daemonize"]);
    if launch.root.is_some() {
        push(&[
            "-drive",
            &format!("file={},format=qcow2,if=virtio", path_str(&files.root)?),
        ]);
    }
    if launch.disk_gib > 0 {
        push(&[
            "-drive",
            &format!(
                "file={},format=qcow2,if=virtio",
                path_str(&files.ephemeral)?
            ),
        ]);
    }
    for (i, nic) in launch.nics.iter().enumerate() {
        push(&[
            "-netdev",
            &format!("tap,id=n{i},ifname={},script=no,downscript=no", nic.tap),
            "-device",
            &format!("virtio-net-pci,netdev=n{i},mac={}", nic.mac),
        ]);
    }
    // Entropy for early userspace (SSH host keys) without waiting on jitter.
    push(&["-device", "virtio-rng-pci"]);
    Ok(a)
}

/// `qcow2` if the file starts with qcow2's magic, else `raw`.
async fn image_format(path: &Path) -> Result<&'static str, HvError> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| HvError(format!("{}: {e}", path.display())))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic).await {
        Ok(_) if &magic == b"QFI\xfb" => Ok("qcow2"),
        _ => Ok("raw"),
    }
}

/// Runs a command to completion, returning stdout, or an error carrying
/// its stderr.
async fn run(mut c: Command, what: &str, timeout: Duration) -> Result<String, HvError> {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, c.output())
        .await
        .map_err(|_| HvError(format!("{what}: no result within {timeout:?}")))?
        .map_err(|e| HvError(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(HvError(format!(
            "{what} failed ({}): {}",
            out.status,
            stderr.trim()
        )))
    }
}

fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a QEMU started with `-pidfile <pidfile>`. A zombie has an
/// empty command line and so counts as gone.
fn is_our_qemu(pid: u32, pidfile: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline_has_pidfile(&cmdline, pidfile)
}

fn cmdline_has_pidfile(cmdline: &[u8], pidfile: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_qemu = args
        .first()
        .is_some_and(|a0| String::from_utf8_lossy(a0).contains("qemu-system"));
    let Some(want) = pidfile.to_str() else {
        return false;
    };
    is_qemu
        && args
            .windows(2)
            .any(|w| w[0] == b"-pidfile" && w[1] == want.as_bytes())
}

fn kill(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else { return };
    if let Err(e) = kill(Pid::from_raw(raw), Signal::SIGKILL) {
        tracing::debug!(pid, error = %e, "kill");
    }
}

fn parse_tap_list(json: &str) -> Result<Vec<TapInfo>, HvError> {
    let links: Vec<serde_json::Value> = if json.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(json).map_err(|e| HvError(format!("parsing `ip -j link`: {e}")))?
    };
    Ok(links
        .iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_string();
            let in_use = l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "LOWER_UP"));
            let master = l["master"].as_str().map(str::to_string);
            Some(TapInfo {
                name,
                in_use,
                master,
            })
        })
        .collect())
}

/// Boots `kernel` under KVM without a root disk and watches its console:
/// a kernel that gets as far as mounting a root (and panicking, having
/// none) or running an init within the timeout shows KVM works.
async fn probe_kvm(cfg: &QemuConfig, kernel: &Path, scratch: &Path) -> Accel {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        tracing::info!(error = %e, "accelerator: tcg (no usable /dev/kvm)");
        return Accel::Tcg;
    }
    let log = scratch.join("accel-probe.log");
    let started = Instant::now();
    let verdict = probe_kvm_with(cfg, kernel, &log).await;
    let _ = tokio::fs::remove_file(&log).await;
    match verdict {
        Ok(()) => {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "accelerator: kvm (a kernel booted under it)"
            );
            Accel::Kvm
        }
        Err(why) => {
            tracing::warn!(reason = %why, "accelerator: tcg (KVM probe failed)");
            Accel::Tcg
        }
    }
}

async fn probe_kvm_with(cfg: &QemuConfig, kernel: &Path, log: &Path) -> Result<(), String> {
    let mut c = Command::new(&cfg.qemu_binary);
    c.args([
        "-machine", "pc", "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256",
    ])
    .args([
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", BASE_CMDLINE])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| format!("spawning QEMU: {e}"))?;
    let deadline = Instant::now() + cfg.probe_timeout;
    let booted = |text: &str| {
        [
            "Kernel panic",
            "VFS: Unable to mount root",
            "Run /init",
            "Run /sbin/init",
        ]
        .iter()
        .any(|m| text.contains(m))
    };
    loop {
        let text =
            String::from_utf8_lossy(&tokio::fs::read(log).await.unwrap_or_default()).into_owned();
        if booted(&text) {
            let _ = child.kill().await;
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = s.read_to_string(&mut stderr).await;
            }
            return Err(format!(
                "QEMU exited ({status}) before the kernel finished booting: {}",
                stderr.trim()
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(format!(
                "the kernel did not finish booting under KVM within {:?} ({} bytes of console)",
                cfg.probe_timeout,
                text.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            instance_id: "i-0123456789abcdef0".into(),
            dir: "/d/i".into(),
            cpus: 2,
            memory_mib: 256,
            disk_gib: 1,
            kernel: "/c/eki".into(),
            initrd: Some("/c/eri".into()),
            root: Some("/c/emi".into()),
            cmdline: "root=/dev/vda".into(),
            nics: vec![NicSpec {
                mac: "d0:0d:00:00:00:01".into(),
                bridge: "br0".into(),
                tap: "tap0123456789ab".into(),
            }],
        }
    }

    #[test]
    fn command_line_has_what_the_guest_needs() {
        let l = launch();
        let args = qemu_args(&l, &VmFiles::new(&l.dir), Accel::Tcg)
            .unwrap()
            .join(" ");
        for want in [
            "-machine pc -accel tcg -cpu max -smp 2 -m 256",
            "-nodefaults",
            "-kernel /c/eki -initrd /c/eri",
            "-append console=ttyS0 panic=-1 root=/dev/vda",
            "-serial file:/d/i/console.log",
            "-qmp unix:/d/i/qmp.sock,server=on,wait=off",
            "-pidfile /d/i/qemu.pid -daemonize",
            "-drive file=/d/i/root.qcow2,format=qcow2,if=virtio -drive file=/d/i/ephemeral.qcow2",
            "-netdev tap,id=n0,ifname=tap0123456789ab,script=no,downscript=no",
            "-device virtio-net-pci,netdev=n0,mac=d0:0d:00:00:00:01",
        ] {
            assert!(args.contains(want), "missing {want:?} in {args}");
        }
        assert!(!args.contains("vhost"));
    }

    #[test]
    fn no_disks_without_root_and_disk_size() {
        let mut l = launch();
        l.root = None;
        l.disk_gib = 0;
        let args = qemu_args(&l, &VmFiles::new(&l.dir), Accel::Kvm)
            .unwrap()
            .join(" ");
        assert!(!args.contains("-drive"), "{args}");
        assert!(args.contains("-accel kvm -cpu host"));
    }

    #[test]
    fn pidfile_match_is_exact() {
        let cmd = b"/usr/bin/qemu-system-x86_64\0-name\0i-1\0-pidfile\0/d/i/qemu.pid\0-daemonize\0";
        assert!(cmdline_has_pidfile(cmd, Path::new("/d/i/qemu.pid")));
        assert!(!cmdline_has_pidfile(cmd, Path::new("/d/j/qemu.pid")));
        let other = b"/usr/bin/sleep\0-pidfile\0/d/i/qemu.pid\0";
        assert!(!cmdline_has_pidfile(other, Path::new("/d/i/qemu.pid")));
        assert!(!cmdline_has_pidfile(b"", Path::new("/d/i/qemu.pid")));
    }

    #[test]
    fn tap_list_parses_ip_json() {
        let json = r#"[{"ifindex":3,"ifname":"tapdeadbeef","flags":["NO-CARRIER","BROADCAST","UP"]},
                      {"ifindex":4,"ifname":"tap0123456789ab","flags":["BROADCAST","UP","LOWER_UP"],"master":"ibr0"}]"#;
        let taps = parse_tap_list(json).unwrap();
        assert_eq!(
            taps,
            vec![
                TapInfo {
                    name: "tapdeadbeef".into(),
                    in_use: false,
                    master: None,
                },
                TapInfo {
                    name: "tap0123456789ab".into(),
                    in_use: true,
                    master: Some("ibr0".into()),
                },
            ]
        );
        assert!(parse_tap_list("").unwrap().is_empty());
    }

    #[test]
    fn accel_modes_parse() {
        assert_eq!("auto".parse::<AccelMode>().unwrap(), AccelMode::Auto);
        assert_eq!("kvm".parse::<AccelMode>().unwrap().to_string(), "kvm");
        assert!("xen".parse::<AccelMode>().is_err());
    }
}
