//! Judging a batch of client messages: each Query, Parse, Bind, Describe, Execute and Close is
//! read under the context the server will read it in, its names resolved as the server will
//! resolve them, and the statements that will run judged, recorded and planned for masking.
//! Judging changes nothing in the session; [`super::Inspector::commit`] does, once the batch goes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::context::{Lexing, Unread};
use super::queue::{self, Audited, CopySync, Entry, Lookup, Sent, Settled};
use super::registry::{Effect, ExactParameters, Matched, Name, Portal, Statement as Definition};
use super::{refusal, Counters, Inspector};
use crate::audit::statement::{self, Decision, DecisionKind, Protocol};
use crate::guard::{self, Verdict};
use crate::mask::{self, MaskPlan};
use crate::metrics::StatementDecision;
use crate::policy::{Approval, StatementClass};
use crate::proxy::wire::framing::Frame;
use crate::proxy::wire::frontend::{self, Frontend, Kind};
use crate::proxy::wire::sqlstate;
use crate::sql::{Analysis, AnalyzeError, Dialect, Outcome, Statement, SyntaxError};

/// A statement an approval rule holds: the `message`th of the batch (a Query, or the Execute of a
/// portal, with its Bind values).
#[derive(Debug, Clone)]
pub struct Hold {
    pub message: usize,
    /// The most consequential class of what it runs.
    pub class: Option<StatementClass>,
    /// What the reviewer sees: the text, and for EXECUTE what it executes.
    pub statement: String,
    /// The same as the audit log shows it (literals normalised when the policy says so).
    pub audited: String,
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
    /// The planner's estimate of what runs can be trusted (`min_rows`).
    pub estimable: bool,
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
    /// Decisions to count once the batch is committed (a batch may be judged again).
    pub(super) tally: Vec<Tally>,
}

/// A decision as `/metrics` counts it: the decision, the statement's most consequential class,
/// and the rule that refused it.
pub(super) type Tally = (
    StatementDecision,
    Option<StatementClass>,
    Option<&'static str>,
);

impl Judged {
    /// This batch replaces `failed`, whose decision records may have reached a sink: its record
    /// numbers stay used.
    pub fn replaces(&mut self, failed: &Judged) {
        self.counters.seq = self.counters.seq.max(failed.counters.seq);
    }
}

/// Why judging stops at a message.
pub(super) enum Stop {
    /// Its meaning depends on the answer to this queue entry.
    Wait(u64),
    /// The client broke the protocol: the session ends.
    Protocol(String),
}

/// What one message became.
pub(super) enum Step {
    /// Forwarded as it came.
    Keep(Option<Entry>),
    /// Forwarded as these bytes instead.
    Replace(BytesMut, Option<Entry>),
    /// Not forwarded (its effect is pgid's alone).
    Terminate,
}

/// A reason to refuse, with the SQLSTATE the client gets.
pub(super) struct Refusal {
    pub(super) verdict: Verdict,
    pub(super) code: &'static str,
    /// A statement the server cannot parse: the client gets the server's own error (message,
    /// SQLSTATE, position), never a pgid refusal — nothing was refused that the server would run.
    pub(super) syntax: Option<SyntaxError>,
}

pub(super) fn deny(rule: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        verdict: Verdict::Deny {
            rule,
            reason: reason.into(),
        },
        code: sqlstate::INSUFFICIENT_PRIVILEGE,
        syntax: None,
    }
}

impl From<Verdict> for Refusal {
    fn from(verdict: Verdict) -> Refusal {
        Refusal {
            code: code_of(&verdict),
            verdict,
            syntax: None,
        }
    }
}

