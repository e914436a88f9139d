//! Judging a Query message: each of its statements in order (a later one sees what earlier
//! ones define — it runs only if they succeeded), what they refer to by name, the settings they
//! change, their masking plans, and the registry effects the string has as it completes.

use std::sync::Arc;

use bytes::Bytes;

use super::hold::HoldOf;
use super::judge::{self, masked_columns, merged, Batch, References, Refusal, Step, Stop};
use super::queue::{Effects, Note, Sent};
use super::registry::{Effect, Matched, Name, Origin, Statement as Definition};
use crate::audit::statement::Protocol;
use crate::guard::Verdict;
use crate::mask::MaskPlan;
use crate::sql::{Dialect, Outcome, Statement};

impl Batch<'_> {
    pub(super) async fn query(&mut self, i: usize, raw: &[u8]) -> Result<Step, Stop> {
        let (text, dialect) = match self.read(raw, true)? {
            Ok(t) => t,
            Err(r) => {
                self.denial(Protocol::Simple, &String::from_utf8_lossy(raw), &r);
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
            fetched,
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
            refusal
                .as_ref()
                .map_or(crate::proxy::wire::sqlstate::INSUFFICIENT_PRIVILEGE, |r| {
                    r.code
                }),
        );
        if let Some(r) = refusal {
            return Ok(self.refuse_query(&r));
        }
        self.started.extend(fetched);
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
            for (name, p) in &r.fetches {
                if let Some(p) = p.as_ref().filter(|p| !p.cursor) {
                    prepared_texts.push((name.clone(), p.statement.text.to_string()));
                }
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
        // What EXECUTE and FETCH run counts for approvals as what it is.
        let mut statements = held.clone();
        for r in &refs {
            statements.extend(self.run_by(r));
        }
        let fetched: Vec<u64> = refs.iter().flat_map(References::portals).collect();
        let made = judge::made_by(self.counters.made, &statements);
        let matched = self
            .insp
            .approval_rule(&statements, prepared_texts.clone(), made);
        self.counters.made = made;
        Ok(Judgement {
            verdict: Ok(()),
            plans,
            per_statement,
            matched,
            prepared: prepared_texts,
            fetched,
        })
    }
}

/// What the statements of a Query came to.
struct Judgement {
    verdict: Result<(), Refusal>,
    plans: Vec<MaskPlan>,
    per_statement: Vec<Vec<Effect>>,
    matched: Option<Matched>,
    /// Names and texts of the prepared statements it executes (for its record).
    prepared: Vec<(String, String)>,
    /// Portals its FETCHes run.
    fetched: Vec<u64>,
}

fn refused(r: Refusal) -> Judgement {
    Judgement {
        verdict: Err(r),
        plans: Vec::new(),
        per_statement: Vec::new(),
        matched: None,
        prepared: Vec::new(),
        fetched: Vec::new(),
    }
}
