//! What was sent upstream and awaits its answer. Postgres answers a connection's messages
//! strictly in order, so the queue's head is always the message being answered: a Query ends at
//! ReadyForQuery; Parse, Bind and Close at their completion messages; Describe at
//! RowDescription/NoData; Execute at CommandComplete, EmptyQueryResponse, PortalSuspended or an
//! error; Sync at ReadyForQuery. After an error in the extended protocol the server skips
//! everything up to Sync: those messages are reported not run and their effects never happen.
//!
//! Each entry carries the registry [`Effect`]s its message has once the server confirms it, and
//! the statement record whose outcome its answer completes. Pure: no I/O, no clock but the one
//! passed in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::registry::{Effect, Name, Portal, Registry, Statement, Touches};
use crate::audit::statement::Result as Finish;
use crate::mask::MaskPlan;
use crate::proxy::wire::backend::{tag_rows, Backend, TransactionStatus};

/// What a sent message is, for matching its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A Query (or a stand-in for a refused one): answered up to its ReadyForQuery.
    Query,
    Parse,
    Bind,
    /// A Describe: of a statement (ParameterDescription, then RowDescription/NoData) or portal.
    Describe,
    Execute,
    Close,
    Sync,
}

impl Sent {
    /// Ends a stretch of the extended protocol that the server skips to after an error.
    fn is_sync(self) -> bool {
        self == Sent::Sync
    }

    /// Extended-protocol messages: if one fails, the server skips everything after it up to
    /// Sync, so whatever follows in the same stretch runs only if it succeeded.
    fn is_extended(self) -> bool {
        !matches!(self, Sent::Query | Sent::Sync)
    }
}

/// What pgid attached to a message it sent, read back while its answer arrives.
#[derive(Debug, Default)]
pub struct Note {
    /// Masking: per statement of a Query; the one statement of an Execute.
    pub plans: Vec<MaskPlan>,
    /// Describe: the definition described (statement or portal id), for its answer.
    pub describes: Option<u64>,
    /// Execute: the portal and statement it runs, and its Bind's result formats.
    pub portal: Option<Arc<Portal>>,
    /// A Describe pgid added for itself: its answer is not the client's.
    pub swallow: bool,
}

impl Note {
    pub fn masked(&self) -> bool {
        self.plans
            .iter()
            .any(|p| matches!(p, MaskPlan::Mask { .. } | MaskPlan::Withhold))
    }
}

/// A statement whose outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audited {
    pub seq: u64,
    pub started: Instant,
}

/// When an entry's effects happen.
#[derive(Debug, Clone, Default)]
pub enum Effects {
    #[default]
    None,
    /// When the message completes (ParseComplete, BindComplete, CloseComplete, an Execute's
    /// CommandComplete).
    OnSuccess(Vec<Effect>),
    /// A Query: the `k`th statement's effects at its CommandComplete (a failed statement ends
    /// the string; the effects of those that completed stand).
    PerStatement(Vec<Vec<Effect>>),
}

impl Effects {
    fn all(&self) -> impl Iterator<Item = &Effect> {
        let (one, many): (&[Effect], &[Vec<Effect>]) = match self {
            Effects::None => (&[], &[]),
            Effects::OnSuccess(e) => (e, &[]),
            Effects::PerStatement(p) => (&[], p),
        };
        one.iter().chain(many.iter().flatten())
    }
}

/// A message forwarded upstream, as the queue keeps it.
#[derive(Debug)]
pub struct Entry {
    /// Increasing per session: what a judgement may wait for.
    pub id: u64,
    pub sent: Sent,
    pub effects: Effects,
    pub audited: Option<Audited>,
    pub note: Option<Arc<Note>>,
    /// Runs statements (or may: a Query, Bind, Execute): settings may change under it.
    pub executes: bool,
    /// A stand-in for refused message number `n`: it fails at the server, effects none.
    pub refusal: Option<u64>,
    /// COPY messages (CopyData, CopyDone, CopyFail) and COPY ends (CopyDone, CopyFail) the
    /// client had sent before this message: where it stands relative to a COPY FROM STDIN.
    pub copy: CopyPosition,
    completed: usize,
    data_rows: u64,
    completed_rows: Option<u64>,
    sqlstate: Option<String>,
}

