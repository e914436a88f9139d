//! Data-export limits (`max_rows`, `max_bytes` per statement): result rows (DataRow) and COPY TO
//! STDOUT data (CopyData) are counted as they pass; past a limit pgid stops relaying them, cancels
//! the query upstream, and ends the statement for the client with an error in place of its
//! completion (or the cancellation error).

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
}

impl ExportLimit {
    pub fn new(max_rows: Option<u64>, max_bytes: Option<u64>) -> ExportLimit {
        ExportLimit {
            max_rows,
            max_bytes,
            rows: 0,
            bytes: 0,
            tripped: None,
        }
    }

    /// What to do with a server message; `true` when the query must be cancelled upstream now.
    /// New limits (the policy was reloaded); a statement in flight keeps its count.
    pub fn set_limits(&mut self, max_rows: Option<u64>, max_bytes: Option<u64>) {
        self.max_rows = max_rows;
        self.max_bytes = max_bytes;
    }

    pub fn on_message(&mut self, msg: &Backend<'_>, len: usize) -> (Action, bool) {
        match msg {
            Backend::DataRow(_) | Backend::CopyData => {
                if self.tripped.is_some() {
                    return (Action::Drop, false);
                }
                self.rows += 1;
                self.bytes += len as u64;
                let reason = if self.max_rows.is_some_and(|m| self.rows > m) {
                    Some(format!(
                        "pgid: max_rows: the result has more than {} rows; the query was cancelled",
                        self.max_rows.unwrap_or(0)
                    ))
                } else if self.max_bytes.is_some_and(|m| self.bytes > m) {
                    Some(format!("pgid: max_bytes: the result is larger than {} bytes; the query was cancelled", self.max_bytes.unwrap_or(0)))
                } else {
                    None
                };
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
                self.rows = 0;
                self.bytes = 0;
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
