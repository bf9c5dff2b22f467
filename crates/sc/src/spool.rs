//! Where a snapshot's compressed object waits between compression and
//! upload.
//!
//! A presigned PUT needs the object's length and checksum before its body,
//! so the whole object must be held somewhere until compression ends.
//! Writing it to a file costs more than compressing it: on the 2-core
//! machine the copy of 1 GiB into fresh page-cache pages took more CPU than
//! zstd on the same data (`perf`: 28 % of the compression step). So the
//! spool keeps the object in memory, in [`CHUNK`]-sized buffers that go to
//! the HTTP body as they are, up to a budget (a quarter of the memory
//! available when it starts), and only what exceeds the budget goes to a
//! temporary file, which is read back during the upload.
//!
//! Data flow: compressor → [`Spool`] (`Write`) → [`Spool::into_chunks`], a
//! channel of `Bytes` that [`crate::walrus::put_file`] sends as the body.
//! The file, if any, is a `.part` the backend removes afterwards (and
//! [`crate::backend::Backend::recover`] after a crash).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Size of the in-memory buffers and of the reads from the file.
pub const CHUNK: usize = 4 << 20;

/// See the module docs.
pub struct Spool {
    chunks: Vec<Bytes>,
    cur: Vec<u8>,
    in_memory: u64,
    budget: u64,
    path: PathBuf,
    file: Option<BufWriter<File>>,
    on_disk: u64,
}

impl Spool {
    /// A spool that keeps up to `budget` bytes in memory and writes the
    /// rest to a new file at `path`.
    pub fn new(path: &Path, budget: u64) -> Spool {
        Spool {
            chunks: Vec::new(),
            cur: Vec::new(),
            in_memory: 0,
            budget,
            path: path.to_path_buf(),
            file: None,
            on_disk: 0,
        }
    }

    /// A quarter of `MemAvailable` (256 MiB if it cannot be read): room for
    /// a few snapshots at once without pushing the page cache out.
    pub fn default_budget() -> u64 {
        let available = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemAvailable:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map(|kib| kib * 1024);
        available.map_or(256 << 20, |a| a / 4)
    }

    pub fn len(&self) -> u64 {
        self.in_memory + self.cur.len() as u64 + self.on_disk
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How much of it went to the file.
    pub fn on_disk(&self) -> u64 {
        self.on_disk
    }

    /// Ends writing: the memory part as it is, the file flushed (not
    /// fsynced: it lives only until the upload).
    pub fn finish(mut self) -> io::Result<Spooled> {
        if !self.cur.is_empty() {
            self.in_memory += self.cur.len() as u64;
            self.chunks.push(Bytes::from(std::mem::take(&mut self.cur)));
        }
        let file = match self.file.take() {
            Some(w) => {
                w.into_inner().map_err(|e| e.into_error())?;
                Some(self.path.clone())
            }
            None => None,
        };
        Ok(Spooled {
            len: self.len(),
            chunks: self.chunks,
            file,
        })
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.in_memory + (self.cur.len() + buf.len()) as u64 > self.budget
        {
            if !self.cur.is_empty() {
                self.in_memory += self.cur.len() as u64;
                self.chunks.push(Bytes::from(std::mem::take(&mut self.cur)));
            }
            self.file = Some(BufWriter::with_capacity(CHUNK, File::create(&self.path)?));
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(buf)?;
            self.on_disk += buf.len() as u64;
            return Ok(buf.len());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            if self.cur.capacity() == 0 {
                self.cur = Vec::with_capacity(CHUNK);
            }
            let n = rest.len().min(CHUNK - self.cur.len());
            self.cur.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.cur.len() == CHUNK {
                self.in_memory += CHUNK as u64;
                self.chunks.push(Bytes::from(std::mem::take(&mut self.cur)));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// A finished spool: memory chunks, then the file's content.
pub struct Spooled {
    pub len: u64,
    chunks: Vec<Bytes>,
    file: Option<PathBuf>,
}

impl Spooled {
    /// The whole object in one buffer (tests, small objects).
    pub fn read_all(self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len as usize);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        if let Some(p) = &self.file {
            File::open(p)?.read_to_end(&mut out)?;
        }
        Ok(out)
    }

    /// The object in order, as chunks on a channel; a blocking thread
    /// reads the file part, so reading and sending overlap. `sent` gets the
    /// bytes handed over so far.
    pub fn into_chunks(
        self,
        sent: impl Fn(u64) + Send + 'static,
    ) -> tokio::sync::mpsc::Receiver<io::Result<Bytes>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let Spooled { chunks, file, .. } = self;
        // Ends with the object, or when the receiver is dropped (an error).
        tokio::task::spawn_blocking(move || {
            let mut done = 0u64;
            for c in chunks {
                let n = c.len() as u64;
                if tx.blocking_send(Ok(c)).is_err() {
                    return;
                }
                done += n;
                sent(done);
            }
            let Some(path) = file else { return };
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match crate::compress::read_full(&mut f, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return;
                }
                done += n as u64;
                sent(done);
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(s: Spooled) -> Vec<u8> {
        let mut rx = s.into_chunks(|_| {});
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn memory_then_file_in_order() {
        let dir = std::env::temp_dir().join(format!("ironbark-sc-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..(3 * CHUNK + 12345)).map(|i| (i % 251) as u8).collect();
        for budget in [0, 1000, CHUNK as u64 + 7, 10 * CHUNK as u64] {
            let path = dir.join(format!("spool-{budget}"));
            let mut s = Spool::new(&path, budget);
            for piece in data.chunks(1_000_003) {
                s.write_all(piece).unwrap();
            }
            assert_eq!(s.len(), data.len() as u64);
            let on_disk = s.on_disk();
            assert_eq!(on_disk > 0, budget < data.len() as u64, "budget {budget}");
            assert!(data.len() as u64 - on_disk <= budget);
            let spooled = s.finish().unwrap();
            assert_eq!(path.exists(), on_disk > 0);
            assert!(collect(spooled).await == data, "budget {budget}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
