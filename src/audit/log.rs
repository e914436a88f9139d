//! The audit log. Appending is done by the caller, under a lock: it seals its records into the
//! chain and hands them to the kernel with one `write` before it returns — no thread hop on the
//! statement path, and a `kill -9` of pgid loses nothing that was acknowledged. Durability against
//! power loss follows `sync`: `Always` waits for a group commit (one syncer thread fsyncs for
//! everyone waiting), `Interval` fsyncs in the background within the interval. Records nothing
//! waits on (statement outcomes) are sealed into a buffer and written with the next append, or by
//! the background flush. With the table sink on, appends also wait until a table writer has
//! inserted them into `pgid.audit_events` (batched, one INSERT for everything queued).
//!
//! Failure is closed: a failed file write stops the log (the chain's state is unknown), and every
//! later append fails; a failed table write fails that batch and keeps the lines to retry with the
//! next one, so the table never misses a link once it recovers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::chain;
use super::event::Event;
use super::file::FileSink;

/// Outcome records buffered before they are written without waiting for an append.
const MAX_BUFFERED_BYTES: usize = 64 << 10;
/// How often buffered records are written when nothing else writes them (`Always` mode).
const FLUSH_EVERY: Duration = Duration::from_millis(20);
const TABLE_BATCH: usize = 4096;
/// Lines the table sink may fall behind by before the log stops.
const MAX_TABLE_BACKLOG: usize = 100_000;

#[derive(Debug, thiserror::Error, Clone)]
pub enum AuditError {
    #[error("{0}")]
    Sink(String),
    #[error("audit log is not accepting records")]
    Closed,
}

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync before acknowledging: durable against power loss (group commit).
    Always,
    /// written to the OS before acknowledging (survives a crash of pgid), fsynced within this.
    Interval(Duration),
}

#[derive(Debug, Clone)]
pub struct AuditSetup {
    pub file: PathBuf,
    pub sync: Sync,
    pub rotate_size: Option<u64>,
    /// The `pgid.audit_events` sink: state database URL, this instance's id, TLS towards it.
    pub table: Option<(
        crate::secret::Secret<String>,
        i32,
        Option<std::sync::Arc<rustls::ClientConfig>>,
    )>,
    /// Observes how long each awaited append took to become durable.
    pub latency: Option<crate::metrics::LatencyHistogram>,
}

impl AuditSetup {
    pub fn file(path: &Path) -> AuditSetup {
        AuditSetup {
            file: path.to_path_buf(),
            sync: Sync::Always,
            rotate_size: None,
            table: None,
            latency: None,
        }
    }
}

struct State {
    file: FileSink,
    prev: String,
    /// Sealed lines not yet written.
    buffer: String,
    /// Sealed lines not yet handed to the table writer.
    table_pending: Vec<String>,
    failed: Option<AuditError>,
    /// Written since the last fsync.
    dirty: bool,
}

struct TableRequest {
    lines: Vec<String>,
    ack: Option<oneshot::Sender<Result<(), AuditError>>>,
}

struct Inner {
    state: Mutex<State>,
    sync: Sync,
    path: PathBuf,
    /// Appends written so far, and (Always) the count the syncer has fsynced.
    written: AtomicU64,
    synced: watch::Receiver<u64>,
    /// Wakes the syncer thread (Always).
    kick: Arc<(Mutex<bool>, Condvar)>,
    table: Option<mpsc::UnboundedSender<TableRequest>>,
    latency: Option<crate::metrics::LatencyHistogram>,
    refusals: super::refusals::RefusalGate,
    /// Records that could not be written (appended or submitted after a failure, or failing).
    write_errors: AtomicU64,
}

/// Handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

fn fail(state: &mut State, e: String) -> AuditError {
    tracing::error!(error = %e, "audit write failed; refusing audited actions");
    let err = AuditError::Sink(e);
    state.failed = Some(err.clone());
    err
}

impl State {
    /// Seals a record into the buffer. A full file is rotated first — only ever with nothing
    /// buffered, so the continuation record is the new file's first line.
    fn seal(&mut self, json: &str, table: bool) -> Result<(), AuditError> {
        if self.buffer.is_empty() && self.file.wants_rotation() {
            match self.file.rotate() {
                Ok(continued) => self.push(&continued, table),
                Err(e) => return Err(fail(self, e)),
            }
        }
        self.push(json, table);
        Ok(())
    }

