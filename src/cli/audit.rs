//! `pgid audit verify FILE…` checks the hash chain, across rotated files in the order given;
//! `pgid audit tail` prints (and follows) records, filtered by subject, lease, decision or kind.

use std::collections::VecDeque;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::audit::chain;
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain: exit 0 if intact, 1 with the first broken line.
    Verify {
        /// Audit files, oldest first (a rotated file's chain continues in the next); none: the
        /// file configured in --config.
        files: Vec<PathBuf>,
        /// Verify the `pgid.audit_events` table in the state database of --config instead:
        /// each instance's chain in row order, and each row's columns against its line.
        #[arg(long, conflicts_with_all = ["files", "start"])]
        table: bool,
        #[arg(long, short, env = "PGID_CONFIG", default_value = "pgid.toml")]
        config: PathBuf,
        /// Hash the first file's chain starts from (default: a new chain, or — for a file that
        /// begins with an `audit.continued` record — the hash that record continues from).
        #[arg(long)]
        start: Option<String>,
        /// Use the running `pgid dev`'s configuration (instead of --config).
        #[arg(long)]
        dev: bool,
    },
    /// Print the last records, optionally following the file as it grows (and rotates).
    Tail(TailArgs),
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// The audit file (default: the one configured in --config).
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long, short, env = "PGID_CONFIG", default_value = "pgid.toml")]
    config: PathBuf,
    /// Use the running `pgid dev`'s configuration (instead of --config).
    #[arg(long, conflicts_with = "file")]
    dev: bool,
    /// How many matching records to print first.
    #[arg(long, short = 'n', default_value_t = 20)]
    lines: usize,
    /// Keep printing records as they are written.
    #[arg(long, short)]
    follow: bool,
    /// Only records of this subject (exact, or a glob such as `ci:*`).
    #[arg(long)]
    subject: Option<String>,
    /// Only records of this lease id.
    #[arg(long)]
    lease: Option<String>,
    /// Only statement decisions: `allow` or `deny`.
    #[arg(long)]
    decision: Option<String>,
    /// Only records of this kind (`statement`, `session.start`, `credential.*`, …).
    #[arg(long)]
    kind: Option<String>,
    /// Print the records as stored (JSON Lines) instead of one readable line each.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<u8> {
    match cmd {
        AuditCommand::Verify {
            table: true,
            config,
            dev,
            ..
        } => verify_table(&super::config_path(dev, config)?).await,
        AuditCommand::Verify {
            files,
            start,
            config,
            dev,
            ..
        } => {
            let files = match files.is_empty() {
                false => files,
                true => {
                    let config = super::config_path(dev, config)?;
                    let c = Config::load(&config).with_context(|| {
                        format!("no files given and cannot read {}", config.display())
                    })?;
                    vec![c.audit.file]
                }
            };
            verify(&files, start)
        }
        AuditCommand::Tail(mut args) => {
            args.config = super::config_path(args.dev, args.config)?;
            tail(args)
        }
    }
}

