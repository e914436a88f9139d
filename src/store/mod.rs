//! pgid's own state in the `pgid` schema (DESIGN §9): migrations from `sql/`, and lease rows.
//! Every query binds its values; no text is spliced into SQL here.

mod approvals;
mod events;
mod instance;
mod leases;
mod migrate;

pub use approvals::{
    ApprovalRow, ApprovalWaits, Approvals, Decided, NewApproval, APPROVAL_EVENTS_CHANNEL,
};
pub use events::EventKey;
pub use instance::{InstanceLock, INSTANCE_LOCK_SPACE, LEASE_EVENTS_CHANNEL};
#[cfg(test)]
pub use leases::test_lease;
pub use leases::{LeaseRow, LeaseState, NewLease, Store};
pub use migrate::{migrate, MIGRATIONS};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {}", crate::database::pool_message(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("state database: {}", crate::database::pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("state database: unexpected value in {0}")]
    Corrupt(&'static str),
}
