//! Getting Debian packages without installing them: `apt-get download` into
//! a cache directory (no root needed, nothing on the host changes) and
//! `dpkg-deb -x` into a scratch directory.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The meta-package that tracks the current Debian 12 cloud kernel.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";

/// Runs a command, returning stdout on success and a readable error (with
/// stderr) otherwise.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Resolves the kernel meta-package to the real, versioned image package
/// (`linux-image-6.1.0-NN-cloud-amd64`). Returns `None` when apt knows no
/// candidate (e.g. no package lists on an offline machine), so the caller can
/// fall back to whatever kernel is already in the cache.
pub fn resolve_kernel_package() -> Option<String> {
    let out = run(Command::new("apt-cache").args(["depends", KERNEL_META])).ok()?;
    String::from_utf8_lossy(&out).lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        // Alternatives are printed as "<name>"; only a concrete image counts.
        (dep.starts_with("linux-image-") && dep.ends_with("-cloud-amd64")).then(|| dep.to_string())
    })
}

/// The versions apt would download, by package (absent when apt knows no
/// candidate). One `apt-cache policy` call for all packages: each call costs
/// most of a second just loading apt's cache.
fn candidate_versions(pkgs: &[String]) -> HashMap<String, String> {
    let Ok(out) = run(Command::new("apt-cache").arg("policy").args(pkgs)) else {
        return HashMap::new();
    };
    parse_policy(&String::from_utf8_lossy(&out))
}

/// Parses `apt-cache policy a b ...`: a `name:` line at column 0 opens each
/// package's section, and its `  Candidate: <version>` line follows.
fn parse_policy(out: &str) -> HashMap<String, String> {
    let mut found = HashMap::new();
    let mut current: Option<&str> = None;
    for line in out.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = line.strip_suffix(':');
        } else if let (Some(pkg), Some(v)) = (current, line.trim().strip_prefix("Candidate:")) {
            let v = v.trim();
            if v != "(none)" && !v.is_empty() {
                found.insert(pkg.to_string(), v.to_string());
            }
        }
    }
    found
}

/// `apt-get download` names files `<pkg>_<version>_<arch>.deb` with the
/// epoch's `:` URL-encoded as `%3a`; undo that so names compare to versions.
fn decoded_name(path: &Path) -> Option<String> {
    let n = path.file_name()?.to_str()?;
    n.ends_with(".deb")
        .then(|| n.replace("%3a", ":").replace("%3A", ":"))
}

/// Finds a cached .deb of `pkg`, of exactly `version` when one is given,
/// otherwise the most recently downloaded one.
fn find_cached(cache: &Path, pkg: &str, version: Option<&str>) -> Option<PathBuf> {
    let prefix = match version {
        Some(v) => format!("{pkg}_{v}_"),
        None => format!("{pkg}_"),
    };
    let mut hits: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| decoded_name(p).is_some_and(|n| n.starts_with(&prefix)))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    hits.sort();
    hits.pop().map(|(_, p)| p)
}

/// Makes sure a .deb of each package is in `cache`, downloading the missing
/// ones in one `apt-get download` call, and returns their paths in order.
///
/// A cached file of apt's candidate version is reused. When apt has no
/// candidate (offline, no lists) any cached version is accepted, so a warm
/// cache builds without the network.
pub fn ensure_debs(cache: &Path, pkgs: &[String]) -> Result<Vec<PathBuf>, String> {
    let versions = candidate_versions(pkgs);
    let wanted: Vec<(String, Option<String>)> = pkgs
        .iter()
        .map(|p| (p.clone(), versions.get(p).cloned()))
        .collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(p, v)| find_cached(cache, p, v.as_deref()).is_none())
        .map(|(p, v)| match v {
            Some(v) => format!("{p}={v}"),
            None => p.clone(),
        })
        .collect();
    if !missing.is_empty() {
        // As root apt warns that its sandbox user cannot write here; the
        // download still works, so that warning is not an error.
        run(Command::new("apt-get")
            .arg("download")
            .args(&missing)
            .current_dir(cache))
        .map_err(|e| format!("downloading {missing:?} failed (is `apt-get update` done?): {e}"))?;
    }
    wanted
        .iter()
        .map(|(p, v)| {
            find_cached(cache, p, v.as_deref())
                .or_else(|| find_cached(cache, p, None))
                .ok_or_else(|| format!("no .deb of {p} in {} after download", cache.display()))
        })
        .collect()
}

/// The newest cached .deb of each package, without asking apt: the fallback
/// when a download fails (offline, with package lists newer than the cache).
pub fn cached_only(cache: &Path, pkgs: &[String]) -> Result<Vec<PathBuf>, String> {
    pkgs.iter()
        .map(|p| {
            find_cached(cache, p, None)
                .ok_or_else(|| format!("no .deb of {p} in {}", cache.display()))
        })
        .collect()
}

/// Extracts a .deb's file system tree into `dest` (no maintainer scripts run).
pub fn extract(deb: &Path, dest: &Path) -> Result<(), String> {
    fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map(|_| ())
}

/// Newest cached kernel image package, for builds where apt cannot resolve
/// the meta-package.
pub fn cached_kernel_package(cache: &Path) -> Option<String> {
    let deb = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            decoded_name(p).is_some_and(|n| {
                // "linux-image-<digit>...": a versioned image, not the
                // meta-package nor a -dbg package.
                n.strip_prefix("linux-image-")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                    && n.contains("-cloud-amd64_")
            })
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())?;
    let name = decoded_name(&deb)?;
    Some(name.split('_').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policy_for_several_packages() {
        let out = "busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n  Version table:\n     1:1.35.0-4+deb12u1+b1 500\n        500 http://deb.example/debian bookworm/main amd64 Packages\nnosuch:\n  Installed: (none)\n  Candidate: (none)\ndropbear-bin:\n  Installed: (none)\n  Candidate: 2022.83-1+deb12u3\n";
        let v = parse_policy(out);
        assert_eq!(v.len(), 2);
        assert_eq!(v["busybox-static"], "1:1.35.0-4+deb12u1+b1");
        assert_eq!(v["dropbear-bin"], "2022.83-1+deb12u3");
    }

    #[test]
    fn decodes_epoch_in_file_names() {
        let p = Path::new("/c/busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb");
        assert_eq!(
            decoded_name(p).as_deref(),
            Some("busybox-static_1:1.35.0-4+deb12u1+b1_amd64.deb")
        );
        assert_eq!(decoded_name(Path::new("/c/readme.txt")), None);
    }

    #[test]
    fn finds_cached_by_version_and_kernel_name() {
        let dir = crate::TempDir::new("debs-test").unwrap();
        let c = dir.path();
        fs::write(c.join("busybox-static_1%3a1.35.0-4_amd64.deb"), b"x").unwrap();
        fs::write(
            c.join("linux-image-6.1.0-9-cloud-amd64_6.1.1-1_amd64.deb"),
            b"x",
        )
        .unwrap();
        fs::write(c.join("linux-image-cloud-amd64_6.1.1-1_amd64.deb"), b"x").unwrap();
        assert!(find_cached(c, "busybox-static", Some("1:1.35.0-4")).is_some());
        assert!(find_cached(c, "busybox-static", Some("1:1.36.0-1")).is_none());
        assert!(find_cached(c, "busybox-static", None).is_some());
        // "busybox" must not match "busybox-static_...".
        assert!(find_cached(c, "busybox", None).is_none());
        assert_eq!(
            cached_kernel_package(c).as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
    }
}
