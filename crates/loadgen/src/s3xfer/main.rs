//! `ironbark-s3xfer`: moves whole S3 objects through presigned URLs, N at a
//! time, and says how many bytes moved in how long.
//!
//! It exists for `benches/walrus.sh`, which compares a server's PUT and GET
//! rates with `dd conv=fsync` copies of the same files. The bench used curl
//! as its client, but curl writes a download in 4-12 KiB pieces and reached
//! only 380-494 MB/s copying a local file through `file://` where dd, with
//! 1 MiB pieces, reached 931-1042: the bench measured curl more than the
//! server. Real S3 clients (s3transfer, the AWS SDKs) use large buffers;
//! this one does what dd does, with HTTP in the middle.
//!
//! Data flow. The presigned URLs come on stdin, one a line (the bench
//! presigns with boto3, so signing stays the same for every server).
//! `--concurrency` worker threads take the next URL in turn, as `xargs -P`
//! hands out curl commands, each keeping one keep-alive connection:
//!
//! - `put --file F`: reads F in 1 MiB reads and writes each piece to the
//!   socket after a head with `Content-Length` (streamed, never the whole
//!   file in memory); the response must be 200 with an `ETag` (and, given
//!   `--etag`, that one: the file's MD5 for a single-part upload).
//! - `get --out-dir D --size BYTES`: the body of the i-th URL goes to
//!   `D/i` (1-based), read from the socket until a 1 MiB buffer is full and
//!   written in that one piece, then the file is fsynced, as `dd
//!   conv=fsync` does with its output. The response must be 200 and the
//!   body exactly BYTES long.
//!
//! Plain blocking threads and `std::net`: with a handful of transfers,
//! each a loop of one read and one write, an async runtime would add
//! scheduling and no overlap the bench wants. Anything that fails (a
//! status other than 200, a short body, a missing ETag, an I/O error or a
//! socket silent for `--timeout`) stops the run: the other workers take no
//! new URL, the error goes to stderr and the exit status is 1, so the bench
//! reports no rate for it. On success, one line per transfer and then a
//! summary go to stdout:
//!
//! ```text
//! PUT 1 200 bytes=1048576 etag="…"
//! op=put transfers=16 concurrency=4 bytes=16777216 secs=0.081 mb_per_s=197.5
//! ```
//!
//! `secs` runs from the process's start to the last transfer done (for GET,
//! the last fsync), the same span the bench times around a `dd`.

#[path = "../flags.rs"]
mod flags;
#[path = "../head.rs"]
mod head;
mod http;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flags::Flags;
use http::{Body, Head, Target};

const USAGE: &str = "\
usage: ironbark-s3xfer put --file FILE [--etag MD5HEX] [--concurrency N] [--timeout SECS] < URLS
       ironbark-s3xfer get --out-dir DIR --size BYTES [--concurrency N] [--timeout SECS] < URLS

PUTs FILE to every presigned URL on stdin, or GETs every one into DIR/1,
DIR/2, … (fsynced), N at a time, with 1 MiB reads and writes. Exits 1 if
any transfer fails; otherwise prints a line per transfer and
op=… transfers=… concurrency=… bytes=… secs=… mb_per_s=…";

/// The size of every file read (PUT) and file write (GET), as `dd bs=1M`.
const PIECE: usize = 1 << 20;

/// Response heads and chunk lines go through this much buffer; bodies
/// bypass it (see `http`).
const HEAD_BUF: usize = 64 * 1024;

#[derive(Debug)]
enum Op {
    Put { file: PathBuf, etag: Option<String> },
    Get { out_dir: PathBuf, size: u64 },
}

