//! Judging a batch of client messages: each Query, Parse, Bind, Describe, Execute and Close is
//! read under the context the server will read it in, its names resolved as the server will
//! resolve them, and the statements that will run judged, recorded and planned for masking.
//! Judging changes nothing in the session; [`super::Inspector::commit`] does, once the batch goes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::context::{Lexing, Unread};
use super::queue::{self, Audited, Effects, Entry, Lookup, Note, Sent, Settled};
use super::registry::{
    Effect, ExactParameters, Matched, Name, Origin, Portal, Statement as Definition,
};
use super::{refusal, Counters, Inspector};
use crate::audit::statement::{self, Decision, DecisionKind, Protocol};
use crate::guard::{self, Verdict};
use crate::mask::{self, MaskPlan};
use crate::policy::{Approval, StatementClass};
use crate::proxy::wire::framing::Frame;
use crate::proxy::wire::frontend::{self, Bind, Frontend, Target};
use crate::proxy::wire::sqlstate;
use crate::sql::{Analysis, Dialect, Outcome, Statement};

/// A statement an approval rule holds: the `message`th of the batch (a Query, or the Execute of a
/// portal, with its Bind values).
#[derive(Debug, Clone)]
pub struct Hold {
    pub message: usize,
    /// What the reviewer sees: the text, and for EXECUTE what it executes.
    pub statement: String,
    /// The text as the server reads it (what pgid asks a planner of its own connection about).
    pub sql: String,
    /// The text as the client sent it (what pgid asks the session's own connection about).
    pub raw_sql: Bytes,
    pub tables: Vec<String>,
    pub rule: Approval,
    /// Bind values as reviewers see them (`None`: the simple protocol).
    pub parameters: Option<Vec<Option<String>>>,
    pub exact: Arc<ExactParameters>,
    /// Canonical text + exact parameters with their types and formats: what a retry-mode
    /// approval is for.
    pub fingerprint: String,
}

/// What a batch of client messages became.
pub struct Judged {
    /// Messages judged (the first `consumed` of the batch); the rest wait for the server.
    pub consumed: usize,
    /// Judge the rest once the queue entry with this id has been answered.
    pub wait_for: Option<u64>,
    /// A Terminate ends the batch (not counted in `consumed`).
    pub terminate: bool,
    /// The client broke the protocol at message `consumed`: the session ends with this.
    pub protocol_error: Option<String>,
    /// `None`: forward the judged messages as they came.
    pub out: Option<BytesMut>,
    /// Decision records to make durable before forwarding.
    pub records: Vec<String>,
    /// Statements held for approval: nothing of the batch goes on until they are decided.
    pub holds: Vec<Hold>,
    pub(super) entries: Vec<Entry>,
    pub(super) refusals: Vec<(u64, BytesMut)>,
    pub(super) started: Vec<u64>,
    pub(super) counters: Counters,
}

impl Judged {
    /// This batch replaces `failed`, whose decision records may have reached a sink: its record
    /// numbers stay used.
    pub fn replaces(&mut self, failed: &Judged) {
        self.counters.seq = self.counters.seq.max(failed.counters.seq);
    }
}

/// Why judging stops at a message.
enum Stop {
    /// Its meaning depends on the answer to this queue entry.
    Wait(u64),
    /// The client broke the protocol: the session ends.
    Protocol(String),
}

/// What one message became.
enum Step {
    /// Forwarded as it came.
    Keep(Option<Entry>),
    /// Forwarded as these bytes instead.
    Replace(BytesMut, Option<Entry>),
    /// Not forwarded (its effect is pgid's alone).
    Terminate,
}

/// A reason to refuse, with the SQLSTATE the client gets.
struct Refusal {
    verdict: Verdict,
    code: &'static str,
}

fn deny(rule: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        verdict: Verdict::Deny {
            rule,
            reason: reason.into(),
        },
        code: sqlstate::INSUFFICIENT_PRIVILEGE,
    }
}

impl From<Verdict> for Refusal {
    fn from(verdict: Verdict) -> Refusal {
        Refusal {
            verdict,
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
        }
    }
}

/// Classes and tables of a statement as records show them.
fn names(st: &Statement) -> (Vec<StatementClass>, Vec<String>) {
    let classes = st.classes.iter().copied().collect();
    let tables = st
        .tables
        .iter()
        .map(|(s, t)| {
            if s.is_empty() {
                t.clone()
            } else {
                format!("{s}.{t}")
            }
        })
        .collect();
    (classes, tables)
}

/// The classes and tables of every statement of a multi-statement string, for its record.
fn merged(a: &Analysis) -> Statement {
    let mut m = Statement::default();
    for st in &a.statements {
        m.classes.extend(st.classes.iter().copied());
        m.tables.extend(st.tables.iter().cloned());
    }
    m
}

