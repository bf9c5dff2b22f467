//! A minimal writer (and, for tests and diagnostics, reader) for the cpio
//! "newc" format (`070701`), the only archive format the Linux kernel accepts
//! for an initramfs.
//!
//! Writing the archive ourselves, rather than running `cpio` over a staging
//! directory, lets the builder put device nodes (`/dev/console`) and
//! root-owned files into the image without root privileges and without
//! touching the host file system, and makes the output reproducible (every
//! mtime is 0, inode numbers are assigned in order).
//!
//! Layout of one entry: a 110-byte ASCII header (`070701` followed by
//! thirteen 8-digit hex fields), the NUL-terminated name, padding to a 4-byte
//! boundary, the data, padding to a 4-byte boundary. The archive ends with an
//! entry named `TRAILER!!!`.

use std::io::{self, Write};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// The name of the entry that ends every archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File-type bits of `st_mode`, as the kernel's initramfs unpacker expects.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

/// Streams newc entries to `out`. Paths are written without a leading `/`,
/// as `cpio -H newc` does; the kernel accepts either.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        // Inode 0 is avoided: some extractors treat it as "no inode".
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory with the given permission bits (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file with the given permission bits and contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link; newc stores the target as the entry's data.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node, e.g. `dev/console` (5, 1).
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.raw_entry(TRAILER, 0, 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name == TRAILER || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {path:?}"),
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(name, ino, mode, nlink, rdev, data)
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: newc cannot hold files of 4 GiB or more"),
            )
        })?;
        let namesize = name.len() as u32 + 1; // counts the terminating NUL
        // Field order of the newc header. uid/gid are root; mtime is fixed
        // for reproducible images; devmajor/devminor (the device holding the
        // file) are irrelevant for an initramfs; `check` is only used by the
        // "070702" variant.
        let (uid, gid, mtime, dev_major, dev_minor, check) = (0, 0, 0, 0, 0, 0);
        let fields = [
            ino, mode, uid, gid, nlink, mtime, size, dev_major, dev_minor, rdev.0, rdev.1,
            namesize, check,
        ];
        let mut header = Vec::with_capacity(110 + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write_padded(&header)?;
        self.write_padded(data)
    }

    /// Writes `bytes` then zero-pads so the next item starts 4-byte aligned
    /// (the alignment is relative to the start of the archive).
    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

/// What kind of entry a parsed record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
    Other(u32),
}

/// One parsed archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: EntryKind,
}

