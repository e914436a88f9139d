//! The audit log (DESIGN §8): every credential action, session and statement, as JSON Lines in a
//! SHA-256 hash chain, optionally copied to the `pgid.audit_events` table. `chain` is the pure
//! sealing and verification; `event` the credential and session records; `statement` the
//! statement records; `file` the file with its rotation; `log` the writer that makes records
//! durable in group commits; `refusals` the budget for refusals of unauthenticated requests. If a
//! sink fails, callers refuse the action.

pub mod chain;
pub mod event;
pub mod file;
mod log;
pub mod refusals;
pub mod statement;

pub use event::{Event, Kind};
pub use log::{AuditError, AuditLog, AuditSetup, Sync};
