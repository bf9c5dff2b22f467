//! A minimal QMP (QEMU Machine Protocol) client, shared by the NC (VMs) and
//! the SC (`qemu-storage-daemon`s).
//!
//! QMP is JSON, one message per line, over a Unix socket. A session: QEMU
//! greets with `{"QMP": {...}}`, the client leaves negotiation mode with
//! `{"execute": "qmp_capabilities"}`, then sends commands and reads answers
//! (`{"return": ...}` or `{"error": {"class", "desc"}}`). Asynchronous events
//! (`{"event": ...}`) may arrive between them; a session keeps them so that
//! [`Qmp::wait_event`] can wait for one (`DEVICE_DELETED` after a
//! `device_del`, a job's end) without a race between command and event.
//!
//! Callers open a short session per operation instead of holding one per
//! process: QEMU serves one QMP client at a time per monitor, and a session
//! per operation leaves nothing to reconnect after a controller restart.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP connect to {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("QMP I/O: {0}")]
    Io(String),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: no answer within {0:?}")]
    Timeout(Duration),
}

/// One negotiated QMP session.
pub struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Events read while waiting for answers, oldest first.
    events: VecDeque<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| QmpError::Connect {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp {
            lines: BufReader::new(reader).lines(),
            writer,
            next_id: 0,
            events: VecDeque::new(),
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| QmpError::Io(e.to_string()))?;
        loop {
            let answer = self.read_message().await?;
            if answer.get("event").is_some() {
                self.keep_event(answer);
                continue;
            }
            // Answers carry our id back; one without an id can only be the
            // answer to a command QEMU could not even parse, i.e. ours.
            if let Some(answer_id) = answer.get("id")
                && answer_id != &json!(id)
            {
                continue;
            }
            if let Some(ret) = answer.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = answer.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(format!("unexpected message {answer}")));
        }
    }

    /// Waits for an event named `name` whose `data` satisfies `matches`,
    /// looking first at events that arrived during earlier commands.
    /// Returns the event's `data`.
    pub async fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let is_it = |e: &Value| e["event"] == name && matches(&e["data"]);
        if let Some(pos) = self.events.iter().position(is_it) {
            let e = self.events.remove(pos).unwrap_or_default();
            return Ok(e["data"].clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.read_message())
                .await
                .map_err(|_| QmpError::Timeout(timeout))??;
            if is_it(&message) {
                return Ok(message["data"].clone());
            }
            if message.get("event").is_some() {
                self.keep_event(message);
            }
        }
    }

    fn keep_event(&mut self, event: Value) {
        tracing::trace!(%event, "QMP event");
        // Bounded: a chatty VM must not grow a long session without end.
        if self.events.len() >= 256 {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|e| QmpError::Io(e.to_string()))?
            .ok_or(QmpError::Closed)?;
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line}")))
    }
}

/// Connects, runs one command and disconnects, all within `timeout`.
pub async fn command(
    path: &Path,
    command: &str,
    arguments: Option<Value>,
    timeout: Duration,
) -> Result<Value, QmpError> {
    tokio::time::timeout(timeout, async {
        let mut qmp = Qmp::connect(path).await?;
        qmp.execute(command, arguments).await
    })
    .await
    .map_err(|_| QmpError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("ironbark-qmp-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A scripted QMP server: greets, then answers each request with the
    /// next canned reply (with `id` filled in), emitting an event first to
    /// check that events are skipped.
    async fn fake_server(listener: UnixListener, replies: Vec<Value>) -> Vec<Value> {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        for mut reply in replies {
            let Some(line) = lines.next_line().await.unwrap() else {
                break;
            };
            let request: Value = serde_json::from_str(&line).unwrap();
            reply["id"] = request["id"].clone();
            seen.push(request);
            w.write_all(b"{\"event\": \"RESET\", \"data\": {}}\n")
                .await
                .unwrap();
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn negotiates_runs_commands_and_skips_events() {
        let dir = TempDir::new("qmp");
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_server(
            listener,
            vec![
                json!({"return": {}}),
                json!({"return": {"status": "running", "running": true}}),
                json!({"error": {"class": "GenericError", "desc": "nope"}}),
            ],
        ));
        let mut qmp = Qmp::connect(&sock).await.unwrap();
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "running");
        let err = qmp
            .execute("device_del", Some(json!({"id": "x"})))
            .await
            .unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "GenericError"),
            "{err}"
        );
        // The events that came with the answers were kept.
        let data = qmp
            .wait_event("RESET", |_| true, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(data, json!({}));
        drop(qmp);
        let seen = server.await.unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[2]["arguments"]["id"], "x");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = TempDir::new("qmp-missing");
        let err = command(
            &dir.path().join("nope.sock"),
            "quit",
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    }
}
