//! Guardrails and statement audit on the data path. Each Query, Parse and FunctionCall a client
//! sends is judged before it reaches Postgres; each statement that will run (a Query, or an
//! Execute of a portal) gets a decision record that must be durable before the bytes go on, and
//! its outcome is recorded when the response completes ([`super::outcome`]).
//!
//! A refused statement is not dropped — dropping would break the order of responses in a
//! pipeline — but replaced by a call to a function that cannot exist,
//! `pgid_refused_<session token>_<n>()`, which fails at parse time exactly where the refused
//! statement stood: the server answers it in sequence, skips to Sync in the extended protocol,
//! and aborts an open transaction block as any error would. That ErrorResponse is then rewritten
//! into pgid's own (SQLSTATE 42501, `pgid: <rule>: <reason>`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use rand::RngCore;

use super::catalog::MaskSetup;
use super::limits::Action;
use super::masking::Masker;
use super::outcome::{Audited, Done, Note, Tracker};
use super::wire::backend::{self, Severity};
use super::wire::{cstr, message, put_cstr};
use crate::audit::statement::SessionRecords;
use crate::audit::statement::{self, Decision, DecisionKind, Outcome as OutcomeRecord, Protocol};
use crate::guard::{self, Verdict};
use crate::mask::{self, MaskPlan};
use crate::policy::{Approval, Guardrails, StatementAudit, StatementClass};
use crate::sql::{Analyzer, Dialect, Outcome};

/// A statement prepared in this session (SQL PREPARE or protocol Parse).
struct Prepared {
    text: String,
    analysis: Outcome,
    /// For SQL PREPARE: which statement of the analysis it is.
    index: usize,
    mask: MaskPlan,
    /// The approval rule its executions wait for (protocol Parse; SQL PREPARE is matched at
    /// each SQL EXECUTE).
    approval: Option<Matched>,
    /// Refused since it was prepared (the policy was reloaded): every execution is refused.
    refused: Option<Verdict>,
}

struct Portal {
    statement: Option<Arc<Prepared>>,
    statement_name: String,
    parameters: Vec<Option<String>>,
    /// Exact Bind values (binary format?, bytes), kept for statements that need approval.
    raw: Arc<RawParameters>,
    formats: Vec<i16>,
    /// Executed already: further Executes (row-limited fetches) continue the approved run.
    started: bool,
}

/// Bind values exactly as the client sent them, with the types of the statement's parameters.
#[derive(Debug, Default)]
pub struct RawParameters {
    pub values: Vec<(bool, Option<Vec<u8>>)>,
    pub types: Vec<u32>,
}

/// What the statements of one batch of client messages became.
pub struct Judged {
    /// `None`: forward the messages as they are.
    pub frames: Option<BytesMut>,
    /// Decision records to make durable before forwarding.
    pub records: Vec<String>,
    /// Statements held for approval: nothing of the batch goes on until they are decided.
    pub holds: Vec<Hold>,
    /// Messages as forwarded, for the outcome tracker, committed once forwarding goes ahead:
    /// (tag, decision record, statement described).
    sent: Vec<(u8, Option<u64>, Option<Arc<Note>>)>,
    groups_before: u64,
}

pub struct Enforcer {
    rules: Guardrails,
    audit: StatementAudit,
    analyzer: Arc<Analyzer>,
    records: SessionRecords,
    prepared: HashMap<String, Arc<Prepared>>,
    /// Parameter types of prepared statements, from Parse and ParameterDescription.
    parameter_types: HashMap<String, Vec<u32>>,
    portals: HashMap<String, Portal>,
    token: String,
    next: u64,
    /// Refusal number → (request group it belongs to, the ErrorResponse to send).
    refusals: HashMap<u64, (u64, BytesMut)>,
    /// Request groups (a Query, FunctionCall, or messages up to a Sync) sent and answered.
    sent: u64,
    answered: u64,
    /// Statement records of this session so far.
    seq: u64,
    tracker: Tracker,
    done: Vec<Done>,
    masker: Option<Masker>,
    approval_rules: Vec<Approval>,
}

fn frame_len(frames: &[u8], pos: usize) -> usize {
    i32::from_be_bytes([
        frames[pos + 1],
        frames[pos + 2],
        frames[pos + 3],
        frames[pos + 4],
    ]) as usize
        + 1
}