    fn push(&mut self, json: &str, table: bool) {
        let start = self.buffer.len();
        self.prev = chain::seal_into(&mut self.buffer, json, &self.prev);
        if table {
            self.table_pending.push(self.buffer[start..].to_string());
        }
        self.buffer.push('\n');
    }

    /// Writes the buffer with one `write`.
    fn write(&mut self) -> Result<(), AuditError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.buffer);
        match self.file.append(out.as_bytes()) {
            Ok(()) => {
                self.dirty = true;
                let mut reuse = out;
                reuse.clear();
                self.buffer = reuse;
                Ok(())
            }
            Err(e) => Err(fail(self, e)),
        }
    }
}

impl AuditLog {
    /// Opens the file (continuing its chain) and starts the background work: the flush (and
    /// fsync, with `Interval`), the syncer thread (`Always`) and the table writer.
    pub fn open(setup: AuditSetup) -> Result<AuditLog, AuditError> {
        let opened = FileSink::open(&setup.file, setup.rotate_size).map_err(AuditError::Sink)?;
        let (synced_tx, synced) = watch::channel(0u64);
        let table = setup.table.clone().map(|(url, instance, tls)| {
            let (tx, rx) = mpsc::unbounded_channel();
            let spawned = std::thread::Builder::new()
                .name("pgid-audit-table".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("audit runtime");
                    rt.block_on(table_writer(url, instance, tls, rx));
                });
            if let Err(e) = spawned {
                tracing::error!(error = %crate::errors::Chain(&e), "cannot start the audit table writer");
            }
            tx
        });
        let mut state = State {
            file: opened.sink,
            prev: opened.prev,
            buffer: String::new(),
            table_pending: Vec::new(),
            failed: None,
            dirty: false,
        };
        for record in opened.continuation.iter().chain(&opened.recovered) {
            state.push(record, table.is_some());
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            sync: setup.sync,
            path: setup.file.clone(),
            written: AtomicU64::new(0),
            synced,
            kick: Arc::new((Mutex::new(false), Condvar::new())),
            table,
            latency: setup.latency.clone(),
            refusals: Default::default(),
            write_errors: AtomicU64::new(0),
        });
        if setup.sync == Sync::Always {
            let weak = Arc::downgrade(&inner);
            let kick = inner.kick.clone();
            std::thread::Builder::new()
                .name("pgid-audit-sync".into())
                .spawn(move || syncer(weak, kick, synced_tx))
                .map_err(|e| AuditError::Sink(e.to_string()))?;
        }
        let every = match setup.sync {
            Sync::Interval(d) => d,
            Sync::Always => FLUSH_EVERY,
        };
        let weak = Arc::downgrade(&inner);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(flusher(weak, every));
            }
            Err(_) => tracing::warn!("audit log opened outside a runtime: no background flush"),
        }
        Ok(AuditLog { inner })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Why audited actions are refused, once a write failed (the log stays failed).
    pub fn failure(&self) -> Option<String> {
        self.inner
            .state
            .lock()
            .unwrap()
            .failed
            .as_ref()
            .map(ToString::to_string)
    }

    /// Appends `event`; returns once it is durable.
    pub async fn record(&self, event: &Event) -> Result<(), AuditError> {
        let json = serde_json::to_string(event).map_err(|e| AuditError::Sink(e.to_string()))?;
        self.record_lines(vec![json]).await
    }

    /// Records the refusal of a request nobody has authenticated yet (a bad token, a failed
    /// login) within the refusal budget ([`super::refusals`]): past it the refusal is counted for
    /// the window's summary record instead.
    pub async fn record_refusal(&self, event: Event) -> Result<(), AuditError> {
        let admitted = self.inner.refusals.admit(event, std::time::Instant::now());
        self.record_events(admitted.summaries.iter().chain(&admitted.event))
            .await
    }

    /// Writes the summary of a refusal window that has closed (called periodically).
    pub async fn flush_refusals(&self) -> Result<(), AuditError> {
        let due = self.inner.refusals.due(std::time::Instant::now());
        self.record_events(due.iter()).await
    }

    /// Records that could not be written since the start.
    pub fn write_errors(&self) -> u64 {
        self.inner.write_errors.load(Ordering::Relaxed)
    }

    /// Refusals not recorded one by one since the start.
    pub fn refusals_suppressed(&self) -> u64 {
        self.inner.refusals.suppressed_total()
    }

    async fn record_events(&self, events: impl Iterator<Item = &Event>) -> Result<(), AuditError> {
        let lines = events
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AuditError::Sink(e.to_string()))?;
        self.record_lines(lines).await
    }

    /// Appends serialised JSON objects, in order; returns once all are durable (per `sync`, and
    /// in the table when that sink is on).
    pub async fn record_lines(&self, lines: Vec<String>) -> Result<(), AuditError> {
        if lines.is_empty() {
            return Ok(());
        }
        let n = lines.len() as u64;
        let started = std::time::Instant::now();
        let written = self.append(lines).await;
        match (&written, &self.inner.latency) {
            (Err(_), _) => {
                self.inner.write_errors.fetch_add(n, Ordering::Relaxed);
            }
            (Ok(()), Some(latency)) => latency.observe(started.elapsed()),
            (Ok(()), None) => {}
        }
        written
    }

    async fn append(&self, lines: Vec<String>) -> Result<(), AuditError> {
        let inner = &*self.inner;
        let table = inner.table.is_some();
        let (seq, table_ack) = {
            let mut st = inner.state.lock().unwrap();
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            for json in &lines {
                st.seal(json, table)?;
            }
            st.write()?;
            let seq = inner.written.fetch_add(1, Ordering::SeqCst) + 1;
            // Sent under the lock, so the table receives lines in chain order.
            let table_ack = inner.table.as_ref().map(|tx| {
                let (ack, done) = oneshot::channel();
                let _ = tx.send(TableRequest {
                    lines: std::mem::take(&mut st.table_pending),
                    ack: Some(ack),
                });
                done
            });
            (seq, table_ack)
        };
        if inner.sync == Sync::Always {
            {
                let (lock, cv) = &*inner.kick;
                *lock.lock().unwrap() = true;
                cv.notify_one();
            }
            let mut synced = inner.synced.clone();
            let ok = synced.wait_for(|n| *n >= seq).await;
            if ok.is_err() {
                return Err(AuditError::Closed);
            }
            if let Some(e) = &inner.state.lock().unwrap().failed {
                return Err(e.clone());
            }
        }
        if let Some(done) = table_ack {
            done.await.map_err(|_| AuditError::Closed)??;
        }
        Ok(())
    }

    /// Appends a serialised JSON object without waiting (for records nothing waits on, such as a
    /// statement's outcome): sealed now, written with the next append or flush.
    pub fn submit(&self, line: String) {
        let inner = &*self.inner;
        let table = inner.table.is_some();
        let mut st = inner.state.lock().unwrap();
        if st.failed.is_some() || st.seal(&line, table).is_err() {
            inner.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("an audit record was not written");
            return;
        }
        if st.buffer.len() >= MAX_BUFFERED_BYTES {
            let _ = st.write();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            if st.failed.is_none() && st.write().is_ok() {
                let _ = st.file.sync();
            }
            if let (Some(tx), false) = (&self.table, st.table_pending.is_empty()) {
                let _ = tx.send(TableRequest {
                    lines: std::mem::take(&mut st.table_pending),
                    ack: None,
                });
            }
        }
    }
}

