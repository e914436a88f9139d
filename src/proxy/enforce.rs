//! Guardrails on the data path. Each Query, Parse and FunctionCall a client sends is judged
//! before it reaches Postgres. A refused one is not dropped — dropping would break the order of
//! responses in a pipeline — but replaced by a call to a function that cannot exist,
//! `pgid_refused_<session token>_<n>()`, which fails at parse time exactly where the refused
//! statement stood: the server answers it in sequence, skips to Sync in the extended protocol,
//! and aborts an open transaction block as any error would. That ErrorResponse is then rewritten
//! into pgid's own (SQLSTATE 42501, `pgid: <rule>: <reason>`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use rand::RngCore;

use super::wire::backend::{self, Severity};
use super::wire::{cstr, message, put_cstr};
use crate::guard::{self, Verdict};
use crate::policy::Guardrails;
use crate::sql::{Analyzer, Dialect, Outcome, Statement};

pub struct Enforcer {
    rules: Guardrails,
    analyzer: Arc<Analyzer>,
    /// Prepared statements of this session (SQL PREPARE and protocol Parse), by name.
    prepared: HashMap<String, Statement>,
    token: String,
    next: u64,
    /// Refusal number → (request group it belongs to, the ErrorResponse to send).
    refusals: HashMap<u64, (u64, BytesMut)>,
    /// Request groups (a Query, FunctionCall, or messages up to a Sync) sent and answered.
    sent: u64,
    answered: u64,
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

impl Enforcer {
    pub fn new(rules: Guardrails, analyzer: Arc<Analyzer>) -> Enforcer {
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Enforcer {
            rules,
            analyzer,
            prepared: HashMap::new(),
            token: format!("pgid_refused_{}", hex::encode(b)),
            next: 0,
            refusals: HashMap::new(),
            sent: 0,
            answered: 0,
        }
    }

    /// The verdict, and the cached analysis it came from (shared, not copied).
    async fn judge(&mut self, sql: &str, dialect: Dialect) -> (Verdict, Outcome) {
        let outcome = self
            .analyzer
            .analyze(sql, dialect, self.rules.max_statement_bytes as usize)
            .await;
        let verdict = match &*outcome {
            Err(e) => Verdict::Deny {
                rule: "analysis",
                reason: e.to_string(),
            },
            Ok(a) => {
                let prepared = &self.prepared;
                guard::check(a, &self.rules, &|name| prepared.get(name).cloned())
            }
        };
        (verdict, outcome)
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

    /// Judges the complete client messages in `frames`. `None`: forward them as they are;
    /// `Some(bytes)`: forward these instead.
    pub async fn client_frames(
        &mut self,
        frames: &[u8],
        dialect: Dialect,
    ) -> Result<Option<BytesMut>, String> {
        let mut out: Option<BytesMut> = None;
        let mut pos = 0;
        while pos < frames.len() {
            let tag = frames[pos];
            let total = frame_len(frames, pos);
            let body = &frames[pos + 5..pos + total];
            let replacement = match tag {
                b'Q' => {
                    self.sent += 1;
                    let mut at = 0;
                    let sql = cstr(body, &mut at).map_err(|e| e.to_string())?.to_string();
                    let (verdict, outcome) = self.judge(&sql, dialect).await;
                    if verdict == Verdict::Allow {
                        // Only SQL PREPARE needs remembering; everything else is judged and gone.
                        for st in outcome.iter().flat_map(|a| &a.statements) {
                            if let Some(name) = &st.prepares {
                                self.prepared.insert(name.clone(), st.clone());
                            }
                        }
                        None
                    } else {
                        let stand_in = self.refuse(&verdict, self.sent);
                        let mut q = BytesMut::new();
                        message(&mut q, b'Q', |b| put_cstr(b, &stand_in));
                        Some(q)
                    }
                }
                b'P' => {
                    let mut at = 0;
                    let name = cstr(body, &mut at).map_err(|e| e.to_string())?.to_string();
                    let sql = cstr(body, &mut at).map_err(|e| e.to_string())?.to_string();
                    let (verdict, outcome) = self.judge(&sql, dialect).await;
                    if verdict == Verdict::Allow {
                        let first = outcome
                            .iter()
                            .flat_map(|a| a.statements.first())
                            .next()
                            .cloned();
                        self.prepared.insert(name, first.unwrap_or_default());
                        None
                    } else {
                        self.prepared.remove(&name);
                        let stand_in = self.refuse(&verdict, self.sent + 1);
                        let mut p = BytesMut::new();
                        message(&mut p, b'P', |b| {
                            put_cstr(b, &name);
                            put_cstr(b, &stand_in);
                            b.put_i16(0);
                        });
                        Some(p)
                    }
                }
                b'F' => {
                    // FunctionCall names a function by OID, which no policy can be checked against.
                    self.sent += 1;
                    let verdict = Verdict::Deny {
                        rule: "deny",
                        reason: "the FunctionCall protocol message is not allowed".into(),
                    };
                    let stand_in = self.refuse(&verdict, self.sent);
                    let mut q = BytesMut::new();
                    message(&mut q, b'Q', |b| put_cstr(b, &stand_in));
                    Some(q)
                }
                b'S' => {
                    self.sent += 1;
                    None
                }
                _ => None,
            };
            match replacement {
                Some(r) => out
                    .get_or_insert_with(|| BytesMut::from(&frames[..pos]))
                    .extend_from_slice(&r),
                None => {
                    if let Some(o) = out.as_mut() {
                        o.extend_from_slice(&frames[pos..pos + total]);
                    }
                }
            }
            pos += total;
        }
        Ok(out)
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
