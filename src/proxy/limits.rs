//! Data-export limits (`max_rows`, `max_bytes` per statement): result rows (DataRow), COPY TO
//! STDOUT data (CopyData), notices (NoticeResponse: code a policy lets run can RAISE one per
//! row) and notifications (NotificationResponse) are counted as they pass; past
//! a limit pgid stops relaying them, cancels the query upstream, and ends the statement for the
//! client with an error in place of its completion (or the cancellation error).
//!
//! The server delivers notifications after a statement has completed (before ReadyForQuery) or
//! while the session is idle, never in a statement's rows. So they count toward the statement
//! that ended last, until the next statement's data or the next ReadyForQuery starts a new count
//! (notifications arriving while idle count from that ReadyForQuery on). Past a limit there is no
//! completion left to replace: the notification is replaced by a warning (`54000`, which a
//! client may receive at any time) and later ones are dropped until the count starts again.

use bytes::BytesMut;

use super::wire::backend::{self, Backend, Severity};
use super::wire::sqlstate;

/// SQLSTATE program_limit_exceeded.
pub const LIMIT_SQLSTATE: &str = sqlstate::PROGRAM_LIMIT_EXCEEDED;

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    Replace(BytesMut),
}

pub struct ExportLimit {
    max_rows: Option<u64>,
    max_bytes: Option<u64>,
    rows: u64,
    bytes: u64,
    tripped: Option<String>,
    /// No statement is returning data: the last one ended (or none began since ReadyForQuery).
    /// Rows and bytes still count, for the notifications that follow it.
    ended: bool,
    /// Notifications passed a limit after their statement ended: dropped until the count starts
    /// again.
    notifications_over: bool,
}

impl ExportLimit {
    /// `None` is no limit: a policy's `"unlimited"`.
    pub fn new(max_rows: Option<u64>, max_bytes: Option<u64>) -> ExportLimit {
        ExportLimit {
            max_rows,
            max_bytes,
            rows: 0,
            bytes: 0,
            tripped: None,
            ended: true,
            notifications_over: false,
        }
    }

    /// What to do with a server message; `true` when the query must be cancelled upstream now.
    /// New limits (the policy was reloaded); a statement in flight keeps its count.
    pub fn set_limits(&mut self, max_rows: Option<u64>, max_bytes: Option<u64>) {
        self.max_rows = max_rows;
        self.max_bytes = max_bytes;
    }

    /// Counts one message of `len` bytes; the reason when that passes a limit.
    fn count(&mut self, len: usize, what: &str) -> Option<String> {
        self.rows += 1;
        self.bytes += len as u64;
        if self.max_rows.is_some_and(|m| self.rows > m) {
            Some(format!(
                "pgid: max_rows: the {what} has more than {} rows; {}",
                self.max_rows.unwrap_or(0),
                if self.ended {
                    "further notifications were not delivered"
                } else {
                    "the statement was cancelled"
                }
            ))
        } else if self.max_bytes.is_some_and(|m| self.bytes > m) {
            Some(format!(
                "pgid: max_bytes: the {what} is larger than {} bytes; {}",
                self.max_bytes.unwrap_or(0),
                if self.ended {
                    "further notifications were not delivered"
                } else {
                    "the statement was cancelled"
                }
            ))
        } else {
            None
        }
    }