/// Writes buffered records (and, with `Interval`, fsyncs) every `every`, until the log is gone.
async fn flusher(log: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = log.upgrade() else { return };

        let sync_file = {
            let mut st = inner.state.lock().unwrap();
            if st.failed.is_some() || st.write().is_err() {
                return;
            }
            let sync_file = (matches!(inner.sync, Sync::Interval(_)) && st.dirty)
                .then(|| st.file.handle())
                .flatten();
            if sync_file.is_some() {
                st.dirty = false;
            }
            if let (Some(tx), false) = (&inner.table, st.table_pending.is_empty()) {
                let _ = tx.send(TableRequest {
                    lines: std::mem::take(&mut st.table_pending),
                    ack: None,
                });
            }
            sync_file
        };
        if let Some(f) = sync_file {
            let synced = tokio::task::spawn_blocking(move || f.sync_data()).await;
            if !matches!(synced, Ok(Ok(()))) {
                let mut st = inner.state.lock().unwrap();
                fail(
                    &mut st,
                    format!("audit log {}: fsync failed", inner.path.display()),
                );
                return;
            }
        }
    }
}

/// Group commit (`Always`): fsyncs whenever appends are waiting, then tells them how far.
fn syncer(log: Weak<Inner>, kick: Arc<(Mutex<bool>, Condvar)>, synced: watch::Sender<u64>) {
    loop {
        {
            let (lock, cv) = &*kick;
            let mut wanted = lock.lock().unwrap();
            while !*wanted {
                let (w, timeout) = cv.wait_timeout(wanted, Duration::from_millis(200)).unwrap();
                wanted = w;
                if timeout.timed_out() && log.strong_count() == 0 {
                    return;
                }
            }
            *wanted = false;
        }
        let Some(inner) = log.upgrade() else { return };
        // Everything written up to now is covered by this fsync.
        let (target, file) = {
            let st = inner.state.lock().unwrap();
            (inner.written.load(Ordering::SeqCst), st.file.handle())
        };
        let ok = file.is_some_and(|f| f.sync_data().is_ok());
        if !ok {
            let mut st = inner.state.lock().unwrap();
            fail(
                &mut st,
                format!("audit log {}: fsync failed", inner.path.display()),
            );
        }
        // Waiters check `failed` after waking.
        synced.send_replace(target);
    }
}

