//! `ironbark-loadgen`: a closed-loop HTTP/1.1 load generator for the EC2
//! Query API.
//!
//! It exists so `benches/ec2_api.sh` can put the same, realistic load on
//! ironbark and on another EC2 implementation (moto in server mode) and
//! compare requests/second and tail latency. Off-the-shelf tools (`wrk`,
//! `hey`, `oha`) cannot SigV4-sign each request, and EC2 callers always do,
//! so the signing cost is part of what a real client pays.
//!
//! How it works: `--concurrency` workers each own one keep-alive TCP
//! connection and loop "sign a request, write it, read the whole response"
//! until the run ends (closed loop: a worker sends its next request only
//! when the previous answer arrived, so the offered load adapts to the
//! server's speed). Every request is freshly signed with SigV4 (service
//! `ec2`) at the moment it is sent. Responses are parsed by hand: the
//! status line, the headers, then a body framed by `Content-Length`, by
//! chunked transfer coding, or by the server closing the connection. A
//! closed or broken connection is re-opened on the next request.
//!
//! The first `--warmup` seconds are not measured; then for `--duration`
//! seconds each worker records the latency of every request that
//! completes inside the window (throughput is completions per second, so
//! requests slower than the window are still counted when they end).
//! Workers send nothing new after the window; requests still in flight
//! then are waited for (up to `--timeout`) so the server is idle again
//! when the run returns, but are not counted. A response other than 200
//! (or an I/O error or timeout) is an error; the first error body is
//! printed to stderr. At the end one machine-readable line goes to stdout:
//!
//! ```text
//! action=… concurrency=… requests=… errors=… rps=… p50_ms=… p99_ms=… max_ms=… avg_body_bytes=…
//! ```
//!
//! `requests` counts every request completed in the window (errors
//! included); `rps` and the latency percentiles are over successful ones.

mod flags;
mod head;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flags::Flags;
use head::{Head, bad};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "\
usage: ironbark-loadgen --endpoint http://HOST:PORT/ --access-key KEY --secret SECRET
                        --action describe-security-groups|create-key-pair|custom
                        [--body FORM-BODY (with --action custom; {unique} = fresh name)]
                        [--region us-east-1] [--concurrency 16] [--duration 10]
                        [--warmup 2] [--threads N] [--timeout 30]

Drives one EC2 Query action with N concurrent keep-alive connections, each
request freshly SigV4-signed, and prints one line:
action=… concurrency=… requests=… errors=… rps=… p50_ms=… p99_ms=… max_ms=… avg_body_bytes=…";

/// How long a single request may take before it counts as an error.
const DEFAULT_TIMEOUT_SECS: f64 = 30.0;

/// Only the first error body is printed, however many workers hit one.
static ERROR_PRINTED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    DescribeSecurityGroups,
    CreateKeyPair,
    /// The form body given with `--body` (for profiling other actions,
    /// e.g. `Action=DescribeRegions&Version=2016-11-15`); each `{unique}`
    /// in it becomes a fresh `bench-<worker>-<seq>-<random>` name.
    Custom,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "describe-security-groups" | "DescribeSecurityGroups" => {
                Some(Action::DescribeSecurityGroups)
            }
            "create-key-pair" | "CreateKeyPair" => Some(Action::CreateKeyPair),
            "custom" => Some(Action::Custom),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Action::DescribeSecurityGroups => "describe-security-groups",
            Action::CreateKeyPair => "create-key-pair",
            Action::Custom => "custom",
        }
    }
}

struct Opts {
    /// `host:port` to connect to, also sent (and signed) as `Host`.
    authority: String,
    /// Request path, `/` unless the endpoint names another.
    path: String,
    access_key: String,
    secret: String,
    region: String,
    action: Action,
    /// The form body for `--action custom`.
    body: String,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    threads: Option<usize>,
    timeout: Duration,
}

