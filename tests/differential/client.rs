//! A raw-protocol client through pgid: sends a sequence, its Sync and its marker, and reads and
//! decodes every answer up to the marker's ReadyForQuery, within a time limit.

use std::time::Duration;

use bytes::BytesMut;
use pgid::proxy::wire::backend::Backend;
use pgid::proxy::wire::framing::{Frames, MAX_MESSAGE_BYTES};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::sequence::{marker_sql, Msg, MARKER_PREFIX};

/// How long a sequence may take to be answered before the test fails with it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// The same when replaying to minimise (a sequence that hangs is replayed many times).
pub const REPLAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Connection {
    stream: TcpStream,
    frames: Frames,
    timeout: Duration,
}

/// What the server (through pgid) answered a sequence: one readable line per answer
/// (consecutive DataRows as one).
pub struct Answers {
    pub lines: Vec<String>,
}

impl Connection {
    pub async fn open(port: u16, user: &str, password: &str, timeout: Duration) -> Connection {
        let stream = crate::common::raw_login(port, user, password).await;
        stream.set_nodelay(true).unwrap();
        Connection {
            stream,
            frames: Frames::new(MAX_MESSAGE_BYTES),
            timeout,
        }
    }

    /// Sends `messages` and the end of every sequence ([`ending`]); reads until the marker's
    /// ReadyForQuery. `Err` carries what was read so far and why it stopped.
    pub async fn run(&mut self, messages: &[Msg], n: u64) -> Result<Answers, Vec<String>> {
        let mut out = BytesMut::new();
        for m in messages.iter().chain(&ending(n)) {
            m.encode(&mut out);
        }
        let marker = format!("{MARKER_PREFIX}{n}");
        let mut lines: Vec<String> = Vec::new();
        let (mut reader, mut writer) = self.stream.split();
        let frames = &mut self.frames;
        let read = async {
            let mut seen_marker = false;
            loop {
                let m = frames
                    .read(&mut reader)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                let decoded = Backend::decode(m.tag, &m.body).map_err(|e| format!("{e}"))?;
                match &decoded {
                    Backend::DataRow(body) => {
                        seen_marker |= first_column(body) == Some(marker.as_bytes());
                        match lines.last_mut() {
                            Some(l) if l_is_rows(l) => bump_rows(l),
                            _ => lines.push("DataRow ×1".to_string()),
                        }
                    }
                    Backend::ReadyForQuery(status) => {
                        lines.push(format!("ReadyForQuery {}", status.byte() as char));
                        if seen_marker {
                            return Ok(());
                        }
                    }
                    other => lines.push(describe(other)),
                }
            }
        };
        let write = async {
            writer
                .write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))
        };
        let timeout = self.timeout;
        let outcome = tokio::time::timeout(timeout, async {
            let (w, r) = tokio::join!(write, read);
            w.and(r)
        })
        .await;
        match outcome {
            Ok(Ok(())) => Ok(Answers { lines }),
            Ok(Err(e)) => {
                lines.push(format!("(stopped: {e})"));
                Err(lines)
            }
            Err(_) => {
                lines.push(format!(
                    "(no answer to the marker {:?} within {timeout:?})",
                    marker_sql(n)
                ));
                Err(lines)
            }
        }
    }

    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        pgid::proxy::wire::frontend::terminate(&mut out);
        let _ = self.stream.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

/// What ends every sequence: a Sync (the server stops skipping after an error), a ROLLBACK (a
/// failed transaction block would fail the marker too, and then nothing tells its answer from
/// the others), and the marker, which then always returns its row.
pub fn ending(n: u64) -> [Msg; 3] {
    [Msg::Sync, Msg::Query("ROLLBACK".into()), Msg::marker(n)]
}

fn l_is_rows(line: &str) -> bool {
    line.starts_with("DataRow ×")
}

fn bump_rows(line: &mut String) {
    let n: usize = line["DataRow ×".len()..].parse().unwrap_or(0);
    *line = format!("DataRow ×{}", n + 1);
}

/// The first column of a DataRow, if not NULL.
fn first_column(body: &[u8]) -> Option<&[u8]> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    body.get(6..6 + usize::try_from(len).ok()?)
}

fn describe(m: &Backend) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match m {
        Backend::ErrorResponse(r) => format!(
            "ErrorResponse {} {}",
            text(r.code),
            text(r.message).replace('\n', " ")
        ),
        Backend::NoticeResponse(r) => {
            format!("NoticeResponse {} {}", text(r.code), text(r.message))
        }
        Backend::CommandComplete(tag) => format!("CommandComplete {}", text(tag)),
        Backend::ParameterStatus { name, value } => {
            format!("ParameterStatus {}={}", text(name), text(value))
        }
        other => {
            let debug = format!("{other:?}");
            debug
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string()
        }
    }
}