impl Entry {
    pub fn new(id: u64, sent: Sent) -> Entry {
        Entry {
            id,
            sent,
            effects: Effects::None,
            audited: None,
            note: None,
            executes: false,
            refusal: None,
            copy: CopyPosition::default(),
            completed: 0,
            data_rows: 0,
            completed_rows: None,
            sqlstate: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub seq: u64,
    pub result: Finish,
    pub rows: Option<u64>,
    pub duration_ms: f64,
    pub sqlstate: Option<String>,
}

/// The message whose answer is arriving.
pub struct Head<'a> {
    pub sent: Sent,
    pub note: Option<&'a Note>,
    /// Query: statements completed so far (the index of the one answering now).
    pub completed: usize,
}

/// What a lookup of a name found.
#[derive(Debug)]
pub enum Lookup<T> {
    /// The server will resolve the name to this (or to nothing) when it reads the message.
    Known(Option<Arc<T>>),
    /// It depends on how the server answers the entry with this id: judge after its answer.
    Wait(u64),
}

/// How many COPY messages and COPY ends the client had sent at some point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyPosition {
    pub messages: u64,
    pub ends: u64,
}

/// What the server does with a Sync a client sends after a COPY FROM STDIN began (the server
/// ignores Sync and Flush while it reads COPY data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopySync {
    /// Not during a COPY FROM STDIN: answered as usual.
    Answered,
    /// Sent before any COPY data: the server ignores it.
    Ignored,
    /// Sent among the COPY data: ignored unless the COPY failed before it arrived — which pgid
    /// cannot know.
    Unknowable,
}

impl CopySync {
    /// A Sync at `at`, for a COPY FROM STDIN that began when the client stood at `start`.
    pub fn of(start: CopyPosition, at: CopyPosition) -> CopySync {
        if at.ends > start.ends {
            CopySync::Answered
        } else if at.messages == start.messages {
            CopySync::Ignored
        } else {
            CopySync::Unknowable
        }
    }
}

#[derive(Default)]
pub struct Queue {
    entries: VecDeque<Entry>,
    /// The server is skipping to the next Sync, which pgid has not sent yet.
    skipping: bool,
    /// A message that runs statements was answered since the last ReadyForQuery: settings it
    /// changed are not reported yet.
    unreported: bool,
    /// An Execute was answered since the last ReadyForQuery: a statement ran, and what it set
    /// (`client_encoding`) applies to everything the server sends after it, though it is
    /// reported only before the next ReadyForQuery.
    ran: bool,
    /// The server reads COPY data for a COPY FROM STDIN that began with the client here.
    copy_in: Option<CopyPosition>,
    /// A Sync pgid cannot place (sent among COPY data): the session cannot go on.
    lost: bool,
    /// Stand-ins that will never be answered (skipped or not sent): their refusals go.
    dropped: Vec<u64>,
    /// Something was sent since the last ReadyForQuery: the server is inside a pipeline (an
    /// implicit transaction may be open), not at a point where pgid may use the connection.
    open: bool,
}

fn done(e: Entry, result: Finish, now: Instant) -> Option<Done> {
    let a = e.audited?;
    let result = if e.sqlstate.is_some() && result == Finish::Ok {
        Finish::Error
    } else {
        result
    };
    let rows = match result {
        Finish::Ok | Finish::Suspended => e.completed_rows.or(Some(e.data_rows)),
        _ => None,
    };
    Some(Done {
        seq: a.seq,
        result,
        rows,
        duration_ms: now.duration_since(a.started).as_secs_f64() * 1000.0,
        sqlstate: e.sqlstate,
    })
}

