//! Uploading a snapshot's compressed object to Walrus while it is being
//! compressed: a multipart upload the CLC created and presigned.
//!
//! A presigned PUT needs the object's length and checksum before its body,
//! which made the upload wait for the end of compression (and the object
//! wait in memory). Parts have their own lengths and checksums, so each can
//! leave as soon as compression has produced it:
//!
//! compressor → [`PartWriter`] (`Write`: cuts the stream into parts of the
//! target's size, CRC-32 of each) → bounded channel → [`upload_parts`]
//! (a few presigned UploadPart requests in flight, each with
//! `x-amz-checksum-crc32`, which Walrus checks and echoes) → [`complete`]
//! (CompleteMultipartUpload with every part's ETag and CRC-32 and the
//! object's CRC-32, which Walrus combines from the parts' and compares; the
//! SC requires it echoed). The channel's bound is the back-pressure: when
//! Walrus is slower than compression, compression waits, and memory stays
//! at a few parts.
//!
//! Restarting is idempotent: an UploadPart replaces the part of that
//! number, so an SC that restarts mid-upload compresses again and sends
//! every part again. The SC never aborts an upload: the CLC, which created
//! it, aborts it when the snapshot fails or is deleted, and only then.
//! That makes the one window a retry cannot redo safe too: if the SC dies
//! after Walrus completed the upload but before the SC wrote its record,
//! the backend finds the parts it had listed (kept beside the raw copy
//! before completing) and completes again; `NoSuchUpload` for a snapshot
//! the CLC still wants pending can only mean the earlier completion, of
//! those very parts, succeeded ([`Completion::Gone`]).

use std::io::{self, Write};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ironbark_sc_api::WalrusTarget;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::ScError;
use crate::walrus::{CHECKSUM_HEADER, HttpClient, crc32_header, parse, redact};

/// Parts being sent at once: two let Walrus hash one part while the next
/// arrives, on the two cores this was measured on.
pub const IN_FLIGHT: usize = 2;

/// How long one part or the completion may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// One part of the object, ready to send.
#[derive(Debug)]
pub struct Part {
    /// 1-based, as S3 numbers parts.
    pub number: u32,
    pub data: Bytes,
    pub crc32: u32,
}

/// A part Walrus holds: what CompleteMultipartUpload names it by.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Uploaded {
    pub number: u32,
    pub etag: String,
    pub crc32: u32,
    pub size: u64,
}

/// The compressor's output (see the module docs). Its writes block while
/// the channel is full; they fail once the uploader has given up.
pub struct PartWriter {
    tx: mpsc::Sender<Part>,
    part_size: usize,
    max_parts: u32,
    cur: Vec<u8>,
    crc: crc32fast::Hasher,
    next: u32,
}

/// The channel [`PartWriter::new`] and [`upload_parts`] share.
pub fn channel() -> (mpsc::Sender<Part>, mpsc::Receiver<Part>) {
    mpsc::channel(IN_FLIGHT)
}

impl PartWriter {
    /// Parts of `part_size` bytes (the last one shorter), at most
    /// `max_parts` of them.
    pub fn new(tx: mpsc::Sender<Part>, part_size: u64, max_parts: u32) -> PartWriter {
        PartWriter {
            tx,
            part_size: part_size.max(1) as usize,
            max_parts,
            cur: Vec::new(),
            crc: crc32fast::Hasher::new(),
            next: 1,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.next > self.max_parts {
            return Err(io::Error::other(format!(
                "the compressed snapshot needs more than the {} parts of {} bytes it was given",
                self.max_parts, self.part_size
            )));
        }
        let data = Bytes::from(std::mem::replace(
            &mut self.cur,
            Vec::with_capacity(self.part_size),
        ));
        let crc = std::mem::take(&mut self.crc).finalize();
        let part = Part {
            number: self.next,
            data,
            crc32: crc,
        };
        self.next += 1;
        self.tx
            .blocking_send(part)
            .map_err(|_| io::Error::other("the upload stopped"))
    }

    /// Sends what is left as the last part (a part even if the object is
    /// empty: an upload needs one).
    pub fn finish(mut self) -> io::Result<()> {
        if !self.cur.is_empty() || self.next == 1 {
            self.send()?;
        }
        Ok(())
    }
}

impl Write for PartWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cur.capacity() == 0 {
            self.cur.reserve_exact(self.part_size);
        }
        let n = buf.len().min(self.part_size - self.cur.len());
        self.cur.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if self.cur.len() == self.part_size {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends the parts that arrive on `rx` until it closes, [`IN_FLIGHT`] at a
/// time; `sent` gets the bytes Walrus confirmed so far. Returns them in
/// order. On an error the channel is dropped, which stops the writer.
pub async fn upload_parts(
    http: &HttpClient,
    target: &WalrusTarget,
    mut rx: mpsc::Receiver<Part>,
    sent: impl Fn(u64),
) -> Result<Vec<Uploaded>, ScError> {
    let mut running: JoinSet<Result<Uploaded, ScError>> = JoinSet::new();
    let mut done = Vec::new();
    let mut bytes = 0u64;
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            part = rx.recv(), if open && running.len() < IN_FLIGHT => match part {
                Some(p) => {
                    let url = target
                        .part_urls
                        .get(p.number as usize - 1)
                        .cloned()
                        .ok_or_else(|| ScError::Invalid(format!("no URL for part {}", p.number)))?;
                    let http = http.clone();
                    running.spawn(async move { put_part(&http, &url, p).await });
                }
                None => open = false,
            },
            Some(r) = running.join_next(), if !running.is_empty() => {
                let u = r.map_err(|e| ScError::io("part upload task", e))??;
                bytes += u.size;
                sent(bytes);
                done.push(u);
            }
        }
    }
    done.sort_by_key(|u| u.number);
    Ok(done)
}