#[derive(Debug)]
struct Opts {
    op: Op,
    concurrency: usize,
    timeout: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let op = args.next().ok_or_else(|| USAGE.to_string())?;
    let mut file = None;
    let mut etag = None;
    let mut out_dir = None;
    let mut size = None;
    let mut concurrency = 1usize;
    let mut timeout = Duration::from_secs(120);
    let mut flags = Flags::new(args, USAGE);
    while let Some(flag) = flags.next() {
        let flag = flag?;
        match flag.name.as_str() {
            "--file" => file = Some(PathBuf::from(flags.value(&flag)?)),
            "--etag" => etag = Some(flags.value(&flag)?.trim_matches('"').to_ascii_lowercase()),
            "--out-dir" => out_dir = Some(PathBuf::from(flags.value(&flag)?)),
            "--size" => {
                let v = flags.value(&flag)?;
                size = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--size: not a byte count: {v}"))?,
                );
            }
            "--concurrency" => concurrency = flags.positive(&flag)?,
            "--timeout" => {
                let v = flags.value(&flag)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--timeout: not a positive number of seconds: {v}"))?;
                timeout = Duration::from_secs_f64(secs);
            }
            other => return Err(format!("unknown argument: {other}\n\n{USAGE}")),
        }
    }
    let missing = |what: &str| format!("{op} needs {what}\n\n{USAGE}");
    let op = match op.as_str() {
        "put" => {
            if out_dir.is_some() || size.is_some() {
                return Err(format!("--out-dir and --size go with get\n\n{USAGE}"));
            }
            Op::Put {
                file: file.ok_or_else(|| missing("--file"))?,
                etag,
            }
        }
        "get" => {
            if file.is_some() || etag.is_some() {
                return Err(format!("--file and --etag go with put\n\n{USAGE}"));
            }
            Op::Get {
                out_dir: out_dir.ok_or_else(|| missing("--out-dir"))?,
                size: size.ok_or_else(|| missing("--size"))?,
            }
        }
        "-h" | "--help" => return Err(USAGE.to_string()),
        other => return Err(format!("unknown operation: {other}\n\n{USAGE}")),
    };
    Ok(Opts {
        op,
        concurrency,
        timeout,
    })
}

/// One worker's keep-alive connection.
struct Conn {
    addr: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        // The head is written in one piece and the body in 1 MiB ones, so
        // Nagle would only delay the last segment of each.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            addr: addr.to_string(),
            reader: BufReader::with_capacity(HEAD_BUF, stream),
        })
    }
}

/// A failed transfer's description, for stderr.
fn fail(what: &str, index: usize, msg: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {index}: {msg}"))
}

/// Reads the rest of a non-200 response, for the error message.
fn error_text(conn: &mut Conn, head: &Head, method: &str) -> String {
    let mut text = Vec::new();
    let _ = Body::new(&mut conn.reader, head, method)
        .take(4096)
        .read_to_end(&mut text);
    String::from_utf8_lossy(&text).trim().to_string()
}

/// Takes a worker's connection if it goes to `addr`, else opens one.
fn connect(slot: &mut Option<Conn>, addr: &str, timeout: Duration) -> io::Result<Conn> {
    match slot.take() {
        Some(c) if c.addr == addr => Ok(c),
        _ => Conn::open(addr, timeout),
    }
}

/// PUTs `file` to `url`; returns the ETag. The connection goes back into
/// `slot` only when the response left it reusable.
fn put_one(
    slot: &mut Option<Conn>,
    index: usize,
    url: &str,
    file: &PathBuf,
    want_etag: Option<&str>,
    buf: &mut [u8],
    timeout: Duration,
) -> io::Result<(u64, String)> {
    let target = Target::parse(url).map_err(|e| fail("PUT", index, e))?;
    let mut src = File::open(file)
        .map_err(|e| fail("PUT", index, format!("opening {}: {e}", file.display())))?;
    let len = src.metadata()?.len();
    let mut conn = connect(slot, &target.addr, timeout)
        .map_err(|e| fail("PUT", index, format!("connecting to {}: {e}", target.addr)))?;
    let head = http::request_head("PUT", &target, Some(len));
    let sent = (|| -> io::Result<u64> {
        let sock = conn.reader.get_mut();
        sock.write_all(&head)?;
        let mut sent = 0u64;
        // Never past Content-Length: extra bytes would be read as the
        // next request.
        let mut src = (&mut src).take(len);
        loop {
            let n = fill_from(&mut src, buf)?;
            if n == 0 {
                break;
            }
            sock.write_all(&buf[..n])?;
            sent += n as u64;
        }
        Ok(sent)
    })();
    if let Ok(n) = sent
        && n != len
    {
        // The server is still waiting for the rest; its answer would only
        // come with --timeout.
        return Err(fail(
            "PUT",
            index,
            format!("file shrank while read: {n} bytes of {len}"),
        ));
    }
    // A server that refuses a PUT may answer and close before the body is
    // all sent; its answer says more than the broken pipe does.
    let (head, sent) = match (http::read_head(&mut conn.reader), sent) {
        (Ok(h), _) if h.status != 200 => {
            let text = error_text(&mut conn, &h, "PUT");
            return Err(fail("PUT", index, format!("HTTP {}: {text}", h.status)));
        }
        (_, Err(e)) => return Err(fail("PUT", index, format!("sending the body: {e}"))),
        (Err(e), Ok(_)) => return Err(fail("PUT", index, format!("reading the response: {e}"))),
        (Ok(h), Ok(n)) => (h, n),
    };
    let mut rest = Vec::new();
    Body::new(&mut conn.reader, &head, "PUT")
        .read_to_end(&mut rest)
        .map_err(|e| fail("PUT", index, format!("reading the response body: {e}")))?;
    let etag = head
        .etag
        .clone()
        .ok_or_else(|| fail("PUT", index, "HTTP 200 without an ETag"))?;
    if let Some(want) = want_etag
        && etag.trim_matches('"').to_ascii_lowercase() != want
    {
        return Err(fail(
            "PUT",
            index,
            format!("ETag {etag}, expected \"{want}\""),
        ));
    }
    if head.keep_alive {
        *slot = Some(conn);
    }
    Ok((sent, etag))
}

