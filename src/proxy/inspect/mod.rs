//! The session state machine: everything pgid knows of a session's protocol state, kept so that
//! it agrees with the server's. It owns
//! - the lexing context each message is read under ([`context`]),
//! - one registry of prepared statements and portals, changed only when the server confirms a
//!   change ([`registry`]),
//! - one queue of what was sent upstream and awaits an answer ([`queue`]).
//!
//! A batch of client messages is *judged* ([`Inspector::judge`], which changes nothing) and then
//! *committed* ([`Inspector::commit`]) once its decision records are durable and it goes
//! upstream; a batch judged again (after an approval, or with the audit log down) is judged from
//! the same state, so nothing is ever rewound. A message whose meaning depends on an answer
//! still to come (a name redefined before a Sync, settings a Query may change) is not judged
//! until that answer arrives; one whose meaning the server will decide from something pgid
//! cannot learn in time is refused. Server messages go through [`Inspector::backend`]. No I/O
//! here: the session (`super::session`) reads and writes the sockets.

mod answer;
pub mod context;
mod effects;
mod extended;
mod hold;
mod judge;
mod query;
pub mod queue;
mod refusal;
pub mod registry;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::BytesMut;

pub use judge::{Hold, Judged};

use super::catalog::MaskSetup;
use super::limits::ExportLimit;
use super::masking::Masker;
use crate::audit::statement::SessionRecords;
use crate::metrics::Metrics;
use crate::policy::{Approval, Guardrails, StatementAudit};
use crate::proxy::wire::backend::TransactionStatus;
use crate::sql::Analyzer;
use context::Context;
use queue::{Done, Queue};
use refusal::Refusals;
use registry::Registry;

/// What a policy asks of a session's statements.
#[derive(Clone)]
pub struct Rules {
    pub guardrails: Guardrails,
    pub audit: StatementAudit,
    pub approvals: Vec<Approval>,
    /// The policy's masks, resolved in the database (`None`: no masks).
    pub masks: Option<Arc<MaskSetup>>,
    /// What reaches each approval rule's tables in the catalog (`None`: no rule names tables).
    pub relations: Option<Arc<crate::approval::Relations>>,
}

/// Counters that judging advances and committing keeps.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Queue entry ids.
    entry: u64,
    /// Statement and portal definition ids.
    definition: u64,
    /// Stand-in refusal numbers.
    refusal: u64,
    /// Statement records of this session.
    seq: u64,
    /// COPY messages the client has sent.
    copy: queue::CopyPosition,
    /// What the statements judged so far may have made (relations, code).
    made: crate::approval::Made,
}

pub struct Inspector {
    rules: Rules,
    metrics: Arc<Metrics>,
    analyzer: Arc<Analyzer>,
    records: SessionRecords,
    context: Context,
    registry: Registry,
    queue: Queue,
    refusals: Refusals,
    counters: Counters,
    masker: Option<Masker>,
    limit: ExportLimit,
    /// Outcome records of statements completed since the caller last took them.
    done: Vec<Done>,
    status: TransactionStatus,
    /// The role the session must stay (a reported `session_authorization` must be this one).
    role: String,
}

/// The session's masker, when its rules mask anything.
fn masker(rules: &Rules, metrics: &Metrics) -> Option<Masker> {
    let counted = metrics.proxy.masked_values.clone();
    rules.masks.clone().map(|m| Masker::new(m, counted))
}

/// Why a session cannot go on (the caller ends it with a FATAL error carrying this message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal(pub String);

impl Inspector {
    /// A session's state machine, from the settings the server reported at login.
    pub fn new(
        rules: Rules,
        metrics: Arc<Metrics>,
        analyzer: Arc<Analyzer>,
        records: SessionRecords,
        parameters: &[(String, String)],
        role: &str,
    ) -> Result<Inspector, Fatal> {
        let context = Context::from_parameters(parameters).map_err(Fatal)?;
        let limit = ExportLimit::new(rules.guardrails.max_rows, rules.guardrails.max_bytes);
        Ok(Inspector {
            masker: masker(&rules, &metrics),
            rules,
            metrics,
            analyzer,
            records,
            context,
            registry: Registry::default(),
            queue: Queue::default(),
            refusals: Refusals::new(),
            counters: Counters::default(),
            limit,
            done: Vec::new(),
            status: TransactionStatus::Idle,
            role: role.to_string(),
        })
    }

