//! The audit log (DESIGN §8): every credential action and session, as JSON Lines in a SHA-256
//! hash chain. `chain` is the pure sealing and verification; `event` the record; `file` the
//! durable sink: appends are acknowledged only after they are written and fsynced, in group
//! commits so concurrent appenders share one fsync. If the sink fails, callers refuse the action.

pub mod chain;
pub mod event;
mod file;

pub use event::{Event, Kind};
pub use file::{AuditError, AuditLog};
