//! Object data, as opaque blobs. Walrus' metadata decides which blobs form
//! which object; this module only stores bytes durably and gives them back
//! intact.
//!
//! A blob is written to `tmp/` while its bytes stream in, fsynced, and only
//! then renamed into `blobs/`, so a blob in `blobs/` is always whole. The
//! body is gathered into batches of about 512 KiB, and each batch goes to
//! two threads at once: the writer (CRC32C per 1 MiB block, then one
//! `writev`) and the hasher (MD5 for the ETag, and whatever [`Tap`] the
//! caller added, such as a client's flexible checksum). MD5 alone costs
//! about as much CPU as the copy into the page cache, so running them side
//! by side instead of in turn is what lets a PUT keep up with the disk.
//! While the writer writes, a flusher thread keeps the file's dirty pages
//! going to disk (see [`Flusher`]), so the disk write overlaps the transfer
//! and the fsync that makes the blob durable finds little left to do.
//!
//! A blob's block checksums sit beside it in `<id>.sum`; every read
//! verifies each block it touches as it streams it (a CRC32C costs far less
//! than the copy out of the page cache), so a corrupted file fails the
//! read at the bad block instead of being served. A blob no metadata row
//! points to (a crash between the rename and the metadata commit, or after
//! the commit that replaced it) is removed by [`FsBlobs::collect_garbage`]
//! at start-up.
//!
//! Disk I/O and hashing run on blocking threads fed through small bounded
//! channels, so memory per transfer is a few MiB whatever the object size.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::sync::mpsc;

/// Size of a checksummed block.
pub const BLOCK: usize = 1 << 20;

/// Batches in flight to each of the writer and hashing threads: a few MiB
/// per transfer whatever the object size.
const PIPE_DEPTH: usize = 4;

/// How much of a body is gathered before it is handed to the threads. The
/// network delivers it in pieces of a few KiB to a few hundred; handing
/// each one over would wake both threads per piece, which cost more CPU
/// than the CRC32C of the whole body.
const BATCH: usize = 512 << 10;

/// The body's pieces as they arrived, shared by the writer and the hasher.
type Batch = std::sync::Arc<Vec<Bytes>>;

/// Bytes written between two requests to the flusher (see [`Flusher`]).
/// Each `fdatasync` also flushes the disk's write cache, which other
/// writers on the disk then wait for: 32 MiB keeps that to 32 per GiB
/// while leaving the closing fsync at most a few dozen MiB (8 MiB was no
/// faster for 1 GiB objects on the bench machine).
const FLUSH_EVERY: u64 = 32 << 20;

/// Bytes between two requests to the flusher in a body's last
/// [`FLUSH_EVERY`] bytes, when its length is known. The closing fsync
/// writes whatever is still dirty while the client waits for its answer:
/// up to 32 MiB at the regular pace, which was about an eighth of a
/// 64 MiB PUT's time on the bench machine. Flushing the tail in smaller
/// steps leaves the closing fsync a few MiB, and costs a large object only
/// three more flushes.
const TAIL_FLUSH_EVERY: u64 = 8 << 20;

/// Whether the writer should ask for a flush, having `unflushed` bytes not
/// yet asked for out of `written`, in a body of `expected` bytes if known.
fn flush_due(unflushed: u64, written: u64, expected: Option<u64>) -> bool {
    // Nothing left to come: the closing fsync follows at once.
    let in_tail = expected.is_some_and(|n| n > written && n - written < FLUSH_EVERY);
    unflushed >= FLUSH_EVERY || (in_tail && unflushed >= TAIL_FLUSH_EVERY)
}

/// Something fed every byte of a blob as it is stored (on the hashing
/// thread), such as the checksums a client sent to be verified.
pub trait Tap: Send + 'static {
    fn update(&mut self, data: &[u8]);
}

impl Tap for () {
    fn update(&mut self, _: &[u8]) {}
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: String,
    pub size: u64,
    pub md5: [u8; 16],
}

