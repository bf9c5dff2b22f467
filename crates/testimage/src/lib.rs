//! Builds the small bootable guest that ironbark's instance tests run.
//!
//! # Why
//!
//! Instance tests need a real guest that behaves like an EC2 image: it gets
//! its address by DHCP, reads its instance id, SSH key and user-data from the
//! metadata service at 169.254.169.254, accepts SSH logins with that key and
//! runs user-data scripts. A full cloud image is hundreds of megabytes and
//! takes minutes to boot under software emulation (TCG), which is all this
//! project's machines offer. This crate assembles a kernel plus a few-MB
//! initramfs instead, which reaches userspace in seconds under TCG, from
//! Debian packages only, so the only network it needs is Debian's mirror
//! (and none at all once the package cache is warm).
//!
//! # How the image is assembled
//!
//! 1. `apt-get download` (no root, nothing installed on the host) fetches
//!    into the cache directory: the real package behind
//!    `linux-image-cloud-amd64` (resolved with `apt-cache depends`),
//!    `busybox-static`, `dropbear-bin` and the libraries of dropbear that a
//!    Debian host usually lacks (`libtomcrypt1`, `libtommath1`, `libgmp10`).
//!    Cached files of apt's candidate version are reused.
//! 2. `dpkg-deb -x` unpacks them into a scratch directory.
//! 3. The kernel (`boot/vmlinuz-<version>`) is copied to `out/vmlinuz`.
//! 4. The initramfs (`out/initrd.img`) is a gzip-compressed cpio "newc"
//!    archive written by this crate's own [`cpio`] writer, so device nodes and
//!    root ownership need no privileges. Its layout is merged-/usr (`/bin`,
//!    `/sbin`, `/lib` link into `/usr`) and it holds:
//!    - busybox with a symlink per applet;
//!    - the virtio modules listed in [`MODULES`], decompressed if the
//!      package ships them compressed;
//!    - dropbear (`dropbear`, `dropbearkey`) and the shared libraries `ldd`
//!      reports for them (libtomcrypt, libtommath, libgmp from the unpacked
//!      packages; libc, libz, libcrypt and the dynamic loader from the host);
//!    - `/etc` (root in passwd with `/bin/sh` and `/root`, the udhcpc script)
//!      and `/init`.
//!
//! # What /init does
//!
//! 1. Mounts proc, sysfs, devtmpfs and devpts; loads the modules in order;
//!    then lowers the console log level so kernel messages cannot split the
//!    readiness line.
//! 2. Brings up `lo` and `eth0` and runs `udhcpc` (its script sets address,
//!    default route and `/etc/resolv.conf`, and it stays to renew).
//! 3. Fetches `instance-id` from `http://169.254.169.254/latest/meta-data/`
//!    (3 tries, 3 s each; falls back to `unknown`), and only if that worked,
//!    `public-keys/0/openssh-key` and `/latest/user-data`. With no route to
//!    the service at all it does not try.
//! 4. Installs the key as `/root/.ssh/authorized_keys` (mode 600) — or, when
//!    the metadata service gave none, the key from the kernel parameter
//!    `ironbark.ssh_key=<base64 of an OpenSSH public key line>`
//!    ([`SSH_KEY_PARAM`]), meant for tests without a metadata service.
//! 5. Generates an ed25519 host key with `dropbearkey` and starts dropbear
//!    on port 22 (key logins only), waiting until it listens.
//! 6. Prints exactly one line on the console:
//!    `IRONBARK-READY instance-id=<id> ip=<IPv4 of eth0, or none>`
//!    ([`READY_PREFIX`], [`parse_ready_line`]). When it appears, SSH is up.
//! 7. If user-data starts with `#!`, saves it as `/tmp/user-data` and runs it
//!    in the background with its output on the console. This comes after the
//!    readiness line so the script's output cannot interleave with it.
//! 8. Sleeps forever: PID 1 must not exit.
//!
//! The kernel command line, e.g. [`DEFAULT_CMDLINE`], comes from the node
//! controller; the console is whatever `console=` names (ttyS0 in practice).
//!
//! # Offline builds
//!
//! With a warm cache nothing is downloaded. If a download fails (no network,
//! or package lists newer than the cache) the newest cached .deb of each
//! package is used instead, with a warning on stderr.