fn names(st: &crate::sql::Statement) -> (Vec<StatementClass>, Vec<String>) {
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

/// Type OIDs: a count (i16) and that many i32, as in Parse and ParameterDescription.
fn type_oids(body: &[u8]) -> Vec<u32> {
    let Some(n) = body
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
    else {
        return Vec::new();
    };
    (0..n)
        .map_while(|i| {
            body.get(2 + 4 * i..6 + 4 * i)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
        .collect()
}

/// A Bind message: portal, statement, parameter values (when recorded), result formats.
struct Bound {
    portal: String,
    statement: String,
    parameters: Vec<Option<String>>,
    raw: RawParameters,
    formats: Vec<i16>,
}

/// Reads a Bind message; parameter values (`None` for NULL) are decoded with `types` (the
/// statement's parameter types, where known) when `values`, and decoded and kept as sent too
/// when `raw` says so of the statement bound.
fn bind(
    body: &[u8],
    values: bool,
    raw: impl Fn(&str) -> bool,
    types: &HashMap<String, Vec<u32>>,
) -> Result<Bound, String> {
    let mut at = 0;
    let portal = cstr(body, &mut at).map_err(|e| e.to_string())?.to_string();
    let name = cstr(body, &mut at).map_err(|e| e.to_string())?.to_string();
    let raw = raw(&name);
    let values = values || raw;
    let types = types.get(&name).map(Vec::as_slice).unwrap_or_default();
    let mut exact = RawParameters::default();
    if raw {
        exact.types = types.to_vec();
    }
    let bad = || "malformed Bind".to_string();
    let i16_at = |at: usize| -> Result<i16, String> {
        body.get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(bad)
    };
    let n_formats = i16_at(at)?.max(0) as usize;
    let formats: Vec<i16> = (0..n_formats)
        .map(|i| i16_at(at + 2 + 2 * i))
        .collect::<Result<_, _>>()?;
    at += 2 + 2 * n_formats;
    let n_params = i16_at(at)?.max(0) as usize;
    at += 2;
    let mut params = Vec::with_capacity(n_params);
    for i in 0..n_params {
        let len = body
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(bad)?;
        at += 4;
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).copied() == Some(1),
        };
        if len < 0 {
            params.push(None);
            if raw {
                exact.values.push((binary, None));
            }
        } else {
            let v = body.get(at..at + len as usize).ok_or_else(bad)?;
            at += len as usize;
            if raw {
                exact.values.push((binary, Some(v.to_vec())));
            }
            if values {
                let oid = types.get(i).copied().unwrap_or(0);
                params.push(statement::parameter(Some(v), binary, oid));
            }
        }
    }
    if !values {
        params.clear();
    }
    let n_results = i16_at(at)?.max(0) as usize;
    let formats = (0..n_results)
        .map(|i| i16_at(at + 2 + 2 * i))
        .collect::<Result<_, _>>()?;
    Ok(Bound {
        portal,
        statement: name,
        parameters: params,
        raw: exact,
        formats,
    })
}

/// What a reloaded policy changes in a live session.
pub struct Reconfigure {
    pub rules: Guardrails,
    pub audit: StatementAudit,
    pub masks: Option<Arc<MaskSetup>>,
    pub approvals: Vec<Approval>,
}

pub struct EnforcerSetup {
    pub rules: Guardrails,
    pub audit: StatementAudit,
    pub analyzer: Arc<Analyzer>,
    pub records: SessionRecords,
    /// The policy's masks, resolved in the database (`None`: no masks).
    pub masks: Option<Arc<MaskSetup>>,
    /// The policy's `[[approval]]` rules.
    pub approvals: Vec<Approval>,
}

/// A statement an approval rule holds: the `n`th message of the batch (a Query, or the Execute
/// of a portal, with its Bind values).
#[derive(Debug, Clone)]
pub struct Hold {
    pub message: usize,
    /// What the reviewer sees: the text, and for SQL EXECUTE what it executes.
    pub statement: String,
    /// The text as the client sent it (what pgid asks the planner about).
    pub sql: String,
    pub tables: Vec<String>,
    pub rule: Approval,
    /// Bind values as reviewers see them (`None`: the simple protocol).
    pub parameters: Option<Vec<Option<String>>>,
    pub raw: Arc<RawParameters>,
    /// Canonical text + exact parameters: what a retry-mode approval is for.
    pub fingerprint: String,
}

/// The approval rule a message falls under, the tables it is about, and the prepared statements
/// (name, text) it executes.
#[derive(Debug, Clone)]
struct Matched {
    rule: Approval,
    tables: Vec<String>,
    prepared: Vec<(String, String)>,
}

/// A statement an approval rule applies to, as [`Enforcer::approval`] takes it.
struct Held<'a> {
    message: usize,
    sql: &'a str,
    matched: Matched,
    parameters: Option<Vec<Option<String>>>,
    raw: Arc<RawParameters>,
    dialect: Dialect,
}

