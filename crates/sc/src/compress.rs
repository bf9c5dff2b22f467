//! A snapshot's compressed copy: made from the raw image segment by
//! segment, and turned back into a sparse raw file.
//!
//! Both formats allow a stream of independent pieces (gzip members, zstd
//! frames) whose concatenation decompresses to the concatenation of their
//! contents; standard `gunzip` and `zstd -d` read the result. That gives
//! two things for free:
//!
//! - holes cost nothing: a segment without data (see [`crate::sparse`]) is
//!   written as a piece compressed once per process and reused, so the 9 GiB
//!   of holes of a 10 GiB volume are neither read nor compressed;
//! - parallelism: every gzip segment is its own member, so [`Codec::threads`]
//!   workers each read, hash and compress whole segments and the writer puts
//!   them back in order. zstd is multi-threaded itself: each run of data
//!   segments is piped through one `zstd -T<n>` process (the `zstd` binary,
//!   not a C library build), holes in between become reused frames, and a
//!   thread of ours hashes each segment while zstd compresses it.
//!
//! # Data flow and hashes
//!
//! raw image → (per data segment: SHA-256 for the raw digest, compression)
//! → writer (in order; SHA-256 and CRC-32 of the object) → the output the
//! caller gives, for a snapshot a [`crate::multipart::PartWriter`] that
//! hands each multipart part to the uploader as soon as it is full, so
//! Walrus receives the object while it is being compressed. Nothing is
//! read twice. The SHA-256 is the snapshot's checksum in the API (the
//! CLC keeps it, a restore checks the download against it); Walrus checks
//! each part against its CRC-32 (`x-amz-checksum-crc32`) and the object
//! against the whole CRC-32, which it computes at a tenth of a SHA-256's
//! cost on the same cores while it also computes the MD5s for the ETags.
//! No MD5 is computed here.
//!
//! Both give up on data that does not compress: a segment whose samples
//! deflate to more than [`STORE_ABOVE`] of their size is written stored —
//! stored deflate blocks for gzip, because deflating random or
//! already-compressed data costs ten times the CPU for nothing; a zstd
//! frame of raw blocks, written here, which is what `zstd` itself would
//! emit for such data, without piping it to a process and back. Both stay
//! standard streams.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use ironbark_sc_api::Compression;
use sha2::{Digest, Sha256};

use crate::sparse::{self, RawDigest, SEGMENT_SIZE};

/// gzip level for data: deflate's higher levels cost several times the CPU
/// for a few percent on the kind of data volumes hold.
const GZIP_LEVEL: u32 = 1;
const ZSTD_LEVEL: &str = "-3";
/// A gzip segment whose samples shrink by less than this is stored.
const STORE_ABOVE: f64 = 0.97;
/// Samples per segment for that decision, and their length.
const SAMPLES: usize = 4;
const SAMPLE_LEN: usize = 64 << 10;
/// A stored 16 MiB segment's member fits without growing.
const MEMBER_CAPACITY: usize = SEGMENT_SIZE as usize + (SEGMENT_SIZE as usize >> 10) + 1024;
/// Pipe buffer to and from zstd.
const PIPE_SIZE: i32 = 1 << 20;

/// What compression produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    pub size: u64,
    /// SHA-256 of the compressed object: what the snapshot is known by.
    pub sha256: [u8; 32],
    /// CRC-32 of the object: what Walrus verifies the upload with.
    pub crc32: u32,
    pub raw_digest: String,
}

