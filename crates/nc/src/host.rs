//! What this host offers to instances, for the NC's reports: configured, or
//! measured (CPUs the process may use, physical memory, the size of the
//! filesystem holding the data directory).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Resources the NC offers to instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// Measures the host. Anything that cannot be read counts as zero, which
/// makes the scheduler avoid this NC rather than overbook it.
pub fn measure(data_dir: &Path) -> Capacity {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(0);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| parse_mem_total_kib(&m))
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    let disk_gib = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| s.blocks().saturating_mul(s.fragment_size()) >> 30)
        .unwrap_or(0);
    Capacity {
        cpus,
        memory_mib,
        disk_gib,
    }
}

fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total() {
        let m = "MemTotal:       24578164 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total_kib(m), Some(24578164));
    }

    #[test]
    fn this_host_has_something() {
        let c = measure(Path::new("/"));
        assert!(c.cpus > 0 && c.memory_mib > 0 && c.disk_gib > 0, "{c:?}");
    }
}