/// A message in the batch, as judged.
enum Replace {
    Keep,
    With(BytesMut),
}

impl Enforcer {
    pub fn new(setup: EnforcerSetup) -> Enforcer {
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Enforcer {
            rules: setup.rules,
            audit: setup.audit,
            analyzer: setup.analyzer,
            records: setup.records,
            prepared: HashMap::new(),
            parameter_types: HashMap::new(),
            portals: HashMap::new(),
            token: format!("pgid_refused_{}", hex::encode(b)),
            next: 0,
            refusals: HashMap::new(),
            sent: 0,
            answered: 0,
            seq: 0,
            tracker: Tracker::default(),
            done: Vec::new(),
            masker: setup.masks.map(Masker::new),
            approval_rules: setup.approvals,
        }
    }

    /// The verdict, the cached analysis it came from (shared, not copied), and the masking plan
    /// of each statement (empty when the policy masks nothing).
    async fn judge(&mut self, sql: &str, dialect: Dialect) -> (Verdict, Outcome, Vec<MaskPlan>) {
        let outcome = self
            .analyzer
            .analyze(sql, dialect, self.rules.max_statement_bytes as usize)
            .await;
        let verdict = match &*outcome {
            Err(e) => Verdict::Deny {
                rule: "analysis",
                reason: e.to_string(),
            },
            Ok(a) if self.refused_execute(a).is_some() => self.refused_execute(a).expect("checked"),
            Ok(a) => {
                let prepared = &self.prepared;
                guard::check(a, &self.rules, &|name| {
                    prepared.get(name).and_then(|p| match &*p.analysis {
                        Ok(a) => a.statements.get(p.index).cloned(),
                        Err(_) => None,
                    })
                })
            }
        };
        let (Some(masker), Verdict::Allow, Ok(a)) = (&self.masker, &verdict, &*outcome) else {
            return (verdict, outcome, Vec::new());
        };
        let setup = masker.setup();
        let mut plans = Vec::with_capacity(a.statements.len());
        for st in &a.statements {
            if let Some(f) = mask::plan::user_function(st, &setup.user_functions) {
                let refused = Verdict::Deny {
                    rule: "mask",
                    reason: format!(
                        "function {f} is not built in; under a policy with masked columns only built-in functions may be called"
                    ),
                };
                return (refused, outcome, Vec::new());
            }
            let mut plan = mask::plan(st, &setup.columns);
            // EXECUTE name: the prepared statement's plan.
            for name in &st.executes {
                if let Some(p) = self.prepared.get(name) {
                    plan = mask::plan::merge(plan, p.mask.clone());
                }
            }
            if let MaskPlan::Refuse(reason) = plan {
                let refused = Verdict::Deny {
                    rule: "mask",
                    reason,
                };
                return (refused, outcome, Vec::new());
            }
            plans.push(plan);
        }
        (verdict, outcome, plans)
    }

    /// Registers a refusal answered in request group `group`; returns the query that stands in.
    fn refuse(&mut self, verdict: &Verdict, group: u64) -> String {
        self.next += 1;
        let mut err = BytesMut::new();
        backend::error_response(
            &mut err,
            Severity::Error,
            "42501",
            &verdict.message().unwrap_or_default(),
        );
        self.refusals.insert(self.next, (group, err));
        tracing::info!(reason = %verdict.message().unwrap_or_default(), "statement refused");
        format!("SELECT {}_{}()", self.token, self.next)
    }

    /// A Parse message that fails where `verdict` refused a statement: under the client's
    /// statement name, or (standing in for an Execute) under a name of pgid's own.
    fn refuse_parse(&mut self, verdict: &Verdict, name: Option<&str>) -> BytesMut {
        let stand_in = self.refuse(verdict, self.sent + 1);
        let mut p = BytesMut::new();
        let own = format!("{}_{}", self.token, self.next);
        message(&mut p, b'P', |b| {
            put_cstr(b, name.unwrap_or(&own));
            put_cstr(b, &stand_in);
            b.put_i16(0);
        });
        p
    }

    fn refuse_query(&mut self, verdict: &Verdict) -> BytesMut {
        let stand_in = self.refuse(verdict, self.sent);
        let mut q = BytesMut::new();
        message(&mut q, b'Q', |b| put_cstr(b, &stand_in));
        q
    }