/// Tools and parallelism.
#[derive(Clone, Debug)]
pub struct Codec {
    pub zstd_binary: PathBuf,
    pub threads: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            zstd_binary: "zstd".into(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// A writer that hashes what passes through.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            crc: crc32fast::Hasher::new(),
            n: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One gzip segment as a worker hands it to the writer: the member and the
/// SHA-256 of its raw bytes, or `None` for a hole.
type Piece = Option<(Vec<u8>, [u8; 32])>;

impl Codec {
    /// Compresses the raw image `raw` into `out`, which it gives back
    /// (unflushed) with what it wrote; `progress` gets the fraction of the
    /// image done.
    pub fn compress<W: Write + Send + 'static>(
        &self,
        raw: &Path,
        out: W,
        kind: Compression,
        progress: &(dyn Fn(f64) + Sync),
    ) -> io::Result<(Packed, W)> {
        let src = File::open(raw)?;
        let len = src.metadata()?.len();
        let w = Hashing::new(out);
        let (w, digest) = match kind {
            Compression::Gzip => self.gzip(&src, len, w, progress)?,
            Compression::Zstd => self.zstd(&src, len, w, progress)?,
        };
        let Hashing { inner, sha, crc, n } = w;
        let packed = Packed {
            size: n,
            sha256: sha.finalize().into(),
            crc32: crc.finalize(),
            raw_digest: digest.finish(),
        };
        Ok((packed, inner))
    }

    fn gzip<W: Write>(
        &self,
        src: &File,
        len: u64,
        mut w: Hashing<W>,
        progress: &(dyn Fn(f64) + Sync),
    ) -> io::Result<(Hashing<W>, RawDigest)> {
        let segs: Vec<(u64, u64)> = sparse::segments(len).collect();
        let next = AtomicUsize::new(0);
        // Member buffers the writer is done with, for the workers to reuse.
        let spare: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        let workers = self.threads.max(1);
        let mut digest = RawDigest::default();
        std::thread::scope(|s| {
            // Bounded, so workers stop reading ahead while the writer is
            // behind: memory stays at a few segments per worker.
            let (tx, rx) = mpsc::sync_channel::<(usize, io::Result<Piece>)>(workers);
            for _ in 0..workers {
                let (tx, next, segs, spare) = (tx.clone(), &next, &segs, &spare);
                s.spawn(move || {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(off, n)) = segs.get(i) else { break };
                        let out = spare.lock().ok().and_then(|mut v| v.pop());
                        let out = out.unwrap_or_else(|| Vec::with_capacity(MEMBER_CAPACITY));
                        let piece = gzip_segment(src, off, n, &mut buf, out);
                        let failed = piece.is_err();
                        if tx.send((i, piece)).is_err() || failed {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            // Segments come back in any order; they are written in order.
            let mut waiting: BTreeMap<usize, Piece> = BTreeMap::new();
            let mut at = 0;
            for (i, piece) in rx.iter() {
                waiting.insert(i, piece?);
                while let Some(piece) = waiting.remove(&at) {
                    let (off, n) = segs[at];
                    match piece {
                        Some((mut z, d)) => {
                            w.write_all(&z)?;
                            digest.segment(&d);
                            z.clear();
                            if let Ok(mut v) = spare.lock() {
                                v.push(z);
                            }
                        }
                        None => {
                            w.write_all(&zero_piece(Compression::Gzip, n, &self.zstd_binary)?)?;
                            digest.segment(&sparse::zero_digest(n));
                        }
                    }
                    progress((off + n) as f64 / len.max(1) as f64);
                    at += 1;
                }
            }
            if at != segs.len() {
                return Err(io::Error::other("a compression worker stopped early"));
            }
            Ok(())
        })?;
        Ok((w, digest))
    }

    fn zstd<W: Write + Send + 'static>(
        &self,
        src: &File,
        len: u64,
        w: Hashing<W>,
        progress: &(dyn Fn(f64) + Sync),
    ) -> io::Result<(Hashing<W>, RawDigest)> {
        let mut digest = RawDigest::default();
        // The output belongs to the running zstd's drain thread while a run
        // of data segments is being compressed.
        let mut idle: Option<Hashing<W>> = Some(w);
        let mut run: Option<ZstdRun<W>> = None;
        let mut buf = vec![0u8; SEGMENT_SIZE as usize];
        for (off, n) in sparse::segments(len) {
            if !sparse::has_data(src, off, n)? {
                if let Some(r) = run.take() {
                    idle = Some(r.finish()?);
                }
                let w = idle.as_mut().expect("output is idle");
                w.write_all(&zero_piece(Compression::Zstd, n, &self.zstd_binary)?)?;
                digest.segment(&sparse::zero_digest(n));
                progress((off + n) as f64 / len.max(1) as f64);
                continue;
            }
            let buf = &mut buf[..n as usize];
            src.read_exact_at(buf, off)?;
            let data = &*buf;
            if !compresses(data)? {
                // What zstd would do with it, without the two trips
                // through a pipe: a frame of raw blocks, written here.
                if let Some(r) = run.take() {
                    idle = Some(r.finish()?);
                }
                let w = idle.as_mut().expect("output is idle");
                let d = std::thread::scope(|s| {
                    let h = s.spawn(move || -> [u8; 32] { Sha256::digest(data).into() });
                    write_zstd_raw_frame(w, data)?;
                    h.join()
                        .map_err(|_| io::Error::other("a hashing thread panicked"))
                })?;
                digest.segment(&d);
                progress((off + n) as f64 / len.max(1) as f64);
                continue;
            }
            let r = match run.as_mut() {
                Some(r) => r,
                None => {
                    let w = idle.take().expect("output is idle between runs");
                    run.insert(ZstdRun::start(&self.zstd_binary, self.threads, w)?)
                }
            };
            // Hash while zstd takes the same bytes: both only read them.
            let d = std::thread::scope(|s| {
                let h = s.spawn(move || -> [u8; 32] { Sha256::digest(data).into() });
                r.stdin.write_all(data)?;
                h.join()
                    .map_err(|_| io::Error::other("a hashing thread panicked"))
            })?;
            digest.segment(&d);
            progress((off + n) as f64 / len.max(1) as f64);
        }
        if let Some(r) = run.take() {
            idle = Some(r.finish()?);
        }
        Ok((idle.expect("output is idle at the end"), digest))
    }

    /// Decompresses `packed` into a new sparse file `out` of at least
    /// `size` bytes; returns the raw digest of the decompressed stream and
    /// its length. A stream longer than `size` is refused.
    pub fn decompress(
        &self,
        packed: &Path,
        kind: Compression,
        out: &Path,
        size: u64,
    ) -> io::Result<(String, u64)> {
        let mut child = None;
        let mut reader: Box<dyn Read> = match kind {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(
                File::open(packed)?,
            ))),
            Compression::Zstd => {
                let mut c = Command::new(&self.zstd_binary)
                    .args(["-q", "-d", "-c"])
                    .arg(packed)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                let stdout = c.stdout.take().expect("piped");
                child = Some(c);
                Box::new(stdout)
            }
        };
        let file = File::create(out)?;
        let mut digest = RawDigest::default();
        let mut buf = vec![0u8; SEGMENT_SIZE as usize];
        let mut off = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            if off + n as u64 > size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the snapshot is larger than the volume ({size} bytes)"),
                ));
            }
            let seg = &buf[..n];
            if sparse::is_zero(seg) {
                digest.segment(&sparse::zero_digest(n as u64));
            } else {
                digest.segment(&Sha256::digest(seg).into());
                sparse::write_sparse(&file, off, seg)?;
            }
            off += n as u64;
        }
        drop(reader);
        if let Some(c) = child {
            let out = c.wait_with_output()?;
            if !out.status.success() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "zstd -d failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ));
            }
        }
        file.set_len(size)?;
        file.sync_all()?;
        Ok((digest.finish(), off))
    }
}

