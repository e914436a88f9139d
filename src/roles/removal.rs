//! Removing a lease role from its database, whatever the lease created (DESIGN §2). Each step
//! commits on its own, so a login racing the revocation is refused before its backends go:
//!
//! 1. `ALTER ROLE … NOLOGIN`.
//! 2. The admin takes the privileges of the role (`GRANT <lease> TO CURRENT_USER`) unless it
//!    has them: `DROP OWNED` needs them — on PostgreSQL 15 CREATEROLE is not enough, and from 16
//!    on the creator holds ADMIN OPTION on the roles it made, so the same GRANT works; a
//!    superuser has them already. They also let it signal the role's backends.
//! 3. `pg_terminate_backend` for every backend of the role, and a bounded wait until
//!    `pg_stat_activity` shows none (termination is asynchronous; a backend drops its temporary
//!    objects as it exits).
//! 4. `DROP OWNED BY … CASCADE`: large objects, tables, views, sequences, functions, types,
//!    default privileges, leftover temporary objects — and whatever other roles built on them;
//!    privileges other leases granted the role on what they own are revoked too (the admin
//!    takes those leases' privileges for the moment: only an owner can revoke them).
//! 5. `DROP ROLE`.
//!
//! The admin gives back what it took: other leases' privileges at once, the removed lease's if
//! a step failed (pg_hba.conf lines for the lease marker, `+pgid_lease`, match members of
//! members too). A failed removal is retried later.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::ddl;
use super::lease::{db_error, pg_error, pool_error, LeaseError};
use super::Deployment;
use crate::database::{pg_message, Database};

/// How long removal waits for the role's backends to exit after `pg_terminate_backend`.
const BACKENDS_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKENDS_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The removal steps for one role (nothing to do if it is gone).
pub(super) async fn drop_lease_role(
    db: &Database,
    role: &str,
    deployment: &Deployment,
) -> Result<(), LeaseError> {
    let c = db.pool.get().await.map_err(|e| pool_error(&db.name, &e))?;
    let err = |e: tokio_postgres::Error| pg_error(&db.name, &e);
    let Some(found) = c
        .query_opt(
            "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(err)?
    else {
        return Ok(());
    };
    let oid: u32 = found.get(0);
    c.batch_execute(&ddl::nologin(role)).await.map_err(err)?;
    let took_lease = take_privileges(&c, &db.name, role, oid).await?;
    // Roles taken for the removal only: another live lease stays as it is.
    let mut took_others = Vec::new();
    let result = async {
        for (grantor, grantor_oid) in lease_grantors(&c, oid, &deployment.lease_marker())
            .await
            .map_err(err)?
        {
            if take_privileges(&c, &db.name, &grantor, grantor_oid).await? {
                took_others.push(grantor);
            }
        }
        end_backends(&c, &db.name, role, oid).await?;
        c.batch_execute(&ddl::drop_owned(role)).await.map_err(err)?;
        c.batch_execute(&ddl::drop_role(role)).await.map_err(err)
    }
    .await;
    let give_back = took_others
        .iter()
        .map(String::as_str)
        .chain((result.is_err() && took_lease).then_some(role));
    for taken in give_back {
        if let Err(e) = c
            .batch_execute(&ddl::revoke_role_from_current_user(taken))
            .await
        {
            tracing::warn!(role = taken, error = %pg_message(&e), "cannot give back the privileges of a lease role taken for a removal");
        }
    }
    result
}

/// Other lease roles that own objects on which the role holds privileges (one lease granted
/// another access to its table): DROP OWNED revokes those only as their owner, so the admin
/// needs the owners' privileges too. Only this deployment's lease roles (members of its lease
/// marker) are taken.
async fn lease_grantors(
    c: &Client,
    oid: u32,
    marker: &str,
) -> Result<Vec<(String, u32)>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT DISTINCT r.rolname, r.oid FROM pg_catalog.pg_shdepend a \
             JOIN pg_catalog.pg_shdepend o ON o.dbid = a.dbid AND o.classid = a.classid \
               AND o.objid = a.objid AND o.deptype = 'o' \
             JOIN pg_catalog.pg_roles r ON r.oid = o.refobjid \
             WHERE a.refobjid = $1 AND a.deptype = 'a' AND r.oid <> $1 \
             AND a.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
             AND EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m \
               JOIN pg_catalog.pg_roles k ON k.oid = m.roleid \
               WHERE m.member = r.oid AND k.rolname = $2)",
            &[&oid, &marker],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Gives the admin role the privileges of `role` unless it has them; whether it granted them.
async fn take_privileges(
    c: &Client,
    database: &str,
    role: &str,
    oid: u32,
) -> Result<bool, LeaseError> {
    let err = |e: tokio_postgres::Error| pg_error(database, &e);
    let has = || async {
        c.query_one(
            "SELECT pg_catalog.pg_has_role(current_user, $1::oid, 'USAGE')",
            &[&oid],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
    };
    if has().await.map_err(err)? {
        return Ok(false);
    }
    c.batch_execute(&ddl::grant_role_to_current_user(role))
        .await
        .map_err(err)?;
    if !has().await.map_err(err)? {
        let _ = c
            .batch_execute(&ddl::revoke_role_from_current_user(role))
            .await;
        return Err(db_error(
            database,
            format!(
                "the admin role does not inherit the privileges of roles granted to it \
                 (NOINHERIT), and removing lease role {role} needs them to drop what the lease \
                 created: ALTER ROLE … INHERIT"
            ),
        ));
    }
    Ok(true)
}

/// Terminates the role's backends and waits, bounded, until none is left.
async fn end_backends(c: &Client, database: &str, role: &str, oid: u32) -> Result<(), LeaseError> {
    let deadline = Instant::now() + BACKENDS_EXIT_TIMEOUT;
    loop {
        // Terminating again is harmless, and reaches a backend that logged in just before
        // NOLOGIN was committed but showed up only now.
        let left = c
            .query(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                 WHERE usesysid = $1 AND pid <> pg_catalog.pg_backend_pid()",
                &[&oid],
            )
            .await
            .map_err(|e| pg_error(database, &e))?
            .len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(db_error(
                database,
                format!(
                    "{left} backend(s) of lease role {role} still running {}s after \
                     pg_terminate_backend",
                    BACKENDS_EXIT_TIMEOUT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(BACKENDS_POLL_INTERVAL).await;
    }
}