async fn table_writer(
    url: crate::secret::Secret<String>,
    instance: i32,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    mut rx: mpsc::UnboundedReceiver<TableRequest>,
) {
    let pool = match crate::database::pool(url.expose(), 1, tls) {
        Ok((pool, _)) => pool,
        Err(e) => {
            tracing::error!(error = %e, "audit table sink cannot be set up");
            let err = AuditError::Sink(format!("audit table: {e}"));
            rx.close();
            while let Some(r) = rx.recv().await {
                if let Some(ack) = r.ack {
                    let _ = ack.send(Err(err.clone()));
                }
            }
            return;
        }
    };
    let mut backlog: Vec<String> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].lines.len();
        while count < TABLE_BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.lines.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        for r in &mut batch {
            backlog.append(&mut r.lines);
        }
        let result = insert(&pool, instance, &backlog).await;
        let result = match result {
            Ok(()) => {
                backlog.clear();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, backlog = backlog.len(), "audit table write failed; refusing this batch");
                if backlog.len() > MAX_TABLE_BACKLOG {
                    tracing::error!("audit table sink too far behind; dropping its backlog");
                    backlog.clear();
                }
                Err(AuditError::Sink(e))
            }
        };
        for r in batch {
            if let Some(ack) = r.ack {
                let _ = ack.send(result.clone());
            }
        }
    }
}