/// Reads until `buf` is full or the stream ends.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads, hashes and gzips one segment (`None`: a hole).
/// `buf` is the worker's read buffer and `out` an emptied member buffer,
/// both reused: a fresh 16 MiB buffer per segment costs more in page
/// faults than the copy into it.
fn gzip_segment(
    src: &File,
    off: u64,
    n: u64,
    buf: &mut Vec<u8>,
    out: Vec<u8>,
) -> io::Result<Piece> {
    if !sparse::has_data(src, off, n)? {
        return Ok(None);
    }
    buf.resize(n as usize, 0);
    src.read_exact_at(buf, off)?;
    let level = if compresses(buf)? { GZIP_LEVEL } else { 0 };
    let mut z = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
    z.write_all(buf)?;
    Ok(Some((z.finish()?, Sha256::digest(&*buf).into())))
}

/// Whether deflate gains anything on `data`, judged on a few samples
/// spread over it.
fn compresses(data: &[u8]) -> io::Result<bool> {
    let (mut raw, mut packed) = (0usize, 0usize);
    let step = (data.len() / SAMPLES).max(1);
    for i in 0..SAMPLES {
        let at = i * step;
        let Some(sample) = data.get(at..(at + SAMPLE_LEN).min(data.len())) else {
            break;
        };
        if sample.is_empty() {
            break;
        }
        let mut z = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(sample.len() + 64),
            flate2::Compression::new(GZIP_LEVEL),
        );
        z.write_all(sample)?;
        raw += sample.len();
        packed += z.finish()?.len();
    }
    Ok(raw == 0 || (packed as f64) < raw as f64 * STORE_ABOVE)
}

fn gzip_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::new(level),
    );
    z.write_all(data)?;
    z.finish()
}

