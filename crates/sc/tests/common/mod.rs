//! Fixtures the SC's integration tests share.

use ironbark_sc_api::{ExportSpec, VolumeSpec};

/// A blank 1 GiB volume exported to `exports` (NC node ids).
#[allow(dead_code)]
pub fn vol(id: &str, exports: &[&str]) -> VolumeSpec {
    VolumeSpec {
        volume_id: id.into(),
        size_gib: 1,
        source: None,
        exports: exports
            .iter()
            .map(|n| ExportSpec {
                node_id: n.to_string(),
                instance_id: format!("i-on-{n}"),
            })
            .collect(),
    }
}

/// Daemons run by `binary`, with their files under `dir`, TCP exports on
/// `ports`, and `local` as the NCs on this host. Not every test file
/// starts daemons of its own.
#[allow(dead_code)]
pub fn daemons(
    dir: &std::path::Path,
    binary: std::path::PathBuf,
    ports: (u16, u16),
    local: &[&str],
) -> ironbark_sc::Daemons {
    ironbark_sc::Daemons::new(ironbark_sc::DaemonConfig {
        binary,
        ip_binary: "ip".into(),
        netns: None,
        listen_host: "127.0.0.1".into(),
        advertise_host: "127.0.0.1".into(),
        ports,
        run_dir: dir.join("run"),
        socket_dir: dir.join("sock"),
        local_nodes: local.iter().map(|n| n.to_string()).collect(),
    })
    .unwrap()
}

/// Whether the tests that run real `qemu-storage-daemon`s, `qemu-img` and
/// `qemu-io` (package qemu-utils; zstd for snapshots) are on: they need
/// `IRONBARK_QEMU_TESTS=1`, which the test command sets.
#[allow(dead_code)]
pub fn qemu_tests() -> bool {
    if std::env::var("IRONBARK_QEMU_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set IRONBARK_QEMU_TESTS=1 (with qemu-utils and zstd) to run");
    false
}
