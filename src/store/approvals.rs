//! Approval requests in `pgid.approvals`: created by the proxy (within the limits on pending
//! requests), listed and decided by reviewers (any instance), expired when nobody decided in
//! time. Deciding is a single conditional UPDATE whose audit record is written while the row is
//! locked and before the commit, so a request is decided — and recorded as decided — once.
//! Listing by what a reviewer may decide lives in [`super::approval_lists`].

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{EventKey, StoreError};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ApprovalRow {
    pub id: Uuid,
    pub state: String,
    pub lease_id: Uuid,
    pub issuer: String,
    pub subject: String,
    pub policy: String,
    pub database: String,
    pub statement: String,
    pub parameters: Option<serde_json::Value>,
    pub tables: Vec<String>,
    pub estimated_rows: Option<i64>,
    pub mode: String,
    #[serde(skip)]
    pub approvers: serde_json::Value,
    /// Names the approvers (md5 of their canonical JSON): what reviewers' lists filter on.
    #[serde(skip)]
    pub approvers_key: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reviewer_issuer: Option<String>,
    pub reviewer: Option<String>,
    pub comment: Option<String>,
    /// Retry mode: when the approved statement ran.
    pub used_at: Option<DateTime<Utc>>,
}

/// A request about to be made.
pub struct NewApproval<'a> {
    pub id: Uuid,
    pub lease_id: Uuid,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub policy: &'a str,
    pub database: &'a str,
    pub statement: &'a str,
    pub parameters: Option<serde_json::Value>,
    pub tables: Vec<String>,
    pub estimated_rows: Option<i64>,
    pub mode: &'a str,
    pub approvers: serde_json::Value,
    pub expires_at: DateTime<Utc>,
    pub instance_id: i32,
    /// Retry mode: what a later run must match (canonical text and exact parameters).
    pub fingerprint: Option<String>,
}

pub(super) const COLUMNS: &str = "id, state, lease_id, issuer, subject, policy, database, \
     statement, parameters, tables, estimated_rows, mode, approvers, approvers_key, requested_at, \
     expires_at, decided_at, reviewer_issuer, reviewer, comment, used_at";

pub(super) fn row(r: &Row) -> ApprovalRow {
    ApprovalRow {
        id: r.get("id"),
        state: r.get("state"),
        lease_id: r.get("lease_id"),
        issuer: r.get("issuer"),
        subject: r.get("subject"),
        policy: r.get("policy"),
        database: r.get("database"),
        statement: r.get("statement"),
        parameters: r.get("parameters"),
        tables: r.get("tables"),
        estimated_rows: r.get("estimated_rows"),
        mode: r.get("mode"),
        approvers: r.get("approvers"),
        approvers_key: r.get("approvers_key"),
        requested_at: r.get("requested_at"),
        expires_at: r.get("expires_at"),
        decided_at: r.get("decided_at"),
        reviewer_issuer: r.get("reviewer_issuer"),
        reviewer: r.get("reviewer"),
        comment: r.get("comment"),
        used_at: r.get("used_at"),
    }
}

/// The outcome of an attempt to decide a request.
#[derive(Debug, PartialEq)]
pub enum Decided {
    Now(ApprovalRow),
    /// Already decided, expired or withdrawn: its current row.
    Already(ApprovalRow),
    Missing,
    /// The decision's record could not be written: nothing was decided.
    Unrecorded(String),
}

/// How many requests may wait for review at once (pending, not expired), per lease and per
/// policy: a lease that floods reviewers is refused before it drowns other requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    pub per_lease: u32,
    pub per_policy: u32,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            per_lease: 20,
            per_policy: 200,
        }
    }
}

/// Which limit a refused request reached, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Lease(u32),
    Policy(u32),
}