/// Writes `data` as one zstd frame of raw (stored) blocks (RFC 8878): a
/// single-segment frame header with the content size, then blocks of at
/// most 128 KiB, each a 3-byte header (last-block bit, type 0 = raw, size)
/// and the bytes as they are.
fn write_zstd_raw_frame(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    const MAGIC: u32 = 0xFD2F_B528;
    const MAX_BLOCK: usize = 128 << 10;
    let mut header = MAGIC.to_le_bytes().to_vec();
    // Frame header descriptor: single segment (bit 5), and the content
    // size field's width (bits 6-7: 1 → 2 bytes, value - 256; 2 → 4 bytes;
    // 3 → 8 bytes). A single-segment frame has no window descriptor.
    let len = data.len() as u64;
    if (256..=65535 + 256).contains(&len) {
        header.push(0x60);
        header.extend_from_slice(&((len - 256) as u16).to_le_bytes());
    } else if len <= u64::from(u32::MAX) && len >= 256 {
        header.push(0xA0);
        header.extend_from_slice(&(len as u32).to_le_bytes());
    } else {
        header.push(0xE0);
        header.extend_from_slice(&len.to_le_bytes());
    }
    w.write_all(&header)?;
    let mut blocks = data.chunks(MAX_BLOCK).peekable();
    if blocks.peek().is_none() {
        // An empty frame still needs its (empty, last) block.
        return w.write_all(&[1, 0, 0]);
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let h = last | ((block.len() as u32) << 3);
        w.write_all(&h.to_le_bytes()[..3])?;
        w.write_all(block)?;
    }
    Ok(())
}

/// The compressed form of `len` zero bytes (cached for full segments).
fn zero_piece(kind: Compression, len: u64, zstd: &Path) -> io::Result<Vec<u8>> {
    static GZIP: OnceLock<Vec<u8>> = OnceLock::new();
    static ZSTD: OnceLock<Vec<u8>> = OnceLock::new();
    let make = |len: u64| -> io::Result<Vec<u8>> {
        let zeros = vec![0u8; len as usize];
        match kind {
            Compression::Gzip => gzip_member(&zeros, 9),
            Compression::Zstd => zstd_once(zstd, &zeros),
        }
    };
    let cell = match kind {
        Compression::Gzip => &GZIP,
        Compression::Zstd => &ZSTD,
    };
    if len != SEGMENT_SIZE {
        return make(len);
    }
    if let Some(v) = cell.get() {
        return Ok(v.clone());
    }
    let v = make(len)?;
    Ok(cell.get_or_init(|| v).clone())
}