/// Parses a whole (uncompressed) newc archive, checking magic, alignment and
/// the trailer. Used by the tests and handy to inspect a built image.
pub fn parse(buf: &[u8]) -> Result<Vec<Entry>, String> {
    let mut pos = 0usize;
    let mut out = Vec::new();
    loop {
        if !pos.is_multiple_of(4) {
            return Err(format!("entry at offset {pos} is not 4-byte aligned"));
        }
        let header = buf
            .get(pos..pos + 110)
            .ok_or_else(|| format!("truncated header at offset {pos} (no trailer?)"))?;
        if &header[..6] != MAGIC {
            return Err(format!("bad magic at offset {pos}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| format!("non-ASCII header at offset {pos}"))?;
            u32::from_str_radix(s, 16).map_err(|_| format!("bad hex field {s:?} at offset {pos}"))
        };
        let mode = field(1)?;
        let uid = field(2)?;
        let gid = field(3)?;
        let size = field(6)? as usize;
        let (rmaj, rmin) = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_start = pos + 110;
        let name_bytes = buf
            .get(name_start..name_start + namesize)
            .ok_or("truncated name")?;
        if namesize == 0 || name_bytes[namesize - 1] != 0 {
            return Err(format!("name at offset {pos} is not NUL-terminated"));
        }
        let name = String::from_utf8(name_bytes[..namesize - 1].to_vec())
            .map_err(|_| "non-UTF-8 name".to_string())?;
        let data_start = align4(name_start + namesize);
        let data = buf
            .get(data_start..data_start + size)
            .ok_or_else(|| format!("truncated data for {name}"))?;
        pos = align4(data_start + size);
        if name == TRAILER {
            if buf[pos.min(buf.len())..].iter().any(|&b| b != 0) {
                return Err("data after the trailer".into());
            }
            return Ok(out);
        }
        let kind = match mode & S_IFMT {
            S_IFDIR => EntryKind::Dir,
            S_IFREG => EntryKind::File(data.to_vec()),
            S_IFLNK => EntryKind::Symlink(
                String::from_utf8(data.to_vec()).map_err(|_| "non-UTF-8 link".to_string())?,
            ),
            S_IFCHR => EntryKind::CharDev {
                major: rmaj,
                minor: rmin,
            },
            other => EntryKind::Other(other),
        };
        out.push(Entry {
            name,
            mode,
            uid,
            gid,
            kind,
        });
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).unwrap();
        w.file("/etc/hello.txt", 0o644, b"hello, world\n").unwrap();
        w.file("etc/empty", 0o600, b"").unwrap();
        w.symlink("bin", "usr/bin").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        assert_eq!(buf.len() % 4, 0, "archive length is 4-byte aligned");
        let entries = parse(&buf).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["etc", "etc/hello.txt", "etc/empty", "bin", "dev/console"]
        );
        assert_eq!(entries[0].kind, EntryKind::Dir);
        assert_eq!(entries[0].mode, 0o040755);
        assert_eq!(entries[1].kind, EntryKind::File(b"hello, world\n".to_vec()));
        assert_eq!(entries[1].mode, 0o100644);
        assert_eq!(entries[2].kind, EntryKind::File(Vec::new()));
        assert_eq!(entries[3].kind, EntryKind::Symlink("usr/bin".into()));
        assert_eq!(entries[4].kind, EntryKind::CharDev { major: 5, minor: 1 });
        assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0));
    }

    #[test]
    fn header_layout_and_trailer() {
        let buf = sample();
        // First header: magic, ino 1, mode of a 0755 dir, and the name.
        assert_eq!(&buf[..6], MAGIC);
        assert_eq!(&buf[6..14], b"00000001");
        assert_eq!(&buf[14..22], b"000041ed");
        assert_eq!(&buf[110..114], b"etc\0");
        // 110 + 4 = 114 -> padded to 116 where the next header starts.
        assert_eq!(&buf[116..122], MAGIC);
        // The archive ends with the trailer entry (name + NUL, padded).
        let tail = String::from_utf8_lossy(&buf[buf.len() - 124..]);
        assert!(tail.contains("TRAILER!!!\0"), "{tail:?}");
        // Every header starts 4-byte aligned (parse() checks it) and the
        // trailer is found.
        assert_eq!(parse(&buf).unwrap().len(), 5);
    }

    #[test]
    fn every_name_length_pads_correctly() {
        // Names of length 1..=8 and data of length 0..=8 exercise every
        // padding remainder for both the name and the data.
        let mut w = CpioWriter::new(Vec::new());
        for n in 1..=8 {
            for d in 0..=8 {
                let name = format!("{}{}", "n".repeat(n), d);
                w.file(&name, 0o644, &vec![b'x'; d]).unwrap();
            }
        }
        let buf = w.finish().unwrap();
        let entries = parse(&buf).unwrap();
        assert_eq!(entries.len(), 72);
        for e in entries {
            let d: usize = e.name[e.name.len() - 1..].parse().unwrap();
            assert_eq!(e.kind, EntryKind::File(vec![b'x'; d]));
        }
    }

    #[test]
    fn rejects_bad_names_and_truncation() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
        let buf = sample();
        assert!(parse(&buf[..buf.len() - 130]).is_err());
        let mut bad = buf.clone();
        bad[0] = b'1';
        assert!(parse(&bad).is_err());
    }

    /// Cross-checks with an independent implementation when one is on the
    /// host (GNU cpio, or busybox cpio); silently passes otherwise.
    #[test]
    fn host_cpio_lists_the_archive() {
        use std::process::{Command, Stdio};
        let candidates: [&[&str]; 2] = [&["cpio", "-it"], &["busybox", "cpio", "-t"]];
        for argv in candidates {
            let child = Command::new(argv[0])
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else { continue };
            child.stdin.take().unwrap().write_all(&sample()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{argv:?} failed");
            let listing = String::from_utf8(out.stdout).unwrap();
            let names: Vec<_> = listing.lines().collect();
            assert_eq!(
                names,
                ["etc", "etc/hello.txt", "etc/empty", "bin", "dev/console"]
            );
            return;
        }
        eprintln!("no host cpio; relying on the built-in parser");
    }
}
