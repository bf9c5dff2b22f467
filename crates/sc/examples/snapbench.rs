//! Times one snapshot through completion on a real SC: `snapbench DIR
//! SIZE_GIB DATA_MIB gzip|zstd`. Makes a volume of SIZE_GIB in DIR, fills
//! DATA_MIB of it (spread over the volume in 64 MiB runs) from
//! /dev/urandom, then takes a snapshot: point-in-time copy by the volume's
//! qemu-storage-daemon, raw copy kept, compression, PUT to an in-process
//! Walrus stand-in and the record written. Prints one line:
//! `snapshot <kind> <seconds> <compressed bytes> <CPU seconds>`, and
//! progress on stderr. The CPU seconds are this process's (the SC and the
//! stand-in) and its `zstd` children's, not the volume's
//! qemu-storage-daemon's: on a shared machine they say what the snapshot
//! costs when the wall time says mostly how busy the machine was.
//! Used by benches/ebs.sh.
//!
//! The stand-in does the work Walrus does for a PUT, minus the disk write:
//! the body streams to one hashing thread that computes the MD5 (the ETag)
//! and the checksum the client named (`x-amz-checksum-crc32` or `-sha256`),
//! a mismatch is refused, and the checksum is echoed.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::put;
use base64::Engine;
use futures_util::StreamExt;
use ironbark_sc::ScSettings;
use ironbark_sc_api::{
    Compression, DesiredStorage, SnapshotSpec, SnapshotState, VolumeSpec, VolumeState, WalrusTarget,
};
use md5::Digest as _;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let gib: u64 = args[2].parse().unwrap();
    let data_mib: u64 = args[3].parse().unwrap();
    let kind = match args[4].as_str() {
        "zstd" => Compression::Zstd,
        _ => Compression::Gzip,
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let waddr = listener.local_addr().unwrap();
    let app = Router::new()
        .fallback(put(walrus_put))
        .layer(axum::extract::DefaultBodyLimit::disable());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

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
            target: WalrusTarget {
                put_url: format!("http://{waddr}/snapshots/snap-bench?sig=x"),
            },
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
    println!(
        "snapshot {} {:.2} {} {:.2}",
        kind.extension(),
        wall,
        report.compressed_size.unwrap_or(0),
        cpu_seconds() - cpu0
    );
}

async fn walrus_put(headers: HeaderMap, body: Body) -> axum::response::Response {
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let given = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // As Walrus: the one checksum the client named, on the thread that
    // computes the MD5.
    let (want_crc, want_sha) = (
        given("x-amz-checksum-crc32"),
        given("x-amz-checksum-sha256"),
    );
    let (do_crc, do_sha) = (want_crc.is_some(), want_sha.is_some());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut md5 = md5::Md5::new();
        let mut sha = <sha2::Sha256 as sha2::Digest>::new();
        let mut crc = crc32fast::Hasher::new();
        while let Some(b) = rx.blocking_recv() {
            md5.update(&b);
            if do_crc {
                crc.update(&b);
            }
            if do_sha {
                sha2::Digest::update(&mut sha, &b);
            }
        }
        (
            md5.finalize(),
            crc.finalize().to_be_bytes(),
            sha2::Digest::finalize(sha),
        )
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        if tx.send(chunk).await.is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    drop(tx);
    let (md5, crc, sha) = hasher.await.unwrap();
    let mut echo = Vec::new();
    if let Some(w) = want_crc {
        if w != b64(&crc) {
            return (StatusCode::BAD_REQUEST, "BadDigest").into_response();
        }
        echo.push(("x-amz-checksum-crc32", w));
    }
    if let Some(w) = want_sha {
        if w != b64(&sha) {
            return (StatusCode::BAD_REQUEST, "BadDigest").into_response();
        }
        echo.push(("x-amz-checksum-sha256", w));
    }
    if given("content-md5").is_some_and(|g| g != b64(&md5)) {
        return (StatusCode::BAD_REQUEST, "BadDigest").into_response();
    }
    let mut response = (
        StatusCode::OK,
        [("etag", format!("\"{}\"", hex::encode(md5)))],
    )
        .into_response();
    for (k, v) in echo {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
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
