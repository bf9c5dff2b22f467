//! The NC's local image cache, `<data>/cache/`.
//!
//! Every kernel, ramdisk and root disk an instance boots from is fetched over
//! HTTP (a presigned Walrus URL the CLC made) once, and then shared by every
//! instance on this host that uses it: kernels and ramdisks are read by QEMU
//! directly, root disks become the read-only backing file of each
//! instance's qcow2 overlay.
//!
//! A download streams into a temporary file while its SHA-256 is computed;
//! only a file whose size and digest match the [`ImageRef`] is fsynced and
//! renamed to its final name `<id>-<first 16 hex digits of sha256>`, so a
//! file under a final name is always complete and verified (a crash leaves
//! at most a `.tmp-*` file, removed when the cache is opened). A mismatch
//! deletes the temporary file and fails the launch with [`CacheError::Corrupt`].
//!
//! Launches that want the same image at the same time share one download
//! (single flight): the first caller downloads, the others wait for its
//! result, success or failure. A failure is not remembered, so a later
//! launch tries again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use ironbark_node_api::ImageRef;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::http::{self, HttpClient};

/// Why an image could not be provided. Cloneable because every launch
/// waiting on a shared download receives the same error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("image {id}: invalid reference: {reason}")]
    Invalid { id: String, reason: String },
    #[error("image {id}: download from {url} failed: {reason}")]
    Fetch {
        id: String,
        url: String,
        reason: String,
    },
    #[error(
        "image {id} is corrupt: expected {expected_size} bytes with sha256 {expected}, \
         got {got_size} bytes with sha256 {got}; the download was deleted"
    )]
    Corrupt {
        id: String,
        expected: String,
        got: String,
        expected_size: u64,
        got_size: u64,
    },
    #[error("image {id}: larger than the {expected_size} bytes announced; download aborted")]
    TooLarge { id: String, expected_size: u64 },
    #[error("image cache I/O on {path}: {reason}")]
    Io { path: String, reason: String },
}

/// Time limits of a download.
#[derive(Clone, Copy, Debug)]
pub struct DownloadTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub headers: Duration,
    /// Longest silence while the body streams; a stalled server fails the
    /// launch instead of holding it forever.
    pub idle: Duration,
}

