//! The reaper: expires leases, retries failed removals, and reconciles in both directions —
//! lease roles marked as this deployment's with no live lease are dropped (another
//! deployment's, members of its own marker, are not seen); leases whose role vanished are ended.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::lease::Leases;
use super::removal::drop_lease_role;
use crate::database::{pg_message, pool_message};
use crate::store::LeaseState;

/// An intent row older than this is abandoned whatever its instance lock says: creation runs
/// under a 15 s statement timeout.
const CREATION_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReapReport {
    pub expired: usize,
    pub retried: usize,
    pub abandoned: usize,
    pub orphans: usize,
    pub missing_roles: usize,
    pub errors: usize,
}

pub struct Reaper;

impl Reaper {
    pub fn spawn(
        leases: std::sync::Arc<Leases>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                let report = reap_once(&leases).await;
                if report != ReapReport::default() {
                    tracing::info!(?report, "reaper pass");
                }
            }
        })
    }
}

/// One pass. Errors are logged and counted; the next pass tries again.
pub async fn reap_once(leases: &Leases) -> ReapReport {
    let mut report = ReapReport::default();
    let store = leases.store();

    match store.due_to_expire().await {
        Ok(rows) => {
            for row in rows {
                match leases.revoke(row.id, LeaseState::Expired, "expired").await {
                    Ok(_) => report.expired += 1,
                    Err(_) => report.errors += 1,
                }
            }
        }
        Err(e) => fail(&mut report, "listing expired leases", &e),
    }

    match store.due_to_retry().await {
        Ok(rows) => {
            for row in rows {
                match leases.remove(&row).await {
                    Ok(()) => report.retried += 1,
                    Err(_) => report.errors += 1,
                }
            }
        }
        Err(e) => fail(&mut report, "listing removals to retry", &e),
    }

    match store.abandoned_creating(CREATION_DEADLINE).await {
        Ok(rows) => {
            for row in rows {
                match leases
                    .revoke(row.id, LeaseState::Failed, "abandoned during creation")
                    .await
                {
                    Ok(_) => report.abandoned += 1,
                    Err(_) => report.errors += 1,
                }
            }
        }
        Err(e) => fail(&mut report, "listing abandoned leases", &e),
    }

    for db in leases.databases().iter() {
        let client = match db.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                fail(
                    &mut report,
                    "connecting to reconcile roles",
                    &pool_message(&e),
                );
                continue;
            }
        };
        // Roles first, then lease rows: a role seen here had its intent row committed before it
        // was created, so the row is visible to the later read and the role is not taken for an orphan.
        let marker = leases.deployment().lease_marker();
        let marked = client
            .query(
                "SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid \
                 JOIN pg_roles k ON k.oid = m.roleid WHERE k.rolname = $1",
                &[&marker],
            )
            .await;
        let marked: Vec<String> = match marked {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => {
                fail(&mut report, "listing lease roles", &pg_message(&e));
                continue;
            }
        };
        match store.live_roles().await {
            Ok(live) => {
                for role in marked.iter().filter(|r| !live.contains(*r)) {
                    match drop_lease_role(db, role, leases.deployment()).await {
                        Ok(()) => {
                            report.orphans += 1;
                            leases.metrics().orphan_roles_removed.inc();
                            tracing::warn!(role = %role, database = %db.name, "removed lease role that had no live lease");
                        }
                        Err(e) => fail(&mut report, "removing orphan role", &e),
                    }
                }
            }
            Err(e) => fail(&mut report, "listing live leases", &e),
        }

        let active = match store.active_on(&db.name).await {
            Ok(rows) => rows,
            Err(e) => {
                fail(&mut report, "listing active leases", &e);
                continue;
            }
        };
        for row in active {
            let exists = client
                .query_opt(
                    "SELECT 1 FROM pg_roles WHERE rolname = $1",
                    &[&row.role_name],
                )
                .await;
            match exists {
                Ok(Some(_)) => {}
                Ok(None) => match leases
                    .revoke(row.id, LeaseState::Revoked, "role removed outside pgid")
                    .await
                {
                    Ok(_) => {
                        report.missing_roles += 1;
                        tracing::warn!(lease = %row.id, role = %row.role_name, "lease role disappeared; lease ended");
                    }
                    Err(_) => report.errors += 1,
                },
                Err(e) => fail(&mut report, "checking lease role", &pg_message(&e)),
            }
        }
    }
    report
}

fn fail(report: &mut ReapReport, what: &str, e: &dyn std::fmt::Display) {
    report.errors += 1;
    tracing::error!(error = %e, "reaper: {what} failed");
}