impl Full {
    /// The metric label and the configuration key.
    pub fn key(&self) -> (&'static str, &'static str) {
        match self {
            Full::Lease(_) => ("lease", "max_pending_per_lease"),
            Full::Policy(_) => ("policy", "max_pending_per_policy"),
        }
    }
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Lease(n) => write!(
                f,
                "this lease already has {n} requests waiting for review \
                 ([approvals] max_pending_per_lease = {n}); run the statement again once some are \
                 decided"
            ),
            Full::Policy(n) => write!(
                f,
                "this policy already has {n} requests waiting for review \
                 ([approvals] max_pending_per_policy = {n}); run the statement again once some \
                 are decided"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many pending approval requests: {0}")]
    Full(Full),
}

impl From<tokio_postgres::Error> for CreateError {
    fn from(e: tokio_postgres::Error) -> Self {
        CreateError::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for CreateError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        CreateError::Store(e.into())
    }
}

/// First key of the advisory lock that serialises request creation per policy (the second is
/// the policy name's hash), so concurrent requests cannot both slip under a limit.
const CREATE_LOCK_SPACE: i32 = 0x7067_6961;

/// Statements waiting on this instance, by request id: a NOTIFY with the id wakes its waiter at
/// once (the waiter also re-reads the row now and then, so a lost notification only delays).
/// Every NOTIFY (request made, decided, withdrawn, expired on any instance) also bumps
/// [`ApprovalWaits::changes`], which keeps open approval pages current.
pub struct ApprovalWaits {
    waiting: std::sync::Mutex<std::collections::HashMap<Uuid, std::sync::Arc<tokio::sync::Notify>>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for ApprovalWaits {
    fn default() -> Self {
        ApprovalWaits {
            waiting: Default::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl ApprovalWaits {
    /// Ticks whenever some request changed on some instance.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn register(&self, id: Uuid) -> std::sync::Arc<tokio::sync::Notify> {
        self.waiting.lock().unwrap().entry(id).or_default().clone()
    }

    pub fn forget(&self, id: Uuid) {
        self.waiting.lock().unwrap().remove(&id);
    }

    /// Every waiter re-reads its request and every page refreshes (announcements may have been
    /// missed while the listener was down).
    pub fn wake_all(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        for n in self.waiting.lock().unwrap().values() {
            n.notify_one();
        }
    }

    /// An announcement (its sealed payload already opened: a request id, or `expired`).
    pub fn wake(&self, payload: &str) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        if let Ok(id) = payload.parse::<Uuid>() {
            if let Some(n) = self.waiting.lock().unwrap().get(&id) {
                n.notify_one();
            }
        }
    }
}

/// LISTEN/NOTIFY channel carrying decided request ids between instances.
pub const APPROVAL_EVENTS_CHANNEL: &str = "pgid_approval_events";

/// NOTIFYs `payload` on the approvals channel, sealed with `key` (nothing without one: an
/// unsealed payload is dropped by every instance).
pub(super) async fn announce(
    key: Option<&EventKey>,
    c: &impl tokio_postgres::GenericClient,
    payload: &str,
) -> Result<(), StoreError> {
    if let Some(key) = key {
        let sealed = key.seal(APPROVAL_EVENTS_CHANNEL, payload);
        c.execute(
            "SELECT pg_notify($1, $2)",
            &[&APPROVAL_EVENTS_CHANNEL, &sealed],
        )
        .await?;
    }
    Ok(())
}

pub struct Approvals {
    pub(super) pool: Pool,
    limits: PendingLimits,
    /// Seals announcements so instances can tell them from anyone's NOTIFY; without it
    /// (tools, tests) changes are not announced and instances see them at their next read.
    events: Option<EventKey>,
}

impl Approvals {
    pub fn new(pool: Pool) -> Approvals {
        Approvals {
            pool,
            limits: PendingLimits::default(),
            events: None,
        }
    }

    /// Announces changes, sealed with `key`.
    pub fn announcing(mut self, key: EventKey) -> Approvals {
        self.events = Some(key);
        self
    }

    pub fn with_limits(mut self, limits: PendingLimits) -> Approvals {
        self.limits = limits;
        self
    }

    /// Tells every instance (waiting statements, open pages) that request `id` changed.
    async fn announce(
        &self,
        c: &impl tokio_postgres::GenericClient,
        id: &str,
    ) -> Result<(), StoreError> {
        announce(self.events.as_ref(), c, id).await
    }

    /// Makes a request, unless its lease or its policy already has as many waiting as the
    /// limits allow (counted under a per-policy lock, so concurrent requests cannot both slip
    /// under a limit).
    pub async fn create(&self, a: &NewApproval<'_>) -> Result<ApprovalRow, CreateError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&CREATE_LOCK_SPACE, &a.policy],
        )
        .await?;
        let counts = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE lease_id = $1), count(*) FROM pgid.approvals
                 WHERE policy = $2 AND state = 'pending' AND expires_at > now()",
                &[&a.lease_id, &a.policy],
            )
            .await?;
        let (lease, policy): (i64, i64) = (counts.get(0), counts.get(1));
        if lease >= i64::from(self.limits.per_lease) {
            return Err(CreateError::Full(Full::Lease(self.limits.per_lease)));
        }
        if policy >= i64::from(self.limits.per_policy) {
            return Err(CreateError::Full(Full::Policy(self.limits.per_policy)));
        }
        tx.execute(
            "INSERT INTO pgid.approval_rules (key, approvers) VALUES (md5($1::jsonb::text), $1)
             ON CONFLICT (key) DO NOTHING",
            &[&a.approvers],
        )
        .await?;
        let r = tx
            .query_one(
                &format!(
                    "INSERT INTO pgid.approvals (id, state, lease_id, issuer, subject, policy, database,
                         statement, parameters, tables, estimated_rows, mode, approvers,
                         approvers_key, expires_at, instance_id, fingerprint)
                     VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                             md5($12::jsonb::text), $13, $14, $15)
                     RETURNING {COLUMNS}"
                ),
                &[
                    &a.id,
                    &a.lease_id,
                    &a.issuer,
                    &a.subject,
                    &a.policy,
                    &a.database,
                    &a.statement,
                    &a.parameters,
                    &a.tables,
                    &a.estimated_rows,
                    &a.mode,
                    &a.approvers,
                    &a.expires_at,
                    &a.instance_id,
                    &a.fingerprint,
                ],
            )
            .await?;
        self.announce(&*tx, &a.id.to_string()).await?;
        tx.commit().await?;
        Ok(row(&r))
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<ApprovalRow>, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_opt(
                &format!("SELECT {COLUMNS} FROM pgid.approvals WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(r.as_ref().map(row))
    }

    /// Retry mode: the request of `lease` for this statement (`fingerprint`) that is still
    /// pending, if any, so asking again does not make another.
    pub async fn pending_retry(
        &self,
        lease: Uuid,
        fingerprint: &str,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM pgid.approvals
                     WHERE lease_id = $1 AND fingerprint = $2 AND mode = 'retry'
                       AND state = 'pending' AND expires_at > now()
                     ORDER BY requested_at DESC LIMIT 1"
                ),
                &[&lease, &fingerprint],
            )
            .await?;
        Ok(r.as_ref().map(row))
    }

    /// Retry mode: uses up an approval of `lease` for this statement given less than `window`
    /// ago and not used yet. One conditional UPDATE, so an approval runs one statement only,
    /// even when several sessions of the lease try at once.
    pub async fn use_approved(
        &self,
        lease: Uuid,
        fingerprint: &str,
        window: std::time::Duration,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_opt(
                &format!(
                    "UPDATE pgid.approvals SET used_at = now()
                     WHERE id = (
                         SELECT id FROM pgid.approvals
                         WHERE lease_id = $1 AND fingerprint = $2 AND mode = 'retry'
                           AND state = 'approved' AND used_at IS NULL
                           AND decided_at + make_interval(secs => $3) > now()
                         ORDER BY decided_at LIMIT 1
                         FOR UPDATE SKIP LOCKED)
                       AND used_at IS NULL
                     RETURNING {COLUMNS}"
                ),
                &[&lease, &fingerprint, &window.as_secs_f64()],
            )
            .await?;
        Ok(r.as_ref().map(row))
    }

    /// Approves or denies a pending, unexpired request, once. The decision's record (`event`)
    /// is written while the UPDATE holds the row, and only when the UPDATE changed it: deciders
    /// racing for one request wait for the first, find it decided, and record nothing as
    /// decided. No record, no decision: the transaction is rolled back.
    pub async fn decide(
        &self,
        id: Uuid,
        approve: bool,
        reviewer: (&str, &str),
        comment: Option<&str>,
        audit: &crate::audit::AuditLog,
        event: &crate::audit::Event,
    ) -> Result<Decided, StoreError> {
        let mut c = self.pool.get().await?;
        let state = if approve { "approved" } else { "denied" };
        let tx = c.transaction().await?;
        let r = tx
            .query_opt(
                &format!(
                    "UPDATE pgid.approvals
                     SET state = $2, decided_at = now(), reviewer_issuer = $3, reviewer = $4,
                         comment = $5
                     WHERE id = $1 AND state = 'pending' AND expires_at > now()
                     RETURNING {COLUMNS}"
                ),
                &[&id, &state, &reviewer.0, &reviewer.1, &comment],
            )
            .await?;
        if let Some(r) = r {
            if let Err(e) = audit.record(event).await {
                tx.rollback().await?;
                return Ok(Decided::Unrecorded(e.to_string()));
            }
            // Wakes the instance where the statement waits (delivered at commit).
            self.announce(&*tx, &id.to_string()).await?;
            tx.commit().await?;
            return Ok(Decided::Now(row(&r)));
        }
        tx.rollback().await?;
        drop(c);
        self.expire().await?;
        Ok(match self.get(id).await? {
            Some(r) => Decided::Already(r),
            None => Decided::Missing,
        })
    }

    /// The requester gave up (client cancel, session end): a pending request is withdrawn.
    pub async fn withdraw(&self, id: Uuid) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE pgid.approvals SET state = 'withdrawn', decided_at = now()
                 WHERE id = $1 AND state = 'pending'",
                &[&id],
            )
            .await?;
        if n == 1 {
            self.announce(&**c, &id.to_string()).await?;
        }
        Ok(n == 1)
    }

    /// Marks pending requests past their deadline as expired; returns how many.
    pub async fn expire(&self) -> Result<u64, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE pgid.approvals SET state = 'expired', decided_at = now()
                 WHERE state = 'pending' AND expires_at <= now()",
                &[],
            )
            .await?;
        if n > 0 {
            self.announce(&**c, "expired").await?;
        }
        Ok(n)
    }
}