fn verify(files: &[PathBuf], start: Option<String>) -> anyhow::Result<u8> {
    let mut prev = start.clone().unwrap_or_else(|| chain::GENESIS.to_string());
    let mut records = 0usize;
    let mut continues_from = None;
    for (i, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        if !text.is_empty() && !text.ends_with('\n') {
            let line = text.lines().count();
            eprintln!(
                "{}:{line}: record is incomplete (no line end); if pgid stopped while writing it, \
                 pgid cuts it at its next start and records what it cut (audit.recovered)",
                file.display()
            );
            return Ok(1);
        }
        if i == 0 && start.is_none() {
            if let Some(from) = text.lines().next().and_then(continued_from) {
                continues_from = Some(from.clone());
                prev = from;
            }
        }
        match chain::verify(text.lines(), &prev) {
            Ok(last) => {
                records += text.lines().count();
                prev = last;
            }
            Err((index, why)) => {
                eprintln!("{}:{}: {why}", file.display(), index + 1);
                return Ok(1);
            }
        }
    }
    println!(
        "ok: {records} records in {} file{}, chain intact (last hash {prev})",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    if let Some(from) = continues_from {
        println!(
            "note: the first file continues a rotated chain from hash {from}; verify it together with the file before it to check that link"
        );
    }
    Ok(0)
}

/// `pgid audit verify --table`: the table sink's rows, checked in the database (columns against
/// the line they were taken from) and here (the chains).
async fn verify_table(config: &Path) -> anyhow::Result<u8> {
    let config = Config::load(config)?;
    let databases = crate::database::Databases::connect(&config.databases)?;
    let (pool, _, _) =
        crate::app::state_database(&config, &databases).map_err(|e| anyhow::anyhow!(e.0))?;
    let c = pool
        .get()
        .await
        .context("connecting to the state database")?;
    // Columns are copies of the line's fields, for queries: a copy that differs misleads.
    let differ = c
        .query(
            "SELECT e.id FROM pgid.audit_events e, LATERAL (SELECT e.line::jsonb AS r) j
             WHERE e.time IS DISTINCT FROM (r->>'time')::timestamptz
                OR e.kind IS DISTINCT FROM r->>'kind'
                OR e.lease_id IS DISTINCT FROM (r->>'lease_id')::uuid
                OR e.subject IS DISTINCT FROM r->>'subject'
                OR e.policy IS DISTINCT FROM r->>'policy'
                OR e.session_id IS DISTINCT FROM (r->>'session_id')::uuid
                OR e.decision IS DISTINCT FROM r->>'decision'
                OR e.statement IS DISTINCT FROM r->>'statement'
                OR e.hash IS DISTINCT FROM r->>'hash'
             ORDER BY e.id LIMIT 10",
            &[],
        )
        .await
        .context("reading pgid.audit_events")?;
    let rows = c
        .query(
            "SELECT id, instance_id, line FROM pgid.audit_events ORDER BY id",
            &[],
        )
        .await
        .context("reading pgid.audit_events")?;
    let rows: Vec<(i64, i32, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let view: Vec<(i64, i32, &str)> = rows.iter().map(|(i, n, l)| (*i, *n, l.as_str())).collect();
    let report = chain::verify_table(&view);
    let mut failed = false;
    for r in &differ {
        eprintln!(
            "pgid.audit_events id {}: a column differs from the record's line",
            r.get::<_, i64>(0)
        );
        failed = true;
    }
    for (instance, id, why) in &report.broken {
        eprintln!("pgid.audit_events id {id} (instance {instance}): {why}");
        failed = true;
    }
    if failed {
        return Ok(1);
    }
    let instances: std::collections::BTreeSet<i32> = rows.iter().map(|r| r.1).collect();
    println!(
        "ok: {} records from {} instance{}, chains intact",
        report.records,
        instances.len(),
        if instances.len() == 1 { "" } else { "s" }
    );
    if !config.audit.table {
        println!(
            "note: the table sink is off in this configuration ([audit] table = false): records \
             are written to {} only; verify that file",
            config.audit.file.display()
        );
    }
    for (instance, id) in &report.starts_mid_chain {
        println!(
            "note: instance {instance}'s rows begin at id {id} with a record that follows one the table does not hold (the table sink was switched on later, or that record was deleted); verify the audit file to check it"
        );
    }
    Ok(0)
}

/// The hash an `audit.continued` record (the first of a rotated-to file) continues from.
fn continued_from(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    (v["kind"] == "audit.continued")
        .then(|| v["prev"].as_str().map(str::to_string))
        .flatten()
}

struct Filter {
    subject: Option<String>,
    lease: Option<String>,
    decision: Option<String>,
    kind: Option<String>,
}

impl Filter {
    fn matches(&self, r: &Value) -> bool {
        let field = |k: &str| r[k].as_str().unwrap_or_default();
        self.subject
            .as_ref()
            .is_none_or(|s| crate::policy::glob_matches(s, field("subject")))
            && self.lease.as_ref().is_none_or(|l| field("lease_id") == l)
            && self
                .decision
                .as_ref()
                .is_none_or(|d| field("decision") == d)
            && self
                .kind
                .as_ref()
                .is_none_or(|k| crate::policy::glob_matches(k, field("kind")))
    }
}

fn readable(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    let mut out = format!("{} {:<18}", s("time"), s("kind"));
    for k in ["subject", "policy", "decision", "result", "rule"] {
        if r[k].is_string() {
            out.push_str(&format!(" {k}={}", s(k)));
        }
    }
    for k in ["seq", "rows", "duration_ms"] {
        if !r[k].is_null() {
            out.push_str(&format!(" {k}={}", r[k]));
        }
    }
    if r["sqlstate"].is_string() {
        out.push_str(&format!(" sqlstate={}", s("sqlstate")));
    }
    if r["statement"].is_string() {
        out.push_str(&format!(" statement={}", r["statement"]));
    }
    if r["reason"].is_string() {
        out.push_str(&format!(" reason={}", r["reason"]));
    }
    out
}

fn tail(args: TailArgs) -> anyhow::Result<u8> {
    let path = match &args.file {
        Some(f) => f.clone(),
        None => {
            let c = Config::load(&args.config).with_context(|| {
                format!("no --file given and cannot read {}", args.config.display())
            })?;
            c.audit.file
        }
    };
    let filter = Filter {
        subject: args.subject.clone(),
        lease: args.lease.clone(),
        decision: args.decision.clone(),
        kind: args.kind.clone(),
    };
    if let Some(d) = &filter.decision {
        if d != "allow" && d != "deny" {
            anyhow::bail!("--decision must be allow or deny, not {d:?}");
        }
    }
    let print = |line: &str| -> bool {
        let Ok(r) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        if !filter.matches(&r) {
            return false;
        }
        if args.json {
            println!("{line}");
        } else {
            println!("{}", readable(&r));
        }
        true
    };
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut last: VecDeque<String> = VecDeque::with_capacity(args.lines + 1);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if !line.ends_with('\n') {
            break;
        }
        let trimmed = line.trim_end();
        let matches = serde_json::from_str::<Value>(trimmed).is_ok_and(|r| filter.matches(&r));
        if matches && args.lines > 0 {
            if last.len() == args.lines {
                last.pop_front();
            }
            last.push_back(trimmed.to_string());
        }
    }
    for l in &last {
        print(l);
    }
    if !args.follow {
        return Ok(0);
    }
    // Whatever was read past the last newline is the start of a record still being written.
    let mut partial = if line.ends_with('\n') {
        String::new()
    } else {
        line.clone()
    };
    follow(&path, reader, &mut partial, &print)
}

fn identity(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn follow(
    path: &Path,
    mut reader: std::io::BufReader<std::fs::File>,
    partial: &mut String,
    print: &dyn Fn(&str) -> bool,
) -> anyhow::Result<u8> {
    use std::io::Write;
    let mut inode = identity(path);
    loop {
        let mut chunk = String::new();
        reader.read_to_string(&mut chunk)?;
        if !chunk.is_empty() {
            partial.push_str(&chunk);
            while let Some(at) = partial.find('\n') {
                let line: String = partial.drain(..=at).collect();
                print(line.trim_end());
            }
            let _ = std::io::stdout().flush();
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated: the path names a new file; finish the old one above, then switch.
        let now = identity(path);
        if now.is_some() && now != inode {
            let mut rest = String::new();
            reader.read_to_string(&mut rest)?;
            partial.push_str(&rest);
            while let Some(at) = partial.find('\n') {
                let line: String = partial.drain(..=at).collect();
                print(line.trim_end());
            }
            partial.clear();
            let file = std::fs::File::open(path)?;
            reader = std::io::BufReader::new(file);
            inode = now;
        } else {
            // Truncated in place: start over from its beginning.
            let pos = reader.stream_position()?;
            if std::fs::metadata(path).map(|m| m.len()).unwrap_or(pos) < pos {
                reader.seek(SeekFrom::Start(0))?;
                partial.clear();
            }
        }
    }
}
