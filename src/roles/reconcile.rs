//! Group roles follow the policy files: create the role, grant what the policy lists, revoke
//! what it no longer lists. `plan_policy` computes the SQL from the catalog; `stage_policies`
//! runs it for every policy of a database in one transaction, after checking every name the
//! policies use, and [`Staged::commit`] makes it take effect: all of it or none.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::GenericClient;

use super::ddl;
use super::names::{check_names, MissingName};
use super::LEASE_MARKER_ROLE;
use crate::policy::{Policy, Privilege, TableRef};

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
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Names(Vec<MissingName>),
    #[error("database {database}: {}", crate::database::pg_message(source))]
    Database {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The SQL that brings one policy's group role in line with the policy file.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub policy: String,
    pub database: String,
    pub role: String,
    pub statements: Vec<String>,
}

/// Relation kinds a grant covers: tables, views, materialized views, foreign and partitioned tables.
const RELKINDS: &str = "('r', 'v', 'm', 'f', 'p')";

/// Creates the `pgid_lease` marker role if it is missing (several instances may race: fine).
pub async fn ensure_marker_role(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&LEASE_MARKER_ROLE],
        )
        .await?;
    if exists.is_none() {
        match client
            .batch_execute(&ddl::create_nologin_role(LEASE_MARKER_ROLE))
            .await
        {
            Ok(()) => tracing::info!(role = LEASE_MARKER_ROLE, "created lease marker role"),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub async fn plan_policy(
    client: &impl GenericClient,
    policy: &Policy,
    dbname: &str,
) -> Result<GroupPlan, ReconcileError> {
    let pg = |source| ReconcileError::Postgres {
        policy: policy.name.clone(),
        source,
    };
    let missing = |what: String| ReconcileError::Missing {
        policy: policy.name.clone(),
        database: policy.database.clone(),
        what,
    };
    let role = policy.group_role();
    let mut statements = Vec::new();

    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(pg)?
        .is_some();
    if !exists {
        statements.push(ddl::create_nologin_role(&role));
    }

    let mut want_tables: BTreeMap<(String, String), BTreeSet<Privilege>> = BTreeMap::new();
    let mut want_schemas: BTreeSet<String> = BTreeSet::new();
    for grant in &policy.grants {
        for target in &grant.on {
            let schema = target.schema();
            let found = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
                .await
                .map_err(pg)?;
            if found.is_none() {
                return Err(missing(format!("schema {schema:?}")));
            }
            want_schemas.insert(schema.to_string());
            let names: Vec<String> = match target {
                TableRef::Table { schema, table } => {
                    let q = format!(
                        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN {RELKINDS}"
                    );
                    let rows = client.query(&q, &[schema, table]).await.map_err(pg)?;
                    if rows.is_empty() {
                        return Err(missing(format!("table {target}")));
                    }
                    rows.iter().map(|r| r.get(0)).collect()
                }
                TableRef::AllInSchema { schema } => {
                    let q = format!(
                        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relkind IN {RELKINDS} ORDER BY 1"
                    );
                    client
                        .query(&q, &[schema])
                        .await
                        .map_err(pg)?
                        .iter()
                        .map(|r| r.get(0))
                        .collect()
                }
            };
            for name in names {
                want_tables
                    .entry((schema.to_string(), name))
                    .or_default()
                    .extend(grant.privileges.iter().copied());
            }
        }
    }

    // INSERT into a table with a serial column needs USAGE on the sequence it owns.
    let mut want_sequences: BTreeSet<(String, String)> = BTreeSet::new();
    for ((schema, table), privileges) in &want_tables {
        if privileges.contains(&Privilege::Insert) {
            let rows = client
                .query(
                    "SELECT sn.nspname, s.relname FROM pg_class s \
                     JOIN pg_namespace sn ON sn.oid = s.relnamespace \
                     JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass \
                       AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a' \
                     JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
                     WHERE s.relkind = 'S' AND tn.nspname = $1 AND t.relname = $2",
                    &[schema, table],
                )
                .await
                .map_err(pg)?;
            want_sequences.extend(rows.iter().map(|r| (r.get(0), r.get(1))));
        }
    }

    let mut have_sequences: BTreeSet<(String, String)> = BTreeSet::new();
    let mut have_tables: BTreeMap<(String, String), BTreeSet<Privilege>> = BTreeMap::new();
    let mut have_schemas: BTreeSet<String> = BTreeSet::new();
    let mut has_connect = false;
    if exists {
        let rows = client
            .query(
                "SELECT n.nspname, c.relname, a.privilege_type, c.relkind = 'S' FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN LATERAL aclexplode(c.relacl) a \
                 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
                &[&role],
            )
            .await
            .map_err(pg)?;
        for r in rows {
            let privilege: String = r.get(2);
            let sequence: bool = r.get(3);
            if sequence {
                if privilege == "USAGE" {
                    have_sequences.insert((r.get(0), r.get(1)));
                }
            } else if let Some(p) = Privilege::parse(&privilege) {
                have_tables
                    .entry((r.get(0), r.get(1)))
                    .or_default()
                    .insert(p);
            }
        }
        have_schemas = client
            .query(
                "SELECT n.nspname FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a \
                 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1) AND a.privilege_type = 'USAGE'",
                &[&role],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        has_connect = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a \
                 WHERE d.datname = current_database() AND a.privilege_type = 'CONNECT' \
                 AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1))",
                &[&role],
            )
            .await
            .map_err(pg)?
            .get(0);
    }

    if !has_connect {
        statements.push(ddl::grant_connect(dbname, &role));
    }
    for schema in want_schemas.difference(&have_schemas) {
        statements.push(ddl::grant_schema_usage(schema, &role));
    }
    for ((schema, table), want) in &want_tables {
        let have = have_tables
            .get(&(schema.clone(), table.clone()))
            .cloned()
            .unwrap_or_default();
        let add: Vec<Privilege> = want.difference(&have).copied().collect();
        if !add.is_empty() {
            statements.push(ddl::grant_table(&add, schema, table, &role));
        }
    }
    for ((schema, table), have) in &have_tables {
        let want = want_tables
            .get(&(schema.clone(), table.clone()))
            .cloned()
            .unwrap_or_default();
        let remove: Vec<Privilege> = have.difference(&want).copied().collect();
        if !remove.is_empty() {
            statements.push(ddl::revoke_table(&remove, schema, table, &role));
        }
    }
    for (schema, seq) in want_sequences.difference(&have_sequences) {
        statements.push(ddl::grant_sequence_usage(schema, seq, &role));
    }
    for (schema, seq) in have_sequences.difference(&want_sequences) {
        statements.push(ddl::revoke_sequence_usage(schema, seq, &role));
    }
    for schema in have_schemas.difference(&want_schemas) {
        statements.push(ddl::revoke_schema_usage(schema, &role));
    }
    Ok(GroupPlan {
        policy: policy.name.clone(),
        database: policy.database.clone(),
        role,
        statements,
    })
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
}

