//! What this host can hold, measured, for the embedded single-host cloud's
//! capacity report until NCs report their own. Nothing is reserved yet, so
//! free equals total.

use std::path::Path;

use ironbark_clc::CapacitySource;
use ironbark_types::Capacity;

pub struct HostCapacity {
    total: Capacity,
}

impl HostCapacity {
    pub fn measure(data_dir: &Path) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb / 1024)
            .unwrap_or(0);
        HostCapacity {
            total: Capacity {
                cpus,
                memory_mib,
                disk_gib: free_disk_gib(data_dir).unwrap_or(0),
            },
        }
    }
}

/// Free space of the filesystem holding the data dir, via POSIX `df`
/// (std has no statvfs, and this runs once at start-up).
fn free_disk_gib(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kb: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kb / (1024 * 1024))
}

impl CapacitySource for HostCapacity {
    fn capacity(&self, _zone: &str) -> (Capacity, Capacity) {
        (self.total, self.total)
    }
}
