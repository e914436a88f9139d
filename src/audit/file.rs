//! The JSON Lines sink. One writer task owns the file: appenders send records and wait for the
//! acknowledgement, the writer seals everything queued, writes it with one `write`, fsyncs once
//! and acknowledges the batch.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use super::chain;
use super::event::Event;

const QUEUE: usize = 4096;
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error, Clone)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit log is not accepting records")]
    Closed,
}

type Request = (String, oneshot::Sender<Result<(), AuditError>>);

/// Handle to the audit file. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Request>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) `path`, continuing the chain from its last record.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let err = |e: std::io::Error| AuditError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        let last = last_hash(&mut file).map_err(|message| AuditError::Io {
            path: path.display().to_string(),
            message,
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let p = path.to_path_buf();
        std::thread::Builder::new()
            .name("pgid-audit".into())
            .spawn(move || writer(file, p, last, rx))
            .map_err(err)?;
        Ok(AuditLog {
            tx,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event`; returns once it is durable.
    pub async fn record(&self, event: &Event) -> Result<(), AuditError> {
        let json = serde_json::to_string(event).map_err(|e| AuditError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let (ack, done) = oneshot::channel();
        self.tx
            .send((json, ack))
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }
}

/// The last record's hash, checking that the file ends with a complete line.
fn last_hash(file: &mut std::fs::File) -> Result<String, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok(chain::GENESIS.to_string());
    }
    let tail = len.min(1 << 20);
    file.seek(SeekFrom::Start(len - tail))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.last() != Some(&b'\n') {
        return Err(
            "the last record is incomplete; inspect it with `pgid audit verify` before restarting"
                .into(),
        );
    }
    let text = String::from_utf8_lossy(&buf[..buf.len() - 1]);
    let line = text.rsplit('\n').next().unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|_| "the last record is not JSON".to_string())?;
    value["hash"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the last record has no hash".into())
}

fn writer(
    mut file: std::fs::File,
    path: PathBuf,
    mut prev: String,
    mut rx: mpsc::Receiver<Request>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut out = String::new();
        let mut next = prev.clone();
        for (json, _) in &batch {
            let (line, hash) = chain::seal(json, &next);
            out.push_str(&line);
            out.push('\n');
            next = hash;
        }
        let result = file
            .write_all(out.as_bytes())
            .and_then(|_| file.sync_data());
        match result {
            Ok(()) => {
                prev = next;
                for (_, ack) in batch {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                // The chain state is unknown now: stop accepting; every later record fails too.
                tracing::error!(path = %path.display(), error = %e, "audit write failed; refusing audited actions");
                let err = AuditError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                for (_, ack) in batch {
                    let _ = ack.send(Err(err.clone()));
                }
                rx.close();
                while let Ok((_, ack)) = rx.try_recv() {
                    let _ = ack.send(Err(err.clone()));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Kind;

    #[tokio::test]
    async fn records_are_chained_durable_and_continued_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let writes: Vec<_> = (0..50)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    log.record(&Event::new(Kind::SessionStart).reason(format!("r{i}")))
                        .await
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.record(&Event::new(Kind::SessionEnd)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 51);
        chain::verify(text.lines(), chain::GENESIS).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn an_incomplete_last_record_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"kind\":\"x\"").unwrap();
        assert!(AuditLog::open(&path)
            .err()
            .unwrap()
            .to_string()
            .contains("incomplete"));
    }
}