/// Drops the group role of a policy that no longer exists: every privilege pgid granted it is
/// revoked (the plan of the same policy with no grants, then CONNECT), then the role goes. A
/// role that owns objects is left in place rather than destroy them.
pub async fn drop_group_role(
    client: &mut tokio_postgres::Client,
    policy: &Policy,
    dbname: &str,
) -> Result<GroupRemoval, ReconcileError> {
    let role = policy.group_role();
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
    for stmt in plan_policy(&tx, &bare, dbname).await?.statements {
        tx.batch_execute(&stmt).await.map_err(pg)?;
    }
    tx.batch_execute(&ddl::revoke_connect(dbname, &role))
        .await
        .map_err(pg)?;
    tx.batch_execute(&ddl::drop_role(&role)).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(GroupRemoval::Dropped)
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
) -> Result<Staged<'a>, ReconcileError> {
    let db_error = |source| ReconcileError::Database {
        database: database.to_string(),
        source,
    };
    let tx = begin_locked(client).await.map_err(db_error)?;
    let missing = check_names(&tx, policies).await.map_err(db_error)?;
    if !missing.is_empty() {
        return Err(ReconcileError::Names(missing));
    }
    let mut plans = Vec::new();
    for policy in policies {
        let plan = plan_policy(&tx, policy, dbname).await?;
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
