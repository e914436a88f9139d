//! Postgres roles pgid manages (DESIGN §2): a NOLOGIN group role per policy holding its grants,
//! and short-lived lease roles that are members of it and of the `pgid_lease` marker; both
//! kinds belong to one deployment (`deployment` names its markers).
//!
//! `ddl` builds SQL with quoted identifiers only; `names` checks the names policies use against
//! the database; `objects` resolves what a policy grants through the catalog, `acl` reads what a
//! group role holds, `plan` computes the difference, and `reconcile` applies it for every
//! policy of a database in one transaction; `lease` issues, renews and revokes, `removal` drops
//! a lease role and whatever the lease created; `reaper` expires leases and removes orphans;
//! `hba` checks that the server accepts lease roles only from pgid.

mod acl;
pub mod ddl;
mod deployment;
pub mod hba;
mod issue_limits;
mod lease;
mod names;
mod objects;
mod plan;
mod reaper;
mod reconcile;
mod removal;
mod watch;

pub use deployment::{Deployment, DEFAULT_DEPLOYMENT};
pub use issue_limits::{IssueLimits, RateLimiter, DEFAULT_ISSUE_LIMITS};
pub use lease::{
    database_password, lease_role_name, ClientSecret, IssuedLease, LeaseError, LeaseSetup, Leases,
    Notifier,
};
pub use names::{check_names, closest, MissingName};
pub use plan::{plan_policy, GroupPlan};
pub use reaper::{reap_once, Reaper};
pub use reconcile::{
    drop_group_role, drop_orphan_groups, ensure_marker_roles, stage_policies, GroupRemoval,
    ReconcileError, Staged,
};
pub use watch::{lease_ended, EndReason, LeaseStatus, LeaseWatch};
