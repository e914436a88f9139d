//! pgid's own state in the `pgid` schema (DESIGN §9): migrations from `sql/`, lease rows,
//! approval requests (made, decided, listed by reviewer) and reviewers' page sessions.
//! Every query binds its values; no text is spliced into SQL here.

mod approval_lists;
mod approvals;
mod events;
mod instance;
mod leases;
mod migrate;
mod review_sessions;

pub use approval_lists::{Cursor, Scope};
pub use approvals::{
    ApprovalRow, ApprovalWaits, Approvals, CreateError, Decided, Full, NewApproval, PendingLimits,
    APPROVAL_EVENTS_CHANNEL,
};
pub use events::EventKey;
pub use instance::{
    InstanceLock, InstanceStatus, OnEvent, OnReconnect, CANCEL_EVENTS_CHANNEL, INSTANCE_LOCK_SPACE,
    LEASE_EVENTS_CHANNEL, POLICY_EVENTS_CHANNEL,
};
#[cfg(test)]
pub use leases::test_lease;
pub use leases::{LeaseRow, LeaseState, NewLease, Store};
pub use migrate::{check_server_key, migrate, MIGRATIONS};
pub use review_sessions::{ReviewSessions, SIGNED_OUT};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {}", crate::database::pool_message(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("state database: {}", crate::database::pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("state database: unexpected value in {0}")]
    Corrupt(&'static str),
    #[error(
        "state database: migrated by a newer pgid (versions {newer:?}; this one knows up to \
         {known}): run that version, or a later one"
    )]
    Newer { newer: Vec<i32>, known: i32 },
    #[error(
        "the server key differs from the one this state database was set up with: every \
         instance must share one key (server_key_file); a key generated afresh (the shared file \
         not mounted, a restored backup of another) would give leases passwords the database \
         never got. Mount the right key; to start over with a new key, stop every instance, \
         revoke the leases and DELETE FROM pgid.server_key"
    )]
    OtherServerKey,
}