#[derive(Debug)]
pub enum BlobError {
    /// The client's stream failed or ended early.
    Incomplete(String),
    /// More bytes than the declared length.
    TooLong,
    /// Stored data no longer matches its checksums.
    Corrupt(String),
    Io(std::io::Error),
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::Incomplete(m) => write!(f, "incomplete body: {m}"),
            BlobError::TooLong => write!(f, "body longer than its declared length"),
            BlobError::Corrupt(m) => write!(f, "stored data is corrupt: {m}"),
            BlobError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for BlobError {}

impl From<std::io::Error> for BlobError {
    fn from(e: std::io::Error) -> Self {
        BlobError::Io(e)
    }
}

#[derive(Clone, Debug)]
pub struct FsBlobs {
    root: PathBuf,
}

/// 32 random hex digits: blob names carry no meaning, so they can't collide
/// with, or reveal, object keys.
fn new_id() -> String {
    ironbark_types::generate_request_id().replace('-', "")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl FsBlobs {
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(FsBlobs { root })
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.root.join("blobs").join(&id[..2]).join(id)
    }

    fn sum_path(&self, id: &str) -> PathBuf {
        self.root
            .join("blobs")
            .join(&id[..2])
            .join(format!("{id}.sum"))
    }

    /// Streams a body into a new blob. With `expected_len`, a body that ends
    /// early or runs long is refused and leaves nothing behind.
    pub async fn put<S, E>(&self, body: S, expected_len: Option<u64>) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.put_tapped(body, expected_len, ())
            .await
            .map(|(i, ())| i)
    }

    /// [`FsBlobs::put`], also feeding every byte to `tap` (the checksums a
    /// client asked for) on the hashing thread, and handing it back.
    pub async fn put_tapped<S, E, T>(
        &self,
        mut body: S,
        expected_len: Option<u64>,
        tap: T,
    ) -> Result<(BlobInfo, T), BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
        T: Tap,
    {
        let id = new_id();
        // `None` is the commit mark: a channel closed without it aborts the blob.
        let (tx, rx) = mpsc::channel::<Option<Batch>>(PIPE_DEPTH);
        // Each batch goes to both threads; it is shared, not copied, so its
        // memory is held until the slower of the two is done with it.
        let (htx, hrx) = mpsc::channel::<Batch>(PIPE_DEPTH);
        let root = self.root.clone();
        let (data, sum) = (self.data_path(&id), self.sum_path(&id));
        let id2 = id.clone();
        let writer = tokio::task::spawn_blocking(move || {
            write_blob(&root, &id2, &data, &sum, expected_len, rx)
        });
        let hasher = tokio::task::spawn_blocking(move || hash_blob(hrx, tap));
        let mut received: u64 = 0;
        let mut failure = None;
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0usize;
        loop {
            let chunk = body.next().await;
            let end = chunk.is_none();
            match chunk {
                Some(Ok(b)) => {
                    received += b.len() as u64;
                    if expected_len.is_some_and(|n| received > n) {
                        failure = Some(BlobError::TooLong);
                        break;
                    }
                    pending_len += b.len();
                    pending.push(b);
                }
                Some(Err(e)) => {
                    failure = Some(BlobError::Incomplete(e.to_string()));
                    break;
                }
                None => {}
            }
            if !pending.is_empty() && (end || pending_len >= BATCH) {
                let batch: Batch = std::sync::Arc::new(std::mem::take(&mut pending));
                pending_len = 0;
                if htx.send(batch.clone()).await.is_err() || tx.send(Some(batch)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            if end {
                break;
            }
        }
        drop(htx);
        if failure.is_none()
            && let Some(n) = expected_len
            && received < n
        {
            failure = Some(BlobError::Incomplete(format!("{received} of {n} bytes")));
        }
        if let Some(f) = failure {
            drop(tx);
            // Let the writer see the abort and remove its temporary file.
            let _ = writer.await;
            let _ = hasher.await;
            let _ = std::fs::remove_file(self.root.join("tmp").join(&id));
            return Err(f);
        }
        let _ = tx.send(None).await;
        drop(tx);
        let joined =
            |e: tokio::task::JoinError| BlobError::Io(std::io::Error::other(e.to_string()));
        let written = writer.await.map_err(joined).and_then(|r| r);
        let hashed = hasher.await.map_err(joined);
        match (written, hashed) {
            (Ok(size), Ok((md5, tap))) if size == received => Ok((BlobInfo { id, size, md5 }, tap)),
            (Err(e), _) => Err(e),
            // The hasher died, and the sender stopped feeding both threads:
            // what the writer committed is not the body.
            (Ok(_), Err(e)) => {
                self.delete(&id).await;
                Err(e)
            }
            (Ok(size), Ok(_)) => {
                self.delete(&id).await;
                Err(BlobError::Incomplete(format!("{size} of {received} bytes")))
            }
        }
    }

    /// Reads `[start, end)` of a blob, verifying every block it touches.
    pub fn read(
        &self,
        id: &str,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + Sync + 'static + use<> {
        let (tx, rx) = mpsc::channel::<Result<Bytes, BlobError>>(4);
        let data = self.data_path(id);
        let sum = self.sum_path(id);
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = read_blob(&data, &sum, start, end, &tx) {
                tracing::error!(blob = %id, error = %e, "blob read failed");
                let _ = tx.blocking_send(Err(e));
            }
        });
        tokio_stream(rx)
    }