fn parse_secs(flag: &str, v: &str) -> Result<Duration, String> {
    let secs: f64 = v
        .parse()
        .map_err(|_| format!("{flag}: not a number of seconds: {v}"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{flag}: must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Splits `http://host:port/path` into the authority and the path.
fn parse_endpoint(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--endpoint must be an http:// URL (no TLS support): {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("--endpoint has no host: {url}"));
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut endpoint = None;
    let mut access_key = None;
    let mut secret = None;
    let mut region = "us-east-1".to_string();
    let mut action = None;
    let mut body = None;
    let mut concurrency = 16usize;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::from_secs(2);
    let mut threads = None;
    let mut timeout = Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS);

    let mut flags = Flags::new(args, USAGE);
    while let Some(flag) = flags.next() {
        let flag = flag?;
        match flag.name.as_str() {
            "--endpoint" => endpoint = Some(flags.value(&flag)?),
            "--access-key" => access_key = Some(flags.value(&flag)?),
            "--secret" => secret = Some(flags.value(&flag)?),
            "--region" => region = flags.value(&flag)?,
            "--action" => {
                let v = flags.value(&flag)?;
                action = Some(Action::parse(&v).ok_or_else(|| {
                    format!(
                        "--action: unknown action {v} (describe-security-groups, create-key-pair, custom)"
                    )
                })?);
            }
            "--body" => body = Some(flags.value(&flag)?),
            "--concurrency" => concurrency = flags.positive(&flag)?,
            "--threads" => threads = Some(flags.positive(&flag)?),
            "--duration" => duration = parse_secs("--duration", &flags.value(&flag)?)?,
            "--warmup" => warmup = parse_secs("--warmup", &flags.value(&flag)?)?,
            "--timeout" => timeout = parse_secs("--timeout", &flags.value(&flag)?)?,
            other => return Err(format!("unknown argument: {other}\n\n{USAGE}")),
        }
    }
    let missing = |what: &str| format!("{what} is required\n\n{USAGE}");
    let (authority, path) = parse_endpoint(&endpoint.ok_or_else(|| missing("--endpoint"))?)?;
    let action = action.ok_or_else(|| missing("--action"))?;
    let body = match (action, body) {
        (Action::Custom, Some(b)) => b,
        (Action::Custom, None) => return Err("--action custom needs --body".into()),
        (_, Some(_)) => return Err("--body goes with --action custom".into()),
        (_, None) => String::new(),
    };
    if duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    Ok(Opts {
        authority,
        path,
        access_key: access_key.ok_or_else(|| missing("--access-key"))?,
        secret: secret.ok_or_else(|| missing("--secret"))?,
        region,
        action,
        body,
        concurrency,
        duration,
        warmup,
        threads,
        timeout,
    })
}

/// A small xorshift64* generator: key names only need to be unlikely to
/// collide across runs, not unpredictable.
struct Rng(u64);

impl Rng {
    fn new(worker: usize) -> Self {
        // RandomState is keyed randomly per process.
        let mut h = RandomState::new().build_hasher();
        h.write_usize(worker);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Rng(h.finish() | 1)
    }

    fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// Builds one freshly signed request, ready to write.
fn build_request(opts: &Opts, worker: usize, seq: u64, rng: &mut Rng) -> Vec<u8> {
    let body = match opts.action {
        Action::DescribeSecurityGroups => {
            "Action=DescribeSecurityGroups&Version=2016-11-15".to_string()
        }
        Action::CreateKeyPair => format!(
            "Action=CreateKeyPair&KeyName=bench-{worker}-{seq}-{:08x}&Version=2016-11-15",
            rng.next_u32()
        ),
        Action::Custom if opts.body.contains("{unique}") => opts.body.replace(
            "{unique}",
            &format!("bench-{worker}-{seq}-{:08x}", rng.next_u32()),
        ),
        Action::Custom => opts.body.clone(),
    };
    let mut headers = vec![
        ("Host".to_string(), opts.authority.clone()),
        (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        ),
    ];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    ironbark_sigv4::sign_v4_header(
        "POST",
        &opts.path,
        "",
        &mut headers,
        body.as_bytes(),
        &opts.access_key,
        &opts.secret,
        &opts.region,
        "ec2",
        now,
    );
    let mut req = String::with_capacity(512 + body.len());
    req.push_str("POST ");
    req.push_str(&opts.path);
    req.push_str(" HTTP/1.1\r\n");
    for (name, value) in &headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("User-Agent: ironbark-loadgen\r\nContent-Length: ");
    req.push_str(&body.len().to_string());
    req.push_str("\r\n\r\n");
    req.push_str(&body);
    req.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Response {
    status: u16,
    body: Vec<u8>,
    /// Whether the connection can carry the next request.
    keep_alive: bool,
}

/// One keep-alive connection and the bytes read from it but not yet used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(authority: &str) -> io::Result<Self> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Reads more bytes into the buffer; 0 means the peer closed.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    async fn fill_or_eof(&mut self) -> io::Result<()> {
        if self.fill().await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        Ok(())
    }

    /// Position of `pat` at or after `from`, reading until it arrives.
    async fn find_from(&mut self, from: usize, pat: &[u8]) -> io::Result<usize> {
        loop {
            if self.buf.len() > from
                && let Some(i) = find(&self.buf[from..], pat)
            {
                return Ok(from + i);
            }
            self.fill_or_eof().await?;
        }
    }

    /// Reads until the buffer holds at least `len` bytes.
    async fn ensure(&mut self, len: usize) -> io::Result<()> {
        while self.buf.len() < len {
            self.fill_or_eof().await?;
        }
        Ok(())
    }

    async fn roundtrip(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        loop {
            let resp = self.read_response().await?;
            // Skip interim responses (100 Continue); nothing here asks for
            // them, but a server may send one anyway.
            if !(100..200).contains(&resp.status) {
                return Ok(resp);
            }
        }
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = self.find_from(0, b"\r\n\r\n").await?;
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let head = Head::parse(head)?;
        let status = head.status;
        let mut keep_alive = head.keep_alive;
        let mut pos = head_end + 4;
        // Every request here is a POST (the Query API).
        let body = if !head.has_body("POST") {
            Vec::new()
        } else if head.chunked {
            let mut body = Vec::new();
            loop {
                let line_end = self.find_from(pos, b"\r\n").await?;
                let size_text = std::str::from_utf8(&self.buf[pos..line_end])
                    .map_err(|_| bad("bad chunk size"))?;
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| bad(format!("bad chunk size: {size_text:?}")))?;
                pos = line_end + 2;
                if size == 0 {
                    // Trailers, then the empty line that ends the message.
                    loop {
                        let end = self.find_from(pos, b"\r\n").await?;
                        let empty = end == pos;
                        pos = end + 2;
                        if empty {
                            break;
                        }
                    }
                    break;
                }
                self.ensure(pos + size + 2).await?;
                body.extend_from_slice(&self.buf[pos..pos + size]);
                pos += size + 2;
            }
            body
        } else if let Some(len) = head.content_length {
            let len = usize::try_from(len).map_err(|_| bad("Content-Length too large"))?;
            self.ensure(pos + len).await?;
            let body = self.buf[pos..pos + len].to_vec();
            pos += len;
            body
        } else {
            // Delimited by the server closing the connection.
            while self.fill().await? != 0 {}
            keep_alive = false;
            let body = self.buf[pos..].to_vec();
            pos = self.buf.len();
            body
        };
        self.buf.drain(..pos);
        Ok(Response {
            status,
            body,
            keep_alive,
        })
    }
}

#[derive(Default)]
struct Stats {
    /// Latency of each successful request in the window, microseconds.
    latencies_us: Vec<u32>,
    /// Requests completed in the window, errors included.
    completed: u64,
    errors: u64,
    /// Body bytes of the successful requests in the window.
    body_bytes: u64,
}

fn report_error(what: &str) {
    if !ERROR_PRINTED.swap(true, Ordering::Relaxed) {
        eprintln!("ironbark-loadgen: first error: {what}");
    }
}

async fn worker(
    opts: Arc<Opts>,
    id: usize,
    measure_from: Instant,
    measure_until: Instant,
) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng::new(id);
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while Instant::now() < measure_until {
        seq += 1;
        let request = build_request(&opts, id, seq, &mut rng);
        let started = Instant::now();
        let outcome = tokio::time::timeout(opts.timeout, async {
            if conn.is_none() {
                conn = Some(Conn::open(&opts.authority).await?);
            }
            match conn.as_mut() {
                Some(c) => c.roundtrip(&request).await,
                None => Err(io::Error::other("no connection")),
            }
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")));
        let finished = Instant::now();
        // Completions inside the window: a closed loop's throughput.
        let counted = finished >= measure_from && finished <= measure_until;
        // What goes wrong while draining after the window is not reported
        // either (a request cut off by --timeout then is no server error).
        let draining = finished > measure_until;
        match outcome {
            Ok(resp) => {
                if !resp.keep_alive {
                    conn = None;
                }
                if counted {
                    stats.completed += 1;
                }
                if resp.status == 200 {
                    if counted {
                        let us = (finished - started).as_micros();
                        stats
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                        stats.body_bytes += resp.body.len() as u64;
                    }
                } else {
                    if counted {
                        stats.errors += 1;
                    }
                    if !draining {
                        report_error(&format!(
                            "HTTP {}: {}",
                            resp.status,
                            String::from_utf8_lossy(&resp.body[..resp.body.len().min(2000)])
                        ));
                    }
                }
            }
            Err(e) => {
                conn = None;
                if counted {
                    stats.completed += 1;
                    stats.errors += 1;
                }
                if !draining {
                    report_error(&format!("I/O: {e}"));
                }
                // Do not spin on a server that refuses connections.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    stats
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[idx]) / 1000.0
}

async fn run(opts: Opts) -> Stats {
    let opts = Arc::new(opts);
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let measure_until = measure_from + opts.duration;
    let handles: Vec<_> = (0..opts.concurrency)
        .map(|id| tokio::spawn(worker(opts.clone(), id, measure_from, measure_until)))
        .collect();
    let mut total = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => {
                total.completed += s.completed;
                total.errors += s.errors;
                total.body_bytes += s.body_bytes;
                total.latencies_us.extend(s.latencies_us);
            }
            Err(e) => eprintln!("ironbark-loadgen: worker failed: {e}"),
        }
    }
    total
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = opts.threads {
        builder.worker_threads(n);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironbark-loadgen: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let action = opts.action;
    let concurrency = opts.concurrency;
    let secs = opts.duration.as_secs_f64();
    let mut stats = rt.block_on(run(opts));
    stats.latencies_us.sort_unstable();
    let ok = stats.latencies_us.len();
    println!(
        "action={} concurrency={} requests={} errors={} rps={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} avg_body_bytes={}",
        action.name(),
        concurrency,
        stats.completed,
        stats.errors,
        ok as f64 / secs,
        percentile_ms(&stats.latencies_us, 0.50),
        percentile_ms(&stats.latencies_us, 0.99),
        percentile_ms(&stats.latencies_us, 1.0),
        stats.body_bytes.checked_div(ok as u64).unwrap_or(0),
    );
    if ok == 0 {
        eprintln!("ironbark-loadgen: no request succeeded");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:8773/").unwrap(),
            ("127.0.0.1:8773".to_string(), "/".to_string())
        );
        assert_eq!(
            parse_endpoint("http://localhost").unwrap(),
            ("localhost:80".to_string(), "/".to_string())
        );
        assert_eq!(
            parse_endpoint("http://h:1/services/compute").unwrap(),
            ("h:1".to_string(), "/services/compute".to_string())
        );
        assert!(parse_endpoint("https://h:1/").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), 50.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&v, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn args_parse() {
        let args = [
            "--endpoint=http://127.0.0.1:9/",
            "--access-key",
            "AK",
            "--secret",
            "SK",
            "--action",
            "create-key-pair",
            "--concurrency",
            "64",
            "--duration",
            "0.5",
        ];
        let o = parse_args(args.iter().map(|s| s.to_string())).unwrap();
        assert_eq!(o.authority, "127.0.0.1:9");
        assert_eq!(o.concurrency, 64);
        assert!(o.action == Action::CreateKeyPair);
        assert_eq!(o.duration, Duration::from_millis(500));
        assert!(parse_args(["--bogus".to_string()].into_iter()).is_err());
    }

    #[tokio::test]
    async fn reads_content_length_and_chunked_responses() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            // First request: Content-Length; second: chunked, sent in
            // pieces; third: closes the connection.
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
                .await
                .unwrap();
            s.write_all(b"c\r\n2;x=y\r\nde\r\n0\r\n\r\n").await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nbye").await.unwrap();
        });
        let mut c = Conn::open(&addr).await.unwrap();
        let r = c.roundtrip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.keep_alive),
            (200, &b"hello"[..], true)
        );
        let r = c.roundtrip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (400, &b"abcde"[..]));
        let r = c.roundtrip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.keep_alive),
            (200, &b"bye"[..], false)
        );
        server.await.unwrap();
    }
}