/// The SQLSTATE of a refusal: a limit on pending approval requests is a configured limit,
/// everything else a missing privilege.
pub(super) fn code_of(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Deny {
            rule: "approval_limit",
            ..
        } => sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        _ => sqlstate::INSUFFICIENT_PRIVILEGE,
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
/// What the session may have made once `statements` ran, given what it had: relations (CREATE,
/// ALTER, DROP, and code, which can do either) and code (functions, DO, CALL — which can make
/// rules and triggers), after which a name may no longer mean what the catalog said.
pub(super) fn made_by(
    before: crate::approval::Made,
    statements: &[&Statement],
) -> crate::approval::Made {
    use StatementClass as C;
    let any = |classes: &[C]| {
        statements
            .iter()
            .any(|st| classes.iter().any(|c| st.classes.contains(c)))
    };
    let code = before.code || any(&[C::Function, C::Do, C::Call]);
    crate::approval::Made {
        relations: before.relations || code || any(&[C::Create, C::Alter, C::Drop]),
        code,
    }
}

pub(super) fn merged(a: &Analysis) -> Statement {
    let mut m = Statement::default();
    for st in &a.statements {
        m.classes.extend(st.classes.iter().copied());
        m.tables.extend(st.tables.iter().cloned());
    }
    m
}

/// The masked columns the plans read, for the decision record.
pub(super) fn masked_columns(plans: &[MaskPlan]) -> Vec<String> {
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
pub(super) struct References {
    /// `EXECUTE name`: the prepared statement.
    pub(super) executes: Vec<(String, Arc<Definition>)>,
    /// `FETCH … name` / `MOVE`: the cursor, when pgid knows it.
    pub(super) fetches: Vec<(String, Option<Arc<Portal>>)>,
}

impl References {
    /// Every definition that runs: the statements EXECUTEd and those of the portals FETCHed
    /// (a FETCH runs its portal's statement — a DECLAREd cursor's, or a protocol portal's).
    pub(super) fn definitions(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.executes.iter().map(|(_, d)| d).chain(
            self.fetches
                .iter()
                .filter_map(|(_, p)| p.as_ref().map(|p| &p.statement)),
        )
    }

    /// Portals FETCHed (they are started by it).
    pub(super) fn portals(&self) -> impl Iterator<Item = u64> + '_ {
        self.fetches
            .iter()
            .filter_map(|(_, p)| p.as_ref().map(|p| p.id))
    }
}

/// A judgement in progress over one batch.
pub(super) struct Batch<'s> {
    pub(super) insp: &'s Inspector,
    pub(super) decided: &'s HashMap<usize, Verdict>,
    pub(super) audit_down: bool,
    pub(super) entries: Vec<Entry>,
    pub(super) counters: Counters,
    pub(super) records: Vec<String>,
    pub(super) tally: Vec<Tally>,
    pub(super) refusals: Vec<(u64, BytesMut)>,
    pub(super) started: HashSet<u64>,
    pub(super) holds: Vec<Hold>,
    /// Effects of the statements of the Query being judged, in order (a later statement of the
    /// same string runs only if the earlier ones succeeded).
    pub(super) query_effects: Vec<Effect>,
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
            tally: Vec::new(),
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
    pub(super) fn static_verdict(&self, outcome: &Outcome) -> Result<(), Refusal> {
        let a = match &**outcome {
            Err(AnalyzeError::Syntax(s)) => {
                return Err(Refusal {
                    verdict: Verdict::Deny {
                        rule: "syntax",
                        reason: s.to_string(),
                    },
                    code: s.code,
                    syntax: Some(s.clone()),
                })
            }
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
    pub(super) fn mask_plans(
        &self,
        outcome: &Outcome,
        refs: &[References],
    ) -> Result<Vec<MaskPlan>, Refusal> {
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
                // What a prepared statement or portal returns reaches the client only through a
                // bare EXECUTE or FETCH; anything else (CREATE TABLE AS EXECUTE, EXPLAIN
                // EXECUTE …) would move or show the values unmasked.
                let bare = matches!(st.root.as_str(), "ExecuteStmt" | "FetchStmt");
                let masked = r
                    .definitions()
                    .any(|d| matches!(d.mask, MaskPlan::Mask { .. }));
                if masked && !bare {
                    return Err(deny(
                        "mask",
                        "what it runs by name uses masked columns; such a statement must be a \
                         plain EXECUTE or FETCH",
                    ));
                }
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
    /// `made`: what the session may have created or redefined (then names are not vouched for
    /// by the catalog read at its start).
    pub(super) fn approval_rule(
        &self,
        statements: &[&Statement],
        prepared: Vec<(String, String)>,
        made: crate::approval::Made,
    ) -> Option<Matched> {
        if self.rules.approvals.is_empty() {
            return None;
        }
        let rule = crate::approval::rule_for(
            statements,
            &self.rules.approvals,
            self.rules.relations.as_deref(),
            made,
        )?
        .clone();
        // What runs — an EXECUTE counts as the statement it executes — must be one statement
        // whose estimate the planner reads from statistics.
        let mut runs = statements.iter().filter(|s| s.root != "ExecuteStmt");
        let estimable = matches!((runs.next(), runs.next()), (Some(st), None) if st.estimable);
        Some(Matched {
            rule,
            class: statements
                .iter()
                .flat_map(|s| s.classes.iter().copied())
                .max(),
            tables: statements.iter().flat_map(|s| names(s).1).collect(),
            prepared,
            estimable,
        })
    }

    /// The text a record shows: with literals normalised away when the policy says so. pg_query's
    /// normaliser lexes as `standard_conforming_strings = on`; text it would read otherwise than
    /// the server does (a backslash in a `'…'` literal while the setting is off — such text is
    /// judged only under the setting the server reports) is shown as it is, never as some other
    /// statement (`'\'' ; DELETE …` is one literal to the normaliser, a DELETE to the server).
    pub(super) fn shown<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        let faithful = self.context.current.standard_strings
            || !crate::sql::depends_on_standard_conforming_strings(sql);
        if self.rules.audit.normalize_literals && faithful {
            if let Some(n) = crate::sql::normalize(sql) {
                return n.into();
            }
        }
        sql.into()
    }
}

impl<'s> Batch<'s> {
    pub(super) fn finish(
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
            tally: self.tally,
            holds: self.holds,
            entries: self.entries,
            refusals: self.refusals,
            started: self.started.into_iter().collect(),
            counters: self.counters,
        }
    }

    pub(super) fn entry(&mut self, sent: Sent) -> Entry {
        self.counters.entry += 1;
        let mut e = Entry::new(self.counters.entry, sent);
        e.copy = self.counters.copy;
        e
    }

    pub(super) fn definition_id(&mut self) -> u64 {
        self.counters.definition += 1;
        self.counters.definition
    }

    /// Everything sent or about to be, oldest first.
    pub(super) fn pending(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.insp.queue.entries().chain(self.entries.iter())
    }

    /// The lexing context the next message is read under, when known now.
    pub(super) fn lexing(&self) -> (Option<Lexing>, Settled) {
        let settled = queue::settled(self.pending(), self.insp.queue.unreported());
        let known = (settled == Settled::Now).then_some(self.insp.context.current);
        (known, settled)
    }

    /// Reads a message string as the server will.
    pub(super) fn read<'a>(
        &self,
        bytes: &'a [u8],
        sql: bool,
    ) -> Result<Result<(Cow<'a, str>, Dialect), Refusal>, Stop> {
        let (known, settled) = self.lexing();
        match self.insp.context.read(bytes, known, sql) {
            Ok(t) => Ok(Ok(t)),
            Err(Unread::Refused(verdict, code)) => Ok(Err(Refusal {
                verdict,
                code,
                syntax: None,
            })),
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
    pub(super) fn name(&self, bytes: &[u8]) -> Result<Result<Name, Refusal>, Stop> {
        Ok(self.read(bytes, false)?.map(|(t, _)| Name::new(&t)))
    }

    pub(super) fn statement(&self, name: &Name) -> Result<Option<Arc<Definition>>, Stop> {
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

    pub(super) fn portal(&self, name: &Name) -> Result<Option<Arc<Portal>>, Stop> {
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
    pub(super) fn refusal(&mut self, r: &Refusal) -> u64 {
        self.counters.refusal += 1;
        let n = self.counters.refusal;
        tracing::info!(reason = %r.verdict.message().unwrap_or_default(), "statement refused");
        let encoding = self.insp.context.current.encoding;
        let err = match &r.syntax {
            Some(s) => refusal::syntax_error(encoding, s),
            None => refusal::error(encoding, r.code, &r.verdict),
        };
        self.refusals.push((n, err));
        n
    }

    /// A refused Query: a stand-in Query in its place.
    pub(super) fn refuse_query(&mut self, r: &Refusal) -> Step {
        let n = self.refusal(r);
        let mut e = self.entry(Sent::Query);
        e.refusal = Some(n);
        Step::Replace(self.insp.refusals.query(n), Some(e))
    }

    /// A refused extended-protocol message: a failing Parse in its place (the server skips to
    /// Sync after it), under the client's statement name when it replaces a Parse.
    pub(super) fn refuse_extended(&mut self, r: &Refusal, name: Option<&[u8]>) -> Step {
        let n = self.refusal(r);
        let mut e = self.entry(Sent::Parse);
        e.refusal = Some(n);
        Step::Replace(self.insp.refusals.parse(n, name), Some(e))
    }

    /// A decision record; returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decision(
        &mut self,
        protocol: Protocol,
        sql: &str,
        parameters: Option<&[Option<String>]>,
        analysis: Option<&Statement>,
        masked: &[String],
        prepared: &[(String, String)],
        verdict: &Verdict,
        code: &'static str,
    ) -> u64 {
        self.counters.seq += 1;
        let (classes, tables) = analysis.map(names).unwrap_or_default();
        let (decision, rule, reason) = match verdict {
            Verdict::Allow => (DecisionKind::Allow, None, None),
            Verdict::Deny { rule, reason } => {
                (DecisionKind::Deny, Some(*rule), Some(reason.as_str()))
            }
        };
        let counted = match decision {
            DecisionKind::Allow => StatementDecision::Allow,
            DecisionKind::Deny => StatementDecision::Deny,
        };
        self.tally
            .push((counted, classes.iter().copied().max(), rule));
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
            sqlstate: (decision == DecisionKind::Deny).then_some(code),
        }));
        self.counters.seq
    }

    /// The record of a message refused before pgid knew what it would run.
    pub(super) fn denial(&mut self, protocol: Protocol, shown: &str, r: &Refusal) {
        self.decision(protocol, shown, None, None, &[], &[], &r.verdict, r.code);
    }

    pub(super) fn audited(&self, seq: u64) -> Option<Audited> {
        Some(Audited {
            seq,
            started: std::time::Instant::now(),
        })
    }

    pub(super) async fn message(&mut self, i: usize, frame: &Frame) -> Result<Step, Stop> {
        let bytes = match frame {
            Frame::Oversized { kind, len } => return Ok(self.oversized(*kind, *len)),
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
            Frontend::Sync => self.sync(),
            Frontend::Flush => Ok(Step::Keep(None)),
            Frontend::CopyData => {
                self.counters.copy.messages += 1;
                Ok(Step::Keep(None))
            }
            Frontend::CopyDone | Frontend::CopyFail => {
                self.counters.copy.messages += 1;
                self.counters.copy.ends += 1;
                Ok(Step::Keep(None))
            }
            Frontend::FunctionCall => {
                // It names a function by OID, which no policy can be checked against.
                let r = deny("deny", "the FunctionCall protocol message is not allowed");
                self.denial(Protocol::Extended, "<FunctionCall>", &r);
                Ok(self.refuse_query(&r))
            }
            Frontend::Terminate => Ok(Step::Terminate),
        }
    }

    /// A Sync: answered with ReadyForQuery, unless the server is reading COPY data (it ignores
    /// Syncs then).
    fn sync(&mut self) -> Result<Step, Stop> {
        if let Some(start) = self.insp.queue.copy_in() {
            match CopySync::of(start, self.counters.copy) {
                CopySync::Ignored => return Ok(Step::Keep(None)),
                CopySync::Unknowable => {
                    return Err(Stop::Protocol(
                        "a Sync among COPY data, before its CopyDone or CopyFail".into(),
                    ))
                }
                CopySync::Answered => {}
            }
        }
        Ok(Step::Keep(Some(self.entry(Sent::Sync))))
    }

    /// A message over its type's size limit: refused unread.
    pub(super) fn oversized(&mut self, kind: Kind, len: usize) -> Step {
        let limit = match kind {
            Kind::Query | Kind::Parse => "max_statement_bytes",
            Kind::Bind | Kind::FunctionCall => "max_bind_bytes",
            Kind::CopyData => "max_copy_data_bytes",
            Kind::Other => "the message size limit",
        };
        let what = kind.name();
        let r = Refusal {
            verdict: Verdict::Deny {
                rule: "max_message_bytes",
                reason: format!("a {what} message of {len} bytes is over {limit}; it was not read"),
            },
            code: sqlstate::PROGRAM_LIMIT_EXCEEDED,
            syntax: None,
        };
        let shown = format!("<{what} message of {len} bytes, not read>");
        match kind {
            Kind::Query | Kind::FunctionCall => {
                self.denial(Protocol::Simple, &shown, &r);
                self.refuse_query(&r)
            }
            Kind::CopyData => {
                let mut fail = BytesMut::new();
                frontend::copy_fail(&mut fail, &r.verdict.message().unwrap_or_default());
                Step::Replace(fail, None)
            }
            Kind::Parse | Kind::Bind => {
                self.denial(Protocol::Extended, &shown, &r);
                self.refuse_extended(&r, None)
            }
            Kind::Other => self.refuse_extended(&r, None),
        }
    }

    /// The definitions statement `st` refers to, as they stand when it runs.
    pub(super) fn references(&self, st: &Statement) -> Result<Result<References, Refusal>, Stop> {
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
    pub(super) fn check_references(&self, r: &References) -> Result<(), Refusal> {
        for def in r.definitions() {
            if def.verdict != Verdict::Allow {
                return Err(def.verdict.clone().into());
            }
            let Some(inner) = def.statement() else {
                if def
                    .analysis
                    .as_ref()
                    .as_ref()
                    .is_ok_and(|a| a.statements.is_empty())
                {
                    continue;
                }
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

    /// What the references run, for approval rules: every statement EXECUTEd, and the
    /// statement of every portal FETCHed that has not run yet (its first fetch runs it).
    pub(super) fn run_by<'r>(&self, r: &'r References) -> Vec<&'r Statement> {
        let mut out: Vec<&Statement> = r
            .executes
            .iter()
            .filter_map(|(_, d)| d.statement())
            .collect();
        for p in r.fetches.iter().filter_map(|(_, p)| p.as_ref()) {
            if !self.insp.registry.started(p.id) && !self.started.contains(&p.id) {
                out.extend(p.statement.statement());
            }
        }
        out
    }

    /// Gives a portal defined by an effect its own definition id.
    pub(super) fn numbered(&mut self, e: Effect) -> Effect {
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
}
