//! The server as oracle: what PostgreSQL logged as executed ([`super::server_log`]) against
//! pgid's statement records.
//!
//! The records: decision records of the lease (`"kind":"statement"`) in file order, each with
//! its outcome (`statement.outcome`, by session and seq).
//!
//! Both streams are cut at the markers that end each sequence (`SELECT '<marker n>'`, present in
//! both), and each piece is aligned: every execution must match an allow record (same protocol,
//! same text, same parameters read as values) in order (property 1; refused statements cannot
//! match, having no allow record), and every allow record that ran (`ok`, `suspended`) must
//! match an execution (property 2). Records with outcome `error` or `not_run` may go unmatched,
//! as may records of statements with no tokens (the server logs no empty query). The server logs
//! a statement before it runs it, so a logged statement may have failed (its record says
//! `error`); an Execute logged in a failed transaction block has no parameters in the log.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde_json::Value;

use super::sequence::{marker_number, readable_sql};
use super::server_log::{params_text, Executed, Protocol};

/// One decision record with its outcome.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub session: String,
    pub seq: u64,
    pub protocol: String,
    pub statement: String,
    pub parameters: Option<Vec<Option<String>>>,
    pub allowed: bool,
    pub rule: String,
    pub outcome: Option<String>,
    pub prepared: Vec<(String, String)>,
}

fn json_parameters(v: &Value) -> Option<Vec<Option<String>>> {
    v.as_array()
        .map(|a| a.iter().map(|p| p.as_str().map(str::to_string)).collect())
}