pub mod cpio;
mod debs;
mod guest;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first word of the readiness line /init prints on the console:
/// `IRONBARK-READY instance-id=<id> ip=<ipv4>`.
pub const READY_PREFIX: &str = "IRONBARK-READY";

/// Kernel parameter /init reads an SSH public key from (base64 of the
/// `ssh-ed25519 AAAA... comment` line) when the metadata service provides
/// none. Base64 keeps spaces out of the kernel command line.
pub const SSH_KEY_PARAM: &str = "ironbark.ssh_key";

/// A kernel command line that suits the image on a serial console.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";

/// Kernel modules for virtio networking and disks, in load order. The kernel
/// package ships no usable modules.dep, so this order *is* the dependency
/// resolution: each module only needs ones before it.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
];

/// Debian packages besides the kernel. The libraries are dropbear's (and
/// libtomcrypt's) dependencies that a build host often lacks; `ldd` runs with
/// them on LD_LIBRARY_PATH, so these copies win even where the host has its
/// own. libc, libz and libcrypt come from the host, as a Debian 12 host's are
/// the ones dropbear was built against.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "dropbear-bin",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
];

/// Where shared libraries go in the image: on the loader's built-in search
/// path, so no ld.so.cache is needed.
const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";

/// The result of [`build_test_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// `out/vmlinuz`: the Debian cloud kernel, bzImage format.
    pub kernel: PathBuf,
    /// `out/initrd.img`: gzip-compressed cpio newc.
    pub initrd: PathBuf,
    /// e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
}

/// What a readiness line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub instance_id: String,
    /// The guest's IPv4 address, or `None` when DHCP gave it none.
    pub ip: Option<std::net::Ipv4Addr>,
}

