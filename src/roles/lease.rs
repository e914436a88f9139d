//! Issuing, renewing and revoking leases (DESIGN §2).
//!
//! Issue: intent row (committed) → `CREATE ROLE … VALID UNTIL` + `COMMENT` → row active.
//! Removal: row `revoking` → sessions closed → the role's removal steps (`removal`) → row ended.
//! Every step is idempotent; a failed removal keeps Postgres's message in the row, is retried by
//! the reaper with backoff and counted until it succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use uuid::Uuid;

use super::ddl;
use super::issue_limits::{IssueLimits, RateLimiter};
use super::removal::drop_lease_role;
use super::watch::{EndReason, LeaseStatus, LeaseWatch};
use super::Deployment;
use crate::audit::{AuditError, AuditLog, Event, Kind};
use crate::database::{pg_message, pool_message, Database, Databases};
use crate::identity::VerifiedToken;
use crate::keys::ServerKey;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::secret::Secret;
use crate::store::{LeaseRow, LeaseState, NewLease, Store, StoreError};

const CLIENT_SECRET_BYTES: usize = 32;
const ROLE_SUFFIX_CHARS: usize = 16;
const ROLE_PREFIX_MAX: usize = 24;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// After this many failed removals a lease counts as stuck (metric + error log).
const STUCK_AFTER_ATTEMPTS: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database {database}: {message}")]
    Database { database: String, message: String },
    #[error("database {0} is not configured")]
    UnknownDatabase(String),
    #[error("lease not found")]
    NotFound,
    #[error("lease is {0}")]
    NotActive(&'static str),
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The identity's bucket is empty: `retry_after` seconds until the next lease.
    #[error("lease rate limit reached: {per_minute} per minute after a burst of {burst}; retry in {retry_after} s")]
    RateLimited {
        per_minute: u32,
        burst: u32,
        retry_after: u64,
    },
    #[error("lease quota reached: at most {0} live leases per identity")]
    QuotaReached(u32),
}

pub(super) fn db_error(database: &str, message: impl Into<String>) -> LeaseError {
    LeaseError::Database {
        database: database.to_string(),
        message: message.into(),
    }
}

/// A Postgres error with the server's own message (stored with the lease and logged).
pub(super) fn pg_error(database: &str, e: &tokio_postgres::Error) -> LeaseError {
    db_error(database, pg_message(e))
}

pub(super) fn pool_error(database: &str, e: &deadpool_postgres::PoolError) -> LeaseError {
    db_error(database, pool_message(e))
}

/// The client secret: returned once, only its SCRAM verifier is kept.
pub struct ClientSecret(pub Secret<String>);

pub struct IssuedLease {
    pub row: LeaseRow,
    pub secret: ClientSecret,
    /// The Postgres database name the lease connects to.
    pub dbname: String,
}

/// The lease service. Cheap to share behind an `Arc`.
pub struct Leases {
    store: Store,
    databases: Databases,
    key: ServerKey,
    grace: Duration,
    instance_id: i32,
    metrics: Arc<Metrics>,
    watch: Arc<LeaseWatch>,
    notifier: Option<Notifier>,
    audit: AuditLog,
    deployment: Deployment,
    limits: IssueLimits,
    rate: RateLimiter,
}

/// Tells other pgid instances about lease changes (`NOTIFY pgid_lease_events`).
pub type Notifier =
    Arc<dyn Fn(Uuid, LeaseStatus) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// After a revocation is announced, the time other instances get to close their sessions with
/// pgid's own message before the role's backends are terminated.
const SESSION_CLOSE_GRACE: Duration = Duration::from_millis(150);

/// What the lease service is built from.
pub struct LeaseSetup {
    pub store: Store,
    pub databases: Databases,
    pub key: ServerKey,
    /// Added to `VALID UNTIL` beyond the lease's expiry.
    pub grace: Duration,
    /// This process's instance id (its advisory lock), written into intent rows.
    pub instance_id: i32,
    pub metrics: Arc<Metrics>,
    pub watch: Arc<LeaseWatch>,
    pub audit: AuditLog,
    /// Whose roles these are: the marker and group role names.
    pub deployment: Deployment,
    /// Per-identity rate and live-lease cap.
    pub limits: IssueLimits,
}

