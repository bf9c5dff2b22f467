//! Test support, public so that other crates' tests (the CC's, the
//! `ironbark` binary's) can use it as well as this crate's: a temporary
//! directory removed on drop, and a tiny HTTP server that serves byte
//! strings as images the way Walrus would, counting requests (to check the
//! cache's single flight) and optionally slow to answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use bytes::Bytes;
use ironbark_node_api::ImageRef;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// A fresh directory under the system temp dir, deleted on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ironbark-nc-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Files {
    files: Mutex<HashMap<String, Bytes>>,
    hits: Mutex<HashMap<String, usize>>,
    delay: Mutex<Duration>,
}

/// See the module docs. Stops serving when dropped.
pub struct FileServer {
    addr: SocketAddr,
    files: Arc<Files>,
    task: JoinHandle<()>,
}

impl FileServer {
    /// Serves on an ephemeral port of 127.0.0.1.
    pub async fn start() -> FileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the file server");
        let addr = listener.local_addr().expect("local addr");
        let files = Arc::new(Files::default());
        let state = files.clone();
        let app = Router::new().fallback(move |uri: Uri| {
            let files = state.clone();
            async move {
                let path = uri.path().to_string();
                *files.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                let delay = *files.delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match files.files.lock().unwrap().get(&path) {
                    Some(body) => (StatusCode::OK, body.clone()).into_response(),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FileServer { addr, files, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `data` at `path` (which starts with `/`).
    pub fn put(&self, path: &str, data: impl Into<Bytes>) {
        self.files
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), data.into());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.files
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *self.files.delay.lock().unwrap() = delay;
    }

    /// Serves `data` at `/<id>` and returns an [`ImageRef`] to it.
    pub fn image(&self, id: &str, data: impl Into<Bytes>) -> ImageRef {
        let data = data.into();
        let path = format!("/{id}");
        let image = image_ref(id, &self.url(&path), &data);
        self.put(&path, data);
        image
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An [`ImageRef`] for `data` served at `url`.
pub fn image_ref(id: &str, url: &str, data: &[u8]) -> ImageRef {
    ImageRef {
        id: id.to_string(),
        url: url.to_string(),
        sha256: hex::encode(Sha256::digest(data)),
        size: data.len() as u64,
    }
}
