//! Applies `sql/NNN_*.sql` in order, once, under an advisory lock so that several pgid instances
//! starting together do not race.

use super::StoreError;

/// (version, name, SQL). Compiled in, so a binary always carries the schema it expects.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "leases", include_str!("../../sql/001_leases.sql")),
    (
        2,
        "audit_events",
        include_str!("../../sql/002_audit_events.sql"),
    ),
    (3, "approvals", include_str!("../../sql/003_approvals.sql")),
    (
        4,
        "approval_retry",
        include_str!("../../sql/004_approval_retry.sql"),
    ),
    (
        5,
        "approval_scopes",
        include_str!("../../sql/005_approval_scopes.sql"),
    ),
];

/// Arbitrary constant naming pgid's migration lock.
const MIGRATION_LOCK: i64 = 0x0070_6769_646d_6967;

pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgid;
         CREATE TABLE IF NOT EXISTS pgid.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM pgid.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ran = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO pgid.schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        ran.push(*version);
    }
    tx.commit().await?;
    Ok(ran)
}
