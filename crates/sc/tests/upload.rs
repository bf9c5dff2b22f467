//! Publishing a snapshot against stand-ins for Walrus that misbehave: a
//! snapshot is `completed` (has a record) only once the store confirmed
//! the whole object, and a failed upload leaves neither a record nor the
//! temporary compressed file. Needs `zstd` on the PATH, not QEMU: the raw
//! copy is made by hand, as the backup would leave it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::put;
use base64::Engine;
use futures_util::StreamExt;
use ironbark_sc::backend::Backend;
use ironbark_sc::{Codec, DaemonConfig, Daemons, FileBackend, FileBackendConfig};
use ironbark_sc_api::{Compression, SEGMENT_SIZE, SnapshotSpec, WalrusTarget};
use md5::Digest as _;
use sha2::Digest;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Checks and echoes x-amz-checksum-crc32, answers ETag = MD5: Walrus.
    Walrus,
    /// Stores whatever came, confirms no checksum.
    Careless,
    /// Reads part of the body, then fails: a store or network dying
    /// mid-upload.
    DiesMidway,
}

#[derive(Clone)]
struct Store {
    mode: Arc<Mutex<Mode>>,
    objects: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Store {
    async fn start(mode: Mode) -> (Store, SocketAddr) {
        let store = Store {
            mode: Arc::new(Mutex::new(mode)),
            objects: Arc::default(),
        };
        let me = store.clone();
        let app = Router::new()
            .fallback(put(move |uri: Uri, headers: HeaderMap, body: Body| {
                let me = me.clone();
                async move { me.put(uri, headers, body).await }
            }))
            .layer(axum::extract::DefaultBodyLimit::disable());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (store, addr)
    }

    async fn put(&self, uri: Uri, headers: HeaderMap, body: Body) -> axum::response::Response {
        let mode = *self.mode.lock().unwrap();
        let mut stream = body.into_data_stream();
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            got.extend_from_slice(&chunk);
            if mode == Mode::DiesMidway && got.len() > 1 << 20 {
                return (StatusCode::INTERNAL_SERVER_ERROR, "gone").into_response();
            }
        }
        let etag = format!("\"{}\"", hex::encode(md5::Md5::digest(&got)));
        let crc =
            base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(&got).to_be_bytes());
        let given = headers
            .get("x-amz-checksum-crc32")
            .and_then(|v| v.to_str().ok());
        if mode == Mode::Walrus && given.is_some_and(|g| g != crc) {
            return (StatusCode::BAD_REQUEST, "BadDigest").into_response();
        }
        self.objects
            .lock()
            .unwrap()
            .insert(uri.path().to_string(), got);
        let mut r = (StatusCode::OK, [("etag", etag)]).into_response();
        if mode == Mode::Walrus && given.is_some() {
            r.headers_mut()
                .insert("x-amz-checksum-crc32", crc.parse().unwrap());
        }
        r
    }
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ironbark-sc-upload-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn backend(dir: &Path) -> FileBackend {
    let daemons = Daemons::new(DaemonConfig {
        binary: "qemu-storage-daemon".into(),
        ip_binary: "ip".into(),
        netns: None,
        listen_host: "127.0.0.1".into(),
        advertise_host: "127.0.0.1".into(),
        ports: (1, 1),
        run_dir: dir.join("run"),
        socket_dir: dir.join("sock"),
        local_nodes: vec![],
    })
    .unwrap();
    FileBackend::new(
        FileBackendConfig {
            dir: dir.to_path_buf(),
            qemu_img: "qemu-img".into(),
            // Less than the object: part of it waits in the overflow file,
            // which must be gone afterwards too.
            codec: Codec {
                spool_memory: Some(1 << 20),
                ..Codec::default()
            },
        },
        daemons,
    )
    .unwrap()
}

/// The raw copy a backup would have left: sparse, 9 MiB of noise in the
/// second of four segments.
fn raw_copy(b: &FileBackend, id: &str) {
    let f = std::fs::File::create(b.snapshot_path(id)).unwrap();
    f.set_len(4 * SEGMENT_SIZE).unwrap();
    let noise: Vec<u8> = (0..9 << 20).map(|_| rand::random::<u8>()).collect();
    f.write_all_at(&noise, SEGMENT_SIZE + 4096).unwrap();
}

fn spec(id: &str, addr: SocketAddr) -> SnapshotSpec {
    SnapshotSpec {
        snapshot_id: id.into(),
        volume_id: "vol-x".into(),
        compression: Compression::Zstd,
        target: WalrusTarget {
            put_url: format!("http://{addr}/snapshots/{id}.zst?X-Amz-Signature=x"),
        },
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".raw"))
        .collect()
}

#[tokio::test]
async fn a_failed_upload_leaves_no_record_and_a_retry_completes() {
    let dir = tmp("retry");
    let b = backend(&dir);
    let (store, addr) = Store::start(Mode::DiesMidway).await;
    raw_copy(&b, "snap-a");
    let progress: ironbark_sc::backend::Progress = Arc::new(|_| {});
    let err = b
        .publish_snapshot(&spec("snap-a", addr), progress.clone())
        .await
        .unwrap_err();
    eprintln!("failed as it should: {err}");
    assert!(b.snapshots().await.unwrap().is_empty());
    assert_eq!(leftovers(&dir), Vec::<String>::new());

    *store.mode.lock().unwrap() = Mode::Walrus;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let r = b
        .publish_snapshot(
            &spec("snap-a", addr),
            Arc::new(move |f| s2.lock().unwrap().push(f)),
        )
        .await
        .unwrap();
    let obj = store.objects.lock().unwrap()["/snapshots/snap-a.zst"].clone();
    assert_eq!(r.sha256, hex::encode(sha2::Sha256::digest(&obj)));
    assert_eq!(r.md5, hex::encode(md5::Md5::digest(&obj)));
    assert_eq!(r.compressed_size, obj.len() as u64);
    assert_eq!(
        r.raw_digest,
        ironbark_sc::sparse::digest_file(&b.snapshot_path("snap-a")).unwrap()
    );
    assert!(b.snapshots().await.unwrap().contains_key("snap-a"));
    assert_eq!(leftovers(&dir), vec!["snap-a.json".to_string()]);
    // Progress only grows, and the upload has its share of it.
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.iter().any(|f| *f > 0.7 && *f < 1.0), "{seen:?}");
    assert_eq!(seen.last().copied(), Some(1.0));
    // The object is standard zstd of the raw copy.
    std::fs::write(dir.join("obj.zst"), &obj).unwrap();
    let out = std::process::Command::new("zstd")
        .args(["-q", "-d", "-c"])
        .arg(dir.join("obj.zst"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == std::fs::read(b.snapshot_path("snap-a")).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_store_that_does_not_confirm_the_checksum_does_not_complete_a_snapshot() {
    let dir = tmp("careless");
    let b = backend(&dir);
    let (_store, addr) = Store::start(Mode::Careless).await;
    raw_copy(&b, "snap-b");
    let err = b
        .publish_snapshot(&spec("snap-b", addr), Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not confirm"), "{err}");
    assert!(b.snapshots().await.unwrap().is_empty());
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}