/// Parses a console line; `None` unless it is a readiness line. Tolerates
/// leading noise (a carriage return, a partial kernel line) before the
/// prefix.
pub fn parse_ready_line(line: &str) -> Option<Ready> {
    let rest = &line[line.find(READY_PREFIX)? + READY_PREFIX.len()..];
    let mut instance_id = None;
    let mut ip = None;
    for word in rest.split_whitespace() {
        if let Some(v) = word.strip_prefix("instance-id=") {
            instance_id = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("ip=") {
            ip = Some(v.parse().ok());
        }
    }
    Some(Ready {
        instance_id: instance_id?,
        ip: ip?,
    })
}

/// Builds the test guest into `out` (`vmlinuz`, `initrd.img`), keeping
/// downloaded .debs in `cache` between runs.
///
/// Host tools used: `apt-get`/`apt-cache` (only for packages not cached yet),
/// `dpkg-deb`, `ldd`, and `xz` or `zstd` only if the kernel package ships
/// compressed modules. Runs unprivileged and changes nothing outside `out`,
/// `cache` and a temporary directory it removes.
pub fn build_test_image(out: &Path, cache: &Path) -> Result<BuiltImage, String> {
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let cache = fs::canonicalize(cache).map_err(|e| format!("{}: {e}", cache.display()))?;

    let kernel_pkg = debs::resolve_kernel_package()
        .or_else(|| debs::cached_kernel_package(&cache))
        .ok_or_else(|| {
            format!(
                "cannot resolve {} (run `apt-get update`) and no kernel is cached in {}",
                debs::KERNEL_META,
                cache.display()
            )
        })?;
    let mut pkgs = vec![kernel_pkg];
    pkgs.extend(PACKAGES.iter().map(|p| p.to_string()));
    let deb_files = match debs::ensure_debs(&cache, &pkgs) {
        Ok(files) => files,
        Err(download_error) => {
            // Offline with package lists newer than the cache (a kernel ABI
            // bump renames the kernel package): build from what is cached
            // rather than fail, and say so.
            let mut fallback = pkgs.clone();
            if let Some(k) = debs::cached_kernel_package(&cache) {
                fallback[0] = k;
            }
            let files = debs::cached_only(&cache, &fallback)
                .map_err(|e| format!("{download_error}; no cached fallback either: {e}"))?;
            eprintln!("warning: {download_error}; using cached packages instead");
            files
        }
    };

    let scratch = TempDir::new("build")?;
    let kroot = scratch.path().join("kernel");
    debs::extract(&deb_files[0], &kroot)?;
    // The userland packages share one tree, so `ldd` finds the unpacked
    // libraries next to each other.
    let uroot = scratch.path().join("userland");
    for deb in &deb_files[1..] {
        debs::extract(deb, &uroot)?;
    }

    let (vmlinuz, kernel_version) = find_kernel(&kroot)?;
    let mut tree = Tree::default();
    add_skeleton(&mut tree)?;
    add_modules(&mut tree, &kroot, &kernel_version)?;
    add_busybox(&mut tree, &uroot)?;
    add_dropbear(&mut tree, &uroot)?;
    let init = guest::INIT_TEMPLATE
        .replace("@KVER@", &kernel_version)
        .replace("@MODULES@", &MODULES.join(" "));
    tree.file("init", 0o755, init.into_bytes())?;

    let kernel = out.join("vmlinuz");
    let initrd = out.join("initrd.img");
    // Write-then-rename so a reader never sees a half-written image.
    let tmp_kernel = out.join(".vmlinuz.tmp");
    fs::copy(&vmlinuz, &tmp_kernel).map_err(|e| format!("{}: {e}", tmp_kernel.display()))?;
    let tmp_initrd = out.join(".initrd.img.tmp");
    write_initrd(&tree, &tmp_initrd)?;
    fs::rename(&tmp_kernel, &kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    fs::rename(&tmp_initrd, &initrd).map_err(|e| format!("{}: {e}", initrd.display()))?;
    Ok(BuiltImage {
        kernel,
        initrd,
        kernel_version,
    })
}

/// `boot/vmlinuz-<version>` in the unpacked kernel package.
fn find_kernel(kroot: &Path) -> Result<(PathBuf, String), String> {
    let boot = kroot.join("boot");
    let entries = fs::read_dir(&boot).map_err(|e| format!("{}: {e}", boot.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ver) = name.strip_prefix("vmlinuz-") {
            return Ok((e.path(), ver.to_string()));
        }
    }
    Err(format!("no vmlinuz-* in {}", boot.display()))
}

/// Directories, links and files every boot needs before anything runs.
fn add_skeleton(t: &mut Tree) -> Result<(), String> {
    for d in [
        "usr/bin",
        "usr/lib",
        LIBDIR,
        "lib64",
        "etc/udhcpc",
        "etc/dropbear",
    ] {
        t.dir(d, 0o755)?;
    }
    for d in ["proc", "sys", "dev", "run", "var/log", "mnt"] {
        t.dir(d, 0o755)?;
    }
    // "." sets the mode of the rootfs root itself (the kernel chmods an
    // existing directory), which otherwise stays world-writable.
    t.dir(".", 0o755)?;
    t.dir("tmp", 0o1777)?;
    t.dir("root", 0o700)?;
    // merged-/usr: one place for binaries and libraries, and every path a
    // binary or script might name (/sbin/ip, /lib/modules, /usr/sbin/...)
    // still resolves.
    t.symlink("bin", "usr/bin")?;
    t.symlink("sbin", "usr/bin")?;
    t.symlink("usr/sbin", "bin")?;
    t.symlink("lib", "usr/lib")?;
    // The kernel opens /dev/console for init's stdio *before* /init can mount
    // devtmpfs; without this node init would start with no console at all.
    t.char_dev("dev/console", 0o600, 5, 1)?;
    t.char_dev("dev/null", 0o666, 1, 3)?;
    t.file("etc/passwd", 0o644, guest::PASSWD)?;
    t.file("etc/shadow", 0o600, guest::SHADOW)?;
    t.file("etc/group", 0o644, guest::GROUP)?;
    t.file("etc/shells", 0o644, guest::SHELLS)?;
    t.file("etc/nsswitch.conf", 0o644, guest::NSSWITCH)?;
    t.file("etc/hosts", 0o644, guest::HOSTS)?;
    t.file("etc/profile", 0o644, guest::PROFILE)?;
    t.file("etc/resolv.conf", 0o644, "")?;
    t.file("etc/udhcpc/default.script", 0o755, guest::UDHCPC_SCRIPT)?;
    Ok(())
}

/// Copies [`MODULES`] from the kernel package to `/lib/modules/<ver>/`,
/// flat, as plain `.ko` files for busybox `insmod`.
fn add_modules(t: &mut Tree, kroot: &Path, kver: &str) -> Result<(), String> {
    let moddir = kroot.join("lib/modules").join(kver).join("kernel");
    let mut index: HashMap<String, PathBuf> = HashMap::new();
    walk(&moddir, &mut |p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
            if let Some(stem) = name.strip_suffix(ext) {
                index.insert(stem.to_string(), p.to_path_buf());
            }
        }
    })?;
    for m in MODULES {
        let src = index
            .get(*m)
            .ok_or_else(|| format!("module {m} not found under {}", moddir.display()))?;
        let name = src.to_string_lossy();
        let data = if name.ends_with(".xz") {
            debs::run(Command::new("xz").arg("-dc").arg(src))?
        } else if name.ends_with(".zst") {
            debs::run(Command::new("zstd").arg("-dcq").arg(src))?
        } else if name.ends_with(".gz") {
            let gz = read(src)?;
            let mut d = flate2::read::GzDecoder::new(gz.as_slice());
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut v).map_err(|e| format!("{name}: {e}"))?;
            v
        } else {
            read(src)?
        };
        t.file(&format!("usr/lib/modules/{kver}/{m}.ko"), 0o644, data)?;
    }
    Ok(())
}