/// Resolves `name` against pending entries (newest first), then `confirmed`. An entry's effect
/// is certain for a message sent after it when it is an extended-protocol message with no Sync
/// in between: had it failed, the server would skip the later message too. Any other pending
/// effect (a Query's, or one before a Sync) depends on an answer still to come.
pub fn resolve<'e, T>(
    entries: impl DoubleEndedIterator<Item = &'e Entry>,
    name: &Name,
    confirmed: impl FnOnce() -> Option<Arc<T>>,
) -> Lookup<T>
where
    Effect: Touches<T>,
{
    let mut synced = false;
    for e in entries.rev() {
        if e.sent.is_sync() {
            synced = true;
            continue;
        }
        if e.refusal.is_some() {
            continue;
        }
        let touched = e.effects.all().filter_map(|eff| eff.touches(name)).last();
        if let Some(found) = touched {
            return if e.sent.is_extended() && !synced {
                Lookup::Known(found)
            } else {
                Lookup::Wait(e.id)
            };
        }
    }
    Lookup::Known(confirmed())
}

/// How the settings a message is read under relate to what pgid knows of them.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Nothing sent since the last ReadyForQuery pgid has seen can have changed them.
    Now,
    /// They are the ones the server reports before answering the entry with this id (a Sync or
    /// Query), and nothing that runs statements comes between it and the message.
    After(u64),
    /// A message that runs statements precedes this one since the last Sync/Query: whatever it
    /// changed is not reported before the server reads this message.
    Unknowable,
}

