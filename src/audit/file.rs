//! The JSON Lines file: opening it where the chain left off, appending, and rotation that keeps
//! the chain. A rotated file is renamed `<stem>.<UTC time>.<ext>`; the new file starts with an
//! `audit.continued` record whose `prev` is the last hash of the one before, so each file verifies
//! alone (from that record) and the files verify together in name order.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::chain;

pub struct FileSink {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    rotate_size: Option<u64>,
}

/// What opening found: where the chain continues, the first record to write if the file is
/// new but an older rotated file exists, and the `audit.recovered` record to write if an
/// incomplete last record was cut.
pub struct Opened {
    pub sink: FileSink,
    pub prev: String,
    pub continuation: Option<String>,
    pub recovered: Option<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("audit log {}: {e}", path.display())
}

impl FileSink {
    /// Opens (or creates, mode 0600) `path`. An empty file continues the newest rotated file's
    /// chain, if there is one (a crash between rename and first write loses no link).
    pub fn open(path: &Path, rotate_size: Option<u64>) -> Result<Opened, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(path))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        let recovered = recover_tail(&mut file).map_err(io(path))?;
        if let Some(r) = &recovered {
            tracing::warn!(file = %path.display(), record = %r, "audit log: an incomplete last record was cut");
        }
        let len = file.metadata().map_err(io(path))?.len();
        let (prev, continuation) = if len > 0 {
            let last =
                last_hash(&mut file).map_err(|m| format!("audit log {}: {m}", path.display()))?;
            (last, None)
        } else {
            match newest_rotated(path) {
                Some(old) => {
                    let mut f = std::fs::File::open(&old).map_err(io(&old))?;
                    let last = last_hash(&mut f)
                        .map_err(|m| format!("audit log {}: {m}", old.display()))?;
                    (last, Some(continued_record(&old)))
                }
                None => (chain::GENESIS.to_string(), None),
            }
        };
        Ok(Opened {
            sink: FileSink {
                path: path.to_path_buf(),
                file,
                len,
                rotate_size,
            },
            prev,
            continuation,
            recovered,
        })
    }

    pub fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.file.write_all(bytes).map_err(io(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Another handle on the file, to fsync it without holding the sink.
    pub fn handle(&self) -> Option<std::fs::File> {
        self.file.try_clone().ok()
    }

    pub fn sync(&mut self) -> Result<(), String> {
        self.file.sync_data().map_err(io(&self.path))
    }

    pub fn wants_rotation(&self) -> bool {
        self.rotate_size.is_some_and(|max| self.len >= max)
    }

    /// Renames the current file aside and opens a fresh one; returns the unsealed
    /// `audit.continued` record to write first.
    pub fn rotate(&mut self) -> Result<String, String> {
        self.sync()?;
        // Names have microseconds; never overwrite an earlier rotation within the same one.
        let mut rotated = rotated_name(&self.path);
        while rotated.exists() {
            std::thread::sleep(std::time::Duration::from_micros(50));
            rotated = rotated_name(&self.path);
        }
        std::fs::rename(&self.path, &rotated).map_err(io(&self.path))?;
        self.file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.len = 0;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        tracing::info!(rotated = %rotated.display(), "audit log rotated");
        Ok(continued_record(&rotated))
    }
}

fn continued_record(previous: &Path) -> String {
    serde_json::json!({
        "time": Utc::now(),
        "kind": "audit.continued",
        "previous_file": previous.file_name().map(|n| n.to_string_lossy().into_owned()),
    })
    .to_string()
}

fn split_name(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (stem, ext)
}

/// `<stem>.<YYYYmmddTHHMMSS.ffffff>Z.<ext>`: sorts by name in rotation order.
fn rotated_name(path: &Path) -> PathBuf {
    let (stem, ext) = split_name(path);
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let name = if ext.is_empty() {
        format!("{stem}.{stamp}")
    } else {
        format!("{stem}.{stamp}.{ext}")
    };
    path.with_file_name(name)
}

/// Rotated files of `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (stem, ext) = split_name(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!("{stem}.");
    let suffix = if ext.is_empty() {
        String::new()
    } else {
        format!(".{ext}")
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let middle = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
            let stamp_like = middle.len() == 23
                && middle.ends_with('Z')
                && middle.as_bytes()[8] == b'T'
                && middle[..8].bytes().all(|b| b.is_ascii_digit());
            stamp_like.then(|| e.path())
        })
        .collect();
    found.sort();
    found
}

fn newest_rotated(path: &Path) -> Option<PathBuf> {
    rotated_files(path).pop()
}