/// busybox plus one symlink per applet, so scripts and ssh sessions find
/// `ip`, `wget`, ... on PATH without `busybox --install` at boot.
fn add_busybox(t: &mut Tree, uroot: &Path) -> Result<(), String> {
    let bb = uroot.join("bin/busybox");
    let bb = if bb.exists() {
        bb
    } else {
        uroot.join("usr/bin/busybox")
    };
    // The static busybox runs on any x86_64 host; it is the authority on
    // which applets this build has.
    let list = debs::run(Command::new(&bb).arg("--list"))?;
    t.file("usr/bin/busybox", 0o755, read(&bb)?)?;
    for applet in String::from_utf8_lossy(&list).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains('/') || applet == "busybox" {
            continue;
        }
        t.symlink(&format!("usr/bin/{applet}"), "busybox")?;
    }
    Ok(())
}

/// dropbear, dropbearkey and every shared library `ldd` lists for them.
fn add_dropbear(t: &mut Tree, uroot: &Path) -> Result<(), String> {
    let bins = [
        uroot.join("usr/sbin/dropbear"),
        uroot.join("usr/bin/dropbearkey"),
    ];
    let libpath = [
        uroot.join(LIBDIR),
        uroot.join("lib/x86_64-linux-gnu"),
        uroot.join("usr/lib"),
    ]
    .map(|p| p.to_string_lossy().into_owned())
    .join(":");
    let mut libs = BTreeMap::new();
    for bin in &bins {
        let name = bin.file_name().unwrap_or_default().to_string_lossy();
        t.file(&format!("usr/bin/{name}"), 0o755, read(bin)?)?;
        let out = debs::run(
            Command::new("ldd")
                .arg(bin)
                .env("LD_LIBRARY_PATH", &libpath),
        )?;
        for (dest, src) in parse_ldd(&String::from_utf8_lossy(&out))
            .map_err(|e| format!("{}: {e}", bin.display()))?
        {
            libs.insert(dest, src);
        }
    }
    for (dest, src) in libs {
        // fs::read follows the host's symlinks (libz.so.1 -> libz.so.1.2.13):
        // the image gets the real file under the soname the loader asks for.
        t.file(&dest, 0o755, read(&src)?)?;
    }
    Ok(())
}

/// Maps `ldd` output to (path in the image, path on the host). Libraries go
/// to [`LIBDIR`] under the name the binary asks for; the dynamic loader goes
/// where the binary's PT_INTERP names it.
fn parse_ldd(out: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let mut v = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once("=>") {
            let path = rest.trim().split(" (").next().unwrap_or("").trim();
            if path == "not found" || path.is_empty() {
                return Err(format!("shared library {} not found", name.trim()));
            }
            v.push((format!("{LIBDIR}/{}", name.trim()), PathBuf::from(path)));
        } else if line.starts_with('/') {
            let path = line.split(" (").next().unwrap_or("").trim();
            v.push((usr_merged(path), PathBuf::from(path)));
        }
        // Anything else (linux-vdso.so.1, "statically linked") has no file.
    }
    Ok(v)
}