/// Whether the lexing settings for the next message are known (see [`Settled`]), given the
/// entries not yet answered and whether an answered one ran statements since the server last
/// reported its settings (`unreported`).
pub fn settled<'e>(
    entries: impl DoubleEndedIterator<Item = &'e Entry>,
    unreported: bool,
) -> Settled {
    for e in entries.rev() {
        // A stand-in Query is answered with a ReadyForQuery too, and what ran before it is
        // reported before that.
        if matches!(e.sent, Sent::Sync | Sent::Query) {
            return Settled::After(e.id);
        }
        if e.executes && e.refusal.is_none() {
            return Settled::Unknowable;
        }
    }
    if unreported {
        Settled::Unknowable
    } else {
        Settled::Now
    }
}

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// See [`settled`].
    pub fn unreported(&self) -> bool {
        self.unreported
    }

    /// Whether a statement ran (an Execute was answered) since the last ReadyForQuery: the
    /// session's settings may have changed since the server last reported them.
    pub fn ran(&self) -> bool {
        self.ran
    }

    /// The server is skipping to a Sync pgid has not sent: it must not use the connection
    /// itself (its own Sync would end the skip).
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Whether the server is between pipelines (its last answer was a ReadyForQuery and nothing
    /// was sent since).
    pub fn at_rest(&self) -> bool {
        !self.open
    }

    /// Where the client stood when the COPY FROM STDIN the server reads now began.
    pub fn copy_in(&self) -> Option<CopyPosition> {
        self.copy_in
    }

    /// A Sync was sent where pgid cannot tell whether the server honours it.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Refusal numbers of stand-ins that will not be answered, since last taken.
    pub fn take_dropped(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped)
    }

    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Whether the entry with `id` has been answered.
    pub fn answered(&self, id: u64) -> bool {
        self.entries.front().is_none_or(|e| e.id > id)
    }

    /// A message pgid forwarded upstream. Flush and COPY messages get no answer of their own
    /// and are not passed here.
    pub fn sent(&mut self, entry: Entry, now: Instant, out: &mut Vec<Done>) {
        self.open = true;
        if self.skipping && !entry.sent.is_sync() {
            self.dropped.extend(entry.refusal);
            out.extend(done(entry, Finish::NotRun, now));
            return;
        }
        if entry.sent.is_sync() {
            self.skipping = false;
        }
        self.entries.push_back(entry);
    }

    /// The refusal the head message stands in for, if it is a stand-in.
    pub fn head_refusal(&self) -> Option<u64> {
        self.entries.front().and_then(|e| e.refusal)
    }

    pub fn head(&self) -> Option<Head<'_>> {
        self.entries.front().map(|e| Head {
            sent: e.sent,
            note: e.note.as_deref(),
            completed: e.completed,
        })
    }

    /// Whether any message awaiting its answer reads masked columns or names a table or view
    /// that has some (their error and notice texts are withheld).
    pub fn any_masked(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.note.as_ref().is_some_and(|n| n.masked()))
    }

    /// A server message: advances the head, commits confirmed effects to `registry`, and adds
    /// the outcome of completed statements to `out`. `replaced_by`: the SQLSTATE of an error pgid
    /// delivers in its place (an export limit), when the client sees an error the server did
    /// not send.
    pub fn received(
        &mut self,
        msg: &Backend<'_>,
        replaced_by: Option<&str>,
        registry: &mut Registry,
        now: Instant,
        out: &mut Vec<Done>,
    ) {
        if let Backend::ReadyForQuery(status) = msg {
            // The server is at a sync point: it skips nothing, reads no COPY, has reported
            // every setting; with no transaction open, portals are gone.
            self.unreported = false;
            self.ran = false;
            self.skipping = false;
            self.copy_in = None;
            if *status == TransactionStatus::Idle {
                registry.transaction_ended();
            }
        }
        let Some(head) = self.entries.front_mut() else {
            if matches!(msg, Backend::ReadyForQuery(_)) {
                self.open = false;
            }
            return;
        };
        if let Some(code) = replaced_by {
            if head.sqlstate.is_none() {
                head.sqlstate = Some(code.to_string());
            }
        }
        let query = head.sent == Sent::Query;
        if matches!(msg, Backend::CommandComplete(_) | Backend::ErrorResponse(_)) {
            // A COPY ends with its completion or an error.
            self.copy_in = None;
        }
        match msg {
            Backend::DataRow(_) => head.data_rows += 1,
            Backend::ReadyForQuery(_) => {
                // Ends a Query, or the Sync of a pipeline (and whatever it still holds).
                while let Some(e) = self.entries.pop_front() {
                    let last = matches!(e.sent, Sent::Query | Sent::Sync);
                    if !last {
                        self.dropped.extend(e.refusal);
                    }
                    let result = if e.sent == Sent::Query {
                        Finish::Ok
                    } else {
                        Finish::NotRun
                    };
                    out.extend(done(e, result, now));
                    if last {
                        break;
                    }
                }
                // Messages sent after the one this answers are still on their way.
                self.open = !self.entries.is_empty();
            }
            Backend::CommandComplete(tag) if query => {
                if let Effects::PerStatement(each) = &head.effects {
                    for effect in each.get(head.completed).into_iter().flatten() {
                        registry.apply(effect);
                    }
                }
                head.completed += 1;
                if let Some(n) = tag_rows(tag) {
                    *head.completed_rows.get_or_insert(0) += n;
                }
            }
            Backend::EmptyQueryResponse if query => head.completed += 1,
            Backend::ErrorResponse(r) if query && head.sqlstate.is_none() => {
                head.sqlstate = Some(r.code_str().to_string());
            }
            Backend::CopyInResponse => {
                // The server now ignores Sync (and Flush) until the COPY ends: Syncs the client
                // sent after the COPY began are not answered, unless they follow its end.
                let start = head.copy;
                self.copy_in = Some(start);
                let mut i = 1;
                while i < self.entries.len() {
                    let e = &self.entries[i];
                    if e.sent.is_sync() {
                        match CopySync::of(start, e.copy) {
                            CopySync::Ignored => {
                                self.entries.remove(i);
                                continue;
                            }
                            CopySync::Unknowable => self.lost = true,
                            CopySync::Answered => {}
                        }
                    }
                    i += 1;
                }
            }
            _ if query => {}
            Backend::ParseComplete
            | Backend::BindComplete
            | Backend::CloseComplete
            | Backend::CommandComplete(_)
            | Backend::EmptyQueryResponse
            | Backend::PortalSuspended => {
                if let Some(mut e) = self.entries.pop_front() {
                    self.unreported |= e.executes;
                    self.ran |= e.sent == Sent::Execute;
                    let result = match msg {
                        Backend::PortalSuspended => Finish::Suspended,
                        _ => Finish::Ok,
                    };
                    if let Backend::CommandComplete(tag) = msg {
                        e.completed_rows = tag_rows(tag);
                    }
                    if !matches!(msg, Backend::PortalSuspended) {
                        for effect in e.effects.all() {
                            registry.apply(effect);
                        }
                    }
                    out.extend(done(e, result, now));
                }
            }
            Backend::RowDescription(_) | Backend::NoData if head.sent == Sent::Describe => {
                self.entries.pop_front();
            }
            // An error answering a Sync is its own (the implicit transaction's commit failed):
            // its ReadyForQuery follows; nothing is skipped.
            Backend::ErrorResponse(_) if head.sent.is_sync() => {}
            Backend::ErrorResponse(r) => {
                if let Some(mut e) = self.entries.pop_front() {
                    self.unreported |= e.executes;
                    self.ran |= e.sent == Sent::Execute;
                    let code = replaced_by
                        .map(str::to_string)
                        .or_else(|| Some(r.code_str().to_string()));
                    // A Bind fails for the Execute that follows it (planning happens at Bind).
                    if e.sent == Sent::Bind
                        && self
                            .entries
                            .front()
                            .is_some_and(|n| n.sent == Sent::Execute)
                    {
                        out.extend(done(e, Finish::Error, now));
                        e = self.entries.pop_front().unwrap_or_else(|| unreachable!());
                    }
                    e.sqlstate = code;
                    out.extend(done(e, Finish::Error, now));
                }
                // The server now skips to Sync: nothing before it runs or takes effect.
                while self.entries.front().is_some_and(|e| !e.sent.is_sync()) {
                    if let Some(e) = self.entries.pop_front() {
                        self.dropped.extend(e.refusal);
                        out.extend(done(e, Finish::NotRun, now));
                    }
                }
                if self.entries.is_empty() {
                    self.skipping = true;
                }
            }
            _ => {}
        }
    }

    /// The statement whose ParameterDescription is arriving now (a Describe of a statement).
    pub fn describing(&self) -> Option<u64> {
        let e = self.entries.front().filter(|e| e.sent == Sent::Describe)?;
        e.note.as_ref()?.describes
    }
}