async fn put_part(http: &HttpClient, url: &str, part: Part) -> Result<Uploaded, ScError> {
    let uri = parse(url)?;
    let what = format!("part {} PUT {}", part.number, redact(url));
    let want = crc32_header(part.crc32);
    let size = part.data.len() as u64;
    let request = hyper::Request::put(uri)
        .header(hyper::header::CONTENT_LENGTH, size)
        .header(CHECKSUM_HEADER, &want)
        .body(Full::new(part.data).map_err(|e| match e {}).boxed())
        .map_err(|e| ScError::io("building a part upload", e))?;
    let (status, headers, body) = send(http, request, &what).await?;
    if !status.is_success() {
        return Err(refused(&what, status, &body));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let echoed = header(CHECKSUM_HEADER);
    if echoed.as_deref() != Some(want.as_str()) {
        return Err(ScError::Io(format!(
            "{what}: the store did not confirm the part's CRC-32 {want} (it answered {echoed:?})"
        )));
    }
    match header(hyper::header::ETAG.as_str()) {
        Some(etag) if !etag.is_empty() => Ok(Uploaded {
            number: part.number,
            etag: etag.to_ascii_lowercase(),
            crc32: part.crc32,
            size,
        }),
        _ => Err(ScError::Io(format!("{what}: the store answered no ETag"))),
    }
}

/// What a completion request found.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// Walrus made the object and confirmed its CRC-32; its ETag.
    Done(String),
    /// The upload no longer exists (`NoSuchUpload`): an earlier completion
    /// made the object, or the upload was aborted.
    Gone,
}

/// The ETag S3 gives the object completed from `parts`: the MD5 of their
/// MD5s, then `-N`.
pub fn multipart_etag(parts: &[Uploaded]) -> Option<String> {
    use md5::Digest as _;
    let mut h = md5::Md5::new();
    for p in parts {
        h.update(hex::decode(&p.etag).ok()?);
    }
    Some(format!("{}-{}", hex::encode(h.finalize()), parts.len()))
}

/// Completes the upload with `parts` (all of them, in order) and `crc32`,
/// the whole object's. Returns the object's ETag once Walrus confirmed the
/// whole object's CRC-32.
pub async fn complete(
    http: &HttpClient,
    url: &str,
    parts: &[Uploaded],
    crc32: u32,
) -> Result<Completion, ScError> {
    let uri = parse(url)?;
    let what = format!("POST {}", redact(url));
    let body = complete_xml(parts);
    let want = crc32_header(crc32);
    let request = hyper::Request::post(uri)
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .header(hyper::header::CONTENT_TYPE, "application/xml")
        .header(CHECKSUM_HEADER, &want)
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .map_err(|e| ScError::io("building the completion", e))?;
    let (status, _, body) = send(http, request, &what).await?;
    let text = String::from_utf8_lossy(&body);
    if status == hyper::StatusCode::NOT_FOUND
        && xml_field(&text, "Code").as_deref() == Some("NoSuchUpload")
    {
        return Ok(Completion::Gone);
    }
    // S3 may answer 200 and an <Error> body once it has started answering.
    if !status.is_success() || text.contains("<Error>") {
        return Err(refused(&what, status, &body));
    }
    let echoed = xml_field(&text, "ChecksumCRC32");
    if echoed.as_deref() != Some(want.as_str()) {
        return Err(ScError::Io(format!(
            "{what}: the store did not confirm the object's CRC-32 {want} (it answered {echoed:?})"
        )));
    }
    match xml_field(&text, "ETag") {
        Some(etag) if !etag.is_empty() => Ok(Completion::Done(
            etag.trim_matches('"').to_ascii_lowercase(),
        )),
        _ => Err(ScError::Io(format!("{what}: the store answered no ETag"))),
    }
}