    pub fn on_message(&mut self, msg: &Backend<'_>, len: usize) -> (Action, bool) {
        match msg {
            Backend::NotificationResponse => {
                if self.tripped.is_some() || self.notifications_over {
                    return (Action::Drop, false);
                }
                let Some(reason) = self.count(len, "result with its notifications") else {
                    return (Action::Pass, false);
                };
                tracing::info!(reason = %reason, "export limit reached by notifications");
                if self.ended {
                    self.notifications_over = true;
                    let mut warning = BytesMut::new();
                    backend::error_response(
                        &mut warning,
                        Severity::Notice,
                        LIMIT_SQLSTATE,
                        &reason,
                    );
                    (Action::Replace(warning), false)
                } else {
                    self.tripped = Some(reason);
                    (Action::Drop, true)
                }
            }
            // Notices count as rows: code the policy lets run (DO, a function) can RAISE one per
            // row. The server sends them while a statement runs, so one opens a count as data
            // does.
            Backend::DataRow(_) | Backend::CopyData | Backend::NoticeResponse(_) => {
                if self.tripped.is_some() {
                    return (Action::Drop, false);
                }
                if std::mem::take(&mut self.ended) {
                    // The first data of a new statement: its own count begins.
                    self.rows = 0;
                    self.bytes = 0;
                    self.notifications_over = false;
                }
                let reason = self.count(len, "result");
                match reason {
                    Some(r) => {
                        tracing::info!(reason = %r, "export limit reached");
                        self.tripped = Some(r);
                        (Action::Drop, true)
                    }
                    None => (Action::Pass, false),
                }
            }
            // CopyDone of a copy that was cut short: the error takes its place.
            Backend::CopyDone if self.tripped.is_some() => (Action::Drop, false),
            Backend::CommandComplete(_)
            | Backend::ErrorResponse(_)
            | Backend::EmptyQueryResponse
            | Backend::ReadyForQuery(_) => {
                self.ended = true;
                if matches!(msg, Backend::ReadyForQuery(_)) {
                    self.rows = 0;
                    self.bytes = 0;
                    self.notifications_over = false;
                }
                match self.tripped.take() {
                    Some(reason) if !matches!(msg, Backend::ReadyForQuery(_)) => {
                        let mut err = BytesMut::new();
                        backend::error_response(&mut err, Severity::Error, LIMIT_SQLSTATE, &reason);
                        (Action::Replace(err), false)
                    }
                    _ => (Action::Pass, false),
                }
            }
            _ => (Action::Pass, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::wire::backend::{Report, TransactionStatus};

    const ROW: Backend<'static> = Backend::DataRow(b"");
    const ERR: Backend<'static> = Backend::ErrorResponse(Report {
        code: b"57014",
        message: b"canceled",
        severity: b"ERROR",
    });

    #[test]
    fn rows_past_the_limit_are_dropped_and_the_end_becomes_an_error() {
        let mut l = ExportLimit::new(Some(2), None);
        assert_eq!(
            l.on_message(&Backend::RowDescription(b""), 30),
            (Action::Pass, false)
        );
        assert_eq!(l.on_message(&ROW, 10), (Action::Pass, false));
        assert_eq!(l.on_message(&ROW, 10), (Action::Pass, false));
        assert_eq!(l.on_message(&ROW, 10), (Action::Drop, true));
        assert_eq!(l.on_message(&ROW, 10), (Action::Drop, false));
        let (a, _) = l.on_message(&ERR, 50);
        assert!(
            matches!(a, Action::Replace(ref e) if backend::error_field(&e[5..], b'M').unwrap().starts_with("pgid: max_rows:"))
        );
        assert_eq!(
            l.on_message(&Backend::ReadyForQuery(TransactionStatus::Idle), 6),
            (Action::Pass, false)
        );
        // The next statement starts from zero.
        assert_eq!(l.on_message(&ROW, 10), (Action::Pass, false));
    }

    const NOTIFY: Backend<'static> = Backend::NotificationResponse;
    const READY: Backend<'static> = Backend::ReadyForQuery(TransactionStatus::Idle);

    fn is_warning(a: &Action) -> bool {
        matches!(a, Action::Replace(w) if w[0] == b'N'
            && backend::error_field(&w[5..], b'C').as_deref() == Some(LIMIT_SQLSTATE))
    }

    #[test]
    fn notifications_count_toward_the_statement_that_ended_last() {
        let mut l = ExportLimit::new(Some(3), None);
        assert_eq!(l.on_message(&ROW, 10), (Action::Pass, false));
        assert_eq!(l.on_message(&ROW, 10), (Action::Pass, false));
        assert_eq!(
            l.on_message(&Backend::CommandComplete(b"SELECT 2"), 10),
            (Action::Pass, false)
        );
        // Delivered before ReadyForQuery: the statement's two rows and this make three.
        assert_eq!(l.on_message(&NOTIFY, 10), (Action::Pass, false));
        let (a, cancel) = l.on_message(&NOTIFY, 10);
        assert!(is_warning(&a) && !cancel, "{a:?}");
        for _ in 0..100 {
            assert_eq!(l.on_message(&NOTIFY, 10), (Action::Drop, false));
        }
        assert_eq!(l.on_message(&READY, 6), (Action::Pass, false));
        // While idle, the count starts from ReadyForQuery.
        for _ in 0..3 {
            assert_eq!(l.on_message(&NOTIFY, 10), (Action::Pass, false));
        }
        assert!(is_warning(&l.on_message(&NOTIFY, 10).0));
        assert_eq!(l.on_message(&NOTIFY, 10), (Action::Drop, false));
        // The next statement's rows start a count of their own.
        for _ in 0..3 {
            assert_eq!(l.on_message(&ROW, 10), (Action::Pass, false));
        }
        assert_eq!(l.on_message(&ROW, 10), (Action::Drop, true));
    }

    #[test]
    fn notifications_count_bytes_and_a_statement_in_flight_is_cancelled() {
        let mut l = ExportLimit::new(None, Some(100));
        assert_eq!(l.on_message(&NOTIFY, 60), (Action::Pass, false));
        assert!(is_warning(&l.on_message(&NOTIFY, 60).0));
        assert_eq!(l.on_message(&READY, 6), (Action::Pass, false));
        // A notice amid a statement's rows (RAISE NOTICE per row) ends the statement.
        assert_eq!(l.on_message(&ROW, 60), (Action::Pass, false));
        let notice = Backend::NoticeResponse(Report {
            code: b"00000",
            message: b"row 2",
            severity: b"NOTICE",
        });
        assert_eq!(l.on_message(&notice, 60), (Action::Drop, true));
        assert_eq!(l.on_message(&ROW, 10), (Action::Drop, false));
        let (a, _) = l.on_message(&Backend::CommandComplete(b"SELECT 2"), 20);
        assert!(matches!(a, Action::Replace(ref e) if e[0] == b'E'
                && backend::error_field(&e[5..], b'M').unwrap().starts_with("pgid: max_bytes:")));
        let mut none = ExportLimit::new(None, None);
        for _ in 0..1000 {
            assert_eq!(none.on_message(&NOTIFY, 1000), (Action::Pass, false));
        }
    }

    #[test]
    fn copy_out_and_bytes() {
        let mut l = ExportLimit::new(None, Some(25));
        assert_eq!(l.on_message(&Backend::CopyData, 10), (Action::Pass, false));
        assert_eq!(l.on_message(&Backend::CopyData, 10), (Action::Pass, false));
        assert_eq!(l.on_message(&Backend::CopyData, 10), (Action::Drop, true));
        assert_eq!(l.on_message(&Backend::CopyDone, 5), (Action::Drop, false));
        assert!(matches!(
            l.on_message(&Backend::CommandComplete(b"COPY 3"), 20).0,
            Action::Replace(_)
        ));
        let mut none = ExportLimit::new(None, None);
        for _ in 0..1000 {
            assert_eq!(none.on_message(&ROW, 1000), (Action::Pass, false));
        }
    }
}