    /// Checks a whole blob against its block checksums.
    pub async fn verify(&self, id: &str, size: u64) -> Result<(), BlobError> {
        let mut s = Box::pin(self.read(id, 0, size));
        while let Some(r) = s.next().await {
            r?;
        }
        Ok(())
    }

    pub async fn delete(&self, id: &str) {
        let _ = tokio::fs::remove_file(self.data_path(id)).await;
        let _ = tokio::fs::remove_file(self.sum_path(id)).await;
    }

    /// Removes every blob not in `live` and every leftover temporary file.
    /// Run at start-up, before serving, so nothing can be mid-write.
    pub fn collect_garbage(&self, live: &HashSet<String>) -> std::io::Result<usize> {
        let mut removed = 0;
        for e in std::fs::read_dir(self.root.join("tmp"))? {
            std::fs::remove_file(e?.path())?;
            removed += 1;
        }
        for shard in std::fs::read_dir(self.root.join("blobs"))? {
            let shard = shard?.path();
            for e in std::fs::read_dir(&shard)? {
                let p = e?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let id = name.strip_suffix(".sum").unwrap_or(name);
                if !live.contains(id) {
                    std::fs::remove_file(&p)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn tokio_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + Sync + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Hashes for the ETag and for `tap`, apart from the writer: MD5 costs about
/// as much CPU as copying the bytes into the page cache, so the two run on
/// separate threads instead of one after the other.
fn hash_blob<T: Tap>(mut rx: mpsc::Receiver<Batch>, mut tap: T) -> ([u8; 16], T) {
    let mut md5 = Md5Hasher::new();
    while let Some(batch) = rx.blocking_recv() {
        for chunk in batch.iter() {
            md5.update(chunk);
            tap.update(chunk);
        }
    }
    (md5.finish(), tap)
}

/// MD5 for ETags. OpenSSL's assembly does it in about 18 % less CPU than
/// the portable `md-5` crate on this class of machine, and MD5 is the
/// largest cost of a PUT; `md-5` stays as the fallback for a libcrypto
/// that refuses MD5 (a FIPS-only configuration).
pub(crate) enum Md5Hasher {
    OpenSsl(openssl::hash::Hasher),
    Portable(Md5),
}

impl Md5Hasher {
    pub(crate) fn new() -> Self {
        match openssl::hash::Hasher::new(openssl::hash::MessageDigest::md5()) {
            Ok(h) => Md5Hasher::OpenSsl(h),
            Err(_) => Md5Hasher::Portable(Md5::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Md5Hasher::OpenSsl(h) => {
                if h.update(data).is_err() {
                    // Only allocation failures end here; never seen, but an
                    // ETag must not silently skip bytes.
                    panic!("OpenSSL MD5 update failed");
                }
            }
            Md5Hasher::Portable(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> [u8; 16] {
        match self {
            Md5Hasher::OpenSsl(mut h) => {
                let d = h.finish().expect("OpenSSL MD5 finish");
                d.as_ref().try_into().expect("MD5 is 16 bytes")
            }
            Md5Hasher::Portable(h) => h.finalize().into(),
        }
    }
}

/// Writes every byte of `batch`, in one system call when the kernel takes
/// it all.
fn write_batch(f: &mut std::fs::File, batch: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        batch.iter().map(|b| std::io::IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match f.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Keeps a growing file's dirty pages moving to disk while it is written.
/// Left alone, the kernel would hold a whole object in the page cache
/// (write-back starts at 10 % of RAM) and the closing fsync would then
/// write all of it while the client waits: the network transfer and the
/// disk write would run one after the other. A thread that calls
/// `fdatasync` every [`FLUSH_EVERY`] bytes (every [`TAIL_FLUSH_EVERY`]
/// near the end of a body of known length, see [`flush_due`]) overlaps
/// them, and the closing fsync finds little left. (`sync_file_range`
/// would start write-back without waiting, but has no safe wrapper;
/// waiting on its own thread costs nothing.)
struct Flusher<'scope> {
    ask: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::ScopedJoinHandle<'scope, std::io::Result<()>>,
}

impl<'scope> Flusher<'scope> {
    fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        f: &std::fs::File,
    ) -> std::io::Result<Self> {
        let f = f.try_clone()?;
        // One request waiting is enough: a flush covers everything written
        // before it starts.
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = scope.spawn(move || {
            while asked.recv().is_ok() {
                f.sync_data()?;
            }
            Ok(())
        });
        Ok(Flusher { ask, thread })
    }

    fn request(&self) {
        let _ = self.ask.try_send(());
    }

    fn finish(self) -> std::io::Result<()> {
        drop(self.ask);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("flusher panicked")))
    }
}

fn write_blob(
    root: &Path,
    id: &str,
    data: &Path,
    sum: &Path,
    expected_len: Option<u64>,
    mut rx: mpsc::Receiver<Option<Batch>>,
) -> Result<u64, BlobError> {
    let tmp = root.join("tmp").join(id);
    let tmp_sum = root.join("tmp").join(format!("{id}.sum"));
    let result = std::thread::scope(|scope| {
        let mut f = std::fs::File::create(&tmp)?;
        let mut sums: Vec<u8> = Vec::new();
        let mut size = 0u64;
        // CRC32C of the current block so far, and how many bytes it covers.
        let (mut crc, mut in_block) = (0u32, 0usize);
        let mut committed = false;
        // Started with the first flush: small objects never need one.
        let mut flusher: Option<Flusher<'_>> = None;
        let mut unflushed = 0u64;
        let mut failed = None;
        while let Some(msg) = rx.blocking_recv() {
            let Some(batch) = msg else {
                committed = true;
                break;
            };
            // Block boundaries only matter to the checksums; the batch goes
            // to the file as it came.
            for chunk in batch.iter() {
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let take = (BLOCK - in_block).min(rest.len());
                    crc = crc32c::crc32c_append(crc, &rest[..take]);
                    in_block += take;
                    rest = &rest[take..];
                    if in_block == BLOCK {
                        sums.extend_from_slice(&crc.to_le_bytes());
                        (crc, in_block) = (0, 0);
                    }
                }
            }
            if let Err(e) = write_batch(&mut f, &batch) {
                failed = Some(e);
                break;
            }
            let n: u64 = batch.iter().map(|b| b.len() as u64).sum();
            size += n;
            unflushed += n;
            if flush_due(unflushed, size, expected_len) {
                unflushed = 0;
                if flusher.is_none() {
                    match Flusher::start(scope, &f) {
                        Ok(fl) => flusher = Some(fl),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(fl) = &flusher {
                    fl.request();
                }
            }
        }
        let flushed = flusher.map_or(Ok(()), Flusher::finish);
        if let Some(e) = failed {
            return Err(e);
        }
        flushed?;
        if !committed {
            return Err(std::io::Error::other("upload aborted"));
        }
        if in_block > 0 {
            sums.extend_from_slice(&crc.to_le_bytes());
        }
        // The two files' fsyncs wait on the disk, not the CPU: side by side
        // they cost one wait instead of two.
        let tmp_sum = &tmp_sum;
        let sum_file = scope.spawn(move || {
            let mut s = std::fs::File::create(tmp_sum)?;
            s.write_all(&sums)?;
            s.sync_all()
        });
        let data_synced = f.sync_all();
        sum_file
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("checksum writer panicked")))?;
        data_synced?;
        Ok::<_, std::io::Error>(size)
    });
    let size = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&tmp_sum);
            return Err(e.into());
        }
    };
    // Only bodies the caller marked whole get here.
    let dir = data.parent().expect("blob path has a shard dir");
    std::fs::create_dir_all(dir)?;
    std::fs::rename(&tmp_sum, sum)?;
    std::fs::rename(&tmp, data)?;
    sync_dir(dir)?;
    Ok(size)
}

fn read_blob(
    data: &Path,
    sum: &Path,
    start: u64,
    end: u64,
    tx: &mpsc::Sender<Result<Bytes, BlobError>>,
) -> Result<(), BlobError> {
    let sums = std::fs::read(sum)?;
    let mut f = std::fs::File::open(data)?;
    let len = f.metadata()?.len();
    let expected_blocks = len.div_ceil(BLOCK as u64);
    if sums.len() as u64 != expected_blocks * 4 {
        return Err(BlobError::Corrupt(format!(
            "{} has {len} bytes but {} block checksums",
            data.display(),
            sums.len() / 4
        )));
    }
    if end > len || start > end {
        return Err(BlobError::Corrupt(format!(
            "{} has {len} bytes, range {start}..{end} requested",
            data.display()
        )));
    }
    let mut block_no = start / BLOCK as u64;
    f.seek(SeekFrom::Start(block_no * BLOCK as u64))?;
    let mut pos = block_no * BLOCK as u64;
    while pos < end {
        let this = (len - pos).min(BLOCK as u64) as usize;
        // Read into spare capacity: zeroing a MiB per block first costs
        // as much as checksumming it.
        let mut buf = Vec::with_capacity(this);
        (&mut f).take(this as u64).read_to_end(&mut buf)?;
        if buf.len() != this {
            return Err(BlobError::Corrupt(format!(
                "{} ends {} bytes into block {block_no}",
                data.display(),
                buf.len()
            )));
        }
        let want = u32::from_le_bytes(
            sums[block_no as usize * 4..block_no as usize * 4 + 4]
                .try_into()
                .expect("4 bytes"),
        );
        if crc32c::crc32c(&buf) != want {
            return Err(BlobError::Corrupt(format!(
                "{} block {block_no} fails its checksum",
                data.display()
            )));
        }
        let lo = start.saturating_sub(pos) as usize;
        let hi = ((end - pos) as usize).min(this);
        let mut bytes = Bytes::from(buf);
        bytes.truncate(hi);
        let piece = bytes.slice(lo..);
        if tx.blocking_send(Ok(piece)).is_err() {
            return Ok(()); // the client went away
        }
        pos += this as u64;
        block_no += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("walrus-blob-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn body(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
    }

    async fn collect(
        s: impl Stream<Item = Result<Bytes, BlobError>>,
    ) -> Result<Vec<u8>, BlobError> {
        let mut s = Box::pin(s);
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn round_trip_ranges_md5_and_corruption() {
        let d = dir("rt");
        let b = FsBlobs::open(&d).unwrap();
        let data: Vec<u8> = (0..(BLOCK * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let chunks: Vec<Vec<u8>> = data.chunks(70_001).map(|c| c.to_vec()).collect();
        let info = b.put(body(chunks), Some(data.len() as u64)).await.unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.md5, <[u8; 16]>::from(Md5::digest(&data)));
        assert_eq!(collect(b.read(&info.id, 0, info.size)).await.unwrap(), data);
        for (s, e) in [
            (0u64, 1u64),
            (BLOCK as u64 - 3, BLOCK as u64 + 5),
            (100, 100),
            (info.size - 1, info.size),
        ] {
            assert_eq!(
                collect(b.read(&info.id, s, e)).await.unwrap(),
                data[s as usize..e as usize].to_vec()
            );
        }
        // Flip one byte on disk: reads of that block fail, others still work.
        let p = b.data_path(&info.id);
        let mut raw = std::fs::read(&p).unwrap();
        raw[BLOCK + 10] ^= 1;
        std::fs::write(&p, raw).unwrap();
        assert!(matches!(
            collect(b.read(&info.id, 0, info.size)).await,
            Err(BlobError::Corrupt(_))
        ));
        assert!(collect(b.read(&info.id, 0, 10)).await.is_ok());
        assert!(b.verify(&info.id, info.size).await.is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Counts bytes and keeps a running CRC, to show the tap sees the whole
    /// body in order.
    struct Seen(u64, u32);

    impl Tap for Seen {
        fn update(&mut self, data: &[u8]) {
            self.0 += data.len() as u64;
            self.1 = crc32c::crc32c_append(self.1, data);
        }
    }

    #[tokio::test]
    async fn the_tap_sees_every_byte_and_the_blob_is_unchanged() {
        let d = dir("tap");
        let b = FsBlobs::open(&d).unwrap();
        let data: Vec<u8> = (0..(BLOCK * 3 + 7)).map(|i| (i % 253) as u8).collect();
        let chunks: Vec<Vec<u8>> = data.chunks(300_007).map(|c| c.to_vec()).collect();
        let (info, seen) = b
            .put_tapped(body(chunks), Some(data.len() as u64), Seen(0, 0))
            .await
            .unwrap();
        assert_eq!(seen.0, data.len() as u64);
        assert_eq!(seen.1, crc32c::crc32c(&data));
        assert_eq!(info.md5, <[u8; 16]>::from(Md5::digest(&data)));
        assert_eq!(collect(b.read(&info.id, 0, info.size)).await.unwrap(), data);
        // Four block checksums: three whole blocks and a 7-byte tail.
        assert_eq!(std::fs::read(b.sum_path(&info.id)).unwrap().len(), 16);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Large enough for several flushes while it is written, in pieces the
    /// size the network delivers; OpenSSL's MD5 agrees with `md-5`.
    #[tokio::test]
    async fn a_blob_flushed_while_written_is_whole() {
        let d = dir("flush");
        let b = FsBlobs::open(&d).unwrap();
        let len = FLUSH_EVERY as usize * 2 + BLOCK / 2 + 3;
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 241) as u8).collect();
        let chunks: Vec<Vec<u8>> = data.chunks(65_536 + 17).map(|c| c.to_vec()).collect();
        let info = b.put(body(chunks), Some(len as u64)).await.unwrap();
        assert_eq!(info.md5, <[u8; 16]>::from(Md5::digest(&data)));
        assert_eq!(collect(b.read(&info.id, 0, info.size)).await.unwrap(), data);
        let mut h = Md5Hasher::new();
        assert!(matches!(h, Md5Hasher::OpenSsl(_)));
        h.update(&data[..5]);
        h.update(&data[5..]);
        assert_eq!(h.finish(), info.md5);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_tail_of_a_known_length_body_is_flushed_in_smaller_steps() {
        const M: u64 = 1 << 20;
        // Far from the end, or length unknown: every 32 MiB.
        assert!(!flush_due(31 * M, 31 * M, Some(1024 * M)));
        assert!(flush_due(32 * M, 32 * M, Some(1024 * M)));
        assert!(!flush_due(8 * M, 900 * M, None));
        // Within the last 32 MiB: every 8 MiB.
        assert!(!flush_due(7 * M, 1000 * M, Some(1024 * M)));
        assert!(flush_due(8 * M, 1000 * M, Some(1024 * M)));
        assert!(flush_due(8 * M, 40 * M, Some(64 * M)));
        // A small object never needs the flusher.
        assert!(!flush_due(5 * M, 5 * M, Some(5 * M)));
        // At the very end the closing fsync does it.
        assert!(!flush_due(8 * M, 64 * M, Some(64 * M)));
    }

    #[tokio::test]
    async fn short_long_and_failed_bodies_leave_nothing() {
        let d = dir("short");
        let b = FsBlobs::open(&d).unwrap();
        assert!(matches!(
            b.put(body(vec![vec![1; 10]]), Some(11)).await,
            Err(BlobError::Incomplete(_))
        ));
        assert!(matches!(
            b.put(body(vec![vec![1; 12]]), Some(11)).await,
            Err(BlobError::TooLong)
        ));
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("reset")),
        ]);
        assert!(b.put(failing, None).await.is_err());
        assert_eq!(std::fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(d.join("blobs")).unwrap().count(), 0);

        // Garbage collection keeps live blobs and drops the rest.
        let keep = b.put(body(vec![vec![1; 5]]), None).await.unwrap();
        let drop_ = b.put(body(vec![vec![2; 5]]), None).await.unwrap();
        let empty = b.put(body(vec![]), Some(0)).await.unwrap();
        std::fs::write(d.join("tmp").join("leftover"), b"x").unwrap();
        let live: HashSet<String> = [keep.id.clone(), empty.id.clone()].into_iter().collect();
        assert_eq!(b.collect_garbage(&live).unwrap(), 3);
        assert!(b.data_path(&keep.id).exists());
        assert!(!b.data_path(&drop_.id).exists());
        assert_eq!(
            collect(b.read(&empty.id, 0, 0)).await.unwrap(),
            Vec::<u8>::new()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