/// The image's canonical path for an absolute path: `/lib` and `/bin` are
/// symlinks into `/usr` there, and the archive must not put files "through"
/// a symlink.
fn usr_merged(path: &str) -> String {
    let p = path.trim_start_matches('/');
    for top in ["lib/", "bin/", "sbin/"] {
        if let Some(rest) = p.strip_prefix(top) {
            let dir = if top == "sbin/" { "bin/" } else { top };
            return format!("usr/{dir}{rest}");
        }
    }
    p.to_string()
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<(), String> {
    for e in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        let ft = e
            .file_type()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if ft.is_dir() {
            walk(&e.path(), f)?;
        } else if ft.is_file() {
            f(&e.path());
        }
    }
    Ok(())
}

fn write_initrd(tree: &Tree, path: &Path) -> Result<(), String> {
    let file = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(file),
        flate2::Compression::default(),
    );
    let mut w = cpio::CpioWriter::new(gz);
    tree.write_to(&mut w)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let gz = w.finish().map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = gz
        .finish()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    buf.flush().map_err(|e| format!("{}: {e}", path.display()))
}

/// The image's file system before it is serialised. Keyed by path, so the
/// archive comes out sorted, which puts every directory before its contents
/// (the kernel's unpacker needs a directory to exist before files in it).
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
    CharDev(u32, u32, u32),
}

impl Tree {
    fn dir(&mut self, path: &str, perm: u32) -> Result<(), String> {
        self.insert(path, Node::Dir(perm))
    }
    fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) -> Result<(), String> {
        self.insert(path, Node::File(perm, data.into()))
    }
    fn symlink(&mut self, path: &str, target: &str) -> Result<(), String> {
        self.insert(path, Node::Symlink(target.to_string()))
    }
    fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<(), String> {
        self.insert(path, Node::CharDev(perm, major, minor))
    }

    /// Adds a node, creating missing parent directories. Refuses to place
    /// anything below a non-directory (e.g. "lib/x" when "lib" is a symlink)
    /// and to add a path twice, unless both are directories.
    fn insert(&mut self, path: &str, node: Node) -> Result<(), String> {
        let path = path.trim_matches('/').to_string();
        let mut parent = String::new();
        for comp in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir(0o755));
                }
                Some(Node::Dir(_)) => {}
                Some(_) => return Err(format!("{path}: {parent} is not a directory")),
            }
        }
        match (self.nodes.get(&path), &node) {
            (None, _) => {}
            (Some(Node::Dir(_)), Node::Dir(_)) => {}
            (Some(_), _) => return Err(format!("{path} added twice")),
        }
        self.nodes.insert(path, node);
        Ok(())
    }

    fn write_to<W: Write>(&self, w: &mut cpio::CpioWriter<W>) -> std::io::Result<()> {
        for (path, node) in &self.nodes {
            match node {
                Node::Dir(perm) => w.dir(path, *perm)?,
                Node::File(perm, data) => w.file(path, *perm, data)?,
                Node::Symlink(target) => w.symlink(path, target)?,
                Node::CharDev(perm, maj, min) => w.char_dev(path, *perm, *maj, *min)?,
            }
        }
        Ok(())
    }
}

