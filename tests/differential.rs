//! The server as oracle. PostgreSQL logs every statement it executes (`log_statement = 'all'`);
//! a seeded generator ([`generator`]) sends protocol sequences through pgid as a raw client
//! holding a lease, and the server's log is held against pgid's audit records ([`oracle`]):
//! 1. every statement the server executed has an allow record naming the same text and the same
//!    parameters, in the same order (pgid's own stand-ins and DISCARD ALL aside);
//! 2. nothing refused appears executed, and every allow record whose statement ran (`ok`,
//!    `suspended`) is in the log. Statements that read differently as
//!    `standard_conforming_strings` changes end in a DELETE of a canary table: its rows going
//!    missing is a refused statement executed that no log line can show.
//!
//! Every sequence ends with a Sync, a ROLLBACK and a marker Query whose row says the server has
//! answered everything before it. A failing sequence is replayed and minimised (messages and
//! whole sequences dropped while it still fails) and printed with what the log and the audit
//! said.
//!
//! Knobs: `PGID_DIFF_SEED=1,2,3` replaces the default seeds, `PGID_DIFF_SEQUENCES` the sequences
//! per seed; `PGID_DIFF_SYNC_QUERIES=1` puts a Sync before every Query (no Query reaches a server
//! that skips to a Sync); `PGID_DIFF_DUMP=1` prints every sequence with its answers, log entries
//! and records. `cargo test --test differential -- --ignored` runs many random seeds
//! (`PGID_DIFF_RUNS`, default 40).

#[path = "differential/client.rs"]
mod client;
mod common;
#[path = "differential/generator.rs"]
mod generator;
#[path = "differential/oracle.rs"]
mod oracle;
#[path = "differential/sequence.rs"]
mod sequence;
#[path = "differential/server_log.rs"]
mod server_log;
#[path = "differential/vocabulary.rs"]
mod vocabulary;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Harness;
use serde_json::{json, Value};
use tokio_postgres::Client;

use client::Connection;
use generator::Generator;
use oracle::{Coverage, Piece, Violation};
use sequence::{listing, Msg};

const POLICY: &str = r#"
name = "differential"
database = "app"
ttl = "30m"
max_connections = 100
[identity]
subject = "agent:differential"
[[grant]]
privileges = ["SELECT", "INSERT", "UPDATE", "DELETE"]
on = ["diff.items"]
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["diff.canary"]
[guardrails]
deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "FUNCTION", "DO"]
require_where = ["UPDATE", "DELETE"]
# set_config is allowed, so that it can change standard_conforming_strings; set_config('role',
# …) is refused all the same (an identity escape).
deny_functions = ["pg_terminate_backend", "pg_cancel_backend"]
"#;

const SETUP: &str = "
CREATE SCHEMA diff;
CREATE TABLE diff.items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL DEFAULT 0);
INSERT INTO diff.items SELECT g, 'item ' || g, g FROM generate_series(1, 6) g;
CREATE TABLE diff.canary (id int PRIMARY KEY);
INSERT INTO diff.canary SELECT generate_series(1, CANARY_ROWS);
";

const CANARY_ROWS: i64 = 3;
const DEFAULT_SEEDS: &[u64] = &[1, 2, 3, 4, 5, 6, 7, 8];
const DEFAULT_SEQUENCES: usize = 300;
/// Sequences per connection: 1 up to this many.
const MAX_SEQUENCES_PER_CONNECTION: usize = 40;
/// How long outcome records may take to follow their statements.
const OUTCOME_WAIT: Duration = Duration::from_secs(3);
/// Failure kinds minimised per test run (each takes many replays).
const MAX_MINIMISED: usize = 6;
/// How long minimising one failure may take.
const MINIMISE_BUDGET: Duration = Duration::from_secs(60);
/// After this many unanswered sequences (each costs the answer timeout) the run goes on with a
/// Sync before every Query, which keeps clear of pgid's known hang (see `sync_queries`).
const MAX_UNANSWERED: usize = 3;
/// Added to what is found in a piece of the streams that holds an unanswered sequence: its
/// session was abandoned mid-way, so its records may lack outcomes and log entries.
const AFTER_UNANSWERED: &str = " (with an unanswered sequence)";

/// A sequence as sent, and what came back.
#[derive(Clone)]
struct Sent {
    seed: u64,
    connection: usize,
    marker: u64,
    messages: Vec<Msg>,
    answers: Vec<String>,
}

/// One sequence of a script to replay: the connection it goes on (a number) and its messages.
type Step = (usize, Vec<Msg>);

