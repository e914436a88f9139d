//! Judging the extended protocol: Parse judges a statement's text (what it refers to by name is
//! judged at each Execute, where the names resolve); Bind, Describe and Close resolve names as
//! the server will; Execute judges what the portal runs, holds it for approval, and plans its
//! masking — with a Describe of pgid's own first when the columns of a masked result would
//! otherwise be unknown.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::hold::HoldOf;
use crate::approval::Made;

use super::judge::{self, deny, masked_columns, Batch, Refusal, Step, Stop};
use super::queue::{Effects, Note, Sent};
use super::registry::{Effect, ExactParameters, Origin, Portal, Statement as Definition};
use crate::audit::statement::{self, Protocol};
use crate::guard::Verdict;
use crate::mask::MaskPlan;
use crate::proxy::wire::frontend::{self, Bind, Target};
use crate::sql::{Analysis, Outcome};

impl Batch<'_> {
    pub(super) async fn parse(
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
                self.denial(Protocol::Extended, &String::from_utf8_lossy(raw), &r);
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
                let code = r.code;
                self.decision(
                    Protocol::Extended,
                    &text,
                    None,
                    first,
                    &[],
                    &[],
                    &r.verdict,
                    code,
                );
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

    pub(super) fn bind(&mut self, bind: &Bind<'_>) -> Result<Step, Stop> {
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
        // Values are converted from the client encoding by the server (text format, and the
        // binary input of text types): shown converted where pgid knows the encoding the server
        // will read them in, else as the bytes sent.
        let encoding = self.lexing().0.and_then(|l| l.encoding);
        let record = self.insp.rules.audit.parameters;
        let held = self.could_be_held(&def);
        let parameters = if record || held {
            bind.values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let binary = bind.binary(i);
                    let oid = types.get(i).copied().unwrap_or(0);
                    let v = (*v)?;
                    match converted(v, binary, oid, encoding) {
                        Some(value) => statement::parameter(Some(&value), binary, oid),
                        None => Some(format!("\\x{}", hex::encode(v))),
                    }
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
    pub(super) fn could_be_held(&self, def: &Definition) -> bool {
        if self.insp.rules.approvals.is_empty() {
            return false;
        }
        let Some(st) = def.statement() else {
            return false;
        };
        // An EXECUTE inside may run anything prepared: keep the values.
        // Assumes the session may have made relations and code by the time it runs.
        let anything = Made {
            relations: true,
            code: true,
        };
        !st.executes.is_empty()
            || self
                .insp
                .approval_rule(&[st], Vec::new(), anything)
                .is_some()
    }

    pub(super) fn describe(&mut self, target: Target, raw_name: &[u8]) -> Result<Step, Stop> {
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

    pub(super) fn close(&mut self, target: Target, raw_name: &[u8]) -> Result<Step, Stop> {
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

    pub(super) fn execute(
        &mut self,
        i: usize,
        frame: &Bytes,
        raw_portal: &[u8],
    ) -> Result<Step, Stop> {
        let name = match self.name(raw_portal)? {
            Ok(n) => n,
            Err(r) => return Ok(self.refuse_extended(&r, None)),
        };
        let Some(portal) = self.portal(&name)? else {
            let r = deny(
                "prepared",
                format!("portal \"{}\" was not bound through pgid", name.display()),
            );
            let shown = format!("<Execute of portal \"{}\">", name.display());
            self.denial(Protocol::Extended, &shown, &r);
            return Ok(self.refuse_extended(&r, None));
        };
        let def = portal.statement.clone();
        let st = def.statement().cloned();
        let started = self.insp.registry.started(portal.id) || self.started.contains(&portal.id);
        let judged = match (&def.verdict, &st) {
            (Verdict::Deny { .. }, _) => Err(Refusal::from(def.verdict.clone())),
            // An empty statement runs nothing (EmptyQueryResponse).
            (_, None)
                if def
                    .analysis
                    .as_ref()
                    .as_ref()
                    .is_ok_and(|a| a.statements.is_empty()) =>
            {
                Ok((MaskPlan::Untouched, super::judge::References::default()))
            }
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
                    r.code,
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
                statements.extend(self.run_by(&refs));
                let made = judge::made_by(self.counters.made, &statements);
                self.counters.made = made;
                if let Some(matched) = self.insp.approval_rule(&statements, prepared.clone(), made)
                {
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
            super::judge::code_of(&verdict),
        );
        if verdict != Verdict::Allow {
            return Ok(self.refuse_extended(&verdict.into(), None));
        }
        self.started.insert(portal.id);
        self.started.extend(refs.portals());
        // pgid's own Describe first, when it would not otherwise learn a masked result's
        // columns; its answer stays with pgid. (Entries are numbered in the order they go.)
        let describe =
            (matches!(plan, MaskPlan::Mask { .. }) && !self.described(&portal)).then(|| {
                let mut d = self.entry(Sent::Describe);
                d.note = Some(Arc::new(Note {
                    describes: Some(portal.id),
                    swallow: true,
                    ..Note::default()
                }));
                d
            });
        let mut e = self.entry(Sent::Execute);
        e.executes = true;
        e.audited = self.audited(seq);
        if let Some(st) = &st {
            let effects = super::effects::of_statement(st, || def.clone());
            let effects: Vec<Effect> = effects.into_iter().map(|e| self.numbered(e)).collect();
            e.effects = Effects::OnSuccess(effects);
        }
        e.note = Some(Arc::new(Note {
            plans: vec![plan],
            portal: Some(portal.clone()),
            ..Note::default()
        }));
        match describe {
            Some(d) => {
                let mut both = BytesMut::new();
                frontend::describe(&mut both, Target::Portal, raw_portal);
                // The Execute as the client sent it (row limit included) follows.
                both.extend_from_slice(frame);
                self.entries.push(d);
                Ok(Step::Replace(both, Some(e)))
            }
            None => Ok(Step::Keep(Some(e))),
        }
    }

    /// Whether pgid knows, or will know before its rows arrive, the columns of `portal`.
    pub(super) fn described(&self, portal: &Portal) -> bool {
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
}

/// Types whose binary input reads text in the client encoding (`pq_getmsgtext`): text, varchar,
/// bpchar, name, json, unknown, xml, and jsonb after its version byte.
const TEXT_RECEIVED: &[u32] = &[25, 1043, 1042, 19, 114, 705, 142, 3802];

/// A Bind value as the server reads it (converted to UTF-8 where the server converts it);
/// `None` when it would be converted and pgid does not know how.
fn converted(
    v: &[u8],
    binary: bool,
    oid: u32,
    encoding: Option<crate::encoding::Encoding>,
) -> Option<std::borrow::Cow<'_, [u8]>> {
    if v.is_ascii() || (binary && !TEXT_RECEIVED.contains(&oid)) {
        return Some(std::borrow::Cow::Borrowed(v));
    }
    let (head, body) = if binary && oid == 3802 && !v.is_empty() {
        v.split_at(1)
    } else {
        (&v[..0], v)
    };
    let text = encoding?.decode(body).ok()?;
    Some(std::borrow::Cow::Owned([head, text.as_bytes()].concat()))
}