/// The lease's decision records in file order, each with its outcome.
pub fn records(all: &[Value], lease_id: &str) -> Vec<Recorded> {
    let mine = |r: &&Value| r["lease_id"] == lease_id;
    let key = |r: &Value| {
        (
            r["session_id"].as_str().unwrap_or_default().to_string(),
            r["seq"].as_u64().unwrap_or_default(),
        )
    };
    let outcomes: HashMap<(String, u64), String> = all
        .iter()
        .filter(mine)
        .filter(|r| r["kind"] == "statement.outcome")
        .map(|r| (key(r), r["result"].as_str().unwrap_or_default().to_string()))
        .collect();
    all.iter()
        .filter(mine)
        .filter(|r| r["kind"] == "statement")
        .map(|r| {
            let (session, seq) = key(r);
            Recorded {
                outcome: outcomes.get(&(session.clone(), seq)).cloned(),
                session,
                seq,
                protocol: r["protocol"].as_str().unwrap_or_default().to_string(),
                statement: r["statement"].as_str().unwrap_or_default().to_string(),
                parameters: json_parameters(&r["parameters"]),
                allowed: r["decision"] == "allow",
                rule: r["rule"].as_str().unwrap_or_default().to_string(),
                prepared: r["prepared"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                (
                                    p["name"].as_str().unwrap_or_default().to_string(),
                                    p["statement"].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Whether the outcome records are all there: every allow record has one.
pub fn complete(records: &[Recorded]) -> bool {
    records.iter().all(|r| !r.allowed || r.outcome.is_some())
}

/// A statement with no tokens (whitespace, comments, semicolons): the server logs nothing.
pub fn is_empty_statement(text: &str) -> bool {
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return rest.is_empty();
        }
    }
}

/// Two parameter values as the same value: equal text, or the same integer. The server logs
/// what the type's output function prints (`01` is logged as `1`); pgid records a value it
/// cannot show as the server reads it — binary of a type it does not know (the server inferred
/// it), or text in a client encoding it cannot be sure of — as the bytes sent, `\x` hex: the same
/// integer when 2, 4 or 8 bytes big-endian, or the same text read in UTF8 or LATIN1 (the only
/// client encodings the generator uses).
fn same_value(recorded: &Option<String>, logged: &Option<String>) -> bool {
    match (recorded, logged) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let logged = b.trim().parse::<i64>().ok();
            a == b
                || (logged.is_some() && a.trim().parse::<i64>().ok() == logged)
                || (logged.is_some() && hex_integer(a) == logged)
                || hex_text(a).as_deref() == Some(b.as_str())
                || hex_latin1(a).as_deref() == Some(b.as_str())
        }
        _ => false,
    }
}

/// `\x6869` → `hi` (a binary text value).
fn hex_text(text: &str) -> Option<String> {
    String::from_utf8(hex::decode(text.strip_prefix("\\x")?).ok()?).ok()
}

/// `\xe9` → `é`: the bytes as LATIN1 text.
fn hex_latin1(text: &str) -> Option<String> {
    let bytes = hex::decode(text.strip_prefix("\\x")?).ok()?;
    Some(bytes.iter().map(|b| *b as char).collect())
}

/// `\x0000002a` → 42 (a binary int2, int4 or int8).
fn hex_integer(text: &str) -> Option<i64> {
    let hex = text.strip_prefix("\\x")?;
    let bytes = hex::decode(hex).ok()?;
    Some(match bytes.len() {
        2 => i16::from_be_bytes(bytes.try_into().ok()?).into(),
        4 => i32::from_be_bytes(bytes.try_into().ok()?).into(),
        8 => i64::from_be_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

fn same_parameters(
    recorded: &Option<Vec<Option<String>>>,
    logged: &Option<Vec<Option<String>>>,
) -> bool {
    let r = recorded.as_deref().unwrap_or_default();
    let l = logged.as_deref().unwrap_or_default();
    r.len() == l.len() && r.iter().zip(l).all(|(a, b)| same_value(a, b))
}

fn protocol_of(r: &Recorded) -> Option<Protocol> {
    match r.protocol.as_str() {
        "simple" => Some(Protocol::Simple),
        "extended" => Some(Protocol::Extended),
        _ => None,
    }
}

fn matches(e: &Executed, r: &Recorded) -> bool {
    r.allowed
        && protocol_of(r) == Some(e.protocol)
        && r.statement == e.text
        && (same_parameters(&r.parameters, &e.parameters) || values_unprintable(e, r))
        && same_prepared(e, r)
}

/// An Execute in a failed transaction block is logged before the server refuses it (25P02),
/// without its parameters: the server calls no output function in an aborted transaction.
fn values_unprintable(e: &Executed, r: &Recorded) -> bool {
    e.protocol == Protocol::Extended
        && e.parameters.is_none()
        && r.outcome.as_deref() == Some("error")
}

/// For a Query that is one EXECUTE, the server's `prepare:` detail names the statement that ran
/// (its source text): a record that says what it executes must say the same. (In a Query of
/// several statements the detail is read when the Query is logged, before any PREPARE in it
/// ran, so it is not compared.)
fn same_prepared(e: &Executed, r: &Recorded) -> bool {
    match &e.prepare {
        Some(text) if !e.text.contains(';') && !r.prepared.is_empty() => {
            r.prepared.iter().any(|(_, statement)| statement == text)
        }
        _ => true,
    }
}

/// May an allow record go without a log entry?
fn may_be_unlogged(r: &Recorded) -> bool {
    matches!(r.outcome.as_deref(), Some("error" | "not_run")) || is_empty_statement(&r.statement)
}

#[derive(Debug, Clone)]
pub enum Violation {
    /// Property 1: the server executed a statement that has no matching allow record.
    Unrecorded {
        executed: Executed,
        /// A record of the same text in the same piece: denied, or allowed with other
        /// parameters or protocol.
        nearest: Option<Recorded>,
    },
    /// Property 2: an allow record whose statement ran (`ok`, `suspended`) that the server
    /// did not log.
    Unlogged { record: Recorded },
    /// An allow record without an outcome record.
    NoOutcome { record: Recorded },
}

impl Violation {
    /// What kind of failure this is, for grouping and minimising.
    pub fn signature(&self) -> String {
        match self {
            Violation::Unrecorded { executed, nearest } => {
                let how = executed
                    .how
                    .split(' ')
                    .take(if executed.how.starts_with("execute fetch") {
                        2
                    } else {
                        1
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let near = match nearest {
                    Some(r) if !r.allowed => "a deny record of that text".to_string(),
                    Some(r) if r.statement == executed.text => {
                        "an allow record of that text with other parameters/protocol".to_string()
                    }
                    Some(_) => "an allow record of similar text".to_string(),
                    None => "no record of that text".to_string(),
                };
                format!("property 1: executed ({how}) without an allow record; {near}")
            }
            Violation::Unlogged { record } => format!(
                "property 2: allow record ({}, outcome {}) not in the server log",
                record.protocol,
                record.outcome.as_deref().unwrap_or("?")
            ),
            Violation::NoOutcome { record } => {
                format!(
                    "allow record ({}) without an outcome record",
                    record.protocol
                )
            }
        }
    }
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {}#{} {} {} {}{}",
            self.session.get(..8).unwrap_or(&self.session),
            self.seq,
            if self.allowed { "allow" } else { "deny" },
            self.protocol,
            readable_sql(&self.statement),
            params_text(&self.parameters)
        )?;
        if !self.allowed {
            write!(f, " rule {}", self.rule)?;
        }
        if let Some(o) = &self.outcome {
            write!(f, " → {o}")?;
        }
        for (name, text) in &self.prepared {
            write!(f, " (prepared {name}: {})", readable_sql(text))?;
        }
        Ok(())
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unrecorded { executed, nearest } => {
                write!(f, "{executed}\n      has no allow record")?;
                if let Some(r) = nearest {
                    write!(f, "; nearest: {r}")?;
                }
                Ok(())
            }
            Violation::Unlogged { record } => {
                write!(f, "{record}\n      is not in the server log")
            }
            Violation::NoOutcome { record } => write!(f, "{record}\n      has no outcome record"),
        }
    }
}

/// What a comparison covered.
#[derive(Debug, Default)]
pub struct Coverage {
    pub simple: usize,
    pub execute: usize,
    pub execute_fetch: usize,
    pub function_calls: usize,
    pub with_parameters: usize,
    pub with_prepare_detail: usize,
    pub allowed: usize,
    pub denied: usize,
    pub not_logged_error: usize,
    pub not_logged_not_run: usize,
}

impl Coverage {
    pub fn add(&mut self, piece: &Piece) {
        for e in &piece.executed {
            match e.protocol {
                Protocol::Simple => self.simple += 1,
                Protocol::Extended if e.how.starts_with("execute fetch") => self.execute_fetch += 1,
                Protocol::Extended => self.execute += 1,
                Protocol::FunctionCall => self.function_calls += 1,
            }
            self.with_parameters += usize::from(e.parameters.is_some());
            self.with_prepare_detail += usize::from(e.prepare.is_some());
        }
        for r in &piece.records {
            if r.allowed {
                self.allowed += 1;
            } else {
                self.denied += 1;
            }
            match r.outcome.as_deref() {
                Some("error") => self.not_logged_error += 1,
                Some("not_run") => self.not_logged_not_run += 1,
                _ => {}
            }
        }
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server log: {} Query statements, {} Executes, {} Executes fetching more, {} function \
             calls, {} with parameters, {} with a prepare detail; records: {} allowed (outcome error {}, \
             not_run {}), {} denied",
            self.simple,
            self.execute,
            self.execute_fetch,
            self.function_calls,
            self.with_parameters,
            self.with_prepare_detail,
            self.allowed,
            self.not_logged_error,
            self.not_logged_not_run,
            self.denied
        )
    }
}

/// One piece of both streams: what ends at marker `marker` (and began after the previous
/// marker both streams have).
pub struct Piece {
    pub marker: u64,
    pub executed: Vec<Executed>,
    pub records: Vec<Recorded>,
    pub violations: Vec<Violation>,
}

/// Cuts both streams at the markers they share and aligns each piece. What follows the last
/// shared marker is a piece with marker `u64::MAX`.
pub fn compare(executed: Vec<Executed>, records: Vec<Recorded>) -> Vec<Piece> {
    let logged: BTreeSet<u64> = executed
        .iter()
        .filter(|e| e.protocol == Protocol::Simple)
        .filter_map(|e| marker_number(&e.text))
        .collect();
    let shared: BTreeSet<u64> = records
        .iter()
        .filter(|r| r.allowed && r.protocol == "simple")
        .filter_map(|r| marker_number(&r.statement))
        .filter(|n| logged.contains(n))
        .collect();
    let cut_log = cut(executed, |e| {
        (e.protocol == Protocol::Simple)
            .then(|| marker_number(&e.text))
            .flatten()
            .filter(|n| shared.contains(n))
    });
    let mut cut_records = cut(records, |r| {
        (r.allowed && r.protocol == "simple")
            .then(|| marker_number(&r.statement))
            .flatten()
            .filter(|n| shared.contains(n))
    });
    let mut pieces: Vec<Piece> = cut_log
        .into_iter()
        .map(|(marker, executed)| {
            let records = cut_records.remove(&marker).unwrap_or_default();
            Piece {
                violations: align(&executed, &records),
                marker,
                executed,
                records,
            }
        })
        .collect();
    pieces.extend(cut_records.into_iter().map(|(marker, records)| Piece {
        violations: align(&[], &records),
        marker,
        executed: Vec::new(),
        records,
    }));
    pieces.sort_by_key(|p| p.marker);
    pieces
}

/// Splits items at the markers `marker_of` finds (each marker ends its piece, and is dropped).
fn cut<T>(
    items: Vec<T>,
    marker_of: impl Fn(&T) -> Option<u64>,
) -> std::collections::BTreeMap<u64, Vec<T>> {
    let mut out = std::collections::BTreeMap::new();
    let mut piece = Vec::new();
    for item in items {
        match marker_of(&item) {
            Some(n) => {
                out.insert(n, std::mem::take(&mut piece));
            }
            None => piece.push(item),
        }
    }
    if !piece.is_empty() {
        out.insert(u64::MAX, piece);
    }
    out
}

/// The cheapest alignment of executions with allow records: an unmatched execution costs 1, an
/// unmatched allow record that ran costs 1, one that did not run (or has no tokens) nothing.
fn align(executed: &[Executed], records: &[Recorded]) -> Vec<Violation> {
    let allowed: Vec<&Recorded> = records.iter().filter(|r| r.allowed).collect();
    let (n, m) = (executed.len(), allowed.len());
    let skip_record = |r: &Recorded| usize::from(!may_be_unlogged(r));
    // cost[i][j]: cheapest alignment of executed[i..] with allowed[j..].
    let mut cost = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..=n).rev() {
        for j in (0..=m).rev() {
            if i == n && j == m {
                continue;
            }
            let mut best = usize::MAX;
            if i < n {
                best = best.min(1 + cost[i + 1][j]);
            }
            if j < m {
                best = best.min(skip_record(allowed[j]) + cost[i][j + 1]);
            }
            if i < n && j < m && matches(&executed[i], allowed[j]) {
                best = best.min(cost[i + 1][j + 1]);
            }
            cost[i][j] = best;
        }
    }
    let mut violations = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && matches(&executed[i], allowed[j]) && cost[i][j] == cost[i + 1][j + 1] {
            i += 1;
            j += 1;
        } else if j < m && cost[i][j] == skip_record(allowed[j]) + cost[i][j + 1] {
            if !may_be_unlogged(allowed[j]) {
                violations.push(Violation::Unlogged {
                    record: allowed[j].clone(),
                });
            }
            j += 1;
        } else {
            let e = &executed[i];
            let nearest = records
                .iter()
                .find(|r| r.statement == e.text && !r.allowed)
                .or_else(|| records.iter().find(|r| r.statement == e.text))
                .or_else(|| {
                    records
                        .iter()
                        .find(|r| !r.statement.is_empty() && e.text.contains(&r.statement))
                })
                .cloned();
            violations.push(Violation::Unrecorded {
                executed: e.clone(),
                nearest,
            });
            i += 1;
        }
    }
    violations.extend(allowed.iter().filter(|r| r.outcome.is_none()).map(|r| {
        Violation::NoOutcome {
            record: (*r).clone(),
        }
    }));
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_as_values() {
        let same = |a: &str, b: &str| same_value(&Some(a.into()), &Some(b.into()));
        assert!(same("01", "1") && same(" +3", "3") && same("\\xffffffff", "-1"));
        assert!(same("\\x6869", "hi"));
        assert!(same("\\xc3bc", "Ã¼"), "UTF-8 bytes read as LATIN1");
        assert!(!same("\\x00000004", "5") && !same("a", "b"));
        assert!(same_value(&None, &None) && !same_value(&None, &Some("NULL".into())));
    }

    fn executed(text: &str, parameters: Option<Vec<Option<String>>>) -> Executed {
        Executed {
            pid: 1,
            protocol: if parameters.is_some() {
                Protocol::Extended
            } else {
                Protocol::Simple
            },
            how: "statement".into(),
            text: text.into(),
            parameters,
            prepare: None,
        }
    }

    fn recorded(text: &str, allowed: bool, outcome: Option<&str>, protocol: &str) -> Recorded {
        Recorded {
            session: "s".into(),
            seq: 0,
            protocol: protocol.into(),
            statement: text.into(),
            parameters: None,
            allowed,
            rule: String::new(),
            outcome: outcome.map(str::to_string),
            prepared: Vec::new(),
        }
    }

    #[test]
    fn alignment_finds_both_properties() {
        let ok = |t| recorded(t, true, Some("ok"), "simple");
        let failed = |t| recorded(t, true, Some("error"), "simple");
        // An earlier record of the same text that failed is passed over, not matched.
        let v = align(
            &[executed("SELECT 1", None)],
            &[failed("SELECT 1"), ok("SELECT 1")],
        );
        assert!(v.is_empty(), "{v:?}");
        let v = align(
            &[],
            &[
                failed("SELECT 1"),
                recorded(";", true, Some("ok"), "simple"),
            ],
        );
        assert!(v.is_empty(), "{v:?}");
        let v = align(&[executed("SELECT 2", None)], &[ok("SELECT 1")]);
        assert!(
            matches!(
                &v[..],
                [Violation::Unlogged { .. }, Violation::Unrecorded { .. }]
                    | [Violation::Unrecorded { .. }, Violation::Unlogged { .. }]
            ),
            "{v:?}"
        );
        let v = align(
            &[executed("DROP TABLE t", None)],
            &[recorded("DROP TABLE t", false, None, "simple")],
        );
        let [Violation::Unrecorded {
            nearest: Some(r), ..
        }] = &v[..]
        else {
            panic!("{v:?}")
        };
        assert!(!r.allowed);
        // Out of order: one of the two cannot match.
        let v = align(
            &[executed("SELECT 2", None), executed("SELECT 1", None)],
            &[ok("SELECT 1"), ok("SELECT 2")],
        );
        assert_eq!(v.len(), 2, "{v:?}");
        // Parameters and protocol count.
        let mut with = recorded("SELECT $1", true, Some("ok"), "extended");
        with.parameters = Some(vec![Some("1".into())]);
        assert!(align(
            &[executed("SELECT $1", Some(vec![Some("01".into())]))],
            &[with.clone()]
        )
        .is_empty());
        assert_eq!(
            align(&[executed("SELECT $1", Some(vec![None]))], &[with.clone()]).len(),
            2
        );
        // Logged in a failed transaction block: no parameters, and the record says error.
        let mut logged = executed("SELECT $1", Some(vec![]));
        logged.parameters = None;
        assert_eq!(align(&[logged.clone()], &[with.clone()]).len(), 2);
        with.outcome = Some("error".into());
        assert!(align(&[logged], &[with]).is_empty());
    }

    #[test]
    fn empty_statements() {
        assert!(is_empty_statement(" ;\n-- x\n/* y */;"));
        assert!(!is_empty_statement("-- x\nSELECT 1"));
    }
}