/// `pgid_<policy prefix>_<random>`: generated, ASCII, at most 63 bytes, never from claims.
pub fn lease_role_name(policy: &str) -> String {
    let prefix: String = policy
        .chars()
        .take(ROLE_PREFIX_MAX)
        .map(|c| if c == '-' { '_' } else { c })
        .collect();
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..ROLE_SUFFIX_CHARS)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("pgid_{prefix}_{suffix}")
}

/// The lease's database password: HMAC-SHA256(server key, lease id), derived when needed and
/// never stored or returned to the agent.
pub fn database_password(key: &ServerKey, lease_id: Uuid) -> Secret<String> {
    let mut label = b"pgid lease database password\0".to_vec();
    label.extend_from_slice(lease_id.as_bytes());
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.derive(&label)))
}

fn new_client_secret() -> Secret<String> {
    let mut bytes = [0u8; CLIENT_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn backoff(attempts: i32) -> Duration {
    let exp = attempts.clamp(0, 6) as u32;
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

impl Leases {
    pub fn new(s: LeaseSetup) -> Leases {
        Leases {
            store: s.store,
            databases: s.databases,
            key: s.key,
            grace: s.grace,
            instance_id: s.instance_id,
            metrics: s.metrics,
            watch: s.watch,
            notifier: None,
            audit: s.audit,
            deployment: s.deployment,
            limits: s.limits,
            rate: RateLimiter::new(s.limits),
        }
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// Sends lease changes to other instances too.
    pub fn with_notifier(mut self, notifier: Notifier) -> Leases {
        self.notifier = Some(notifier);
        self
    }

    pub fn watch(&self) -> &Arc<LeaseWatch> {
        &self.watch
    }

    pub fn key(&self) -> &ServerKey {
        &self.key
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    async fn publish(&self, id: Uuid, status: LeaseStatus) {
        self.watch.publish(id, status);
        if let Some(n) = &self.notifier {
            n(id, status).await;
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn databases(&self) -> &Databases {
        &self.databases
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn database(&self, name: &str) -> Result<&Database, LeaseError> {
        self.databases
            .get(name)
            .ok_or_else(|| LeaseError::UnknownDatabase(name.to_string()))
    }

    pub async fn issue(
        &self,
        policy: &Policy,
        who: &VerifiedToken,
        ttl: Duration,
        via: &'static str,
    ) -> Result<IssuedLease, LeaseError> {
        let started = Instant::now();
        let db = self.database(&policy.database)?;
        if let Err(wait) = self.rate.take(&who.issuer, &who.subject, started) {
            self.metrics.leases_rate_limited.inc();
            return Err(LeaseError::RateLimited {
                per_minute: self.limits.rate_per_minute,
                burst: self.limits.burst,
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        let id = Uuid::new_v4();
        let role = lease_role_name(&policy.name);
        let secret = new_client_secret();
        let db_password = database_password(&self.key, id);
        let (client_verifier, db_verifier) = {
            let (s, p) = (secret.clone(), db_password);
            tokio::task::spawn_blocking(move || {
                (
                    postgres_protocol::password::scram_sha_256(s.expose().as_bytes()),
                    postgres_protocol::password::scram_sha_256(p.expose().as_bytes()),
                )
            })
            .await
            .map_err(|e| db_error(&policy.database, e.to_string()))?
        };
        let now = Utc::now();
        let expires_at = now
            + chrono::Duration::from_std(ttl)
                .map_err(|e| db_error(&policy.database, e.to_string()))?;
        let max_expires_at =
            (now + chrono::Duration::from_std(policy.max_ttl).unwrap_or_default()).max(expires_at);
        let connection_limit = policy.max_connections as i32;
        let inserted = self
            .store
            .insert_intent(
                &NewLease {
                    id,
                    role_name: &role,
                    policy: &policy.name,
                    database: &policy.database,
                    issuer: &who.issuer,
                    subject: &who.subject,
                    client_verifier: &client_verifier,
                    connection_limit,
                    expires_at,
                    max_expires_at,
                    instance_id: self.instance_id,
                },
                self.limits.max_active,
            )
            .await?;
        if !inserted {
            self.metrics.leases_quota_refused.inc();
            return Err(LeaseError::QuotaReached(self.limits.max_active));
        }

        let group = self.deployment.group_role(&policy.name);
        let marker = self.deployment.lease_marker();
        let create = ddl::create_lease_role(&ddl::LeaseRole {
            name: &role,
            groups: &[&group, &marker],
            valid_until: self.valid_until(expires_at),
            connection_limit,
            verifier: &db_verifier,
        });
        let comment = ddl::comment_on_role(
            &role,
            &format!(
                "pgid lease {id}; policy {}; subject {}; expires {}",
                policy.name,
                ddl::printable_subject(&who.subject),
                expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        );
        // One simple-query string runs as one implicit transaction: role and comment together.
        let created = async {
            let c = db.pool.get().await.map_err(|e| pool_error(&db.name, &e))?;
            c.batch_execute(&format!("{create}; {comment}"))
                .await
                .map_err(|e| pg_error(&db.name, &e))
        }
        .await;
        if let Err(e) = created {
            tracing::error!(lease = %id, database = %db.name, error = %crate::errors::Chain(&e), "creating lease role failed");
            if let Ok(Some(row)) = self
                .store
                .begin_revoke(id, LeaseState::Failed, "role creation failed")
                .await
            {
                let _ = self.remove(&row).await;
            }
            return Err(e);
        }
        if !self.store.activate(id).await? {
            return Err(LeaseError::NotActive("abandoned during creation"));
        }
        let row = self.store.get(id).await?.ok_or(LeaseError::NotFound)?;
        // No unrecorded credential: if the audit log cannot take the record, the lease goes.
        let mut event = Event::new(Kind::CredentialIssued).lease(&row);
        event.via = Some(via);
        if let Err(e) = self.audit.record(&event).await {
            tracing::error!(lease = %id, error = %crate::errors::Chain(&e), "cannot audit an issued lease; revoking it");
            let _ = self
                .revoke(id, LeaseState::Failed, "audit log unavailable")
                .await;
            return Err(e.into());
        }
        self.metrics.leases_issued.inc();
        self.metrics.observe_issue(started.elapsed().as_secs_f64());
        tracing::info!(
            lease = %id, role = %role, policy = %policy.name, database = %db.name,
            issuer = %who.issuer, subject = %ddl::printable_subject(&who.subject),
            expires_at = %expires_at, "lease issued"
        );
        Ok(IssuedLease {
            row,
            secret: ClientSecret(secret),
            dbname: db.dbname.clone(),
        })
    }

    fn valid_until(&self, expires_at: DateTime<Utc>) -> DateTime<Utc> {
        expires_at + chrono::Duration::from_std(self.grace).unwrap_or_default()
    }

    pub async fn get(&self, id: Uuid) -> Result<LeaseRow, LeaseError> {
        self.store.get(id).await?.ok_or(LeaseError::NotFound)
    }

    /// Extends an active lease by `ttl` from now, never past its `max_expires_at`.
    pub async fn renew(&self, row: &LeaseRow, ttl: Duration) -> Result<LeaseRow, LeaseError> {
        if row.state != LeaseState::Active {
            return Err(LeaseError::NotActive(row.state.as_str()));
        }
        let wanted = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        let expires_at = wanted.min(row.max_expires_at).max(row.expires_at);
        let db = self.database(&row.database)?;
        let c = db.pool.get().await.map_err(|e| pool_error(&db.name, &e))?;
        c.batch_execute(&ddl::set_valid_until(
            &row.role_name,
            self.valid_until(expires_at),
        ))
        .await
        .map_err(|e| pg_error(&db.name, &e))?;
        if !self.store.set_expiry(row.id, expires_at).await? {
            return Err(LeaseError::NotActive("no longer active"));
        }
        self.publish(row.id, LeaseStatus::Active { expires_at })
            .await;
        self.metrics.leases_renewed.inc();
        tracing::info!(lease = %row.id, expires_at = %expires_at, "lease renewed");
        let renewed = self.get(row.id).await?;
        self.audit
            .record(&Event::new(Kind::CredentialRenewed).lease(&renewed))
            .await?;
        Ok(renewed)
    }

    /// Ends a lease now. Returns the row as it ended; a lease that had already ended is returned
    /// unchanged. If removing the role fails, the lease stays `revoking` and the reaper retries.
    pub async fn revoke(
        &self,
        id: Uuid,
        final_state: LeaseState,
        reason: &str,
    ) -> Result<LeaseRow, LeaseError> {
        match self.store.begin_revoke(id, final_state, reason).await? {
            Some(row) => {
                self.remove(&row).await?;
                self.get(id).await
            }
            None => self.get(id).await,
        }
    }

    /// Revokes every active lease whose policy no longer exists (`policies` says which do);
    /// returns how many. At start and after a reload: a lease's rules must be known.
    pub async fn revoke_orphaned(
        &self,
        policies: &crate::policy::PolicySet,
    ) -> Result<usize, LeaseError> {
        let mut n = 0;
        for db in self.databases.iter() {
            for row in self.store.active_on(&db.name).await? {
                if policies.get(&row.policy).is_none() {
                    self.revoke(row.id, LeaseState::Revoked, "its policy was removed")
                        .await?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Runs the removal steps for a lease in `revoking` and records the outcome.
    pub(super) async fn remove(&self, row: &LeaseRow) -> Result<(), LeaseError> {
        // Sessions through the proxy end first, then the role goes.
        let reason = match row.final_state {
            Some(LeaseState::Expired) => EndReason::Expired,
            _ => EndReason::Revoked,
        };
        self.publish(row.id, LeaseStatus::Ended(reason)).await;
        // Expiry ends sessions everywhere by its own timer; a revocation needs the announcement.
        if reason == EndReason::Revoked && self.notifier.is_some() {
            tokio::time::sleep(SESSION_CLOSE_GRACE).await;
        }
        let result = match self.database(&row.database) {
            Ok(db) => drop_lease_role(db, &row.role_name, &self.deployment).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.store.finish_revoke(row.id).await?;
                let kind = if reason == EndReason::Expired {
                    Kind::CredentialExpired
                } else {
                    Kind::CredentialRevoked
                };
                let event = Event::new(kind)
                    .lease(row)
                    .reason(row.end_reason.clone().unwrap_or_default());
                if let Err(e) = self.audit.record(&event).await {
                    // The role is gone either way; the missing record is an error to look at.
                    tracing::error!(lease = %row.id, error = %crate::errors::Chain(&e), "cannot audit the end of a lease");
                }
                let counter = match row.final_state {
                    Some(LeaseState::Expired) => &self.metrics.leases_expired,
                    _ => &self.metrics.leases_revoked,
                };
                counter.inc();
                if row.attempts >= STUCK_AFTER_ATTEMPTS {
                    self.metrics.leases_stuck.dec();
                }
                tracing::info!(lease = %row.id, role = %row.role_name, reason = row.end_reason.as_deref().unwrap_or(""), "lease ended");
                Ok(())
            }
            Err(e) => {
                self.metrics.lease_removal_failures.inc();
                let attempts = self
                    .store
                    .revoke_failed(row.id, &e.to_string(), backoff(row.attempts))
                    .await?;
                if attempts == STUCK_AFTER_ATTEMPTS {
                    self.metrics.leases_stuck.inc();
                }
                tracing::error!(lease = %row.id, role = %row.role_name, attempts, error = %crate::errors::Chain(&e), "removing lease role failed; will retry");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_generated_and_short() {
        let a = lease_role_name("nightly-report");
        assert!(a.starts_with("pgid_nightly_report_"), "{a}");
        assert_eq!(a.len(), "pgid_nightly_report_".len() + ROLE_SUFFIX_CHARS);
        assert_ne!(a, lease_role_name("nightly-report"));
        let long = lease_role_name(&"x".repeat(32));
        assert!(long.len() <= 63 && long.is_ascii());
    }

    #[test]
    fn database_password_is_derived_per_lease() {
        let key = ServerKey::from_bytes([7; 32]);
        let a = Uuid::from_u128(1);
        assert_eq!(
            database_password(&key, a).expose(),
            database_password(&key, a).expose()
        );
        assert_ne!(
            database_password(&key, a).expose(),
            database_password(&key, Uuid::from_u128(2)).expose()
        );
        assert_eq!(database_password(&key, a).expose().len(), 43);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }
}
