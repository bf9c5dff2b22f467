//! Times one snapshot through completion on a real SC: `snapbench DIR
//! SIZE_GIB DATA_MIB gzip|zstd`. Makes a volume of SIZE_GIB in DIR, fills
//! DATA_MIB of it (spread over the volume in 64 MiB runs) from
//! /dev/urandom, then takes a snapshot: point-in-time copy by the volume's
//! qemu-storage-daemon, raw copy kept, compression with each multipart
//! part uploaded to an in-process Walrus stand-in as soon as it is made,
//! completion, and the record written. Prints one line:
//! `snapshot <kind> <seconds> <compressed bytes> <CPU seconds>`, and on
//! stderr the progress and when the upload's first and last parts and the
//! completion arrived (how much of the upload overlapped compression). The CPU seconds are this process's (the SC and the
//! stand-in) and its `zstd` children's, not the volume's
//! qemu-storage-daemon's: on a shared machine they say what the snapshot
//! costs when the wall time says mostly how busy the machine was.
//! Used by benches/ebs.sh.
//!
//! The stand-in ([`ironbark_walrus_standin`]) does the work Walrus does for
//! a multipart upload, minus the disk write: each part's body streams to
//! one hashing thread that computes its MD5 (the part's ETag) and CRC-32,
//! a mismatch with `x-amz-checksum-crc32` is refused, and the completion
//! checks the parts and combines their CRC-32s.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ironbark_sc::ScSettings;
use ironbark_sc_api::{
    Compression, DesiredStorage, SnapshotSpec, SnapshotState, VolumeSpec, VolumeState,
};
use ironbark_walrus_standin::{Event, Mode, StandIn};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let gib: u64 = args[2].parse().unwrap();
    let data_mib: u64 = args[3].parse().unwrap();
    let kind = Compression::from_name(&args[4]).unwrap_or_default();

    let walrus = StandIn::start(Mode::Walrus, false).await;

    let mut settings = ScSettings::new(&dir, "t", "127.0.0.1:0".parse().unwrap());
    settings.nbd_ports = (21900, 21999);
    let s = ironbark_sc::open(&settings).await.unwrap();
    let vol = VolumeSpec {
        volume_id: "vol-bench".into(),
        size_gib: gib,
        source: None,
        exports: vec![],
    };
    s.apply(DesiredStorage {
        generation: 1,
        volumes: vec![vol.clone()],
        snapshots: vec![],
    })
    .await
    .unwrap();
    loop {
        s.settle().await;
        if s.report()
            .volumes
            .iter()
            .any(|v| v.state == VolumeState::Available)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fill DATA_MIB in 64 MiB runs spread evenly over the volume.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.canonicalize().unwrap().join("volumes/vol-bench.raw"))
        .unwrap();
    let runs = data_mib.div_ceil(64);
    let stride = (gib << 30) / runs;
    let mut rnd = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; 64 << 20];
    for i in 0..runs {
        rnd.read_exact(&mut buf).unwrap();
        file.write_all_at(&buf, i * stride).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);

    let started = Instant::now();
    let cpu0 = cpu_seconds();
    s.apply(DesiredStorage {
        generation: 2,
        volumes: vec![vol],
        snapshots: vec![SnapshotSpec {
            snapshot_id: "snap-bench".into(),
            volume_id: "vol-bench".into(),
            compression: kind,
            target: walrus.target("snapshots/snap-bench", gib << 30),
        }],
    })
    .await
    .unwrap();
    let mut last = 0;
    let report = loop {
        let r = s.report();
        if let Some(sn) = r.snapshots.first() {
            if sn.progress / 10 != last / 10 {
                eprintln!(
                    "  {:>3}% at {:.2}s",
                    sn.progress,
                    started.elapsed().as_secs_f64()
                );
                last = sn.progress;
            }
            match sn.state {
                SnapshotState::Completed => break sn.clone(),
                SnapshotState::Error => panic!("snapshot failed: {:?}", sn.error),
                SnapshotState::Pending => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed().as_secs_f64();
    let at = |t: &Instant| t.duration_since(started).as_secs_f64();
    let parts: Vec<f64> = walrus
        .log()
        .iter()
        .filter_map(|e| match e {
            Event::Part(_, t) => Some(at(t)),
            Event::Completed(_) => None,
        })
        .collect();
    let completed = walrus.log().iter().find_map(|e| match e {
        Event::Completed(t) => Some(at(t)),
        Event::Part(..) => None,
    });
    eprintln!(
        "  upload: {} parts, first in at {:.2}s, last at {:.2}s, completed at {:.2}s",
        parts.len(),
        parts.first().copied().unwrap_or(0.0),
        parts.last().copied().unwrap_or(0.0),
        completed.unwrap_or(0.0)
    );
    println!(
        "snapshot {} {:.2} {} {:.2}",
        kind.extension(),
        wall,
        report.compressed_size.unwrap_or(0),
        cpu_seconds() - cpu0
    );
}

/// User + system CPU seconds of this process and its waited-for children
/// (/proc/self/stat fields 14-17, in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; the fields start after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}
