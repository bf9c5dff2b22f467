//! Sparse files: where the data is, copying only it, and writing streams
//! back with holes where they are zero.
//!
//! A volume is a sparse file mostly made of holes (a 10 GiB volume holding
//! 1 GiB). Everything that walks a volume or a snapshot's raw image does it
//! in [`SEGMENT_SIZE`] segments and asks the file system (`SEEK_DATA`)
//! whether a segment holds any data; a segment without is neither read,
//! hashed nor compressed. That is what makes a snapshot cost the data, not
//! the volume's size.
//!
//! The raw image digest (`raw_digest` in the API) follows the same
//! segmentation: SHA-256 over the SHA-256s of the segments, so a hole's
//! digest is a constant computed once.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use sha2::{Digest, Sha256};

pub use ironbark_sc_api::SEGMENT_SIZE;

/// Blocks of zeros this long are left as holes when writing streams out.
const ZERO_BLOCK: usize = 64 << 10;

/// Whether `[off, off+len)` of `file` holds any data (as opposed to being
/// a hole). File systems without `SEEK_DATA` report everything as data,
/// which is correct, only slower.
pub fn has_data(file: &File, off: u64, len: u64) -> io::Result<bool> {
    match lseek(file, off as i64, Whence::SeekData) {
        Ok(pos) => Ok((pos as u64) < off + len),
        // ENXIO: no data at or after `off`.
        Err(Errno::ENXIO) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// The segments of a file of `size` bytes: (offset, length).
pub fn segments(size: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..size.div_ceil(SEGMENT_SIZE)).map(move |i| {
        let off = i * SEGMENT_SIZE;
        (off, SEGMENT_SIZE.min(size - off))
    })
}

/// SHA-256 of `len` zero bytes, cached for the full segment length.
pub fn zero_digest(len: u64) -> [u8; 32] {
    static FULL: OnceLock<[u8; 32]> = OnceLock::new();
    let compute = |len: u64| {
        let zeros = vec![0u8; 1 << 20];
        let mut h = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            h.update(&zeros[..n]);
            left -= n as u64;
        }
        h.finalize().into()
    };
    if len == SEGMENT_SIZE {
        *FULL.get_or_init(|| compute(SEGMENT_SIZE))
    } else {
        compute(len)
    }
}

/// Accumulates segment digests into the raw image digest.
#[derive(Default)]
pub struct RawDigest(Sha256);

impl RawDigest {
    pub fn segment(&mut self, digest: &[u8; 32]) {
        self.0.update(digest);
    }
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

pub fn is_zero(buf: &[u8]) -> bool {
    // Word-wise is plenty fast here; the compiler vectorises it.
    let mut words = buf.chunks_exact(8);
    words
        .by_ref()
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && words.remainder().iter().all(|b| *b == 0)
}

/// Writes `buf` at `off`, leaving [`ZERO_BLOCK`]s of zeros as holes (the
/// file must be fresh, i.e. all holes, there).
pub fn write_sparse(file: &File, off: u64, buf: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let end = (at + ZERO_BLOCK).min(buf.len());
        let block = &buf[at..end];
        if !is_zero(block) {
            file.write_all_at(block, off + at as u64)?;
        }
        at = end;
    }
    Ok(())
}

/// Copies `src` to a fresh `dst` (created, truncated to `size` ≥ the
/// source's length), reading and writing only the source's data segments.
/// Returns the raw digest of the source.
pub fn copy_sparse(src: &Path, dst: &Path, size: u64) -> io::Result<String> {
    let src = File::open(src)?;
    let len = src.metadata()?.len();
    let out = File::create(dst)?;
    out.set_len(size.max(len))?;
    let mut digest = RawDigest::default();
    let mut buf = vec![0u8; SEGMENT_SIZE as usize];
    for (off, n) in segments(len) {
        if !has_data(&src, off, n)? {
            digest.segment(&zero_digest(n));
            continue;
        }
        let buf = &mut buf[..n as usize];
        src.read_exact_at(buf, off)?;
        digest.segment(&Sha256::digest(&*buf).into());
        write_sparse(&out, off, buf)?;
    }
    out.sync_all()?;
    Ok(digest.finish())
}

/// The raw digest of a file, reading only its data segments.
pub fn digest_file(path: &Path) -> io::Result<String> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut digest = RawDigest::default();
    let mut buf = vec![0u8; SEGMENT_SIZE as usize];
    for (off, n) in segments(len) {
        if !has_data(&f, off, n)? {
            digest.segment(&zero_digest(n));
            continue;
        }
        let buf = &mut buf[..n as usize];
        f.read_exact_at(buf, off)?;
        digest.segment(&Sha256::digest(&*buf).into());
    }
    Ok(digest.finish())
}

/// fsyncs a directory, so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("ironbark-sc-sparse-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn copies_only_data_and_keeps_holes() {
        let dir = tmp("copy");
        let src = dir.join("src");
        let f = File::create(&src).unwrap();
        f.set_len(3 * SEGMENT_SIZE + 5).unwrap();
        f.write_all_at(b"hello", SEGMENT_SIZE + 7).unwrap();
        f.write_all_at(b"end", 3 * SEGMENT_SIZE + 2).unwrap();
        assert!(!has_data(&f, 0, SEGMENT_SIZE).unwrap());
        assert!(has_data(&f, SEGMENT_SIZE, SEGMENT_SIZE).unwrap());
        drop(f);
        let dst = dir.join("dst");
        let d1 = copy_sparse(&src, &dst, 4 * SEGMENT_SIZE).unwrap();
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(out.len() as u64, 4 * SEGMENT_SIZE);
        assert_eq!(&out[(SEGMENT_SIZE + 7) as usize..][..5], b"hello");
        assert_eq!(&out[(3 * SEGMENT_SIZE + 2) as usize..][..3], b"end");
        // Same content, same digest; the bigger copy only adds a segment.
        assert_eq!(digest_file(&src).unwrap(), d1);
        let used = std::fs::metadata(&dst).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        });
        assert!(used.unwrap() < SEGMENT_SIZE, "the copy is not sparse");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 77]));
        let mut b = [0u8; 77];
        b[76] = 1;
        assert!(!is_zero(&b));
        b[76] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }
}
