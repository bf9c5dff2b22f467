//! The smallest HTTP/1.1 client that can move an S3 object through a
//! presigned URL, with every byte of the body passing through the caller's
//! own (large) buffer.
//!
//! Why not an HTTP library: the point of `ironbark-s3xfer` is to control the
//! size of every read and write on the client side (1 MiB, like `dd bs=1M`),
//! and to cost as little CPU as possible on a machine whose cores the server
//! shares. A request here is a head written in one piece, then the body
//! streamed from the caller; a response is a head read through a small
//! `BufReader` (so the status line and headers need no byte-at-a-time
//! reads), then a body read through [`Body`], which hands out the bytes the
//! `BufReader` already holds and after that reads the socket straight into
//! the caller's buffer (`BufReader` bypasses its own buffer when it is empty
//! and the caller's is larger).
//!
//! Bodies are framed by `Content-Length`, by chunked transfer coding, or by
//! the server closing the connection, whichever the response uses.

use std::io::{self, BufRead, Read};

pub use crate::head::Head;
use crate::head::bad;

/// Where a presigned URL points: the address to connect to, the `Host`
/// header the signature covers, and the request target (path and query,
/// sent exactly as given, since the signature is over its encoding).
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port` for `TcpStream::connect`.
    pub addr: String,
    /// The authority as written in the URL (a presigner signs it as is).
    pub host: String,
    /// `/bucket/key?X-Amz-…`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> io::Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad(format!(
                "not an http:// URL (no TLS support): {}",
                url.chars().take(80).collect::<String>()
            ))
        })?;
        let (host, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if host.is_empty() {
            return Err(bad(format!("URL has no host: {url}")));
        }
        // An IPv6 literal's colons are inside the brackets; a port is after.
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(h, _)| !h.ends_with('['))
            && !host.ends_with(']');
        let addr = if has_port {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Target {
            addr,
            host: host.to_string(),
            path,
        })
    }
}

/// The request head; the body, if any, follows from the caller.
pub fn request_head(method: &str, target: &Target, content_length: Option<u64>) -> Vec<u8> {
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ironbark-s3xfer\r\n",
        target.path, target.host
    );
    if let Some(n) = content_length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Longest head accepted: an S3 error or object head is well under this.
const MAX_HEAD: usize = 64 * 1024;

/// Reads one response head, skipping interim (1xx) responses.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Head> {
    loop {
        let mut text = Vec::new();
        loop {
            let n = r.read_until(b'\n', &mut text)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response head ended",
                ));
            }
            if text.ends_with(b"\r\n\r\n") || text == b"\r\n" {
                break;
            }
            if text.len() > MAX_HEAD {
                return Err(bad("response head too long"));
            }
        }
        if text == b"\r\n" {
            // Some servers put a stray CRLF after a body; it is no head.
            continue;
        }
        text.truncate(text.len() - 4);
        let text = std::str::from_utf8(&text).map_err(|_| bad("response head is not UTF-8"))?;
        let head = Head::parse(text)?;
        if !(100..200).contains(&head.status) {
            return Ok(head);
        }
    }
}

enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; 0 before the next size line.
    Chunked {
        left: u64,
        done: bool,
    },
    UntilClose,
}

/// A response body as a `Read`, ending where the framing says.
pub struct Body<'a, R: BufRead> {
    inner: &'a mut R,
    framing: Framing,
}

impl<'a, R: BufRead> Body<'a, R> {
    pub fn new(inner: &'a mut R, head: &Head, method: &str) -> Self {
        let framing = if !head.has_body(method) {
            Framing::Length(0)
        } else if head.chunked {
            Framing::Chunked {
                left: 0,
                done: false,
            }
        } else if let Some(n) = head.content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        Body { inner, framing }
    }

    /// Reads one CRLF-terminated line (without it).
    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.inner.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside chunk framing",
            ));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| bad("chunk framing is not UTF-8"))
    }

    /// Reads into `buf` until it is full or the body ends; returns the
    /// count. Callers use this to write whole 1 MiB pieces.
    pub fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read(&mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }
}

fn short_body() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed before the body ended",
    )
}

impl<R: BufRead> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(short_body());
                }
                self.framing = Framing::Length(left - n as u64);
                Ok(n)
            }
            Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Chunked { left: 0, .. } => {
                let line = self.line()?;
                let size_text = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_text, 16)
                    .map_err(|_| bad(format!("bad chunk size: {size_text:?}")))?;
                if size == 0 {
                    // Trailers up to the empty line that ends the message.
                    while !self.line()?.is_empty() {}
                    self.framing = Framing::Chunked {
                        left: 0,
                        done: true,
                    };
                    return Ok(0);
                }
                self.framing = Framing::Chunked {
                    left: size,
                    done: false,
                };
                self.read(buf)
            }
            Framing::Chunked { left, .. } => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(short_body());
                }
                let left = left - n as u64;
                if left == 0 && !self.line()?.is_empty() {
                    return Err(bad("chunk data longer than its size"));
                }
                self.framing = Framing::Chunked { left, done: false };
                Ok(n)
            }
            Framing::UntilClose => self.inner.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn urls_split_into_address_host_and_target() {
        let t = Target::parse("http://127.0.0.1:8773/b/k?X-Amz-Signature=ab%2F").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8773");
        assert_eq!(t.host, "127.0.0.1:8773");
        assert_eq!(t.path, "/b/k?X-Amz-Signature=ab%2F");
        let t = Target::parse("http://s3.local?x=1").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("s3.local:80", "/?x=1"));
        let t = Target::parse("http://[::1]:9/").unwrap();
        assert_eq!(t.addr, "[::1]:9");
        let t = Target::parse("http://[::1]/").unwrap();
        assert_eq!(t.addr, "[::1]:80");
        assert!(Target::parse("https://h/").is_err());
        assert!(Target::parse("http:///x").is_err());
    }

    #[test]
    fn request_head_carries_host_and_length() {
        let t = Target::parse("http://h:1/b/k?s=1").unwrap();
        assert_eq!(
            request_head("PUT", &t, Some(5)),
            b"PUT /b/k?s=1 HTTP/1.1\r\nHost: h:1\r\nUser-Agent: ironbark-s3xfer\r\nContent-Length: 5\r\n\r\n"
        );
        assert!(
            !String::from_utf8(request_head("GET", &t, None))
                .unwrap()
                .contains("Length")
        );
    }

    #[test]
    fn heads_parse() {
        let h = Head::parse(
            "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\ncontent-length: 12\r\nConnection: keep-alive",
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: Some(12),
                chunked: false,
                keep_alive: true,
                etag: Some("\"abc\"".into()),
            }
        );
        let h = Head::parse("HTTP/1.0 403 Forbidden\r\nTransfer-Encoding: chunked").unwrap();
        assert!(h.chunked && !h.keep_alive && h.status == 403);
        let h = Head::parse("HTTP/1.1 200 OK\r\nConnection: close").unwrap();
        assert!(!h.keep_alive);
        assert!(Head::parse("SSH-2.0 hi").is_err());
        assert!(Head::parse("HTTP/1.1 abc OK").is_err());
        assert!(Head::parse("HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
        assert!(Head::parse("HTTP/1.1 200 OK\r\nno colon").is_err());
    }

    fn body_of(wire: &[u8], method: &str) -> io::Result<(Head, Vec<u8>, Vec<u8>)> {
        let mut r = BufReader::with_capacity(8, wire);
        let head = read_head(&mut r)?;
        let mut body = Vec::new();
        Body::new(&mut r, &head, method).read_to_end(&mut body)?;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest)?;
        Ok((head, body, rest))
    }

    #[test]
    fn bodies_end_where_their_framing_says() {
        let (h, b, rest) = body_of(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT",
            "GET",
        )
        .unwrap();
        assert_eq!(
            (h.status, &b[..], &rest[..]),
            (200, &b"hello"[..], &b"NEXT"[..])
        );

        let (_, b, rest) = body_of(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT",
            "GET",
        )
        .unwrap();
        assert_eq!((&b[..], &rest[..]), (&b"abcde"[..], &b"NEXT"[..]));

        let (_, b, _) = body_of(b"HTTP/1.0 200 OK\r\n\r\nuntil close", "GET").unwrap();
        assert_eq!(b, b"until close");

        // HEAD and 204 carry no body whatever Content-Length says.
        let (_, b, rest) =
            body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nNEXT", "HEAD").unwrap();
        assert_eq!((&b[..], &rest[..]), (&b""[..], &b"NEXT"[..]));
        let (_, b, _) = body_of(b"HTTP/1.1 204 No\r\nContent-Length: 5\r\n\r\n", "GET").unwrap();
        assert!(b.is_empty());
    }

    #[test]
    fn truncated_responses_are_errors() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Len",
        ] {
            assert!(
                body_of(wire, "GET").is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn fill_reads_whole_buffers() {
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec();
        wire.extend_from_slice(b"0123456789");
        let mut r = BufReader::with_capacity(3, &wire[..]);
        let head = read_head(&mut r).unwrap();
        let mut body = Body::new(&mut r, &head, "GET");
        let mut buf = [0u8; 4];
        assert_eq!(body.fill(&mut buf).unwrap(), 4);
        assert_eq!(body.fill(&mut buf).unwrap(), 4);
        assert_eq!(body.fill(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"89");
        assert_eq!(body.fill(&mut buf).unwrap(), 0);
    }
}