/// What a replay on a fresh connection sent, found and compared.
struct Replay {
    sent: Vec<Sent>,
    /// Signatures of what failed.
    problems: Vec<String>,
    pieces: Vec<Piece>,
}

/// A failing sequence: what went wrong, and where it is in the run's history.
struct Failure {
    problems: Vec<String>,
    signatures: Vec<String>,
    at: usize,
}

struct Bench {
    h: Harness,
    lease_id: String,
    role: String,
    password: String,
    superuser: Client,
    next_marker: u64,
    log_offset: usize,
    audit_offset: usize,
    /// A canary check could not run (a lock held): check again after the next sequence.
    canary_pending: bool,
    /// Every sequence the run sent, in order (replays aside).
    history: Vec<Sent>,
    /// Connections the run opened (their numbers, across seeds).
    connections: usize,
    /// A Sync before every Query (`PGID_DIFF_SYNC_QUERIES`, or after [`MAX_UNANSWERED`]
    /// unanswered sequences): no Query reaches the server while it skips to a Sync, where pgid
    /// can wait for an answer that never comes.
    sync_queries: bool,
    /// Sequences of the run that were not answered.
    unanswered: usize,
}

impl Bench {
    async fn start() -> Bench {
        let h = Harness::start_with_postgres(
            &[
                ("log_statement", "all"),
                ("log_line_prefix", server_log::LOG_LINE_PREFIX),
            ],
            &SETUP.replace("CANARY_ROWS", &CANARY_ROWS.to_string()),
            &[POLICY],
            // The run reads the audit file by offset: one file, however long the run.
            "[audit]\nrotate_size = \"0\"\n",
        )
        .await;
        let lease = h.lease("agent:differential", json!({})).await;
        let superuser = h.superuser().await;
        superuser
            .batch_execute("SET lock_timeout = '200ms'")
            .await
            .unwrap();
        let mut b = Bench {
            lease_id: lease["lease_id"].as_str().unwrap().into(),
            role: lease["username"].as_str().unwrap().into(),
            password: lease["password"].as_str().unwrap().into(),
            h,
            superuser,
            next_marker: 0,
            log_offset: 0,
            audit_offset: 0,
            canary_pending: false,
            history: Vec::new(),
            connections: 0,
            sync_queries: std::env::var_os("PGID_DIFF_SYNC_QUERIES").is_some(),
            unanswered: 0,
        };
        b.mark();
        b
    }

    async fn connect(&self, timeout: Duration) -> Connection {
        Connection::open(self.h.proxy_port(), &self.role, &self.password, timeout).await
    }

    /// From here on: what the next comparison reads.
    fn mark(&mut self) {
        self.log_offset = whole_lines(&std::fs::read(self.h.pg.log_path()).unwrap());
        self.audit_offset =
            whole_lines(&std::fs::read(self.h.state_dir().join("audit.jsonl")).unwrap_or_default());
    }

    fn marker(&mut self) -> u64 {
        self.next_marker += 1;
        self.next_marker
    }

    /// Whether a refused statement deleted canary rows (restoring them); `None` when a lock
    /// kept the check from running.
    async fn canary_deleted(&mut self) -> Option<bool> {
        let row = self
            .superuser
            .query_one("SELECT count(*) FROM diff.canary", &[])
            .await
            .ok()?;
        let n: i64 = row.get(0);
        if n < CANARY_ROWS {
            self.superuser
                .batch_execute(&format!(
                    "INSERT INTO diff.canary SELECT generate_series(1, {CANARY_ROWS}) \
                     ON CONFLICT DO NOTHING"
                ))
                .await
                .ok()?;
        }
        Some(n < CANARY_ROWS)
    }