fn zstd_once(zstd: &Path, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = Command::new(zstd)
        .args(["-q", "-c", "-19"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = c.stdin.take().expect("piped");
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output()?;
    feeder
        .join()
        .map_err(|_| io::Error::other("zstd feeder panicked"))??;
    if !out.status.success() {
        return Err(io::Error::other("zstd failed"));
    }
    Ok(out.stdout)
}

/// One `zstd` process compressing a run of data segments into the output.
struct ZstdRun<W> {
    child: Child,
    stdin: ChildStdin,
    drain: JoinHandle<io::Result<Hashing<W>>>,
}

impl<W: Write + Send + 'static> ZstdRun<W> {
    fn start(zstd: &Path, threads: usize, mut w: Hashing<W>) -> io::Result<ZstdRun<W>> {
        let mut child = Command::new(zstd)
            .args(["-q", "-c", ZSTD_LEVEL, &format!("-T{}", threads.max(1))])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("running {}: {e}", zstd.display())))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        // A 64 KiB pipe means a context switch per 64 KiB each way; a
        // larger one (best effort: the limit is a sysctl) saves most of the
        // system time of moving the data through zstd.
        for fd in [stdin.as_fd(), stdout.as_fd()] {
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        }
        let drain = std::thread::spawn(move || {
            let mut buf = vec![0u8; PIPE_SIZE as usize];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => w.write_all(&buf[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(w)
        });
        Ok(ZstdRun {
            child,
            stdin,
            drain,
        })
    }

    fn finish(self) -> io::Result<Hashing<W>> {
        let ZstdRun {
            mut child,
            stdin,
            drain,
        } = self;
        drop(stdin);
        let w = drain
            .join()
            .map_err(|_| io::Error::other("zstd drain thread panicked"))??;
        let status = child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!("zstd exited with {status}")));
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("ironbark-sc-compress-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn image(path: &Path) {
        let f = File::create(path).unwrap();
        f.set_len(5 * SEGMENT_SIZE + 4096).unwrap();
        let junk: Vec<u8> = (0..3u64 << 20)
            .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
            .collect();
        f.write_all_at(&junk, SEGMENT_SIZE - 1000).unwrap();
        f.write_all_at(b"tail", 5 * SEGMENT_SIZE + 10).unwrap();
    }

    fn round_trip(kind: Compression, tool: &str) {
        let dir = tmp(kind.extension());
        let raw = dir.join("raw");
        image(&raw);
        let codec = Codec::default();
        let (packed, bytes) = codec.compress(&raw, Vec::new(), kind, &|_| {}).unwrap();
        std::fs::write(dir.join("z"), &bytes).unwrap();
        assert_eq!(bytes.len() as u64, packed.size);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), packed.sha256);
        assert_eq!(packed.raw_digest, sparse::digest_file(&raw).unwrap());
        let (digest, len) = codec
            .decompress(&dir.join("z"), kind, &dir.join("back"), 6 * SEGMENT_SIZE)
            .unwrap();
        assert_eq!(digest, packed.raw_digest);
        assert_eq!(len, 5 * SEGMENT_SIZE + 4096);
        let a = std::fs::read(&raw).unwrap();
        let b = std::fs::read(dir.join("back")).unwrap();
        assert_eq!(&b[..a.len()], &a[..]);
        assert!(b[a.len()..].iter().all(|x| *x == 0));
        // The standard tool agrees.
        let out = Command::new(tool)
            .args(["-d", "-c"])
            .arg(dir.join("z"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout == a, "{tool} -d gives another image");
        // Too small a volume is refused.
        assert!(
            codec
                .decompress(&dir.join("z"), kind, &dir.join("small"), SEGMENT_SIZE)
                .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn incompressible_segments_are_stored_and_still_standard_gzip_and_zstd() {
        let dir = tmp("stored");
        let raw = dir.join("raw");
        let f = File::create(&raw).unwrap();
        f.set_len(3 * SEGMENT_SIZE).unwrap();
        let noise: Vec<u8> = (0..SEGMENT_SIZE as usize).map(|_| rand::random()).collect();
        f.write_all_at(&noise, SEGMENT_SIZE).unwrap();
        // Compressible text in the last segment: deflated as usual.
        let text = b"ironbark snapshot ".repeat(1 << 16);
        f.write_all_at(&text, 2 * SEGMENT_SIZE).unwrap();
        drop(f);
        assert!(!compresses(&noise).unwrap());
        assert!(compresses(&text).unwrap());
        let (packed, bytes) = Codec::default()
            .compress(&raw, Vec::new(), Compression::Gzip, &|_| {})
            .unwrap();
        std::fs::write(dir.join("z"), bytes).unwrap();
        // Stored blocks cost a few bytes per 64 KiB.
        let src = File::open(&raw).unwrap();
        let (z, _) = gzip_segment(
            &src,
            SEGMENT_SIZE,
            SEGMENT_SIZE,
            &mut Vec::new(),
            Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert!(
            z.len() as u64 <= SEGMENT_SIZE + SEGMENT_SIZE / 1000,
            "{}",
            z.len()
        );
        assert!(packed.size > SEGMENT_SIZE);
        let out = Command::new("gzip")
            .args(["-d", "-c"])
            .arg(dir.join("z"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout == std::fs::read(&raw).unwrap());
        // zstd: the noise as a raw frame, the text through zstd, the hole
        // as the reused frame; one standard stream, and the same digest.
        let (zp, bytes) = Codec::default()
            .compress(&raw, Vec::new(), Compression::Zstd, &|_| {})
            .unwrap();
        assert_eq!(zp.raw_digest, packed.raw_digest);
        assert!(zp.size > SEGMENT_SIZE && zp.size < SEGMENT_SIZE + SEGMENT_SIZE / 100);
        std::fs::write(dir.join("z"), bytes).unwrap();
        let out = Command::new("zstd")
            .args(["-q", "-d", "-c"])
            .arg(dir.join("z"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout == std::fs::read(&raw).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn raw_zstd_frames_are_standard_zstd() {
        let dir = tmp("rawzstd");
        for len in [
            0usize,
            1,
            255,
            256,
            65_791,
            65_792,
            131_072,
            131_073,
            5 << 20,
        ] {
            let data: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            let mut frame = Vec::new();
            write_zstd_raw_frame(&mut frame, &data).unwrap();
            // Two frames back to back, as in a snapshot.
            let mut two = frame.clone();
            two.extend_from_slice(&frame);
            std::fs::write(dir.join("f"), &two).unwrap();
            let out = Command::new("zstd")
                .args(["-q", "-d", "-c"])
                .arg(dir.join("f"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{len}: {:?}", out.stderr);
            assert!(out.stdout == [&data[..], &data[..]].concat(), "{len}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gzip_round_trip_is_standard_gzip() {
        round_trip(Compression::Gzip, "gzip");
    }

    #[test]
    fn zstd_round_trip_is_standard_zstd() {
        round_trip(Compression::Zstd, "zstd");
    }
}