/// A scratch directory removed on drop (std has no tempdir, and one helper
/// does not justify a dependency).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "ironbark-testimage-{tag}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        let r = parse_ready_line("\rIRONBARK-READY instance-id=i-0123abcd ip=10.0.2.15").unwrap();
        assert_eq!(r.instance_id, "i-0123abcd");
        assert_eq!(r.ip, Some("10.0.2.15".parse().unwrap()));
        let r = parse_ready_line("IRONBARK-READY instance-id=unknown ip=none").unwrap();
        assert_eq!(r.ip, None);
        assert!(parse_ready_line("[    1.0] random kernel line").is_none());
        assert!(parse_ready_line("IRONBARK-READY ip=10.0.0.1").is_none());
    }

    #[test]
    fn ldd_output_maps_into_the_image() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibtomcrypt.so.1 => /tmp/x/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1 (0x1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let v = parse_ldd(out).unwrap();
        assert_eq!(
            v,
            vec![
                (
                    "usr/lib/x86_64-linux-gnu/libtomcrypt.so.1".to_string(),
                    PathBuf::from("/tmp/x/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1")
                ),
                (
                    "usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
                ),
                (
                    "lib64/ld-linux-x86-64.so.2".to_string(),
                    PathBuf::from("/lib64/ld-linux-x86-64.so.2")
                ),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert_eq!(usr_merged("/lib/ld-linux.so.2"), "usr/lib/ld-linux.so.2");
        assert_eq!(usr_merged("/sbin/x"), "usr/bin/x");
    }

    #[test]
    fn tree_orders_parents_first_and_rejects_paths_through_links() {
        let mut t = Tree::default();
        t.symlink("lib", "usr/lib").unwrap();
        t.file("usr/lib/a/b.so", 0o644, "x").unwrap();
        t.dir("usr", 0o755).unwrap();
        assert!(t.file("lib/c", 0o644, "x").is_err());
        assert!(t.file("usr/lib/a/b.so", 0o644, "y").is_err());
        let mut w = cpio::CpioWriter::new(Vec::new());
        t.write_to(&mut w).unwrap();
        let entries = cpio::parse(&w.finish().unwrap()).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["lib", "usr", "usr/lib", "usr/lib/a", "usr/lib/a/b.so"]
        );
    }

    #[test]
    fn init_script_is_complete() {
        // Every placeholder is one the builder fills, and the readiness line
        // uses the public prefix.
        let init = guest::INIT_TEMPLATE
            .replace("@KVER@", "6.1.0-1-cloud-amd64")
            .replace("@MODULES@", &MODULES.join(" "));
        assert!(!init.contains('@'));
        assert!(init.contains(&format!("echo \"{READY_PREFIX} instance-id=")));
        assert!(init.contains(&format!("{SSH_KEY_PARAM}=*)")));
        assert!(init.starts_with("#!/bin/sh\n"));
    }

    /// Runs the udhcpc script on the host against a fake `ip` that records
    /// its arguments: the lease must become an address, a default route via
    /// the first router, an MTU and a resolv.conf.
    #[test]
    fn udhcpc_script_applies_a_lease() {
        let dir = TempDir::new("udhcpc-test").unwrap();
        let d = dir.path();
        let log = d.join("ip.log");
        fs::write(
            d.join("ip"),
            format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display()),
        )
        .unwrap();
        fs::write(d.join("script"), guest::UDHCPC_SCRIPT).unwrap();
        let chmod = |p: &Path| {
            let st = Command::new("chmod").arg("+x").arg(p).status();
            st.is_ok_and(|s| s.success())
        };
        if !chmod(&d.join("ip")) || !chmod(&d.join("script")) {
            return; // no chmod/sh: nothing to run the script with
        }
        let path = format!(
            "{}:{}",
            d.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let st = Command::new("sh")
            .arg(d.join("script"))
            .arg("bound")
            .env("PATH", path)
            .env("RESOLV", d.join("resolv.conf"))
            .env("interface", "eth0")
            .env("ip", "10.1.2.3")
            .env("mask", "24")
            .env("broadcast", "10.1.2.255")
            .env("router", "10.1.2.1 10.1.2.254")
            .env("dns", "10.1.2.53 10.1.2.54")
            .env("domain", "example.internal")
            .env("mtu", "1450")
            .status()
            .unwrap();
        assert!(st.success());
        let log = fs::read_to_string(log).unwrap();
        for want in [
            "link set dev eth0 mtu 1450",
            "-4 addr flush dev eth0",
            "addr add 10.1.2.3/24 broadcast 10.1.2.255 dev eth0",
            "route replace default via 10.1.2.1 dev eth0",
        ] {
            assert!(
                log.lines().any(|l| l == want),
                "missing `ip {want}` in:\n{log}"
            );
        }
        assert_eq!(
            fs::read_to_string(d.join("resolv.conf")).unwrap(),
            "search example.internal\nnameserver 10.1.2.53\nnameserver 10.1.2.54\n"
        );
    }

    /// `sh -n` syntax-checks the scripts when a POSIX shell is around (the
    /// guest's ash accepts what dash/bash accept here).
    #[test]
    fn scripts_parse() {
        for (name, text) in [
            ("init", guest::INIT_TEMPLATE),
            ("udhcpc", guest::UDHCPC_SCRIPT),
        ] {
            let Ok(out) = Command::new("sh").arg("-n").arg("-c").arg(text).output() else {
                return;
            };
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