/// GETs `url` into `path` and fsyncs it; returns the byte count.
fn get_one(
    slot: &mut Option<Conn>,
    index: usize,
    url: &str,
    path: &PathBuf,
    size: u64,
    buf: &mut [u8],
    timeout: Duration,
) -> io::Result<u64> {
    let target = Target::parse(url).map_err(|e| fail("GET", index, e))?;
    let mut conn = connect(slot, &target.addr, timeout)
        .map_err(|e| fail("GET", index, format!("connecting to {}: {e}", target.addr)))?;
    conn.reader
        .get_mut()
        .write_all(&http::request_head("GET", &target, None))
        .map_err(|e| fail("GET", index, format!("sending the request: {e}")))?;
    let head = http::read_head(&mut conn.reader)
        .map_err(|e| fail("GET", index, format!("reading the response: {e}")))?;
    if head.status != 200 {
        let text = error_text(&mut conn, &head, "GET");
        return Err(fail("GET", index, format!("HTTP {}: {text}", head.status)));
    }
    if let Some(n) = head.content_length
        && n != size
    {
        return Err(fail(
            "GET",
            index,
            format!("Content-Length {n}, expected {size}"),
        ));
    }
    let mut out = File::create(path)
        .map_err(|e| fail("GET", index, format!("creating {}: {e}", path.display())))?;
    let mut body = Body::new(&mut conn.reader, &head, "GET");
    let mut got = 0u64;
    loop {
        let n = body
            .fill(buf)
            .map_err(|e| fail("GET", index, format!("reading the body: {e}")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| fail("GET", index, format!("writing {}: {e}", path.display())))?;
        got += n as u64;
    }
    if got != size {
        return Err(fail(
            "GET",
            index,
            format!("body of {got} bytes, expected {size}"),
        ));
    }
    out.sync_all()
        .map_err(|e| fail("GET", index, format!("fsync of {}: {e}", path.display())))?;
    if head.keep_alive {
        *slot = Some(conn);
    }
    Ok(got)
}

/// Reads until `buf` is full or the file ends, so every piece but the last
/// is exactly `buf.len()`.
fn fill_from(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Runs every transfer; returns the total bytes, or the first error.
fn run(opts: &Opts, urls: &[String]) -> io::Result<u64> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let total = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.min(urls.len()) {
            s.spawn(|| {
                let mut buf = vec![0u8; PIECE];
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(url) = urls.get(i) else { break };
                    let index = i + 1;
                    let outcome = match &opts.op {
                        Op::Put { file, etag } => put_one(
                            &mut conn,
                            index,
                            url,
                            file,
                            etag.as_deref(),
                            &mut buf,
                            opts.timeout,
                        )
                        .map(|(n, etag)| (n, format!("PUT {index} 200 bytes={n} etag={etag}"))),
                        Op::Get { out_dir, size } => get_one(
                            &mut conn,
                            index,
                            url,
                            &out_dir.join(index.to_string()),
                            *size,
                            &mut buf,
                            opts.timeout,
                        )
                        .map(|n| (n, format!("GET {index} 200 bytes={n}"))),
                    };
                    match outcome {
                        Ok((n, line)) => {
                            total.fetch_add(n as usize, Ordering::Relaxed);
                            println!("{line}");
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(total.into_inner() as u64),
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let urls: Vec<String> = match io::stdin()
        .lock()
        .lines()
        .collect::<io::Result<Vec<String>>>()
    {
        Ok(lines) => lines
            .into_iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(e) => {
            eprintln!("ironbark-s3xfer: reading URLs from stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    if urls.is_empty() {
        eprintln!("ironbark-s3xfer: no URLs on stdin");
        return ExitCode::FAILURE;
    }
    let bytes = match run(&opts, &urls) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ironbark-s3xfer: FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "op={} transfers={} concurrency={} bytes={bytes} secs={secs:.3} mb_per_s={:.1}",
        match opts.op {
            Op::Put { .. } => "put",
            Op::Get { .. } => "get",
        },
        urls.len(),
        opts.concurrency,
        bytes as f64 / 1048576.0 / secs,
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn args(list: &[&str]) -> Result<Opts, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn args_parse() {
        let o = args(&["put", "--file", "/f", "--concurrency=4", "--etag", "\"AB\""]).unwrap();
        assert_eq!(o.concurrency, 4);
        assert!(matches!(o.op, Op::Put { ref etag, .. } if etag.as_deref() == Some("ab")));
        let o = args(&["get", "--out-dir", "/d", "--size", "10", "--timeout", "2"]).unwrap();
        assert!(matches!(o.op, Op::Get { size: 10, .. }));
        assert_eq!(o.timeout, Duration::from_secs(2));
        assert!(args(&["put"]).is_err());
        assert!(args(&["get", "--out-dir", "/d"]).is_err());
        assert!(args(&["put", "--file", "/f", "--size", "1"]).is_err());
        assert!(args(&["put", "--file", "/f", "--concurrency", "0"]).is_err());
        assert!(args(&["post", "--file", "/f"]).is_err());
    }

    /// A one-connection server answering each request with the next of
    /// `answers`; returns what it received.
    fn serve(answers: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut seen = Vec::new();
            for answer in answers {
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 {
                        return seen;
                    }
                    seen.extend_from_slice(line.as_bytes());
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                seen.extend_from_slice(&body);
                r.get_mut().write_all(&answer).unwrap();
            }
            seen
        });
        (addr, handle)
    }

    #[test]
    fn put_then_get_over_one_connection() {
        let dir = std::env::temp_dir().join(format!("s3xfer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let data: Vec<u8> = (0..3 * PIECE / 2).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let mut get_answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", data.len()).into_bytes();
        get_answer.extend_from_slice(&data);
        let (addr, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nContent-Length: 0\r\n\r\n".to_vec(),
            get_answer,
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\r\nAccessDenied".to_vec(),
        ]);
        let url = format!("http://{addr}/b/k?X-Amz-Signature=1");
        let mut buf = vec![0u8; PIECE];
        let mut slot = None;
        let t = Duration::from_secs(10);
        let (n, etag) = put_one(&mut slot, 1, &url, &src, Some("e1"), &mut buf, t).unwrap();
        assert_eq!((n, etag.as_str()), (data.len() as u64, "\"e1\""));
        assert!(slot.is_some(), "keep-alive connection kept");
        let dst = dir.join("dst");
        let size = data.len() as u64;
        assert_eq!(
            get_one(&mut slot, 2, &url, &dst, size, &mut buf, t).unwrap(),
            size
        );
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let err = get_one(&mut slot, 3, &url, &dst, size, &mut buf, t).unwrap_err();
        assert!(err.to_string().contains("HTTP 403: AccessDenied"), "{err}");
        let seen = String::from_utf8_lossy(&server.join().unwrap()).to_string();
        assert!(seen.starts_with("PUT /b/k?X-Amz-Signature=1 HTTP/1.1\r\nHost: "));
        assert!(seen.contains(&format!("Content-Length: {}\r\n", data.len())));
        assert!(seen.contains("GET /b/k?X-Amz-Signature=1 HTTP/1.1\r\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_sizes_and_etags_fail() {
        let dir = std::env::temp_dir().join(format!("s3xfer-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        std::fs::write(&src, b"abc").unwrap();
        let (addr, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]);
        let url = format!("http://{addr}/b/k");
        let mut buf = vec![0u8; PIECE];
        let mut slot = None;
        let t = Duration::from_secs(10);
        let err = put_one(&mut slot, 1, &url, &src, Some("y"), &mut buf, t).unwrap_err();
        assert!(err.to_string().contains("expected \"y\""), "{err}");
        assert!(
            slot.is_none(),
            "a failed transfer does not keep its connection"
        );
        let (addr2, server2) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab".to_vec(),
        ]);
        let url2 = format!("http://{addr2}/b/k");
        let err = get_one(&mut slot, 2, &url2, &dir.join("d"), 3, &mut buf, t).unwrap_err();
        assert!(
            err.to_string().contains("Content-Length 2, expected 3"),
            "{err}"
        );
        server.join().unwrap();
        server2.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