    /// Nothing in flight and no transaction open: the connection may be reused or lent.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
            && self.queue.at_rest()
            && !self.queue.skipping()
            && self.status == TransactionStatus::Idle
    }

    /// Whether the entry with `id` (a judgement waits for it) has been answered.
    pub fn answered(&self, id: u64) -> bool {
        self.queue.answered(id)
    }

    /// The statement-text limit of the policy (for the session's message limits).
    pub fn max_statement_bytes(&self) -> usize {
        self.rules.guardrails.max_statement_bytes as usize
    }

    /// Commits a judged batch that is going upstream now.
    pub fn commit(&mut self, judged: Judged) {
        let now = std::time::Instant::now();
        self.counters = judged.counters;
        let metrics = &self.metrics.proxy;
        for (decision, class, rule) in judged.tally {
            metrics.statement(decision, class);
            if let Some(rule) = rule {
                metrics.refused(rule);
            }
        }
        for (n, err) in judged.refusals {
            self.refusals.insert(n, err);
        }
        for id in judged.started {
            self.registry.start(id);
        }
        for entry in judged.entries {
            self.queue.sent(entry, now, &mut self.done);
        }
        for n in self.queue.take_dropped() {
            self.refusals.forget(n);
        }
    }

    /// Outcome records of statements completed so far.
    pub fn outcomes(&mut self) -> Vec<String> {
        let records = &self.records;
        let metrics = &self.metrics.proxy;
        self.done
            .drain(..)
            .map(|d| {
                metrics
                    .observe_statement(std::time::Duration::from_secs_f64(d.duration_ms / 1000.0));
                records.outcome(&crate::audit::statement::Outcome {
                    seq: d.seq,
                    result: d.result,
                    rows: d.rows,
                    duration_ms: (d.duration_ms * 1000.0).round() / 1000.0,
                    sqlstate: d.sqlstate.as_deref(),
                })
            })
            .collect()
    }

    /// Outcome records saying the statements of a batch that was judged but never forwarded
    /// did not run (a sink that took their decisions must not leave them looking as if they ran).
    pub fn not_run(&self, judged: &Judged) -> Vec<String> {
        judged
            .entries
            .iter()
            .filter_map(|e| e.audited)
            .map(|a| {
                self.records.outcome(&crate::audit::statement::Outcome {
                    seq: a.seq,
                    result: crate::audit::statement::Result::NotRun,
                    rows: None,
                    duration_ms: 0.0,
                    sqlstate: Some(crate::proxy::wire::sqlstate::INSUFFICIENT_PRIVILEGE),
                })
            })
            .collect()
    }

    /// The policy was reloaded: new rules from the next message on, and every statement defined
    /// so far judged again under them (one now refused is refused at each execution; a newly
    /// masked column is masked in them too).
    pub async fn reconfigure(&mut self, rules: Rules) {
        self.limit
            .set_limits(rules.guardrails.max_rows, rules.guardrails.max_bytes);
        self.masker = masker(&rules, &self.metrics);
        self.rules = rules;
        // Every definition that can still run: named statements, and the statements of
        // portals (a cursor's, or one whose statement was closed since it was bound).
        let mut renewed: std::collections::HashMap<u64, Arc<registry::Statement>> =
            std::collections::HashMap::new();
        let defined: Vec<_> = self
            .registry
            .statements()
            .map(|(_, s)| s.clone())
            .chain(self.registry.portals().map(|(_, p)| p.statement.clone()))
            .collect();
        for st in defined {
            if let std::collections::hash_map::Entry::Vacant(slot) = renewed.entry(st.id) {
                slot.insert(Arc::new(self.rejudge(&st).await));
            }
        }
        let statements = self
            .registry
            .statements()
            .filter_map(|(n, s)| Some((n.clone(), renewed.get(&s.id)?.clone())))
            .collect();
        let portals = self
            .registry
            .portals()
            .filter_map(|(n, p)| {
                let new = renewed.get(&p.statement.id)?;
                Some((
                    n.clone(),
                    Arc::new(registry::Portal::clone_with(p, new.clone())),
                ))
            })
            .collect();
        self.registry.replace(statements, portals);
    }

    /// Settings the server reported while pgid itself used the connection (an estimate).
    pub fn settings_reported(&mut self, params: &[(String, String)]) {
        for (k, v) in params {
            self.context.reported(k.as_bytes(), v.as_bytes());
        }
    }

    /// A FATAL ErrorResponse ending the session, in the client's encoding.
    pub fn fatal(&self, code: &str, message: &str) -> BytesMut {
        self.refusals
            .fatal(self.context.current.encoding, code, message)
    }
}
