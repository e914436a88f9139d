//! Error text an operator can act on: an error with every cause under it, each once.
//!
//! Library errors often say only what failed at their level (tokio-postgres: "db error",
//! deadpool: "Error occurred while creating a new object", reqwest: "error sending request") and
//! keep the reason in their sources. Every error pgid shows — in logs, CLI output, stored lease
//! errors — goes through [`causes`] so the reason is never dropped. A Postgres error is written
//! as the server sent it (severity, SQLSTATE, message, detail, hint): server messages carry
//! names and SQLSTATEs, never a password (pgid sends passwords as SCRAM verifiers or not at all).

use std::error::Error;
use std::fmt;

/// `e` and its sources, outermost first, as text; a cause whose text the previous one already
/// ends with is skipped (many errors repeat their source in their own message), and the chain
/// ends at a Postgres server error, which is written whole.
pub fn causes(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // Errors that already print their source (pgid's own wrap the Postgres message) would
    // repeat it: a cause whose text is already shown is skipped.
    let shown = |out: &[String], text: &str| out.iter().any(|o| o.contains(text));
    let mut next = Some(e);
    while let Some(cause) = next {
        let db = cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
            .or_else(|| cause.downcast_ref::<tokio_postgres::error::DbError>());
        if let Some(db) = db {
            // The wrapper's "db error" (tokio-postgres's whole text for a server error) says
            // nothing the server's message does not.
            if let Some(prev) = out.last_mut() {
                if let Some(kept) = prev.strip_suffix(": db error") {
                    *prev = kept.to_string();
                } else if prev == "db error" {
                    out.pop();
                }
            }
            let message = server_message(db);
            if !shown(&out, &message) {
                out.push(message);
            }
            break;
        }
        let text = cause.to_string();
        if !text.is_empty() && !shown(&out, &text) {
            out.push(text);
        }
        next = cause.source();
    }
    out
}

/// [`causes`] on one line, `: `-separated.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    causes(e).join(": ")
}

/// Displays [`chain`]: `tracing::warn!(error = %Chain(&e), …)`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0))
    }
}

/// A Postgres server error: `FATAL 28P01: password authentication failed for user "x"`, with
/// `; detail: …` and `; hint: …` when the server gave them — except the detail of an integrity
/// violation (class 23), which quotes the failing row (`Failing row contains (…)`): a row of
/// pgid's state holds verifiers and statement text that have no place in a log.
pub fn server_message(db: &tokio_postgres::error::DbError) -> String {
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    let quotes_rows = db.code().code().starts_with("23");
    if let Some(detail) = db.detail().filter(|_| !quotes_rows) {
        text.push_str("; detail: ");
        text.push_str(detail);
    }
    if let Some(hint) = db.hint() {
        text.push_str("; hint: ");
        text.push_str(hint);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Wrap {
        text: &'static str,
        #[source]
        source: std::io::Error,
    }

    fn refused() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")
    }

    #[test]
    fn every_cause_once() {
        let e = Wrap {
            text: "outer",
            source: refused(),
        };
        assert_eq!(chain(&e), "outer: refused");
        // A message that already ends with its source's text does not repeat it.
        let e = Wrap {
            text: "connecting: refused",
            source: refused(),
        };
        assert_eq!(chain(&e), "connecting: refused");
        assert_eq!(Chain(&e).to_string(), "connecting: refused");
        // An error that prints its source in the middle of its own text: not repeated either.
        let e = Wrap {
            text: "state database: refused (retrying)",
            source: refused(),
        };
        assert_eq!(chain(&e), "state database: refused (retrying)");
    }

    #[test]
    fn anyhow_contexts_are_causes() {
        let e = anyhow::Error::new(refused()).context("connecting to database app");
        assert_eq!(
            causes(e.as_ref()),
            ["connecting to database app", "refused"]
        );
    }
}
