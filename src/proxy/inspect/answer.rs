//! The server's side: each message is matched to the one it answers (the queue's head), commits
//! what the server confirmed, tells pgid the settings the server reports, turns stand-in errors
//! into pgid's refusals, enforces the export limits and masks results.

use std::time::Instant;

use super::queue::Sent;
use super::{Fatal, Inspector};
use crate::mask::rows;
use crate::mask::MaskPlan;
use crate::proxy::limits::{Action, LIMIT_SQLSTATE};
use crate::proxy::masking::Described;
use crate::proxy::wire::backend::{Backend, TransactionStatus};

/// What becomes of one server message.
#[derive(Debug)]
pub struct Answer {
    pub action: Action,
    /// The statement passed an export limit: cancel it upstream now.
    pub cancel: bool,
    /// The session cannot go on (its identity changed under it).
    pub fatal: Option<Fatal>,
}

const UNTOUCHED: MaskPlan = MaskPlan::Untouched;

impl Inspector {
    /// One server message (`len`: its whole length), in order.
    pub fn backend(&mut self, msg: &Backend<'_>, len: usize) -> Answer {
        let mut fatal = None;
        match msg {
            Backend::ParameterStatus { name, value } => {
                self.context.reported(name, value);
                fatal = self.identity(name, value);
            }
            Backend::ReadyForQuery(status) => self.status = *status,
            _ => {}
        }
        let (mut action, cancel) = self.limit.on_message(msg, len);
        let limited = matches!(action, Action::Replace(_)).then_some(LIMIT_SQLSTATE);
        if let (Backend::ErrorResponse(report), Action::Pass) = (msg, &action) {
            if let Some(err) = self
                .queue
                .head_refusal()
                .and_then(|n| self.refusals.answer(n, report))
            {
                action = Action::Replace(err);
            }
        }
        if action == Action::Pass {
            action = self.described(msg);
        }
        if action == Action::Pass && self.masker.is_some() {
            action = self.mask(msg);
        }
        self.queue.received(
            msg,
            limited,
            &mut self.registry,
            Instant::now(),
            &mut self.done,
        );
        if matches!(msg, Backend::ReadyForQuery(_)) && self.queue.is_empty() {
            // Every stand-in sent has been answered or skipped.
            self.refusals.clear();
        }
        Answer {
            action,
            cancel,
            fatal,
        }
    }

    /// A reported setting that means the session is no longer the lease's.
    fn identity(&self, name: &[u8], value: &[u8]) -> Option<Fatal> {
        let changed = match name {
            b"session_authorization" => value != self.role.as_bytes(),
            b"is_superuser" => value == b"on",
            _ => false,
        };
        changed.then(|| {
            Fatal(format!(
                "pgid: the session's identity changed ({} = {}); the session ends",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ))
        })
    }

    /// The answer to a Describe: kept with the statement or portal it describes (pgid's own
    /// Describe's answer stays with pgid).
    fn described(&mut self, msg: &Backend<'_>) -> Action {
        let Some(head) = self.queue.head().filter(|h| h.sent == Sent::Describe) else {
            return Action::Pass;
        };
        let Some(note) = head.note else {
            return Action::Pass;
        };
        let id = note.describes;
        let swallow = note.swallow;
        match msg {
            Backend::ParameterDescription(body) => {
                if let Some(id) = id {
                    self.registry.describe(id).parameter_types =
                        Some(crate::proxy::wire::backend::parameter_types(body));
                }
            }
            Backend::RowDescription(_) | Backend::NoData => {
                if let Some(id) = id {
                    let body: &[u8] = match msg {
                        Backend::RowDescription(b) => b,
                        _ => &[0, 0],
                    };
                    self.registry.describe(id).fields = rows::row_description(body);
                }
            }
            _ => return Action::Pass,
        }
        if swallow {
            Action::Drop
        } else {
            Action::Pass
        }
    }

    fn mask(&mut self, msg: &Backend<'_>) -> Action {
        let head = self.queue.head();
        let (sent, note, completed) = match &head {
            Some(h) => (Some(h.sent), h.note, h.completed),
            None => (None, None, 0),
        };
        let Some(masker) = self.masker.as_mut() else {
            return Action::Pass;
        };
        match msg {
            // A Describe's answer opens no result: the rows of a later Execute are read with the
            // description kept in the registry and the Execute's own plan. (Taking it for a
            // result laid the Execute's rows out under the Describe's plan — none — so
            // `Parse, Bind, Describe portal, Execute, Sync`, libpq's PQexecParams, sent tainted
            // outputs in clear.)
            Backend::RowDescription(_) if sent == Some(Sent::Describe) => Action::Pass,
            Backend::RowDescription(body) => {
                let plan = note
                    .and_then(|n| n.plans.get(completed))
                    .unwrap_or(&UNTOUCHED);
                masker.result(body, plan)
            }
            Backend::DataRow(body) => {
                let described = match (sent, note) {
                    (Some(Sent::Execute), Some(n)) => n.portal.as_ref().map(|p| {
                        let of = |id| self.registry.description(id).and_then(|d| d.fields.clone());
                        let fields = of(p.id).or_else(|| {
                            of(p.statement.id).map(|f| rows::with_formats(&f, &p.result_formats))
                        });
                        Described {
                            fields,
                            plan: n.plans.first().unwrap_or(&UNTOUCHED),
                        }
                    }),
                    _ => None,
                };
                // The server reports a change of client_encoding only before its next
                // ReadyForQuery: rows that follow a statement run since then (an earlier one of
                // the same Query, an Execute of the same pipeline) may be in another encoding
                // than the one last reported, so none is taken for granted (ASCII reads alike
                // in all of them).
                let changed = self.queue.ran() || (sent == Some(Sent::Query) && completed > 0);
                let encoding = (!changed)
                    .then_some(self.context.current.encoding)
                    .flatten();
                masker.data_row(body, described, encoding)
            }
            Backend::CommandComplete(_)
            | Backend::PortalSuspended
            | Backend::EmptyQueryResponse => masker.end(),
            Backend::ErrorResponse(r) => masker.report(false, r, self.queue.any_masked()),
            Backend::NoticeResponse(r) => masker.report(true, r, self.queue.any_masked()),
            Backend::NotificationResponse => masker.notification(),
            Backend::ReadyForQuery(_) => {
                masker.ready();
                Action::Pass
            }
            _ => Action::Pass,
        }
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> TransactionStatus {
        self.status
    }
}