    fn shown<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        if self.audit.normalize_literals {
            if let Some(n) = crate::sql::normalize(sql) {
                return n.into();
            }
        }
        sql.into()
    }

    /// A decision record; returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    fn decision(
        &mut self,
        records: &mut Vec<String>,
        protocol: Protocol,
        sql: &str,
        parameters: Option<&[Option<String>]>,
        analysis: Option<&crate::sql::Statement>,
        masked: &[String],
        verdict: &Verdict,
    ) -> u64 {
        self.seq += 1;
        let (classes, tables) = analysis.map(names).unwrap_or_default();
        let (decision, rule, reason) = match verdict {
            Verdict::Allow => (DecisionKind::Allow, None, None),
            Verdict::Deny { rule, reason } => {
                (DecisionKind::Deny, Some(*rule), Some(reason.as_str()))
            }
        };
        let text = self.shown(sql);
        records.push(self.records.decision(&Decision {
            seq: self.seq,
            protocol,
            statement: &text,
            parameters: parameters.filter(|_| self.audit.parameters),
            classes: &classes,
            tables: &tables,
            masked,
            decision,
            rule,
            reason,
            sqlstate: (decision == DecisionKind::Deny).then_some("42501"),
        }));
        self.seq
    }

    /// Judges the complete client messages in `frames`. With `audit_down`, every statement is
    /// refused (the audit log cannot take its record).
    pub async fn client_frames(
        &mut self,
        frames: &[u8],
        dialect: Dialect,
        audit_down: bool,
        decided: &HashMap<usize, Verdict>,
    ) -> Result<Judged, String> {
        let mut holds = Vec::new();
        let mut message_no = 0usize;
        let groups_before = self.sent;
        let mut out: Option<BytesMut> = None;
        let mut records = Vec::new();
        let mut sent = Vec::new();
        let down = Verdict::Deny {
            rule: "audit",
            reason: "the audit log is unavailable; statements are refused until it recovers".into(),
        };
        let mut pos = 0;
        while pos < frames.len() {
            let tag = frames[pos];
            let total = frame_len(frames, pos);
            let body = &frames[pos + 5..pos + total];
            message_no += 1;
            let (replace, sent_as) = match tag {
                b'Q' => {
                    self.sent += 1;
                    let mut at = 0;
                    let sql = cstr(body, &mut at).map_err(|e| e.to_string())?;
                    let (mut verdict, outcome, plans) = self.judge(sql, dialect).await;
                    if let Some(matched) = self.approval_rule(&outcome, &verdict) {
                        self.approval(
                            Held {
                                message: message_no,
                                sql,
                                matched,
                                parameters: None,
                                raw: Arc::default(),
                                dialect,
                            },
                            &mut verdict,
                            decided,
                            &mut holds,
                        );
                    }
                    if audit_down {
                        verdict = down.clone();
                    }
                    let masked = masked_columns(&plans);
                    let first = outcome
                        .as_ref()
                        .as_ref()
                        .ok()
                        .and_then(|a| (a.statements.len() == 1).then(|| &a.statements[0]));
                    let merged;
                    let shown = match (&*outcome, first) {
                        (_, Some(st)) => Some(st),
                        (Ok(a), None) if !a.statements.is_empty() => {
                            merged = merge(a);
                            Some(&merged)
                        }
                        _ => None,
                    };
                    let seq = (!audit_down).then(|| {
                        self.decision(
                            &mut records,
                            Protocol::Simple,
                            sql,
                            None,
                            shown,
                            &masked,
                            &verdict,
                        )
                    });
                    if verdict == Verdict::Allow {
                        // Only SQL PREPARE needs remembering; everything else is judged and gone.
                        if let Ok(a) = &*outcome {
                            for (index, st) in a.statements.iter().enumerate() {
                                if let Some(name) = &st.prepares {
                                    self.prepared.insert(
                                        name.clone(),
                                        Arc::new(Prepared {
                                            text: sql.to_string(),
                                            analysis: outcome.clone(),
                                            index,
                                            mask: plans
                                                .get(index)
                                                .cloned()
                                                .unwrap_or(MaskPlan::Untouched),
                                            approval: None,
                                            refused: None,
                                        }),
                                    );
                                }
                            }
                        }
                        let note = (!plans.is_empty()).then(|| {
                            Arc::new(Note {
                                plans,
                                ..Note::default()
                            })
                        });
                        (Replace::Keep, (b'Q', seq, note))
                    } else {
                        (
                            Replace::With(self.refuse_query(&verdict)),
                            (b'Q', None, None),
                        )
                    }
                }
                b'P' => {
                    let mut at = 0;
                    let name = cstr(body, &mut at).map_err(|e| e.to_string())?.to_string();
                    let sql = cstr(body, &mut at).map_err(|e| e.to_string())?;
                    let (mut verdict, outcome, plans) = self.judge(sql, dialect).await;
                    // Preparing runs nothing: an approval rule holds each Execute instead, where
                    // the reviewer sees the parameters too.
                    let approval = self.approval_rule(&outcome, &verdict);
                    if audit_down {
                        verdict = down.clone();
                    }
                    if let Some(m) = self.masker.as_mut() {
                        m.parsed(&name);
                    }
                    if verdict == Verdict::Allow {
                        if self.audit.parameters || approval.is_some() {
                            let types = type_oids(&body[at..]);
                            self.parameter_types.insert(name.clone(), types);
                        }
                        self.prepared.insert(
                            name,
                            Arc::new(Prepared {
                                text: sql.to_string(),
                                analysis: outcome,
                                index: 0,
                                mask: plans.into_iter().next().unwrap_or(MaskPlan::Untouched),
                                approval,
                                refused: None,
                            }),
                        );
                        (Replace::Keep, (b'P', None, None))
                    } else {
                        if !audit_down {
                            let first = outcome
                                .as_ref()
                                .as_ref()
                                .ok()
                                .and_then(|a| a.statements.first());
                            self.decision(
                                &mut records,
                                Protocol::Extended,
                                sql,
                                None,
                                first,
                                &[],
                                &verdict,
                            );
                        }
                        let p = self.refuse_parse(&verdict, Some(&name));
                        self.prepared.remove(&name);
                        (Replace::With(p), (b'P', None, None))
                    }
                }
                b'B' => {
                    // Statements held for approval keep their exact values, for the reviewer and
                    // the planner.
                    let prepared = &self.prepared;
                    let b = bind(
                        body,
                        self.audit.parameters,
                        |name| prepared.get(name).is_some_and(|p| p.approval.is_some()),
                        &self.parameter_types,
                    )?;
                    let statement = self.prepared.get(&b.statement).cloned();
                    if let Some(m) = self.masker.as_mut() {
                        m.bound(&b.portal);
                    }
                    self.portals.insert(
                        b.portal,
                        Portal {
                            statement,
                            statement_name: b.statement,
                            parameters: b.parameters,
                            raw: Arc::new(b.raw),
                            formats: b.formats,
                            started: false,
                        },
                    );
                    (Replace::Keep, (b'B', None, None))
                }
                b'E' => {
                    let mut at = 0;
                    let portal = cstr(body, &mut at).map_err(|e| e.to_string())?;
                    if audit_down {
                        (
                            Replace::With(self.refuse_parse(&down, None)),
                            (b'P', None, None),
                        )
                    } else {
                        // The portal as bound: its statement, values, exact values, and whether
                        // an earlier Execute already started it.
                        let bound = self.portals.get(portal).and_then(|p| {
                            p.statement
                                .clone()
                                .map(|s| (s, p.parameters.clone(), p.raw.clone(), p.started))
                        });
                        let mut verdict = bound
                            .as_ref()
                            .and_then(|(st, ..)| st.refused.clone())
                            .unwrap_or(Verdict::Allow);
                        let holds_before = holds.len();
                        if let Some((st, params, raw, false)) = &bound {
                            if let (Some(matched), Verdict::Allow) = (st.approval.clone(), &verdict)
                            {
                                self.approval(
                                    Held {
                                        message: message_no,
                                        sql: &st.text,
                                        matched,
                                        parameters: Some(params.clone()),
                                        raw: raw.clone(),
                                        dialect,
                                    },
                                    &mut verdict,
                                    decided,
                                    &mut holds,
                                );
                            }
                        }
                        let known = bound.map(|(st, params, ..)| (st, params));
                        if verdict == Verdict::Allow && holds.len() == holds_before {
                            if let Some(p) = self.portals.get_mut(portal) {
                                p.started = true;
                            }
                        }
                        let seq = known.as_ref().map(|(st, params)| {
                            let analysis = match &*st.analysis {
                                Ok(a) => a.statements.get(st.index),
                                Err(_) => None,
                            };
                            let masked = if verdict == Verdict::Allow {
                                masked_columns(std::slice::from_ref(&st.mask))
                            } else {
                                Vec::new()
                            };
                            self.decision(
                                &mut records,
                                Protocol::Extended,
                                &st.text,
                                Some(params),
                                analysis,
                                &masked,
                                &verdict,
                            )
                        });
                        if verdict != Verdict::Allow {
                            let refused = self.refuse_parse(&verdict, None);
                            (Replace::With(refused), (b'P', None, None))
                        } else {
                            match self.execute_note(portal, known.map(|k| k.0)) {
                                None => (Replace::Keep, (b'E', seq, None)),
                                Some((note, None)) => (Replace::Keep, (b'E', seq, Some(note))),
                                Some((note, Some(describe))) => {
                                    // pgid's own Describe first; its answer stays with pgid.
                                    sent.push((b'D', None, Some(describe)));
                                    let mut both = BytesMut::new();
                                    message(&mut both, b'D', |b| {
                                        b.put_u8(b'P');
                                        put_cstr(b, portal);
                                    });
                                    both.extend_from_slice(&frames[pos..pos + total]);
                                    (Replace::With(both), (b'E', seq, Some(note)))
                                }
                            }
                        }
                    }
                }
                b'C' => {
                    let kind = body.first().copied();
                    let mut at = 1;
                    let name = cstr(body, &mut at).map_err(|e| e.to_string())?;
                    match kind {
                        Some(b'S') => {
                            self.prepared.remove(name);
                            self.parameter_types.remove(name);
                        }
                        _ => {
                            self.portals.remove(name);
                        }
                    }
                    if let Some(m) = self.masker.as_mut() {
                        m.closed(kind.unwrap_or(b'P'), name);
                    }
                    (Replace::Keep, (b'C', None, None))
                }
                b'D' => {
                    let mut at = 1;
                    let kind = body.first().copied().unwrap_or(b'S');
                    let name = cstr(body, &mut at).map_err(|e| e.to_string())?;
                    if let Some(m) = self.masker.as_mut() {
                        m.describing(kind, name);
                    }
                    let note = if kind == b'S' {
                        Note {
                            statement: Some(name.to_string()),
                            ..Note::default()
                        }
                    } else {
                        Note {
                            portal: Some(name.to_string()),
                            ..Note::default()
                        }
                    };
                    (Replace::Keep, (b'D', None, Some(Arc::new(note))))
                }
                b'F' => {
                    // FunctionCall names a function by OID, which no policy can be checked against.
                    self.sent += 1;
                    let verdict = if audit_down {
                        down.clone()
                    } else {
                        let v = Verdict::Deny {
                            rule: "deny",
                            reason: "the FunctionCall protocol message is not allowed".into(),
                        };
                        self.decision(
                            &mut records,
                            Protocol::Extended,
                            "<FunctionCall>",
                            None,
                            None,
                            &[],
                            &v,
                        );
                        v
                    };
                    (
                        Replace::With(self.refuse_query(&verdict)),
                        (b'Q', None, None),
                    )
                }
                b'S' => {
                    self.sent += 1;
                    (Replace::Keep, (b'S', None, None))
                }
                // Flush, CopyData, CopyDone, CopyFail: no response of their own.
                _ => (Replace::Keep, (0, None, None)),
            };
            if sent_as.0 != 0 {
                sent.push(sent_as);
            }
            match replace {
                Replace::With(r) => out
                    .get_or_insert_with(|| BytesMut::from(&frames[..pos]))
                    .extend_from_slice(&r),
                Replace::Keep => {
                    if let Some(o) = out.as_mut() {
                        o.extend_from_slice(&frames[pos..pos + total]);
                    }
                }
            }
            pos += total;
        }
        Ok(Judged {
            frames: out,
            records,
            holds,
            sent,
            groups_before,
        })
    }

    /// The audit log could not take `judged`'s decision records: forgets what judging counted,
    /// to judge the same messages again, and returns outcome records saying the statements did
    /// not run (a sink that did take the decisions — the file, when only the table failed — gets
    /// these too, so no decision is left looking as if it ran).
    pub fn rewind(&mut self, judged: &Judged) -> Vec<String> {
        self.sent = judged.groups_before;
        judged
            .sent
            .iter()
            .filter_map(|(_, seq, _)| *seq)
            .map(|seq| {
                self.records.outcome(&OutcomeRecord {
                    seq,
                    result: statement::Result::NotRun,
                    rows: None,
                    duration_ms: 0.0,
                    sqlstate: Some("42501"),
                })
            })
            .collect()
    }

    /// The messages of `judged` are going upstream now.
    pub fn forwarding(&mut self, judged: &Judged) {
        let now = Instant::now();
        for (tag, seq, note) in &judged.sent {
            let audited = seq.map(|seq| Audited { seq, started: now });
            self.tracker.sent(*tag, audited, now, &mut self.done);
            if let Some(note) = note {
                self.tracker.annotate(note.clone());
            }
        }
    }

    /// A server message, for the outcome records; returns the records of completed statements.
    pub fn server_message(
        &mut self,
        tag: u8,
        body: &[u8],
        replaced_by: Option<&str>,
    ) -> impl Iterator<Item = String> + '_ {
        if tag == b'D' && replaced_by.is_none() {
            self.tracker.data_row();
        } else {
            if tag == b't' && self.audit.parameters {
                if let Some(name) = self.tracker.described() {
                    self.parameter_types
                        .insert(name.to_string(), type_oids(body));
                }
            }
            self.tracker
                .received(tag, body, replaced_by, Instant::now(), &mut self.done);
        }
        let records = &self.records;
        self.done.drain(..).map(move |d| {
            records.outcome(&OutcomeRecord {
                seq: d.seq,
                result: d.result,
                rows: d.rows,
                duration_ms: (d.duration_ms * 1000.0).round() / 1000.0,
                sqlstate: d.sqlstate.as_deref(),
            })
        })
    }

    /// The policy was reloaded: new rules from the next statement on, and every statement
    /// prepared so far judged again under them (one now refused is refused at each execution).
    pub async fn reconfigure(&mut self, setup: Reconfigure, dialect: Dialect) {
        self.rules = setup.rules;
        self.audit = setup.audit;
        self.approval_rules = setup.approvals;
        // Descriptions the old masker kept are gone; it asks the server again where it must.
        self.masker = setup.masks.map(Masker::new);
        let names: Vec<String> = self.prepared.keys().cloned().collect();
        // Old statement (kept alive, so its address stays its own) → its new judgement.
        let mut renewed: HashMap<usize, (Arc<Prepared>, Arc<Prepared>)> = HashMap::new();
        for name in names {
            let Some(old) = self.prepared.get(&name).cloned() else {
                continue;
            };
            let (verdict, outcome, plans) = self.judge(&old.text, dialect).await;
            let approval = self.approval_rule(&outcome, &verdict);
            if let Some(m) = self.masker.as_mut() {
                m.parsed(&name);
            }
            let allowed = verdict == Verdict::Allow;
            let new = Arc::new(Prepared {
                text: old.text.clone(),
                analysis: outcome,
                index: old.index,
                mask: plans.get(old.index).cloned().unwrap_or(MaskPlan::Untouched),
                approval,
                refused: (!allowed).then_some(verdict),
            });
            renewed.insert(Arc::as_ptr(&old) as usize, (old.clone(), new.clone()));
            self.prepared.insert(name, new);
        }
        // Portals bound already run under the new judgement of their statement too.
        for portal in self.portals.values_mut() {
            if let Some((_, new)) = portal
                .statement
                .as_ref()
                .and_then(|old| renewed.get(&(Arc::as_ptr(old) as usize)))
            {
                portal.statement = Some(new.clone());
            }
        }
    }

    /// A SQL EXECUTE of a prepared statement that the reloaded policy refuses.
    fn refused_execute(&self, a: &crate::sql::Analysis) -> Option<Verdict> {
        a.statements
            .iter()
            .flat_map(|st| st.executes.iter())
            .find_map(|name| self.prepared.get(name).and_then(|p| p.refused.clone()))
    }

    /// The approval rule an allowed message falls under, if any. Preparing runs nothing, so a
    /// SQL PREPARE is not held; each SQL EXECUTE is, as the statement it executes.
    fn approval_rule(&self, outcome: &Outcome, verdict: &Verdict) -> Option<Matched> {
        if self.approval_rules.is_empty() {
            return None;
        }
        let (Verdict::Allow, Ok(a)) = (verdict, &**outcome) else {
            return None;
        };
        let mut statements = Vec::with_capacity(a.statements.len());
        let mut prepared = Vec::new();
        for st in &a.statements {
            if st.prepares.is_none() {
                statements.push(st);
            }
            for name in &st.executes {
                let Some(p) = self.prepared.get(name) else {
                    continue;
                };
                if let Some(inner) = p
                    .analysis
                    .as_ref()
                    .as_ref()
                    .ok()
                    .and_then(|pa| pa.statements.get(p.index))
                {
                    statements.push(inner);
                    prepared.push((name.clone(), p.text.clone()));
                }
            }
        }
        let rule = crate::approval::rule_for(&statements, &self.approval_rules)?.clone();
        Some(Matched {
            rule,
            tables: statements.iter().flat_map(|s| names(s).1).collect(),
            prepared,
        })
    }

    /// A statement under an approval rule: a decision already taken for it (this batch judged
    /// again) stands; otherwise it is held (`wait`: until a reviewer decides; `retry`: until
    /// pgid has looked for an approval of this very statement).
    fn approval(
        &self,
        held: Held<'_>,
        verdict: &mut Verdict,
        decided: &HashMap<usize, Verdict>,
        holds: &mut Vec<Hold>,
    ) {
        if let Some(v) = decided.get(&held.message) {
            *verdict = v.clone();
            return;
        }
        let exact: Vec<(bool, Option<&[u8]>)> = held
            .raw
            .values
            .iter()
            .map(|(binary, v)| (*binary, v.as_deref()))
            .collect();
        // What runs: the text, and for SQL EXECUTE the statements it executes — shown to the
        // reviewer and part of what a retry-mode approval is for.
        let mut statement = held.sql.to_string();
        let mut canonical = crate::sql::canonical(held.sql, held.dialect);
        for (name, text) in &held.matched.prepared {
            statement.push_str(&format!("\n-- {name} was prepared as: {text}"));
            canonical.push_str(&format!(
                "\n{name}={}",
                crate::sql::canonical(text, held.dialect)
            ));
        }
        holds.push(Hold {
            message: held.message,
            statement,
            sql: held.sql.to_string(),
            tables: held.matched.tables,
            fingerprint: crate::approval::fingerprint(&canonical, &exact),
            rule: held.matched.rule,
            parameters: held.parameters,
            raw: held.raw,
        });
    }

    /// For an Execute of `portal` whose statement reads masked columns: the note its answer is
    /// read with, and — when pgid will not otherwise learn the result's columns — the note of
    /// a Describe pgid sends first.
    fn execute_note(
        &mut self,
        portal: &str,
        statement: Option<Arc<Prepared>>,
    ) -> Option<(Arc<Note>, Option<Arc<Note>>)> {
        let masker = self.masker.as_mut()?;
        let st = statement?;
        if !matches!(st.mask, MaskPlan::Mask { .. }) {
            return None;
        }
        let p = self.portals.get(portal)?;
        let note = Arc::new(Note {
            plans: vec![st.mask.clone()],
            statement: Some(p.statement_name.clone()),
            portal: Some(portal.to_string()),
            formats: p.formats.clone(),
            swallow: false,
        });
        if masker.knows(portal, &p.statement_name) {
            return Some((note, None));
        }
        masker.describing(b'P', portal);
        let describe = Arc::new(Note {
            portal: Some(portal.to_string()),
            swallow: true,
            ..Note::default()
        });
        Some((note, Some(describe)))
    }

    /// Masking of a server message (one the other filters passed).
    pub fn mask_message(&mut self, tag: u8, body: &[u8]) -> Action {
        let Some(m) = self.masker.as_mut() else {
            return Action::Pass;
        };
        let any = matches!(tag, b'E' | b'N') && self.tracker.any_masked();
        m.on_message(tag, body, self.tracker.head(), any)
    }

    /// The refusal to send instead of this ErrorResponse, if it is a stand-in's.
    pub fn refusal_for(&mut self, error_body: &[u8]) -> Option<BytesMut> {
        if self.refusals.is_empty() {
            return None;
        }
        let n = backend::error_field(error_body, b'M').and_then(|m| self.stand_in_number(&m))?;
        self.refusals.remove(&n).map(|(_, err)| err)
    }

    /// A ReadyForQuery: refusals whose group is answered without reaching their stand-in
    /// (skipped after an earlier error) are forgotten.
    pub fn ready_for_query(&mut self) {
        self.answered += 1;
        if !self.refusals.is_empty() {
            let done = self.answered;
            self.refusals.retain(|_, (group, _)| *group > done);
        }
    }

    fn stand_in_number(&self, message: &str) -> Option<u64> {
        let at = message.find(&self.token)? + self.token.len() + 1;
        let digits: String = message[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    }
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

/// The classes and tables of every statement of a multi-statement string, for its record.
fn merge(a: &crate::sql::Analysis) -> crate::sql::Statement {
    let mut m = crate::sql::Statement::default();
    for st in &a.statements {
        m.classes.extend(st.classes.iter().copied());
        m.tables.extend(st.tables.iter().cloned());
    }
    m
}