    /// Compares everything since [`Bench::mark`], once every allow record has its outcome.
    async fn compare(&mut self) -> Vec<Piece> {
        let deadline = Instant::now() + OUTCOME_WAIT;
        let records = loop {
            let audit = std::fs::read(self.h.state_dir().join("audit.jsonl")).unwrap();
            let lines: Vec<Value> = audit[self.audit_offset..whole_lines(&audit)]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            let records = oracle::records(&lines, &self.lease_id);
            if oracle::complete(&records) || Instant::now() > deadline {
                break records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let log = std::fs::read(self.h.pg.log_path()).unwrap();
        let log = String::from_utf8_lossy(&log[self.log_offset..whole_lines(&log)]).into_owned();
        let executed = server_log::executions(&log, &self.role);
        oracle::compare(executed, records)
    }

    /// Sends a script again, on fresh connections (a new one wherever the connection number
    /// changes), each sequence ending as always; then compares. (To minimise a failure.)
    async fn replay(&mut self, script: &[Step]) -> Replay {
        self.mark();
        let mut replay = Replay {
            sent: Vec::new(),
            problems: Vec::new(),
            pieces: Vec::new(),
        };
        let mut conn: Option<(usize, Connection)> = None;
        for (connection, messages) in script {
            if conn.as_ref().map(|(n, _)| n) != Some(connection) {
                if let Some((_, c)) = conn.take() {
                    c.close().await;
                }
                let c = self.connect(client::REPLAY_ANSWER_TIMEOUT).await;
                conn = Some((*connection, c));
            }
            let marker = self.marker();
            let result = conn.as_mut().unwrap().1.run(messages, marker).await;
            let answered = result.is_ok();
            replay.sent.push(Sent {
                seed: 0,
                connection: *connection,
                marker,
                messages: messages.clone(),
                answers: result.map_or_else(|lines| lines, |a| a.lines),
            });
            if !answered {
                replay.problems.push(UNANSWERED.to_string());
                break;
            }
            if self.canary_pending || messages.iter().any(mentions_canary) {
                let deleted = self.canary_deleted().await;
                if deleted == Some(true) {
                    replay.problems.push(CANARY.to_string());
                }
                self.canary_pending = deleted.is_none();
            }
        }
        if let Some((_, c)) = conn {
            c.close().await;
        }
        replay.pieces = self.compare().await;
        for piece in &replay.pieces {
            replay
                .problems
                .extend(piece.violations.iter().map(Violation::signature));
        }
        replay
    }

    /// Runs `count` sequences from `seed`, opening a new connection now and then.
    async fn run_seed(&mut self, seed: u64, count: usize, coverage: &mut Coverage) -> Vec<Failure> {
        self.mark();
        let mut gen = Generator::new(seed);
        let mut problems: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
        let mut connection = 0;
        let first = self.history.len();
        let mut conn: Option<Connection> = None;
        let mut left_on_connection = 0;
        let mut unanswered = Vec::new();
        for _ in 0..count {
            if self.unanswered >= MAX_UNANSWERED && !self.sync_queries {
                eprintln!(
                    "differential: {MAX_UNANSWERED} sequences unanswered; from marker {} on, a \
                     Sync goes before every Query",
                    self.next_marker + 1
                );
                self.sync_queries = true;
            }
            if left_on_connection == 0 {
                if let Some(c) = conn.take() {
                    c.close().await;
                }
                conn = Some(self.connect(client::ANSWER_TIMEOUT).await);
                self.connections += 1;
                connection = self.connections;
                left_on_connection = 1 + gen.below(MAX_SEQUENCES_PER_CONNECTION);
            }
            left_on_connection -= 1;
            let mut messages = gen.sequence();
            if self.sync_queries {
                messages = messages
                    .into_iter()
                    .flat_map(|m| {
                        let sync = matches!(m, Msg::Query(_)).then_some(Msg::Sync);
                        sync.into_iter().chain([m])
                    })
                    .collect();
            }
            let marker = self.marker();
            let result = conn.as_mut().unwrap().run(&messages, marker).await;
            let answers = match result {
                Ok(a) => a.lines,
                Err(lines) => {
                    unanswered.push(marker);
                    self.unanswered += 1;
                    problems
                        .entry(marker)
                        .or_default()
                        .push((UNANSWERED.to_string(), UNANSWERED.to_string()));
                    left_on_connection = 0;
                    conn = None;
                    lines
                }
            };
            self.history.push(Sent {
                seed,
                connection,
                marker,
                messages,
                answers,
            });
            let last = self.history.last().unwrap();
            if self.canary_pending || last.messages.iter().any(mentions_canary) {
                let deleted = self.canary_deleted().await;
                if deleted == Some(true) {
                    problems
                        .entry(marker)
                        .or_default()
                        .push((CANARY.to_string(), CANARY.to_string()));
                }
                self.canary_pending = deleted.is_none();
            }
        }
        if let Some(c) = conn.take() {
            c.close().await;
        }
        let mut since = 0;
        let dump = std::env::var("PGID_DIFF_DUMP").is_ok();
        let pieces = self.compare().await;
        let history = &self.history[first..];
        for piece in pieces {
            coverage.add(&piece);
            if dump {
                if let Some(s) = history.iter().find(|s| s.marker == piece.marker) {
                    eprintln!(
                        "--- marker {} (connection {})\n{}  answers: {}",
                        s.marker,
                        s.connection,
                        listing(&s.messages),
                        s.answers.join(" | ")
                    );
                }
                piece.executed.iter().for_each(|e| eprintln!("  {e}"));
                piece.records.iter().for_each(|r| eprintln!("  {r}"));
            }
            let marker = if piece.marker == u64::MAX {
                history.last().map_or(0, |s| s.marker)
            } else {
                piece.marker
            };
            let abandoned = unanswered.iter().any(|u| (since + 1..=marker).contains(u));
            since = marker;
            for v in &piece.violations {
                let mut signature = v.signature();
                if abandoned {
                    signature.push_str(AFTER_UNANSWERED);
                }
                problems
                    .entry(marker)
                    .or_default()
                    .push((signature, v.to_string()));
            }
        }
        problems
            .into_iter()
            .map(|(marker, found)| Failure {
                signatures: found.iter().map(|(s, _)| s.clone()).collect(),
                problems: found.into_iter().map(|(_, p)| p).collect(),
                at: first + history.iter().position(|s| s.marker == marker).unwrap(),
            })
            .collect()
    }

    /// The smallest script found that still fails with `signature`. It starts from the failing
    /// sequence alone, else its connection's sequences up to it, else everything its seed sent
    /// up to it, else everything the run sent up to it (pgid shares state between sessions:
    /// pooled connections, the analysis cache); each tried twice, as a failure may depend on
    /// timing. Then sequences are dropped in halving chunks and messages one by one while it
    /// still fails, within a time budget.
    async fn minimise(&mut self, failure: &Failure, signature: &str) -> Option<Replay> {
        let deadline = Instant::now() + MINIMISE_BUDGET;
        let fails = |r: &Replay| r.problems.iter().any(|p| p == signature);
        let last = &self.history[failure.at];
        let (seed, connection) = (last.seed, last.connection);
        let upto = &self.history[..=failure.at];
        let step = |s: &Sent| (s.connection, s.messages.clone());
        let candidates: Vec<Vec<Step>> = vec![
            vec![step(last)],
            upto.iter()
                .filter(|s| s.connection == connection)
                .map(step)
                .collect(),
            upto.iter().filter(|s| s.seed == seed).map(step).collect(),
            upto.iter().map(step).collect(),
        ];
        let mut found = None;
        let mut tried = 0;
        'search: for candidate in candidates {
            if candidate.len() == tried {
                continue;
            }
            tried = candidate.len();
            for _attempt in 0..2 {
                let r = self.replay(&candidate).await;
                if fails(&r) {
                    found = Some((candidate, r));
                    break 'search;
                }
            }
        }
        let (mut work, mut best) = found?;
        let mut chunk = work.len() / 2;
        while chunk >= 1 && Instant::now() < deadline {
            let mut at = 0;
            while at < work.len() && work.len() > 1 && Instant::now() < deadline {
                let mut candidate = work.clone();
                candidate.drain(at..(at + chunk).min(work.len()));
                let r = self.replay(&candidate).await;
                if fails(&r) && !candidate.is_empty() {
                    work = candidate;
                    best = r;
                } else {
                    at += chunk;
                }
            }
            chunk /= 2;
        }
        let mut changed = true;
        while changed && Instant::now() < deadline {
            changed = false;
            let mut seq = 0;
            while seq < work.len() && Instant::now() < deadline {
                let mut at = 0;
                while at < work[seq].1.len() && Instant::now() < deadline {
                    let mut candidate = work.clone();
                    candidate[seq].1.remove(at);
                    let r = self.replay(&candidate).await;
                    if fails(&r) {
                        work = candidate;
                        best = r;
                        changed = true;
                    } else {
                        at += 1;
                    }
                }
                seq += 1;
            }
        }
        Some(best)
    }
}

const UNANSWERED: &str = "session: a sequence was not answered (see its answers)";
const CANARY: &str = "property 2: a refused statement executed (canary rows deleted)";

fn mentions_canary(m: &Msg) -> bool {
    match m {
        Msg::Query(sql) | Msg::Parse { sql, .. } => sql.contains("canary"),
        _ => false,
    }
}

/// The length of `bytes` up to and including its last newline.
fn whole_lines(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

fn show(sequences: &[Sent]) -> String {
    let mut out = String::new();
    for s in sequences {
        out.push_str(&format!(
            "  sequence (marker {}, seed {}, connection {}):\n{}  then Sync, Query \"ROLLBACK\", the marker Query\n  answers: {}\n",
            s.marker,
            s.seed,
            s.connection,
            listing(&s.messages),
            s.answers.join(" | ")
        ));
    }
    out
}

fn seeds() -> Vec<u64> {
    match std::env::var("PGID_DIFF_SEED") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("PGID_DIFF_SEED: numbers, comma-separated")
            })
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

fn sequences_per_seed(default: usize) -> usize {
    std::env::var("PGID_DIFF_SEQUENCES")
        .map(|n| n.parse().expect("PGID_DIFF_SEQUENCES: a number"))
        .unwrap_or(default)
}

/// Runs the seeds, then minimises one failing sequence per kind of failure and fails the test
/// with all of it.
async fn differential(seeds: &[u64], per_seed: usize) {
    let mut bench = Bench::start().await;
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut coverage = Coverage::default();
    for &seed in seeds {
        failures.extend(bench.run_seed(seed, per_seed, &mut coverage).await);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "differential: {} sequences ({} seeds × {per_seed}) in {elapsed:.1?}\n  {coverage}",
        bench.next_marker,
        seeds.len()
    );
    if failures.is_empty() {
        return;
    }
    if let Ok(dir) = std::env::var("PGID_DIFF_KEEP") {
        // The server's log and pgid's audit as they were, for a look after the run.
        let _ = std::fs::copy(bench.h.pg.log_path(), format!("{dir}/postgres.log"));
        let _ = std::fs::copy(
            bench.h.state_dir().join("audit.jsonl"),
            format!("{dir}/audit.jsonl"),
        );
    }
    let report = report(&mut bench, &failures).await;
    panic!("{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_log_agrees_with_the_audit() {
    differential(&seeds(), sequences_per_seed(DEFAULT_SEQUENCES)).await;
}

/// Many random seeds (`PGID_DIFF_RUNS`, default 40), printed first.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "long run: many random seeds"]
async fn the_server_log_agrees_with_the_audit_for_many_seeds() {
    use rand::Rng;
    let runs: usize = std::env::var("PGID_DIFF_RUNS")
        .map(|n| n.parse().expect("PGID_DIFF_RUNS: a number"))
        .unwrap_or(40);
    let seeds: Vec<u64> = (0..runs).map(|_| rand::thread_rng().gen()).collect();
    eprintln!("differential seeds: {seeds:?}");
    differential(&seeds, sequences_per_seed(500)).await;
}

/// Every kind of failure with how many sequences show it; kinds first seen in the same sequence
/// are reported together, with that sequence minimised once.
async fn report(bench: &mut Bench, failures: &[Failure]) -> String {
    let mut kinds: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, f) in failures.iter().enumerate() {
        for s in &f.signatures {
            let list = kinds.entry(s).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (signature, list) in &kinds {
        groups.entry(list[0]).or_default().push(signature);
    }
    let mut out = format!(
        "{} of {} sequences failed; {} kinds of failure:\n",
        failures.len(),
        bench.next_marker,
        kinds.len()
    );
    for (n, (first, signatures)) in groups.iter().enumerate() {
        let failure = &failures[*first];
        let last = &bench.history[failure.at];
        out.push('\n');
        for signature in signatures {
            out.push_str(&format!(
                "== {signature} ({} sequences)\n",
                kinds[signature].len()
            ));
        }
        out.push_str(&format!(
            "   first: marker {} (seed {})\n",
            last.marker, last.seed
        ));
        for p in &failure.problems {
            out.push_str(&format!("   - {p}\n"));
        }
        out.push_str(&show(std::slice::from_ref(last)));
        let earlier = &bench.history[..failure.at];
        let of_seed = earlier.iter().filter(|s| s.seed == last.seed).count();
        let on_connection = earlier
            .iter()
            .filter(|s| s.connection == last.connection)
            .count();
        if of_seed > 0 {
            out.push_str(&format!(
                "   ({of_seed} earlier sequences of that seed, {on_connection} on that connection)\n"
            ));
        }
        let Some(signature) = signatures.iter().find(|s| !s.ends_with(AFTER_UNANSWERED)) else {
            continue;
        };
        if n >= MAX_MINIMISED {
            continue;
        }
        let Some(minimal) = bench.minimise(failure, signature).await else {
            out.push_str("   (does not fail again when replayed: not minimised)\n");
            continue;
        };
        out.push_str(&format!(
            "   minimal reproduction of {signature:?} (on fresh connections):\n"
        ));
        out.push_str(&show(&minimal.sent));
        out.push_str("   what the server logged and pgid recorded:\n");
        for piece in &minimal.pieces {
            for e in &piece.executed {
                out.push_str(&format!("     {e}\n"));
            }
            for r in &piece.records {
                out.push_str(&format!("     {r}\n"));
            }
            for v in &piece.violations {
                out.push_str(&format!("     ✗ {v}\n"));
            }
        }
    }
    out
}
