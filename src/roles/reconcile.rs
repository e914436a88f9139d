//! Group roles follow the policy files: create the role, grant what the policy lists, revoke
//! what it no longer lists. [`plan_policy`] computes the SQL from the catalog; `stage_policies`
//! runs it for every policy of a database in one transaction, after checking every name the
//! policies use, and [`Staged::commit`] makes it take effect: all of it or none.
//! [`drop_orphan_groups`] removes this deployment's group roles that no policy names any more
//! (a policy file deleted while pgid was down).

use std::collections::BTreeSet;

use tokio_postgres::GenericClient;

use super::acl::held;
use super::ddl;
use super::names::{check_names, MissingName};
use super::objects::Privileges;
use super::plan::{changes, plan_policy, GroupPlan};
use super::Deployment;
use crate::policy::{Policy, Privilege};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("policy {policy}: {what} does not exist in database {database}")]
    Missing {
        policy: String,
        database: String,
        what: String,
    },
    #[error("policy {policy}: {}", crate::database::pg_message(source))]
    Postgres {
        policy: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("policy {policy}: role {role} exists but is not this deployment's group role ({why}); rename the policy, set another `deployment`, or drop the role")]
    Foreign {
        policy: String,
        role: String,
        why: String,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Names(Vec<MissingName>),
    #[error("database {database}: {}", crate::database::pg_message(source))]
    Database {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Creates the deployment's lease and group marker roles if they are missing (several
/// instances may race: fine).
pub async fn ensure_marker_roles(
    client: &impl GenericClient,
    deployment: &Deployment,
) -> Result<(), tokio_postgres::Error> {
    for marker in [deployment.lease_marker(), deployment.group_marker()] {
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&marker],
            )
            .await?;
        if exists.is_some() {
            continue;
        }
        match client
            .batch_execute(&ddl::create_nologin_role(&marker))
            .await
        {
            Ok(()) => {
                tracing::info!(role = %marker, deployment = deployment.name(), "created marker role")
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Lock key serialising group-role reconciliation across pgid instances.
const RECONCILE_LOCK: i64 = 0x0070_6769_6472_6563;

fn postgres_error(policy: &Policy) -> impl Fn(tokio_postgres::Error) -> ReconcileError + Copy + '_ {
    move |source| ReconcileError::Postgres {
        policy: policy.name.clone(),
        source,
    }
}

/// A transaction holding the reconcile lock: one instance changes group roles at a time.
async fn begin_locked(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECONCILE_LOCK])
        .await?;
    Ok(tx)
}

/// What became of a removed policy's group role.
#[derive(Debug, PartialEq, Eq)]
pub enum GroupRemoval {
    Dropped,
    Missing,
    /// It owns objects (someone gave it some): left in place rather than destroy them.
    OwnsObjects,
    /// It still holds privileges in another database of the cluster.
    HeldElsewhere,
}

/// Drops the group role of a policy that no longer exists: every privilege pgid granted it is
/// revoked (the plan of the same policy with no grants, then CONNECT), then the role goes. A
/// role that owns objects is left in place rather than destroy them.
pub async fn drop_group_role(
    client: &mut tokio_postgres::Client,
    policy: &Policy,
    dbname: &str,
    deployment: &Deployment,
) -> Result<GroupRemoval, ReconcileError> {
    let role = deployment.group_role(&policy.name);
    let pg = postgres_error(policy);
    let tx = begin_locked(client).await.map_err(pg)?;
    if tx
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(pg)?
        .is_none()
    {
        return Ok(GroupRemoval::Missing);
    }
    let owns: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid \
             WHERE r.rolname = $1 AND d.deptype = 'o')",
            &[&role],
        )
        .await
        .map_err(pg)?
        .get(0);
    if owns {
        return Ok(GroupRemoval::OwnsObjects);
    }
    let bare = Policy {
        grants: Vec::new(),
        ..policy.clone()
    };
    for stmt in plan_policy(&tx, &bare, dbname, deployment)
        .await?
        .statements
    {
        tx.batch_execute(&stmt).await.map_err(pg)?;
    }
    tx.batch_execute(&ddl::revoke(
        &[Privilege::Connect],
        &ddl::Object::database(dbname),
        &role,
    ))
    .await
    .map_err(pg)?;
    tx.batch_execute(&ddl::drop_role(&role)).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(GroupRemoval::Dropped)
}