/// Where the last line before `end` begins: just after the line end before it, or 0. Read
/// backwards in chunks, however long the line: a record can be many MiB (a statement of
/// `max_statement_bytes` whose characters JSON escapes six times over, Bind values).
fn line_start(file: &mut std::fs::File, end: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = end;
    while at > 0 {
        let from = at.saturating_sub(CHUNK);
        let chunk = &mut buf[..(at - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        at = from;
    }
    Ok(0)
}

/// Longest last line pgid reads back whole (far beyond any record it writes).
const MAX_LINE: u64 = 1 << 30;

/// The bytes of `file` from `from` to its end.
fn read_from(file: &mut std::fs::File, from: u64, len: u64) -> std::io::Result<Vec<u8>> {
    if len - from > MAX_LINE {
        return Err(std::io::Error::other(format!(
            "the last line is over {MAX_LINE} bytes long: not an audit record but a damaged \
             file; inspect it with `pgid audit verify`"
        )));
    }
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((len - from) as usize);
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Cuts an incomplete last record — one `kill -9` or a power loss interrupted — back to the last
/// line end, and returns the unsealed `audit.recovered` record saying what was cut. Records are
/// written before the statement they decide is forwarded, so an incomplete one belongs to a
/// statement that never reached the server (or to an outcome, which follows its decision).
/// Records before it are untouched; a damaged record in the middle is for `verify` to find. A
/// last record that is whole (its own hash holds) and lacks only its line end is kept: the line
/// end is added, and the record returned says so.
fn recover_tail(file: &mut std::fs::File) -> std::io::Result<Option<String>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(None);
    }
    let keep = line_start(file, len)?;
    let cut = read_from(file, keep, len)?;
    let whole = std::str::from_utf8(&cut)
        .ok()
        .and_then(|line| chain::check(line, chain::prev_of(line)?).ok());
    if whole.is_some() {
        file.write_all(b"\n")?;
        file.sync_all()?;
        return Ok(Some(
            serde_json::json!({
                "time": Utc::now(),
                "kind": "audit.recovered",
                "reason": "the last record was whole but had no line end (pgid stopped while \
                           writing it); the line end was added and nothing was cut",
                "cut_bytes": 0,
            })
            .to_string(),
        ));
    }
    let record = serde_json::json!({
        "time": Utc::now(),
        "kind": "audit.recovered",
        "reason": "the last record was incomplete (pgid stopped while writing it) and was cut; \
                   records are written before their statement is forwarded, so it belonged to a \
                   statement that never reached the server, or to an outcome",
        "cut_bytes": cut.len(),
        "cut_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&cut)),
        "cut_start": String::from_utf8_lossy(&cut[..cut.len().min(200)]),
    })
    .to_string();
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(Some(record))
}

/// The last record's hash, checking that the file ends with a complete line.
fn last_hash(file: &mut std::fs::File) -> Result<String, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok(chain::GENESIS.to_string());
    }
    let start = line_start(file, len - 1).map_err(|e| e.to_string())?;
    let buf = read_from(file, start, len).map_err(|e| e.to_string())?;
    if buf.last() != Some(&b'\n') {
        return Err(
            "the last record is incomplete; inspect it with `pgid audit verify` before restarting"
                .into(),
        );
    }
    let line = String::from_utf8_lossy(&buf[..buf.len() - 1]);
    let value: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| "the last record is not JSON".to_string())?;
    value["hash"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the last record has no hash".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_last_record_is_cut_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let whole = "{\"kind\":\"a\",\"hash\":\"h1\"}\n";
        std::fs::write(&path, format!("{whole}{{\"kind\":\"torn")).unwrap();
        let opened = FileSink::open(&path, None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        assert_eq!(
            opened.prev, "h1",
            "the chain goes on from the last whole record"
        );
        let r: serde_json::Value = serde_json::from_str(&opened.recovered.unwrap()).unwrap();
        assert_eq!(r["kind"], "audit.recovered");
        assert_eq!(r["cut_bytes"], 13);
        assert_eq!(r["cut_start"], "{\"kind\":\"torn");
        // A file that is nothing but a torn record is cut to nothing.
        std::fs::write(&path, "{\"kind\":").unwrap();
        let opened = FileSink::open(&path, None).unwrap();
        assert_eq!(opened.prev, chain::GENESIS);
        assert!(opened.recovered.is_some());
        // A whole file is left alone.
        std::fs::write(&path, whole).unwrap();
        assert!(FileSink::open(&path, None).unwrap().recovered.is_none());
    }

    /// A record as pgid writes it, with a statement text of `text`.
    fn sealed(text: &str, prev: &str) -> (String, String) {
        let json = serde_json::json!({"kind": "statement", "statement": text}).to_string();
        chain::seal(&json, prev)
    }

    #[test]
    fn a_whole_last_record_without_its_line_end_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (first, h1) = sealed("SELECT 1", chain::GENESIS);
        let (second, h2) = sealed("SELECT 2", &h1);
        std::fs::write(&path, format!("{first}\n{second}")).unwrap();
        let opened = FileSink::open(&path, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n{second}\n"),
            "nothing of a whole record is cut"
        );
        assert_eq!(opened.prev, h2);
        let r: serde_json::Value = serde_json::from_str(&opened.recovered.unwrap()).unwrap();
        assert_eq!(r["kind"], "audit.recovered");
        assert_eq!(r["cut_bytes"], 0);
    }

    #[test]
    fn records_of_many_mebibytes_are_read_back_and_cut_when_torn() {
        // A statement of 1 MiB of control characters is a record of 6 MiB (`\u0001`).
        let text = "\u{1}".repeat(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (first, h1) = sealed("SELECT 1", chain::GENESIS);
        let (big, h2) = sealed(&text, &h1);
        assert!(big.len() > 6 << 20);
        // Whole: the chain goes on from it.
        std::fs::write(&path, format!("{first}\n{big}\n")).unwrap();
        let opened = FileSink::open(&path, None).unwrap();
        assert_eq!(opened.prev, h2);
        assert!(opened.recovered.is_none());
        drop(opened);
        // Torn after 5 MiB: cut back to the record before it.
        std::fs::write(&path, format!("{first}\n{}", &big[..5 << 20])).unwrap();
        let opened = FileSink::open(&path, None).unwrap();
        assert_eq!(opened.prev, h1);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n")
        );
        let r: serde_json::Value = serde_json::from_str(&opened.recovered.unwrap()).unwrap();
        assert_eq!(r["cut_bytes"], 5 << 20);
    }

    #[test]
    fn rotated_names_sort_in_rotation_order_and_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let a = rotated_name(&path);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = rotated_name(&path);
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        std::fs::write(dir.path().join("audit.backup.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("other.jsonl"), "").unwrap();
        assert_eq!(rotated_files(&path), vec![a, b]);
    }
}
