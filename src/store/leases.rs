//! Lease rows: the intent written before `CREATE ROLE`, and every state change after it.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use uuid::Uuid;

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Creating,
    Active,
    Revoking,
    Revoked,
    Expired,
    Failed,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Creating => "creating",
            LeaseState::Active => "active",
            LeaseState::Revoking => "revoking",
            LeaseState::Revoked => "revoked",
            LeaseState::Expired => "expired",
            LeaseState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<LeaseState> {
        [
            LeaseState::Creating,
            LeaseState::Active,
            LeaseState::Revoking,
            LeaseState::Revoked,
            LeaseState::Expired,
            LeaseState::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_live(self) -> bool {
        matches!(
            self,
            LeaseState::Creating | LeaseState::Active | LeaseState::Revoking
        )
    }
}

#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub id: Uuid,
    pub role_name: String,
    pub policy: String,
    pub database: String,
    pub issuer: String,
    pub subject: String,
    pub state: LeaseState,
    pub final_state: Option<LeaseState>,
    pub client_verifier: String,
    pub connection_limit: i32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// A lease row for tests of modules that only read it.
#[cfg(test)]
pub fn test_lease() -> LeaseRow {
    let now = chrono::Utc::now();
    LeaseRow {
        id: Uuid::nil(),
        role_name: "pgid_t_x".into(),
        policy: "p".into(),
        database: "app".into(),
        issuer: "https://i".into(),
        subject: "agent".into(),
        state: LeaseState::Active,
        final_state: None,
        client_verifier: String::new(),
        connection_limit: 1,
        created_at: now,
        expires_at: now,
        max_expires_at: now,
        ended_at: None,
        end_reason: None,
        attempts: 0,
        last_error: None,
    }
}

const COLUMNS: &str = "id, role_name, policy, database, issuer, subject, state, final_state, client_verifier, \
     connection_limit, created_at, expires_at, max_expires_at, ended_at, end_reason, attempts, last_error";

fn row(r: &Row) -> Result<LeaseRow, StoreError> {
    let state: String = r.get("state");
    let final_state: Option<String> = r.get("final_state");
    Ok(LeaseRow {
        id: r.get("id"),
        role_name: r.get("role_name"),
        policy: r.get("policy"),
        database: r.get("database"),
        issuer: r.get("issuer"),
        subject: r.get("subject"),
        state: LeaseState::parse(&state).ok_or(StoreError::Corrupt("leases.state"))?,
        final_state: match final_state {
            Some(s) => {
                Some(LeaseState::parse(&s).ok_or(StoreError::Corrupt("leases.final_state"))?)
            }
            None => None,
        },
        client_verifier: r.get("client_verifier"),
        connection_limit: r.get("connection_limit"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        max_expires_at: r.get("max_expires_at"),
        ended_at: r.get("ended_at"),
        end_reason: r.get("end_reason"),
        attempts: r.get("attempts"),
        last_error: r.get("last_error"),
    })
}

fn rows(rs: Vec<Row>) -> Result<Vec<LeaseRow>, StoreError> {
    rs.iter().map(row).collect()
}

pub struct NewLease<'a> {
    pub id: Uuid,
    pub role_name: &'a str,
    pub policy: &'a str,
    pub database: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub client_verifier: &'a str,
    pub connection_limit: i32,
    pub expires_at: DateTime<Utc>,
    pub max_expires_at: DateTime<Utc>,
    pub instance_id: i32,
}

/// First key of the advisory lock that serialises lease issue per identity (the second is a
/// hash of issuer and subject).
const ISSUE_LOCK_SPACE: i32 = 0x7067_696c;

/// Handle to the `pgid` schema. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    pub fn new(pool: Pool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Writes the intent row, unless the identity already holds `max_live` leases (creating or
    /// active; counted under a per-identity lock, so concurrent requests cannot both slip under
    /// the cap). False when at the cap.
    pub async fn insert_intent(&self, l: &NewLease<'_>, max_live: u32) -> Result<bool, StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(1) || $3))",
            &[&ISSUE_LOCK_SPACE, &l.issuer, &l.subject],
        )
        .await?;
        let live: i64 = tx
            .query_one(
                "SELECT count(*) FROM pgid.leases \
                 WHERE issuer = $1 AND subject = $2 AND state IN ('creating', 'active')",
                &[&l.issuer, &l.subject],
            )
            .await?
            .get(0);
        if live >= i64::from(max_live) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO pgid.leases (id, role_name, policy, database, issuer, subject, state, client_verifier, \
             connection_limit, expires_at, max_expires_at, instance_id) \
             VALUES ($1, $2, $3, $4, $5, $6, 'creating', $7, $8, $9, $10, $11)",
            &[
                &l.id,
                &l.role_name,
                &l.policy,
                &l.database,
                &l.issuer,
                &l.subject,
                &l.client_verifier,
                &l.connection_limit,
                &l.expires_at,
                &l.max_expires_at,
                &l.instance_id,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// creating → active. False if the lease left `creating` meanwhile (a reaper gave up on it).
    pub async fn activate(&self, id: Uuid) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE pgid.leases SET state = 'active' WHERE id = $1 AND state = 'creating'",
                &[&id],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<LeaseRow>, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_opt(
                &format!("SELECT {COLUMNS} FROM pgid.leases WHERE id = $1"),
                &[&id],
            )
            .await?;
        r.as_ref().map(row).transpose()
    }

    pub async fn get_by_role(&self, role: &str) -> Result<Option<LeaseRow>, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_opt(
                &format!("SELECT {COLUMNS} FROM pgid.leases WHERE role_name = $1"),
                &[&role],
            )
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Starts removal: a live lease moves to `revoking` and remembers where it ends. Returns the
    /// row if the lease is (now) revoking, `None` if it had already ended or does not exist.
    pub async fn begin_revoke(
        &self,
        id: Uuid,
        final_state: LeaseState,
        reason: &str,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_opt(
                &format!(
                    "UPDATE pgid.leases SET state = 'revoking', \
                       final_state = COALESCE(final_state, $2), end_reason = COALESCE(end_reason, $3) \
                     WHERE id = $1 AND state IN ('creating', 'active', 'revoking') RETURNING {COLUMNS}"
                ),
                &[&id, &final_state.as_str(), &reason],
            )
            .await?;
        r.as_ref().map(row).transpose()
    }

    pub async fn finish_revoke(&self, id: Uuid) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE pgid.leases SET state = COALESCE(final_state, 'revoked'), ended_at = now(), \
               next_attempt_at = NULL, last_error = NULL WHERE id = $1 AND state = 'revoking'",
            &[&id],
        )
        .await?;
        Ok(())
    }

    /// Records a failed removal attempt; the reaper retries after `retry_in`.
    pub async fn revoke_failed(
        &self,
        id: Uuid,
        error: &str,
        retry_in: std::time::Duration,
    ) -> Result<i32, StoreError> {
        let c = self.pool.get().await?;
        let secs = retry_in.as_secs_f64();
        let r = c
            .query_one(
                "UPDATE pgid.leases SET attempts = attempts + 1, last_error = $2, \
                   next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1 RETURNING attempts",
                &[&id, &error, &secs],
            )
            .await?;
        Ok(r.get(0))
    }

    pub async fn set_expiry(
        &self,
        id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE pgid.leases SET expires_at = $2 WHERE id = $1 AND state = 'active'",
                &[&id, &expires_at],
            )
            .await?;
        Ok(n == 1)
    }

    /// Active leases past their expiry.
    pub async fn due_to_expire(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let c = self.pool.get().await?;
        rows(
            c.query(
                &format!("SELECT {COLUMNS} FROM pgid.leases WHERE state = 'active' AND expires_at <= now() ORDER BY expires_at LIMIT 500"),
                &[],
            )
            .await?,
        )
    }

    /// Removals waiting for a retry.
    pub async fn due_to_retry(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let c = self.pool.get().await?;
        rows(
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM pgid.leases WHERE state = 'revoking' \
                     AND (next_attempt_at IS NULL OR next_attempt_at <= now()) LIMIT 500"
                ),
                &[],
            )
            .await?,
        )
    }

    /// Intent rows whose creator is gone: its instance lock is no longer held (it crashed or
    /// stopped between the row and the role), or the row is older than any creation can take.
    pub async fn abandoned_creating(
        &self,
        max_age: std::time::Duration,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        let c = self.pool.get().await?;
        let secs = max_age.as_secs_f64();
        rows(
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM pgid.leases l WHERE state = 'creating' \
                     AND (created_at < now() - make_interval(secs => $1) OR NOT EXISTS ( \
                       SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted \
                         AND k.classid = $2::int::oid AND k.objid = l.instance_id::oid AND k.objsubid = 2)) \
                     LIMIT 500"
                ),
                &[&secs, &super::instance::INSTANCE_LOCK_SPACE],
            )
            .await?,
        )
    }

    /// Role names of every lease that may still have a role (creating, active, revoking).
    pub async fn live_roles(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT role_name FROM pgid.leases WHERE state IN ('creating', 'active', 'revoking')",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    pub async fn active_on(&self, database: &str) -> Result<Vec<LeaseRow>, StoreError> {
        let c = self.pool.get().await?;
        rows(
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM pgid.leases WHERE state = 'active' AND database = $1"
                ),
                &[&database],
            )
            .await?,
        )
    }

    /// Live leases per state, for metrics.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let c = self.pool.get().await?;
        Ok(c.query("SELECT state, count(*) FROM pgid.leases WHERE state IN ('creating', 'active', 'revoking') GROUP BY state", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}