/// This deployment's group roles (members of its group marker) that are not in `keep`, the
/// group roles of every policy it has now, on any database: what each of them holds in this
/// database is revoked, then the role is dropped. A role that owns objects is left in place;
/// one that still holds privileges in another database is left for that database's pass (the
/// DROP fails there and is rolled back). Returns each role found and what became of it.
pub async fn drop_orphan_groups(
    client: &mut tokio_postgres::Client,
    database: &str,
    keep: &BTreeSet<String>,
    deployment: &Deployment,
) -> Result<Vec<(String, GroupRemoval)>, ReconcileError> {
    let db_error = |source| ReconcileError::Database {
        database: database.to_string(),
        source,
    };
    let mut tx = begin_locked(client).await.map_err(db_error)?;
    let rows = tx
        .query(
            "SELECT r.rolname, EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend d                WHERE d.refobjid = r.oid AND d.deptype = 'o')              FROM pg_catalog.pg_auth_members m              JOIN pg_catalog.pg_roles r ON r.oid = m.member              JOIN pg_catalog.pg_roles k ON k.oid = m.roleid              WHERE k.rolname = $1 ORDER BY r.rolname",
            &[&deployment.group_marker()],
        )
        .await
        .map_err(db_error)?;
    let mut outcome = Vec::new();
    for row in rows {
        let (role, owns): (String, bool) = (row.get(0), row.get(1));
        if keep.contains(&role) {
            continue;
        }
        if owns {
            outcome.push((role, GroupRemoval::OwnsObjects));
            continue;
        }
        let have = held(&tx, &role).await.map_err(db_error)?;
        for stmt in changes(&Privileges::new(), &have, &role) {
            tx.batch_execute(&stmt).await.map_err(db_error)?;
        }
        let attempt = tx.savepoint("drop_group").await.map_err(db_error)?;
        match attempt.batch_execute(&ddl::drop_role(&role)).await {
            Ok(()) => {
                attempt.commit().await.map_err(db_error)?;
                outcome.push((role, GroupRemoval::Dropped));
            }
            Err(e)
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) =>
            {
                attempt.rollback().await.map_err(db_error)?;
                outcome.push((role, GroupRemoval::HeldElsewhere));
            }
            Err(e) => return Err(db_error(e)),
        }
    }
    tx.commit().await.map_err(db_error)?;
    Ok(outcome)
}

/// Every policy of one database applied in one open transaction (under the reconcile lock), not
/// yet committed: dropping it rolls all of it back.
pub struct Staged<'a> {
    tx: tokio_postgres::Transaction<'a>,
    database: String,
    pub plans: Vec<GroupPlan>,
}

/// Checks every name the policies use (all problems at once, as [`ReconcileError::Names`]), then
/// plans and runs each policy's SQL in one transaction, left open for [`Staged::commit`].
pub async fn stage_policies<'a>(
    client: &'a mut tokio_postgres::Client,
    database: &str,
    policies: &[&Policy],
    dbname: &str,
    deployment: &Deployment,
) -> Result<Staged<'a>, ReconcileError> {
    let db_error = |source| ReconcileError::Database {
        database: database.to_string(),
        source,
    };
    let mut tx = begin_locked(client).await.map_err(db_error)?;
    let missing = check_names(&mut tx, policies).await.map_err(db_error)?;
    if !missing.is_empty() {
        return Err(ReconcileError::Names(missing));
    }
    let mut plans = Vec::new();
    for policy in policies {
        let plan = plan_policy(&tx, policy, dbname, deployment).await?;
        for stmt in &plan.statements {
            tx.batch_execute(stmt)
                .await
                .map_err(postgres_error(policy))?;
        }
        plans.push(plan);
    }
    Ok(Staged {
        tx,
        database: database.to_string(),
        plans,
    })
}

impl Staged<'_> {
    /// Makes the staged grants take effect.
    pub async fn commit(self) -> Result<Vec<GroupPlan>, ReconcileError> {
        let database = self.database;
        self.tx
            .commit()
            .await
            .map_err(|source| ReconcileError::Database { database, source })?;
        for plan in self.plans.iter().filter(|p| !p.statements.is_empty()) {
            tracing::info!(policy = %plan.policy, role = %plan.role, statements = plan.statements.len(), "group role reconciled");
        }
        Ok(self.plans)
    }
}