/// Definitions a statement lookup can see: for tests and for judging under a reload.
pub fn statement_of(queue: &Queue, registry: &Registry, name: &Name) -> Lookup<Statement> {
    resolve(queue.entries(), name, || registry.statement(name))
}

#[cfg(test)]
mod tests {
    use super::super::registry::tests::statement;
    use super::*;
    use crate::proxy::wire::backend::Report;

    fn t() -> Instant {
        Instant::now()
    }

    fn entry(id: u64, sent: Sent, seq: Option<u64>) -> Entry {
        let mut e = Entry::new(id, sent);
        e.audited = seq.map(|seq| Audited { seq, started: t() });
        e
    }

    fn error(code: &'static [u8]) -> Backend<'static> {
        Backend::ErrorResponse(Report {
            code,
            message: b"x",
            severity: b"ERROR",
        })
    }

    fn feed(q: &mut Queue, r: &mut Registry, msgs: &[Backend<'_>], out: &mut Vec<Done>) {
        for m in msgs {
            q.received(m, None, r, t(), out);
        }
    }

    #[test]
    fn a_multi_statement_query_completes_at_ready_for_query() {
        let (mut q, mut r, mut out) = (Queue::default(), Registry::default(), Vec::new());
        q.sent(entry(1, Sent::Query, Some(1)), t(), &mut out);
        feed(
            &mut q,
            &mut r,
            &[
                Backend::RowDescription(b""),
                Backend::DataRow(b""),
                Backend::DataRow(b""),
                Backend::CommandComplete(b"SELECT 2"),
                Backend::CommandComplete(b"UPDATE 3"),
            ],
            &mut out,
        );
        assert!(out.is_empty());
        feed(
            &mut q,
            &mut r,
            &[Backend::ReadyForQuery(TransactionStatus::Idle)],
            &mut out,
        );
        assert_eq!(
            (out[0].seq, out[0].result, out[0].rows),
            (1, Finish::Ok, Some(5))
        );
        out.clear();
        q.sent(entry(2, Sent::Query, Some(2)), t(), &mut out);
        feed(
            &mut q,
            &mut r,
            &[
                error(b"42P01"),
                Backend::ReadyForQuery(TransactionStatus::Idle),
            ],
            &mut out,
        );
        assert_eq!(out[0].result, Finish::Error);
        assert_eq!(out[0].sqlstate.as_deref(), Some("42P01"));
    }

    #[test]
    fn a_pipeline_attributes_each_execute_and_skips_after_an_error() {
        let (mut q, mut r, mut out) = (Queue::default(), Registry::default(), Vec::new());
        for (i, (sent, seq)) in [
            (Sent::Parse, None),
            (Sent::Bind, None),
            (Sent::Describe, None),
            (Sent::Execute, Some(1)),
            (Sent::Bind, None),
            (Sent::Execute, Some(2)),
            (Sent::Bind, None),
            (Sent::Execute, Some(3)),
            (Sent::Sync, None),
        ]
        .into_iter()
        .enumerate()
        {
            q.sent(entry(i as u64, sent, seq), t(), &mut out);
        }
        feed(
            &mut q,
            &mut r,
            &[
                Backend::ParseComplete,
                Backend::BindComplete,
                Backend::RowDescription(b""),
                Backend::DataRow(b""),
                Backend::CommandComplete(b"SELECT 1"),
                Backend::BindComplete,
                error(b"22012"),
                Backend::ReadyForQuery(TransactionStatus::Idle),
            ],
            &mut out,
        );
        let got: Vec<_> = out.iter().map(|d| (d.seq, d.result, d.rows)).collect();
        assert_eq!(
            got,
            [
                (1, Finish::Ok, Some(1)),
                (2, Finish::Error, None),
                (3, Finish::NotRun, None)
            ]
        );
    }

    #[test]
    fn effects_take_hold_only_when_the_server_confirms_them() {
        let (mut q, mut r, mut out) = (Queue::default(), Registry::default(), Vec::new());
        let s = Name::new("s");
        // Parse s (confirmed), then a second Parse s that the server refuses (42P05).
        let mut p1 = entry(1, Sent::Parse, None);
        p1.effects = Effects::OnSuccess(vec![Effect::DefineStatement(
            s.clone(),
            statement(1, "SELECT 1"),
        )]);
        q.sent(p1, t(), &mut out);
        q.sent(entry(2, Sent::Sync, None), t(), &mut out);
        let mut p2 = entry(3, Sent::Parse, None);
        p2.effects = Effects::OnSuccess(vec![Effect::DefineStatement(
            s.clone(),
            statement(2, "SELECT 2"),
        )]);
        q.sent(p2, t(), &mut out);
        // A message after the second Parse in its stretch runs only if that Parse succeeded.
        let later = statement_of(&q, &r, &s);
        assert!(
            matches!(later, Lookup::Known(Some(ref d)) if d.id == 2),
            "{later:?}"
        );
        // After a Sync, it depends on the answer: wait for it.
        q.sent(entry(4, Sent::Sync, None), t(), &mut out);
        assert!(matches!(statement_of(&q, &r, &s), Lookup::Wait(3)));
        feed(
            &mut q,
            &mut r,
            &[
                Backend::ParseComplete,
                Backend::ReadyForQuery(TransactionStatus::Idle),
            ],
            &mut out,
        );
        assert_eq!(r.statement(&s).unwrap().id, 1);
        // A Close in the same stretch as an error is skipped: s stays.
        let mut c = entry(5, Sent::Close, None);
        c.effects = Effects::OnSuccess(vec![Effect::DropStatement(s.clone())]);
        q.sent(c, t(), &mut out);
        feed(
            &mut q,
            &mut r,
            &[
                error(b"42P05"),
                Backend::ReadyForQuery(TransactionStatus::Idle),
            ],
            &mut out,
        );
        assert_eq!(
            r.statement(&s).unwrap().id,
            1,
            "neither the re-Parse nor the Close happened"
        );
    }

    #[test]
    fn lookups_trust_the_stretch_they_are_in_and_wait_across_a_sync_or_query() {
        let (mut q, r) = (Queue::default(), Registry::default());
        let mut out = Vec::new();
        let s = Name::new("s");
        let mut p = entry(1, Sent::Parse, None);
        p.effects = Effects::OnSuccess(vec![Effect::DefineStatement(
            s.clone(),
            statement(7, "SELECT 7"),
        )]);
        q.sent(p, t(), &mut out);
        assert!(matches!(statement_of(&q, &r, &s), Lookup::Known(Some(d)) if d.id == 7));
        let mut query = entry(2, Sent::Query, None);
        query.effects = Effects::PerStatement(vec![vec![Effect::DropAllStatements]]);
        q.sent(query, t(), &mut out);
        assert!(matches!(statement_of(&q, &r, &s), Lookup::Wait(2)));
    }

    #[test]
    fn settings_are_known_until_something_runs_in_the_same_stretch() {
        let mut q = Queue::default();
        let mut out = Vec::new();
        assert_eq!(settled(q.entries(), q.unreported()), Settled::Now);
        q.sent(entry(1, Sent::Parse, None), t(), &mut out);
        assert_eq!(settled(q.entries(), q.unreported()), Settled::Now);
        let mut b = entry(2, Sent::Bind, None);
        b.executes = true;
        q.sent(b, t(), &mut out);
        assert_eq!(settled(q.entries(), q.unreported()), Settled::Unknowable);
        q.sent(entry(3, Sent::Sync, None), t(), &mut out);
        assert_eq!(settled(q.entries(), q.unreported()), Settled::After(3));
        q.sent(entry(4, Sent::Describe, None), t(), &mut out);
        assert_eq!(settled(q.entries(), q.unreported()), Settled::After(3));
    }

    #[test]
    fn settings_stay_unknown_after_a_statement_ran_until_the_server_reports_them() {
        // Parse, Bind, Execute, Flush: all answered, no ReadyForQuery yet.
        let (mut q, mut r, mut out) = (Queue::default(), Registry::default(), Vec::new());
        q.sent(entry(1, Sent::Parse, None), t(), &mut out);
        let mut b = entry(2, Sent::Bind, None);
        b.executes = true;
        q.sent(b, t(), &mut out);
        let mut e = entry(3, Sent::Execute, None);
        e.executes = true;
        q.sent(e, t(), &mut out);
        feed(
            &mut q,
            &mut r,
            &[
                Backend::ParseComplete,
                Backend::BindComplete,
                Backend::CommandComplete(b"SET"),
            ],
            &mut out,
        );
        assert!(q.is_empty());
        assert_eq!(settled(q.entries(), q.unreported()), Settled::Unknowable);
        q.sent(entry(4, Sent::Sync, None), t(), &mut out);
        assert_eq!(settled(q.entries(), q.unreported()), Settled::After(4));
        feed(
            &mut q,
            &mut r,
            &[Backend::ReadyForQuery(TransactionStatus::Idle)],
            &mut out,
        );
        assert_eq!(settled(q.entries(), q.unreported()), Settled::Now);
    }
}
