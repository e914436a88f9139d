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
    (
        6,
        "server_key",
        include_str!("../../sql/006_server_key.sql"),
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
    // A schema a newer pgid migrated may hold columns this binary does not fill in (a NOT NULL
    // column without a default refuses its rows): refused, not half-used.
    let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    let newer: Vec<i32> = applied.iter().copied().filter(|v| *v > known).collect();
    if !newer.is_empty() {
        return Err(StoreError::Newer { newer, known });
    }
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

/// Records the server key's fingerprint in a state database that has none, and checks it
/// against one that has: every instance of a deployment must hold the same key.
pub async fn check_server_key(
    client: &tokio_postgres::Client,
    key: &crate::keys::ServerKey,
) -> Result<(), StoreError> {
    let fingerprint = key.fingerprint();
    // Two statements: the read after the insert sees a row another instance starting at the
    // same moment committed (one statement's snapshot would not).
    client
        .execute(
            "INSERT INTO pgid.server_key (fingerprint) VALUES ($1)
             ON CONFLICT (only_row) DO NOTHING",
            &[&fingerprint],
        )
        .await?;
    let stored: String = client
        .query_one("SELECT fingerprint FROM pgid.server_key", &[])
        .await?
        .get(0);
    if stored == fingerprint {
        Ok(())
    } else {
        Err(StoreError::OtherServerKey)
    }
}