/// The masked columns the plans read, for the decision record.
fn masked_columns(plans: &[MaskPlan]) -> Vec<String> {
    let mut all: Vec<String> = plans
        .iter()
        .flat_map(|p| match p {
            MaskPlan::Mask { columns, .. } => columns.clone(),
            _ => Vec::new(),
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The definitions a statement refers to by name, resolved where it runs.
#[derive(Default)]
struct References {
    /// `EXECUTE name`: the prepared statement.
    executes: Vec<(String, Arc<Definition>)>,
    /// `FETCH … name` / `MOVE`: the cursor, when pgid knows it.
    fetches: Vec<(String, Option<Arc<Portal>>)>,
}

/// A judgement in progress over one batch.
struct Batch<'s> {
    insp: &'s Inspector,
    decided: &'s HashMap<usize, Verdict>,
    audit_down: bool,
    entries: Vec<Entry>,
    counters: Counters,
    records: Vec<String>,
    refusals: Vec<(u64, BytesMut)>,
    started: HashSet<u64>,
    holds: Vec<Hold>,
    /// Effects of the statements of the Query being judged, in order (a later statement of the
    /// same string runs only if the earlier ones succeeded).
    query_effects: Vec<Effect>,
}

impl Inspector {
    /// Judges the client messages `frames` (of which `chunk` holds the whole ones, in order)
    /// against the session's state, which it does not change. `decided`: verdicts reached for
    /// held messages of this batch. With `audit_down` every statement is refused.
    pub async fn judge(
        &self,
        frames: &[Frame],
        decided: &HashMap<usize, Verdict>,
        audit_down: bool,
    ) -> Judged {
        let mut b = Batch {
            insp: self,
            decided,
            audit_down,
            entries: Vec::new(),
            counters: self.counters,
            records: Vec::new(),
            refusals: Vec::new(),
            started: HashSet::new(),
            holds: Vec::new(),
            query_effects: Vec::new(),
        };
        let mut out: Option<BytesMut> = None;
        let mut consumed = 0;
        let mut wait_for = None;
        let mut terminate = false;
        for (i, frame) in frames.iter().enumerate() {
            let step = match b.message(i, frame).await {
                Ok(step) => step,
                Err(Stop::Wait(id)) => {
                    wait_for = Some(id);
                    break;
                }
                Err(Stop::Protocol(m)) => {
                    // What was judged so far goes on; the session ends at this message.
                    return b.finish(consumed, None, Some(m), out);
                }
            };
            match step {
                Step::Keep(entry) => {
                    if let Some(o) = out.as_mut() {
                        if let Frame::Whole(bytes) = frame {
                            o.extend_from_slice(bytes);
                        }
                    }
                    b.entries.extend(entry);
                }
                Step::Replace(bytes, entry) => {
                    let o = out.get_or_insert_with(|| {
                        let mut o = BytesMut::new();
                        for f in &frames[..i] {
                            if let Frame::Whole(bytes) = f {
                                o.extend_from_slice(bytes);
                            }
                        }
                        o
                    });
                    o.extend_from_slice(&bytes);
                    b.entries.extend(entry);
                }
                Step::Terminate => {
                    terminate = true;
                    break;
                }
            }
            consumed = i + 1;
        }
        let mut judged = b.finish(consumed, wait_for, None, out);
        judged.terminate = terminate;
        judged
    }

    /// A statement defined before a policy reload, judged again under the new rules.
    pub(super) async fn rejudge(&self, old: &Definition) -> Definition {
        let outcome = self
            .analyzer
            .analyze(&old.text, old.dialect, self.max_statement_bytes())
            .await;
        let (verdict, plans) = match self.static_verdict(&outcome) {
            Err(r) => (r.verdict, Vec::new()),
            Ok(()) => match self.mask_plans(&outcome, &[]) {
                Ok(p) => (Verdict::Allow, p),
                Err(r) => (r.verdict, Vec::new()),
            },
        };
        Definition {
            id: old.id,
            origin: old.origin,
            text: old.text.clone(),
            raw_text: old.raw_text.clone(),
            dialect: old.dialect,
            analysis: outcome,
            index: old.index,
            verdict,
            mask: plans.get(old.index).cloned().unwrap_or(MaskPlan::Untouched),
            parameter_types: old.parameter_types.clone(),
        }
    }

    /// The guardrails that need nothing but the text: classes, WHERE, functions, pgid's schema.
    fn static_verdict(&self, outcome: &Outcome) -> Result<(), Refusal> {
        let a = match &**outcome {
            Err(e) => return Err(deny("analysis", e.to_string())),
            Ok(a) => a,
        };
        // Names a statement refers to are judged where it runs ([`Batch::references`]).
        let any = Statement::default();
        match guard::check(a, &self.rules.guardrails, &|_| Some(any.clone())) {
            Verdict::Allow => Ok(()),
            v => Err(v.into()),
        }
    }

    /// The masking plan of each statement (empty when the policy masks nothing); `refs[i]` are
    /// the definitions statement `i` executes or fetches from.
    fn mask_plans(&self, outcome: &Outcome, refs: &[References]) -> Result<Vec<MaskPlan>, Refusal> {
        let (Some(setup), Ok(a)) = (&self.rules.masks, &**outcome) else {
            return Ok(Vec::new());
        };
        let mut plans = Vec::with_capacity(a.statements.len());
        for (i, st) in a.statements.iter().enumerate() {
            if let Some(f) = mask::plan::user_function(st, &setup.user_functions) {
                return Err(deny(
                    "mask",
                    format!(
                        "function {f} is not built in; under a policy with masked columns only \
                         built-in functions may be called"
                    ),
                ));
            }
            let mut plan = mask::plan(st, &setup.columns);
            if let Some(r) = refs.get(i) {
                for (_, def) in &r.executes {
                    plan = mask::plan::merge(plan, def.mask.clone());
                }
                for (name, cursor) in &r.fetches {
                    match cursor {
                        Some(p) => plan = mask::plan::merge(plan, p.statement.mask.clone()),
                        None => {
                            return Err(deny(
                                "mask",
                                format!(
                                    "cursor \"{name}\" was not declared through pgid; under a \
                                     policy with masked columns its rows cannot be masked"
                                ),
                            ))
                        }
                    }
                }
            }
            if let MaskPlan::Refuse(reason) = plan {
                return Err(deny("mask", reason));
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// The approval rule statements fall under, if any (`prepared`: names and texts of the
    /// prepared statements among them, shown to the reviewer).
    fn approval_rule(
        &self,
        statements: &[&Statement],
        prepared: Vec<(String, String)>,
    ) -> Option<Matched> {
        if self.rules.approvals.is_empty() {
            return None;
        }
        let rule = crate::approval::rule_for(statements, &self.rules.approvals)?.clone();
        Some(Matched {
            rule,
            tables: statements.iter().flat_map(|s| names(s).1).collect(),
            prepared,
        })
    }

    fn shown<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if self.rules.audit.normalize_literals {
            if let Some(n) = crate::sql::normalize(sql) {
                return n.into();
            }
        }
        sql.into()
    }
}

impl<'s> Batch<'s> {
    fn finish(
        self,
        consumed: usize,
        wait_for: Option<u64>,
        protocol_error: Option<String>,
        out: Option<BytesMut>,
    ) -> Judged {
        Judged {
            consumed,
            wait_for,
            terminate: protocol_error.is_some(),
            protocol_error,
            out,
            records: self.records,
            holds: self.holds,
            entries: self.entries,
            refusals: self.refusals,
            started: self.started.into_iter().collect(),
            counters: self.counters,
        }
    }

    fn entry(&mut self, sent: Sent) -> Entry {
        self.counters.entry += 1;
        Entry::new(self.counters.entry, sent)
    }

    fn definition_id(&mut self) -> u64 {
        self.counters.definition += 1;
        self.counters.definition
    }

    /// Everything sent or about to be, oldest first.
    fn pending(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.insp.queue.entries().chain(self.entries.iter())
    }

    /// The lexing context the next message is read under, when known now.
    fn lexing(&self) -> (Option<Lexing>, Settled) {
        let settled = queue::settled(self.pending());
        let known = (settled == Settled::Now).then_some(self.insp.context.current);
        (known, settled)
    }

    /// Reads a message string as the server will.
    fn read<'a>(
        &self,
        bytes: &'a [u8],
        sql: bool,
    ) -> Result<Result<(Cow<'a, str>, Dialect), Refusal>, Stop> {
        let (known, settled) = self.lexing();
        match self.insp.context.read(bytes, known, sql) {
            Ok(t) => Ok(Ok(t)),
            Err(Unread::Refused(verdict, code)) => Ok(Err(Refusal { verdict, code })),
            Err(Unread::NeedsContext) => match settled {
                Settled::After(id) => Err(Stop::Wait(id)),
                _ => Ok(Err(deny(
                    "lexing",
                    "how the server reads this text depends on client_encoding or \
                     standard_conforming_strings, which a statement sent earlier in the same \
                     pipeline may change before the server reads it; send a Sync first",
                ))),
            },
        }
    }

    /// A name as the server keys it.
    fn name(&self, bytes: &[u8]) -> Result<Result<Name, Refusal>, Stop> {
        Ok(self.read(bytes, false)?.map(|(t, _)| Name::new(&t)))
    }

    fn statement(&self, name: &Name) -> Result<Option<Arc<Definition>>, Stop> {
        if let Some(found) = self
            .query_effects
            .iter()
            .rev()
            .find_map(|e| super::registry::Touches::<Definition>::touches(e, name))
        {
            return Ok(found);
        }
        match queue::resolve(self.pending(), name, || self.insp.registry.statement(name)) {
            Lookup::Known(d) => Ok(d),
            Lookup::Wait(id) => Err(Stop::Wait(id)),
        }
    }

    fn portal(&self, name: &Name) -> Result<Option<Arc<Portal>>, Stop> {
        if let Some(found) = self
            .query_effects
            .iter()
            .rev()
            .find_map(|e| super::registry::Touches::<Portal>::touches(e, name))
        {
            return Ok(found);
        }
        match queue::resolve(self.pending(), name, || self.insp.registry.portal(name)) {
            Lookup::Known(p) => Ok(p),
            Lookup::Wait(id) => Err(Stop::Wait(id)),
        }
    }

    /// Registers a refusal; returns its number and the error the client will get.
    fn refusal(&mut self, r: &Refusal) -> u64 {
        self.counters.refusal += 1;
        let n = self.counters.refusal;
        tracing::info!(reason = %r.verdict.message().unwrap_or_default(), "statement refused");
        let err = refusal::error(self.insp.context.current.encoding, r.code, &r.verdict);
        self.refusals.push((n, err));
        n
    }

    /// A refused Query: a stand-in Query in its place.
    fn refuse_query(&mut self, r: &Refusal) -> Step {
        let n = self.refusal(r);
        let mut e = self.entry(Sent::Query);
        e.refusal = Some(n);
        Step::Replace(self.insp.refusals.query(n), Some(e))
    }

    /// A refused extended-protocol message: a failing Parse in its place (the server skips to
    /// Sync after it), under the client's statement name when it replaces a Parse.
    fn refuse_extended(&mut self, r: &Refusal, name: Option<&[u8]>) -> Step {
        let n = self.refusal(r);
        let mut e = self.entry(Sent::Parse);
        e.refusal = Some(n);
        Step::Replace(self.insp.refusals.parse(n, name), Some(e))
    }

    /// A decision record; returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    fn decision(
        &mut self,
        protocol: Protocol,
        sql: &str,
        parameters: Option<&[Option<String>]>,
        analysis: Option<&Statement>,
        masked: &[String],
        prepared: &[(String, String)],
        verdict: &Verdict,
    ) -> u64 {
        self.counters.seq += 1;
        let (classes, tables) = analysis.map(names).unwrap_or_default();
        let (decision, rule, reason) = match verdict {
            Verdict::Allow => (DecisionKind::Allow, None, None),
            Verdict::Deny { rule, reason } => {
                (DecisionKind::Deny, Some(*rule), Some(reason.as_str()))
            }
        };
        let text = self.insp.shown(sql);
        let prepared: Vec<statement::Prepared> = prepared
            .iter()
            .map(|(name, text)| statement::Prepared {
                name,
                statement: text,
            })
            .collect();
        self.records.push(self.insp.records.decision(&Decision {
            seq: self.counters.seq,
            protocol,
            statement: &text,
            parameters: parameters.filter(|_| self.insp.rules.audit.parameters),
            classes: &classes,
            tables: &tables,
            masked,
            prepared: &prepared,
            decision,
            rule,
            reason,
            sqlstate: (decision == DecisionKind::Deny).then_some(sqlstate::INSUFFICIENT_PRIVILEGE),
        }));
        self.counters.seq
    }

    fn audited(&self, seq: u64) -> Option<Audited> {
        Some(Audited {
            seq,
            started: std::time::Instant::now(),
        })
    }

    async fn message(&mut self, i: usize, frame: &Frame) -> Result<Step, Stop> {
        let bytes = match frame {
            Frame::Oversized { tag, len } => return Ok(self.oversized(*tag, *len)),
            Frame::Whole(b) => b,
        };
        let m =
            Frontend::decode(bytes[0], &bytes[5..]).map_err(|e| Stop::Protocol(e.to_string()))?;
        if self.audit_down && matches!(m, Frontend::Query { .. } | Frontend::Execute { .. }) {
            let r = deny(
                "audit",
                "the audit log is unavailable; statements are refused until it recovers",
            );
            return Ok(match m {
                Frontend::Query { .. } => self.refuse_query(&r),
                _ => self.refuse_extended(&r, None),
            });
        }
        match m {
            Frontend::Query { sql } => self.query(i, sql).await,
            Frontend::Parse {
                name,
                sql,
                parameter_types,
            } => self.parse(name, sql, parameter_types).await,
            Frontend::Bind(bind) => self.bind(&bind),
            Frontend::Describe { target, name } => self.describe(target, name),
            Frontend::Execute { portal, .. } => self.execute(i, bytes, portal),
            Frontend::Close { target, name } => self.close(target, name),
            Frontend::Sync => Ok(Step::Keep(Some(self.entry(Sent::Sync)))),
            Frontend::Flush | Frontend::CopyData | Frontend::CopyDone | Frontend::CopyFail => {
                Ok(Step::Keep(None))
            }
            Frontend::FunctionCall => {
                // It names a function by OID, which no policy can be checked against.
                let r = deny("deny", "the FunctionCall protocol message is not allowed");
                self.decision(
                    Protocol::Extended,
                    "<FunctionCall>",
                    None,
                    None,
                    &[],
                    &[],
                    &r.verdict,
                );
                Ok(self.refuse_query(&r))
            }
            Frontend::Terminate => Ok(Step::Terminate),
        }
    }

    /// A message over its type's size limit: refused unread.
    fn oversized(&mut self, tag: u8, len: usize) -> Step {
        let what = match tag {
            b'Q' => "Query",
            b'P' => "Parse",
            b'B' => "Bind",
            b'F' => "FunctionCall",
            b'd' => "CopyData",
            _ => "message",
        };
        let limit = match tag {
            b'Q' | b'P' => "max_statement_bytes",
            b'B' | b'F' => "max_bind_bytes",
            b'd' => "max_copy_data_bytes",
            _ => "the message size limit",
        };
        let r = Refusal {
            verdict: Verdict::Deny {
                rule: "max_message_bytes",
                reason: format!("a {what} message of {len} bytes is over {limit}; it was not read"),
            },
            code: sqlstate::PROGRAM_LIMIT_EXCEEDED,
        };
        let shown = format!("<{what} message of {len} bytes, not read>");
        if matches!(tag, b'Q' | b'P' | b'B' | b'F') {
            self.decision(Protocol::Simple, &shown, None, None, &[], &[], &r.verdict);
        }
        match tag {
            b'Q' | b'F' => self.refuse_query(&r),
            b'd' => {
                let mut fail = BytesMut::new();
                frontend::copy_fail(&mut fail, &r.verdict.message().unwrap_or_default());
                Step::Replace(fail, None)
            }
            _ => self.refuse_extended(&r, None),
        }
    }

    /// The definitions statement `st` refers to, as they stand when it runs.
    fn references(&self, st: &Statement) -> Result<Result<References, Refusal>, Stop> {
        let mut r = References::default();
        for name in &st.executes {
            match self.statement(&Name::new(name))? {
                Some(def) => r.executes.push((name.clone(), def)),
                None => {
                    return Ok(Err(deny(
                        "prepared",
                        format!("prepared statement \"{name}\" was not prepared through pgid"),
                    )))
                }
            }
        }
        for name in super::effects::fetches(st) {
            let cursor = self.portal(&Name::new(name))?;
            r.fetches.push((name.to_string(), cursor));
        }
        Ok(Ok(r))
    }

    /// What running these references means: refused if any is refused.
    fn check_references(&self, r: &References) -> Result<(), Refusal> {
        for (_, def) in &r.executes {
            if def.verdict != Verdict::Allow {
                return Err(def.verdict.clone().into());
            }
            let Some(inner) = def.statement() else {
                return Err(deny(
                    "prepared",
                    "the prepared statement could not be analysed",
                ));
            };
            let one = Analysis {
                statements: vec![inner.clone()],
            };
            let any = Statement::default();
            match guard::check(&one, &self.insp.rules.guardrails, &|_| Some(any.clone())) {
                Verdict::Allow => {}
                v => return Err(v.into()),
            }
        }
        Ok(())
    }

    async fn query(&mut self, i: usize, raw: &[u8]) -> Result<Step, Stop> {
        let (text, dialect) = match self.read(raw, true)? {
            Ok(t) => t,
            Err(r) => {
                self.decision(
                    Protocol::Simple,
                    &String::from_utf8_lossy(raw),
                    None,
                    None,
                    &[],
                    &[],
                    &r.verdict,
                );
                return Ok(self.refuse_query(&r));
            }
        };
        let outcome = self
            .insp
            .analyzer
            .analyze(&text, dialect, self.insp.max_statement_bytes())
            .await;
        // Statements of one string run in order; each sees what the ones before it defined.
        self.query_effects.clear();
        let judged = self.query_statements(&text, raw, dialect, &outcome);
        let Judgement {
            verdict,
            plans,
            per_statement,
            matched,
            prepared,
        } = judged?;
        self.query_effects.clear();
        let mut verdict = verdict.map(|()| Verdict::Allow);
        if let (Ok(Verdict::Allow), Some(matched)) = (&verdict, matched) {
            let held = HoldOf {
                message: i,
                sql: &text,
                raw_sql: raw,
                matched,
                parameters: None,
                exact: Arc::default(),
                dialect,
            };
            if let Some(v) = self.approval(held) {
                verdict = Ok(v);
            }
        }
        let a = outcome.as_ref().as_ref().ok();
        let merged_statement;
        let shown = match a {
            Some(a) if a.statements.len() == 1 => Some(&a.statements[0]),
            Some(a) if !a.statements.is_empty() => {
                merged_statement = merged(a);
                Some(&merged_statement)
            }
            _ => None,
        };
        let refusal = match verdict {
            Ok(Verdict::Allow) => None,
            Ok(v) => Some(Refusal::from(v)),
            Err(r) => Some(r),
        };
        let masked = if refusal.is_none() {
            masked_columns(&plans)
        } else {
            Vec::new()
        };
        let shown_verdict = refusal
            .as_ref()
            .map(|r| r.verdict.clone())
            .unwrap_or(Verdict::Allow);
        let seq = self.decision(
            Protocol::Simple,
            &text,
            None,
            shown,
            &masked,
            &prepared,
            &shown_verdict,
        );
        if let Some(r) = refusal {
            return Ok(self.refuse_query(&r));
        }
        let mut e = self.entry(Sent::Query);
        e.executes = true;
        e.audited = self.audited(seq);
        e.effects = Effects::PerStatement(per_statement);
        if !plans.is_empty() {
            e.note = Some(Arc::new(Note {
                plans,
                ..Note::default()
            }));
        }
        Ok(Step::Keep(Some(e)))
    }

    /// Judges each statement of a Query in order: its guardrails, what it refers to, its
    /// settings, its masking plan, and the registry effects it will have.
    fn query_statements(
        &mut self,
        text: &str,
        raw: &[u8],
        dialect: Dialect,
        outcome: &Outcome,
    ) -> Result<Judgement, Stop> {
        if let Err(r) = self.insp.static_verdict(outcome) {
            return Ok(refused(r));
        }
        let Ok(a) = &**outcome else {
            unreachable!("static_verdict refuses what did not analyse")
        };
        let mut refs = Vec::with_capacity(a.statements.len());
        let mut per_statement = Vec::with_capacity(a.statements.len());
        let mut held: Vec<&Statement> = Vec::new();
        let mut prepared_texts = Vec::new();
        for (index, st) in a.statements.iter().enumerate() {
            let r = match self.references(st)? {
                Ok(r) => r,
                Err(refusal) => return Ok(refused(refusal)),
            };
            if let Err(refusal) = self.check_references(&r) {
                return Ok(refused(refusal));
            }
            if let Err(refusal) = super::effects::settings_allowed(st) {
                return Ok(refused(refusal.into()));
            }
            // Preparing runs nothing: a PREPARE is not held; each EXECUTE is, as what it runs.
            if st.prepares.is_none() {
                held.push(st);
            }
            for (name, def) in &r.executes {
                prepared_texts.push((name.clone(), def.text.to_string()));
            }
            refs.push(r);
            let mut effects = Vec::new();
            if index == 0 {
                // A Query drops the unnamed statement and portal before it runs anything.
                effects.push(Effect::DropStatement(Name::unnamed()));
                effects.push(Effect::DropPortal(Name::unnamed()));
            }
            per_statement.push(effects);
        }
        let plans = match self.insp.mask_plans(outcome, &refs) {
            Ok(p) => p,
            Err(r) => return Ok(refused(r)),
        };
        // Now the definitions this string makes (after the plans, which they carry).
        for (index, st) in a.statements.iter().enumerate() {
            let effects = super::effects::of_statement(st, || {
                let id = self.definition_id();
                Arc::new(Definition {
                    id,
                    origin: Origin::Sql,
                    text: text.into(),
                    raw_text: Bytes::copy_from_slice(raw),
                    dialect,
                    analysis: outcome.clone(),
                    index,
                    verdict: Verdict::Allow,
                    mask: plans.get(index).cloned().unwrap_or(MaskPlan::Untouched),
                    parameter_types: Vec::new(),
                })
            });
            let effects = effects
                .into_iter()
                .map(|e| self.numbered(e))
                .collect::<Vec<_>>();
            self.query_effects.extend(effects.iter().cloned());
            per_statement[index].extend(effects);
        }
        // Inner statements of EXECUTEs count for approvals as what they run.
        let mut statements = held.clone();
        for r in &refs {
            for (_, def) in &r.executes {
                if let Some(inner) = def.statement() {
                    statements.push(inner);
                }
            }
        }
        let matched = self.insp.approval_rule(&statements, prepared_texts.clone());
        Ok(Judgement {
            verdict: Ok(()),
            plans,
            per_statement,
            matched,
            prepared: prepared_texts,
        })
    }

    /// Gives a portal defined by an effect its own definition id.
    fn numbered(&mut self, e: Effect) -> Effect {
        match e {
            Effect::DefinePortal(n, p) if p.id == 0 => {
                let id = self.definition_id();
                let mut q = Portal::clone_with(&p, p.statement.clone());
                q.id = id;
                Effect::DefinePortal(n, Arc::new(q))
            }
            other => other,
        }
    }

    async fn parse(
        &mut self,
        raw_name: &[u8],
        raw: &[u8],
        parameter_types: Vec<u32>,
    ) -> Result<Step, Stop> {
        let name = match self.name(raw_name)? {
            Ok(n) => n,
            Err(r) => return Ok(self.refuse_extended(&r, Some(raw_name))),
        };
        let (text, dialect) = match self.read(raw, true)? {
            Ok(t) => t,
            Err(r) => {
                self.decision(
                    Protocol::Extended,
                    &String::from_utf8_lossy(raw),
                    None,
                    None,
                    &[],
                    &[],
                    &r.verdict,
                );
                return Ok(self.refuse_extended(&r, Some(raw_name)));
            }
        };
        let outcome = self
            .insp
            .analyzer
            .analyze(&text, dialect, self.insp.max_statement_bytes())
            .await;
        // What it refers to is judged at each Execute, where the names resolve.
        let judged = self
            .insp
            .static_verdict(&outcome)
            .and_then(|()| {
                outcome
                    .as_ref()
                    .as_ref()
                    .ok()
                    .into_iter()
                    .flat_map(|a| a.statements.iter())
                    .try_for_each(super::effects::settings_allowed)
                    .map_err(Refusal::from)
            })
            .and_then(|()| {
                // A statement executing or fetching by name is planned at Execute.
                self.insp.mask_plans(&outcome, &[])
            });
        let plans = match judged {
            Ok(p) => p,
            Err(r) => {
                let first = outcome
                    .as_ref()
                    .as_ref()
                    .ok()
                    .and_then(|a| a.statements.first());
                self.decision(Protocol::Extended, &text, None, first, &[], &[], &r.verdict);
                return Ok(self.refuse_extended(&r, Some(raw_name)));
            }
        };
        let id = self.definition_id();
        let def = Arc::new(Definition {
            id,
            origin: Origin::Parse,
            text: text.as_ref().into(),
            raw_text: Bytes::copy_from_slice(raw),
            dialect,
            analysis: outcome,
            index: 0,
            verdict: Verdict::Allow,
            mask: plans.into_iter().next().unwrap_or(MaskPlan::Untouched),
            parameter_types,
        });
        let mut e = self.entry(Sent::Parse);
        e.effects = Effects::OnSuccess(vec![Effect::DefineStatement(name, def)]);
        Ok(Step::Keep(Some(e)))
    }

    fn bind(&mut self, bind: &Bind<'_>) -> Result<Step, Stop> {
        let (portal, name) = match (self.name(bind.portal)?, self.name(bind.statement)?) {
            (Ok(p), Ok(s)) => (p, s),
            (Err(r), _) | (_, Err(r)) => return Ok(self.refuse_extended(&r, None)),
        };
        let mut e = self.entry(Sent::Bind);
        e.executes = true;
        // A statement that does not exist fails the Bind at the server: nothing is defined.
        let Some(def) = self.statement(&name)? else {
            return Ok(Step::Keep(Some(e)));
        };
        let types: Vec<u32> = if def.parameter_types.iter().any(|t| *t != 0)
            || def.parameter_types.len() >= bind.values.len()
        {
            def.parameter_types.clone()
        } else {
            self.insp
                .registry
                .description(def.id)
                .and_then(|d| d.parameter_types.clone())
                .unwrap_or_default()
        };
        let encoding = self.insp.context.current.encoding;
        let record = self.insp.rules.audit.parameters;
        let held = self.could_be_held(&def);
        let parameters = if record || held {
            bind.values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let binary = bind.binary(i);
                    let text = match (v, binary, encoding) {
                        (Some(v), false, Some(enc)) if !v.is_ascii() => {
                            enc.decode(v).map(|t| t.into_owned().into_bytes()).ok()
                        }
                        _ => None,
                    };
                    let value = text.as_deref().or(*v);
                    statement::parameter(value, binary, types.get(i).copied().unwrap_or(0))
                })
                .collect()
        } else {
            Vec::new()
        };
        let exact = if held {
            ExactParameters {
                values: bind
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (bind.binary(i), v.map(<[u8]>::to_vec)))
                    .collect(),
                types: types.clone(),
            }
        } else {
            ExactParameters::default()
        };
        let id = self.definition_id();
        let p = Portal {
            id,
            statement: def,
            parameters,
            exact: Arc::new(exact),
            result_formats: bind.result_formats.clone(),
            holdable: false,
            cursor: false,
        };
        e.effects = Effects::OnSuccess(vec![Effect::DefinePortal(portal, Arc::new(p))]);
        Ok(Step::Keep(Some(e)))
    }

    /// Whether executions of `def` may be held for approval (then Bind keeps exact values).
    fn could_be_held(&self, def: &Definition) -> bool {
        if self.insp.rules.approvals.is_empty() {
            return false;
        }
        let Some(st) = def.statement() else {
            return false;
        };
        // An EXECUTE inside may run anything prepared: keep the values.
        !st.executes.is_empty() || self.insp.approval_rule(&[st], Vec::new()).is_some()
    }

    fn describe(&mut self, target: Target, raw_name: &[u8]) -> Result<Step, Stop> {
        let name = match self.name(raw_name)? {
            Ok(n) => n,
            Err(r) => return Ok(self.refuse_extended(&r, None)),
        };
        let id = match target {
            Target::Statement => self.statement(&name)?.map(|d| d.id),
            Target::Portal => self.portal(&name)?.map(|p| p.id),
        };
        let mut e = self.entry(Sent::Describe);
        e.note = Some(Arc::new(Note {
            describes: id,
            ..Note::default()
        }));
        Ok(Step::Keep(Some(e)))
    }

    fn close(&mut self, target: Target, raw_name: &[u8]) -> Result<Step, Stop> {
        let name = match self.name(raw_name)? {
            Ok(n) => n,
            Err(r) => return Ok(self.refuse_extended(&r, None)),
        };
        let mut e = self.entry(Sent::Close);
        e.effects = Effects::OnSuccess(vec![match target {
            Target::Statement => Effect::DropStatement(name),
            Target::Portal => Effect::DropPortal(name),
        }]);
        Ok(Step::Keep(Some(e)))
    }

    fn execute(&mut self, i: usize, frame: &Bytes, raw_portal: &[u8]) -> Result<Step, Stop> {
        let name = match self.name(raw_portal)? {
            Ok(n) => n,
            Err(r) => return Ok(self.refuse_extended(&r, None)),
        };
        let Some(portal) = self.portal(&name)? else {
            let r = deny(
                "prepared",
                format!("portal \"{}\" was not bound through pgid", name.display()),
            );
            self.decision(
                Protocol::Extended,
                &format!("<Execute of portal \"{}\">", name.display()),
                None,
                None,
                &[],
                &[],
                &r.verdict,
            );
            return Ok(self.refuse_extended(&r, None));
        };
        let def = portal.statement.clone();
        let st = def.statement().cloned();
        let started = self.insp.registry.started(portal.id) || self.started.contains(&portal.id);
        let judged = match (&def.verdict, &st) {
            (Verdict::Deny { .. }, _) => Err(Refusal::from(def.verdict.clone())),
            (_, None) => Err(deny("analysis", "the statement could not be analysed")),
            (_, Some(st)) => match self.references(st)? {
                Err(r) => Err(r),
                Ok(refs) => self.check_references(&refs).and_then(|()| {
                    let plan = if refs.executes.is_empty() && refs.fetches.is_empty() {
                        Ok(def.mask.clone())
                    } else {
                        let one: Outcome = Arc::new(Ok(Analysis {
                            statements: vec![st.clone()],
                        }));
                        self.insp
                            .mask_plans(&one, std::slice::from_ref(&refs))
                            .map(|p| p.into_iter().next().unwrap_or(MaskPlan::Untouched))
                    };
                    plan.map(|p| (p, refs))
                }),
            },
        };
        let (plan, refs) = match judged {
            Ok(x) => x,
            Err(r) => {
                self.decision(
                    Protocol::Extended,
                    &def.text,
                    Some(&portal.parameters),
                    st.as_ref(),
                    &[],
                    &[],
                    &r.verdict,
                );
                return Ok(self.refuse_extended(&r, None));
            }
        };
        let prepared: Vec<(String, String)> = refs
            .executes
            .iter()
            .map(|(n, d)| (n.clone(), d.text.to_string()))
            .collect();
        let mut verdict = Verdict::Allow;
        if !started {
            if let Some(st) = &st {
                let mut statements = vec![st];
                for (_, d) in &refs.executes {
                    statements.extend(d.statement());
                }
                if let Some(matched) = self.insp.approval_rule(&statements, prepared.clone()) {
                    let held = HoldOf {
                        message: i,
                        sql: &def.text,
                        raw_sql: &def.raw_text,
                        matched,
                        parameters: Some(portal.parameters.clone()),
                        exact: portal.exact.clone(),
                        dialect: def.dialect,
                    };
                    if let Some(v) = self.approval(held) {
                        verdict = v;
                    }
                }
            }
        }
        let masked = if verdict == Verdict::Allow {
            masked_columns(std::slice::from_ref(&plan))
        } else {
            Vec::new()
        };
        let seq = self.decision(
            Protocol::Extended,
            &def.text,
            Some(&portal.parameters),
            st.as_ref(),
            &masked,
            &prepared,
            &verdict,
        );
        if verdict != Verdict::Allow {
            return Ok(self.refuse_extended(&verdict.into(), None));
        }
        self.started.insert(portal.id);
        let mut e = self.entry(Sent::Execute);
        e.executes = true;
        e.audited = self.audited(seq);
        if let Some(st) = &st {
            let effects = super::effects::of_statement(st, || def.clone());
            let effects: Vec<Effect> = effects.into_iter().map(|e| self.numbered(e)).collect();
            e.effects = Effects::OnSuccess(effects);
        }
        let masked_plan = matches!(plan, MaskPlan::Mask { .. });
        e.note = Some(Arc::new(Note {
            plans: vec![plan],
            portal: Some(portal.clone()),
            ..Note::default()
        }));
        if masked_plan && !self.described(&portal) {
            // pgid's own Describe first, so it learns the columns; its answer stays with pgid.
            let mut d = self.entry(Sent::Describe);
            d.note = Some(Arc::new(Note {
                describes: Some(portal.id),
                swallow: true,
                ..Note::default()
            }));
            let mut both = BytesMut::new();
            frontend::describe(&mut both, Target::Portal, raw_portal);
            // The Execute as the client sent it (row limit included) follows pgid's Describe.
            both.extend_from_slice(frame);
            self.entries.push(d);
            return Ok(Step::Replace(both, Some(e)));
        }
        Ok(Step::Keep(Some(e)))
    }

    /// Whether pgid knows, or will know before its rows arrive, the columns of `portal`.
    fn described(&self, portal: &Portal) -> bool {
        let known = |id: u64| {
            self.insp
                .registry
                .description(id)
                .is_some_and(|d| d.fields.is_some())
        };
        if known(portal.id) || known(portal.statement.id) {
            return true;
        }
        self.pending().any(|e| {
            e.sent == Sent::Describe
                && e.note
                    .as_ref()
                    .and_then(|n| n.describes)
                    .is_some_and(|id| id == portal.id || id == portal.statement.id)
        })
    }

    /// A statement under an approval rule: a decision already taken for it (this batch judged
    /// again) stands; otherwise it is held (`wait`: until a reviewer decides; `retry`: until
    /// pgid has looked for an approval of this very statement). `Some` when decided.
    fn approval(&mut self, held: HoldOf<'_>) -> Option<Verdict> {
        if let Some(v) = self.decided.get(&held.message) {
            return Some(v.clone());
        }
        let exact: Vec<(bool, Option<&[u8]>)> = held
            .exact
            .values
            .iter()
            .map(|(binary, v)| (*binary, v.as_deref()))
            .collect();
        // What runs: the text, and for EXECUTE the statements it executes — shown to the
        // reviewer and part of what a retry-mode approval is for, with the parameters' types.
        let mut statement = held.sql.to_string();
        let mut canonical = crate::sql::canonical(held.sql, held.dialect);
        for (name, text) in &held.matched.prepared {
            statement.push_str(&format!("\n-- {name} was prepared as: {text}"));
            canonical.push_str(&format!(
                "\n{name}={}",
                crate::sql::canonical(text, held.dialect)
            ));
        }
        canonical.push_str(&format!("\n-- parameter types: {:?}", held.exact.types));
        self.holds.push(Hold {
            message: held.message,
            statement,
            sql: held.sql.to_string(),
            raw_sql: Bytes::copy_from_slice(held.raw_sql),
            tables: held.matched.tables,
            fingerprint: crate::approval::fingerprint(&canonical, &exact),
            rule: held.matched.rule,
            parameters: held.parameters,
            exact: held.exact,
        });
        None
    }
}

/// A statement an approval rule applies to, as [`Batch::approval`] takes it.
struct HoldOf<'a> {
    message: usize,
    sql: &'a str,
    raw_sql: &'a [u8],
    matched: Matched,
    parameters: Option<Vec<Option<String>>>,
    exact: Arc<ExactParameters>,
    dialect: Dialect,
}

/// What the statements of a Query came to.
struct Judgement {
    verdict: Result<(), Refusal>,
    plans: Vec<MaskPlan>,
    per_statement: Vec<Vec<Effect>>,
    matched: Option<Matched>,
    /// Names and texts of the prepared statements it executes (for its record).
    prepared: Vec<(String, String)>,
}

fn refused(r: Refusal) -> Judgement {
    Judgement {
        verdict: Err(r),
        plans: Vec::new(),
        per_statement: Vec::new(),
        matched: None,
        prepared: Vec::new(),
    }
}
