//! An HTTP/1.x response head, as both load tools read it: status, body
//! framing, whether the connection stays open, and the ETag.

use std::io;

pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// What the response head says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Whether the connection may carry another request after this body.
    pub keep_alive: bool,
    pub etag: Option<String>,
}

impl Head {
    /// Parses a head given without its final empty line.
    pub fn parse(text: &str) -> io::Result<Self> {
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("not an HTTP/1.x status line: {status_line:?}")));
        }
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line: {status_line:?}")))?;
        let mut head = Head {
            status,
            keep_alive: version == "HTTP/1.1",
            ..Head::default()
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad(format!("bad header line: {line:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("bad Content-Length: {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    head.keep_alive = false;
                } else if v.contains("keep-alive") {
                    head.keep_alive = true;
                }
            } else if name.eq_ignore_ascii_case("etag") {
                head.etag = Some(value.to_string());
            }
        }
        Ok(head)
    }

    /// Whether a body follows at all (RFC 9112 section 6.3).
    pub fn has_body(&self, method: &str) -> bool {
        !(method == "HEAD" || (100..200).contains(&self.status) || matches!(self.status, 204 | 304))
    }
}
