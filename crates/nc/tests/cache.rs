//! The image cache against a local HTTP server: a good download is verified
//! and kept, a corrupt one refused and deleted, concurrent fetches of one
//! image share one download, and failures are retried by the next fetch.

use std::sync::Arc;
use std::time::Duration;

use ironbark_nc::cache::{CacheError, DownloadTimeouts, ImageCache};
use ironbark_nc::testing::{FileServer, TempDir, image_ref};

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_good_download_is_verified_and_kept() {
    let tmp = TempDir::new("cache-good");
    let server = FileServer::start().await;
    let data = vec![7u8; 300_000];
    let image = server.image("eki-11111111", data.clone());
    let cache = ImageCache::open(tmp.path().join("cache"), DownloadTimeouts::default()).unwrap();

    let path = cache.fetch(&image).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        format!("eki-11111111-{}", &image.sha256[..16])
    );
    assert_eq!(
        files_in(cache.dir()),
        vec![format!("eki-11111111-{}", &image.sha256[..16])]
    );
    // Cached: no second request.
    assert_eq!(cache.fetch(&image).await.unwrap(), path);
    assert_eq!(server.hits("/eki-11111111"), 1);
}

#[tokio::test]
async fn a_corrupt_download_is_refused_and_deleted() {
    let tmp = TempDir::new("cache-corrupt");
    let server = FileServer::start().await;
    let good = b"the real image".to_vec();
    // The server has other bytes (same length) than the digest promises.
    let image = image_ref("eki-22222222", &server.url("/k"), &good);
    server.put("/k", b"the fake image".to_vec());
    let cache = ImageCache::open(tmp.path().join("cache"), DownloadTimeouts::default()).unwrap();

    let err = cache.fetch(&image).await.unwrap_err();
    assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(
        files_in(cache.dir()).is_empty(),
        "{:?}",
        files_in(cache.dir())
    );

    // Once the server has the right bytes, the next fetch succeeds.
    server.put("/k", good.clone());
    let path = cache.fetch(&image).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), good);
}

#[tokio::test]
async fn oversized_and_missing_downloads_fail() {
    let tmp = TempDir::new("cache-size");
    let server = FileServer::start().await;
    let cache = ImageCache::open(tmp.path().join("cache"), DownloadTimeouts::default()).unwrap();

    let mut image = server.image("eki-33333333", vec![1u8; 1000]);
    image.size = 10;
    let err = cache.fetch(&image).await.unwrap_err();
    assert!(matches!(err, CacheError::TooLarge { .. }), "{err}");

    let mut missing = image_ref(
        "eki-44444444",
        &server.url("/nope?X-Amz-Signature=secret"),
        b"x",
    );
    let err = cache.fetch(&missing).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert!(
        !err.to_string().contains("secret"),
        "presigned query leaked: {err}"
    );

    missing.url = "http://127.0.0.1:1/unreachable".into();
    assert!(matches!(
        cache.fetch(&missing).await,
        Err(CacheError::Fetch { .. })
    ));
    assert!(files_in(cache.dir()).is_empty());
}

#[tokio::test]
async fn concurrent_fetches_share_one_download() {
    let tmp = TempDir::new("cache-flight");
    let server = FileServer::start().await;
    server.set_delay(Duration::from_millis(300));
    let image = server.image("eri-55555555", vec![9u8; 100_000]);
    let cache =
        Arc::new(ImageCache::open(tmp.path().join("cache"), DownloadTimeouts::default()).unwrap());

    let fetches: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            let image = image.clone();
            tokio::spawn(async move { cache.fetch(&image).await })
        })
        .collect();
    let mut paths = Vec::new();
    for f in fetches {
        paths.push(f.await.unwrap().unwrap());
    }
    assert!(paths.windows(2).all(|p| p[0] == p[1]));
    assert_eq!(server.hits("/eri-55555555"), 1);
}

#[tokio::test]
async fn a_stalled_server_times_out() {
    let tmp = TempDir::new("cache-stall");
    let server = FileServer::start().await;
    server.set_delay(Duration::from_secs(5));
    let image = server.image("eki-66666666", b"x".to_vec());
    let timeouts = DownloadTimeouts {
        headers: Duration::from_millis(200),
        ..DownloadTimeouts::default()
    };
    let cache = ImageCache::open(tmp.path().join("cache"), timeouts).unwrap();
    let err = cache.fetch(&image).await.unwrap_err();
    assert!(err.to_string().contains("no response"), "{err}");
}

#[tokio::test]
async fn leftover_temporary_files_are_removed_on_open() {
    let tmp = TempDir::new("cache-tmp");
    let dir = tmp.path().join("cache");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".tmp-eki-1-123-0"), b"partial").unwrap();
    std::fs::write(dir.join("eki-1-0123456789abcdef"), b"kept").unwrap();
    ImageCache::open(&dir, DownloadTimeouts::default()).unwrap();
    assert_eq!(files_in(&dir), vec!["eki-1-0123456789abcdef".to_string()]);
}