/// The CompleteMultipartUpload request body.
pub fn complete_xml(parts: &[Uploaded]) -> String {
    let mut x = String::from("<CompleteMultipartUpload>");
    for p in parts {
        x.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>\"{}\"</ETag><ChecksumCRC32>{}</ChecksumCRC32></Part>",
            p.number,
            p.etag,
            crc32_header(p.crc32)
        ));
    }
    x.push_str("</CompleteMultipartUpload>");
    x
}

/// The text of the first `<name>` element (the answers here are flat and
/// carry no markup inside their values, apart from `&quot;`).
pub fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].replace("&quot;", "\"").trim().to_string())
}

type Answer = (hyper::StatusCode, hyper::HeaderMap, Bytes);

async fn send(
    http: &HttpClient,
    request: hyper::Request<crate::walrus::Body>,
    what: &str,
) -> Result<Answer, ScError> {
    let exchange = async {
        let response = http
            .request(request)
            .await
            .map_err(|e| ScError::io(what, e))?;
        let (head, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ScError::io(what, e))?
            .to_bytes();
        Ok((head.status, head.headers, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| ScError::Io(format!("{what}: no answer in {REQUEST_TIMEOUT:?}")))?
}

fn refused(what: &str, status: hyper::StatusCode, body: &[u8]) -> ScError {
    ScError::Io(format!(
        "{what}: HTTP {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(512)])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_cuts_full_parts_and_a_short_last_one() {
        let (tx, mut rx) = mpsc::channel(100);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let mut w = PartWriter::new(tx, 3000, 4);
        for piece in data.chunks(777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        let mut parts = Vec::new();
        while let Ok(p) = rx.try_recv() {
            parts.push(p);
        }
        let sizes: Vec<usize> = parts.iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, [3000, 3000, 3000, 1000]);
        assert_eq!(
            parts.iter().map(|p| p.number).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let mut whole = Vec::new();
        for p in &parts {
            assert_eq!(p.crc32, crc32fast::hash(&p.data));
            whole.extend_from_slice(&p.data);
        }
        assert_eq!(whole, data);
    }

    #[test]
    fn the_writer_refuses_more_parts_than_it_has_urls_for() {
        let (tx, _rx) = mpsc::channel(100);
        let mut w = PartWriter::new(tx.clone(), 10, 2);
        assert!(w.write_all(&[1u8; 30]).is_err());
        let mut w = PartWriter::new(tx, 10, 2);
        w.write_all(&[1u8; 25]).unwrap();
        assert!(w.finish().is_err());
        // An exact fit needs no part more; an empty object still one part.
        let (tx, mut rx) = mpsc::channel(100);
        let mut w = PartWriter::new(tx, 10, 2);
        w.write_all(&[1u8; 20]).unwrap();
        w.finish().unwrap();
        assert_eq!((rx.try_recv().is_ok(), rx.try_recv().is_ok()), (true, true));
        assert!(rx.try_recv().is_err());
        let (tx, mut rx) = mpsc::channel(100);
        PartWriter::new(tx, 10, 2).finish().unwrap();
        assert_eq!(rx.try_recv().unwrap().data.len(), 0);
    }

    #[test]
    fn writes_fail_once_the_uploader_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = PartWriter::new(tx, 4, 10);
        assert!(w.write_all(b"12345").is_err());
    }

    #[test]
    fn completion_xml_names_every_part_and_answers_parse() {
        let parts = [
            Uploaded {
                number: 1,
                etag: "ab".into(),
                crc32: 1,
                size: 5,
            },
            Uploaded {
                number: 2,
                etag: "cd".into(),
                crc32: 0xffff_ffff,
                size: 1,
            },
        ];
        let x = complete_xml(&parts);
        assert!(x.contains("<Part><PartNumber>1</PartNumber><ETag>\"ab\"</ETag><ChecksumCRC32>AAAAAQ==</ChecksumCRC32></Part>"));
        assert!(x.contains(
            "<PartNumber>2</PartNumber><ETag>\"cd\"</ETag><ChecksumCRC32>/////w==</ChecksumCRC32>"
        ));
        let answer = "<CompleteMultipartUploadResult><ETag>&quot;0123-2&quot;</ETag><ChecksumCRC32>AAAAAQ==</ChecksumCRC32></CompleteMultipartUploadResult>";
        assert_eq!(xml_field(answer, "ETag").as_deref(), Some("\"0123-2\""));
        assert_eq!(
            xml_field(answer, "ChecksumCRC32").as_deref(),
            Some("AAAAAQ==")
        );
        assert_eq!(xml_field(answer, "Missing"), None);
    }
}