impl Default for DownloadTimeouts {
    fn default() -> Self {
        DownloadTimeouts {
            connect: Duration::from_secs(5),
            headers: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

type Flight = Arc<OnceCell<Result<PathBuf, CacheError>>>;

/// See the module docs.
pub struct ImageCache {
    dir: PathBuf,
    client: HttpClient,
    timeouts: DownloadTimeouts,
    /// Downloads under way, by final file name.
    inflight: Mutex<HashMap<String, Flight>>,
    tmp_counter: AtomicU64,
}

impl ImageCache {
    /// Opens (creating) the cache directory and removes temporary files a
    /// crash left behind.
    pub fn open(dir: impl Into<PathBuf>, timeouts: DownloadTimeouts) -> Result<Self, CacheError> {
        let dir = dir.into();
        let io = |e: std::io::Error| CacheError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ImageCache {
            client: http::client(timeouts.connect),
            dir,
            timeouts,
            inflight: Mutex::new(HashMap::new()),
            tmp_counter: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `image` lives once cached (whether or not it is yet).
    pub fn path_for(&self, image: &ImageRef) -> Result<PathBuf, CacheError> {
        Ok(self.dir.join(file_name(image)?))
    }

    /// The path of `image` in the cache, downloading it first if needed.
    pub async fn fetch(&self, image: &ImageRef) -> Result<PathBuf, CacheError> {
        let name = file_name(image)?;
        let path = self.dir.join(&name);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let flight = {
            let mut inflight = self.inflight.lock().expect("cache lock");
            inflight.entry(name.clone()).or_default().clone()
        };
        let result = flight
            .get_or_init(|| async {
                // Another flight may have finished between our check and
                // joining this one.
                if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    return Ok(path.clone());
                }
                self.download(image, &name, &path).await
            })
            .await
            .clone();
        // The flight is over: forget it (if nobody replaced it already), so
        // a failure can be retried by the next launch.
        let mut inflight = self.inflight.lock().expect("cache lock");
        if inflight.get(&name).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(&name);
        }
        result
    }

    async fn download(
        &self,
        image: &ImageRef,
        name: &str,
        path: &Path,
    ) -> Result<PathBuf, CacheError> {
        let tmp = self.dir.join(format!(
            ".tmp-{name}-{}-{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let started = std::time::Instant::now();
        let result = self.download_to(image, &tmp).await;
        let result = match result {
            Ok(()) => tokio::fs::rename(&tmp, path)
                .await
                .map_err(|e| CacheError::Io {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            tracing::warn!(image = %image.id, error = %e, "image download failed");
            return Err(e);
        }
        // The rename is only durable once the directory is synced.
        if let Ok(d) = tokio::fs::File::open(&self.dir).await {
            let _ = d.sync_all().await;
        }
        tracing::info!(
            image = %image.id,
            bytes = image.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image cached"
        );
        Ok(path.to_path_buf())
    }

    /// GETs the image into `tmp`, verifying size and digest as it streams.
    async fn download_to(&self, image: &ImageRef, tmp: &Path) -> Result<(), CacheError> {
        let fetch_err = |reason: String| CacheError::Fetch {
            id: image.id.clone(),
            url: http::redact(&image.url).to_string(),
            reason,
        };
        let io_err = |e: std::io::Error| CacheError::Io {
            path: tmp.display().to_string(),
            reason: e.to_string(),
        };
        let uri = http::parse_http_uri(&image.url).map_err(&fetch_err)?;
        let request = hyper::Request::get(uri)
            .body(Full::default())
            .map_err(|e| fetch_err(e.to_string()))?;
        let response = tokio::time::timeout(self.timeouts.headers, self.client.request(request))
            .await
            .map_err(|_| fetch_err(format!("no response within {:?}", self.timeouts.headers)))?
            .map_err(|e| fetch_err(e.to_string()))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(fetch_err(format!("HTTP {}", response.status())));
        }
        let mut body = response.into_body();
        let mut file = tokio::fs::File::create(tmp).await.map_err(io_err)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        loop {
            let frame = tokio::time::timeout(self.timeouts.idle, body.frame())
                .await
                .map_err(|_| fetch_err(format!("no data for {:?}", self.timeouts.idle)))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| fetch_err(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len() as u64;
            // Stop a server that sends more than announced before it fills
            // the disk.
            if image.size > 0 && size > image.size {
                return Err(CacheError::TooLarge {
                    id: image.id.clone(),
                    expected_size: image.size,
                });
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(io_err)?;
        }
        let got = hex::encode(hasher.finalize());
        let expected = image.sha256.to_ascii_lowercase();
        if got != expected || (image.size > 0 && size != image.size) {
            return Err(CacheError::Corrupt {
                id: image.id.clone(),
                expected,
                got,
                expected_size: image.size,
                got_size: size,
            });
        }
        file.flush().await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)?;
        Ok(())
    }
}

/// `<id>-<sha256 prefix>`, after checking that the id is a plain file name
/// and the digest is a SHA-256 in hex (the id comes from the network and
/// must not walk out of the cache directory).
fn file_name(image: &ImageRef) -> Result<String, CacheError> {
    let invalid = |reason: &str| CacheError::Invalid {
        id: image.id.clone(),
        reason: reason.to_string(),
    };
    let id_ok = !image.id.is_empty()
        && image.id.len() <= 128
        && !image.id.starts_with('.')
        && image
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !id_ok {
        return Err(invalid(
            "the id must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'",
        ));
    }
    if image.sha256.len() != 64 || !image.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid("sha256 must be 64 hex digits"));
    }
    Ok(format!(
        "{}-{}",
        image.id,
        &image.sha256[..16].to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, sha: &str) -> ImageRef {
        ImageRef {
            id: id.into(),
            url: "http://127.0.0.1:1/x".into(),
            sha256: sha.into(),
            size: 1,
        }
    }

    #[test]
    fn names_are_id_and_digest_prefix() {
        let sha = "AB".repeat(32);
        assert_eq!(
            file_name(&image("eki-1234", &sha)).unwrap(),
            "eki-1234-abababababababab"
        );
    }

    #[test]
    fn hostile_ids_and_digests_are_refused() {
        let sha = "0".repeat(64);
        for id in ["", "../etc", "a/b", ".hidden", "x y"] {
            assert!(file_name(&image(id, &sha)).is_err(), "{id:?}");
        }
        assert!(file_name(&image("eki-1", "abc")).is_err());
        assert!(file_name(&image("eki-1", &"g".repeat(64))).is_err());
    }
}