async fn insert(
    pool: &deadpool_postgres::Pool,
    instance: i32,
    lines: &[String],
) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let c = pool
        .get()
        .await
        .map_err(|e| format!("audit table: {}", crate::database::pool_message(&e)))?;
    let all: Vec<&str> = lines.iter().map(String::as_str).collect();
    c.execute(
        "INSERT INTO pgid.audit_events
             (instance_id, time, kind, lease_id, subject, policy, session_id, decision,
              statement, hash, line)
         SELECT $1, (r->>'time')::timestamptz, r->>'kind', (r->>'lease_id')::uuid,
                r->>'subject', r->>'policy', (r->>'session_id')::uuid, r->>'decision',
                r->>'statement', r->>'hash', u.line
         FROM unnest($2::text[]) WITH ORDINALITY AS u(line, n),
              LATERAL (SELECT u.line::jsonb AS r) AS j
         ORDER BY u.n",
        &[&instance, &all],
    )
    .await
    .map_err(|e| format!("audit table: {}", crate::database::pg_message(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Kind;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[tokio::test]
    async fn records_are_chained_durable_and_continued_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(AuditSetup::file(&path)).unwrap();
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
        let log = AuditLog::open(AuditSetup::file(&path)).unwrap();
        log.record(&Event::new(Kind::SessionEnd)).await.unwrap();
        let text = read(&path);
        assert_eq!(text.lines().count(), 51);
        chain::verify(text.lines(), chain::GENESIS).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn rotation_keeps_the_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let setup = AuditSetup {
            rotate_size: Some(2_000),
            sync: Sync::Interval(Duration::from_millis(5)),
            ..AuditSetup::file(&path)
        };
        let log = AuditLog::open(setup.clone()).unwrap();
        for i in 0..40 {
            log.record(&Event::new(Kind::SessionStart).reason(format!("record {i}")))
                .await
                .unwrap();
        }
        // Submitted records are written too, in order with the rest.
        log.submit(r#"{"kind":"statement.outcome","n":1}"#.into());
        log.record(&Event::new(Kind::SessionEnd)).await.unwrap();
        drop(log);
        let rotated = super::super::file::rotated_files(&path);
        assert!(rotated.len() >= 3, "{rotated:?}");
        let mut prev = chain::GENESIS.to_string();
        let mut total = 0;
        for f in rotated.iter().chain([&path]) {
            let text = read(f);
            total += text
                .lines()
                .filter(|l| !l.contains("audit.continued"))
                .count();
            prev = chain::verify(text.lines(), &prev).unwrap();
        }
        assert_eq!(total, 42);
        // Each later file also verifies alone, from its continuation record.
        let text = read(&path);
        let first = text.lines().next().unwrap();
        assert!(first.contains("\"kind\":\"audit.continued\""));
        // Reopening after a crash between rename and first write continues the newest file.
        std::fs::remove_file(&path).unwrap();
        let last_rotated = rotated.last().unwrap();
        let end = chain::verify(
            read(last_rotated).lines(),
            serde_json::from_str::<serde_json::Value>(read(last_rotated).lines().next().unwrap())
                .unwrap()["prev"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let log = AuditLog::open(setup).unwrap();
        log.record(&Event::new(Kind::SessionEnd)).await.unwrap();
        drop(log);
        let text = read(&path);
        assert_eq!(text.lines().count(), 2);
        chain::verify(text.lines(), &end).unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_refuses_every_later_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(AuditSetup::file(&path)).unwrap();
        log.record(&Event::new(Kind::SessionStart)).await.unwrap();
        // /dev/full fails every write with ENOSPC.
        let full = AuditLog::open(AuditSetup::file(Path::new("/dev/full")));
        if let Ok(full) = full {
            assert!(full.record(&Event::new(Kind::SessionStart)).await.is_err());
            assert!(full.record(&Event::new(Kind::SessionStart)).await.is_err());
        }
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// `cargo test --release --lib audit::log::cost -- --ignored --nocapture`: the cost of one
    /// decision (durable append) plus one outcome (buffered) per statement, 8 appenders.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn per_statement_cost() {
        let dir = tempfile::tempdir().unwrap();
        for sync in [Sync::Interval(Duration::from_millis(10)), Sync::Always] {
            let path = dir.path().join(format!("{sync:?}.jsonl"));
            let log = AuditLog::open(AuditSetup {
                sync,
                ..AuditSetup::file(&path)
            })
            .unwrap();
            let decision = format!(
                r#"{{"time":"2026-11-28T06:00:00.000000Z","kind":"statement","lease_id":"{}","subject":"bench:pgbench","statement":"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;","decision":"allow"}}"#,
                uuid::Uuid::nil()
            );
            let n = 20_000;
            let started = std::time::Instant::now();
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let log = log.clone();
                    let d = decision.clone();
                    tokio::spawn(async move {
                        for _ in 0..n {
                            log.record_lines(vec![d.clone()]).await.unwrap();
                            log.submit(d.clone());
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let per = started.elapsed().as_secs_f64() * 1e6 / (8 * n) as f64;
            println!("{sync:?}: {per:.2} µs per statement (wall, 8 appenders, 2 workers)");
        }
    }
}
