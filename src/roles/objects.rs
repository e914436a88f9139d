//! What a policy's grants mean in its database: every object its `[[grant]]` blocks name,
//! resolved through the catalog, with the privileges the group role should hold on it. Objects
//! a grant names one by one must exist; `schema.*` means what the schema holds now.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::{GenericClient, Row};

use super::ddl::Object;
use super::reconcile::ReconcileError;
use crate::policy::{FunctionRef, GrantObjects, ObjectRef, Policy, Privilege, TableRef};

/// Privileges by object: what the group role should hold, or holds.
pub(super) type Privileges = BTreeMap<Object, BTreeSet<Privilege>>;

/// Relation kinds a table grant covers: tables, views, materialized views, foreign and
/// partitioned tables.
pub(super) const RELKINDS: &str = "('r', 'v', 'm', 'f', 'p')";

/// Types that take privileges (alias `t`): base, standalone composite, domain, enum and range
/// types — not array or multirange types (Postgres refuses those: they follow their element or
/// range type) nor the row types of tables.
pub(super) const GRANTABLE_TYPE: &str = "t.typtype IN ('b', 'c', 'd', 'e', 'r') \
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid) \
     AND (t.typtype <> 'c' OR (SELECT r.relkind FROM pg_catalog.pg_class r WHERE r.oid = t.typrelid) = 'c')";

/// A routine (alias `p`, its schema `n`) as the columns [`routine_object`] reads: schema, name,
/// and the schema and name of each argument type.
pub(super) const ROUTINE_COLUMNS: &str = "n.nspname, p.proname, \
     ARRAY(SELECT tn.nspname FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS arg(t, i) \
       JOIN pg_catalog.pg_type ty ON ty.oid = arg.t \
       JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace ORDER BY arg.i), \
     ARRAY(SELECT ty.typname FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS arg(t, i) \
       JOIN pg_catalog.pg_type ty ON ty.oid = arg.t ORDER BY arg.i)";

pub(super) fn routine_object(r: &Row) -> Object {
    let schemas: Vec<String> = r.get(2);
    let types: Vec<String> = r.get(3);
    let args: Vec<(String, String)> = schemas.into_iter().zip(types).collect();
    Object::routine(r.get(0), r.get(1), &args)
}

/// The type OIDs of a signature's argument types as the server reads them (`to_regtype`), or
/// the first argument type that does not exist. A type name Postgres cannot parse is an error
/// from the server (run it where that error cannot spoil a transaction).
pub(super) async fn argument_types(
    c: &impl GenericClient,
    args: &[String],
) -> Result<Result<Vec<u32>, String>, tokio_postgres::Error> {
    let mut oids = Vec::with_capacity(args.len());
    for arg in args {
        let row = c
            .query_one("SELECT pg_catalog.to_regtype($1)::oid", &[arg])
            .await?;
        match row.get::<_, Option<u32>>(0) {
            Some(oid) => oids.push(oid),
            None => return Ok(Err(arg.clone())),
        }
    }
    Ok(Ok(oids))
}

/// The routine `schema.name` taking exactly `args`, if there is one.
pub(super) async fn routine(
    c: &impl GenericClient,
    schema: &str,
    name: &str,
    args: &[u32],
) -> Result<Option<Object>, tokio_postgres::Error> {
    let q = format!(
        "SELECT {ROUTINE_COLUMNS} FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND p.proname = $2 \
         AND ARRAY(SELECT t FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS arg(t, i) \
           ORDER BY i) = $3::oid[]"
    );
    // oidvector counts from 0, and arrays with other bounds are never equal: rebuilt from 1.
    let args = args.to_vec();
    Ok(c.query_opt(&q, &[&schema, &name, &args])
        .await?
        .map(|r| routine_object(&r)))
}

/// Everything `policy` grants, resolved in `client`'s database (`dbname`): CONNECT on the
/// database always, USAGE on the schema of every object named in a schema, and each grant's
/// privileges on its objects (INSERT on a table brings USAGE on the sequences it owns).
pub(super) async fn wanted(
    client: &impl GenericClient,
    policy: &Policy,
    dbname: &str,
) -> Result<Privileges, ReconcileError> {
    let pg = |source| ReconcileError::Postgres {
        policy: policy.name.clone(),
        source,
    };
    let missing = |what: String| ReconcileError::Missing {
        policy: policy.name.clone(),
        database: policy.database.clone(),
        what,
    };
    let mut want = Privileges::new();
    let mut add = |object: Object, privileges: &[Privilege]| {
        want.entry(object)
            .or_default()
            .extend(privileges.iter().copied());
    };
    add(Object::database(dbname), &[Privilege::Connect]);
    for grant in &policy.grants {
        let privileges = grant.privileges.as_slice();
        let schemas: Vec<&str> = match &grant.objects {
            GrantObjects::Database | GrantObjects::Schemas(_) => Vec::new(),
            GrantObjects::Tables(l) => l.iter().map(TableRef::schema).collect(),
            GrantObjects::Sequences(l) | GrantObjects::Types(l) => {
                l.iter().map(ObjectRef::schema).collect()
            }
            GrantObjects::Functions(l) => l.iter().map(FunctionRef::schema).collect(),
        };
        for schema in schemas {
            require_schema(client, schema)
                .await
                .map_err(pg)?
                .map_err(missing)?;
            add(Object::schema(schema), &[Privilege::Usage]);
        }
        match &grant.objects {
            GrantObjects::Database => add(Object::database(dbname), privileges),
            GrantObjects::Schemas(list) => {
                for schema in list {
                    require_schema(client, schema)
                        .await
                        .map_err(pg)?
                        .map_err(missing)?;
                    add(Object::schema(schema), privileges);
                }
            }
            GrantObjects::Tables(list) => {
                for target in list {
                    let schema = target.schema();
                    let names = relations(client, target).await.map_err(pg)?;
                    if names.is_empty() && matches!(target, TableRef::Table { .. }) {
                        return Err(missing(format!("table {target}")));
                    }
                    for name in names {
                        if privileges.contains(&Privilege::Insert) {
                            for (s, seq) in
                                owned_sequences(client, schema, &name).await.map_err(pg)?
                            {
                                add(Object::sequence(&s, &seq), &[Privilege::Usage]);
                            }
                        }
                        add(Object::table(schema, &name), privileges);
                    }
                }
            }
            GrantObjects::Sequences(list) => {
                for target in list {
                    let names = in_schema(client, target, Listing::Sequences)
                        .await
                        .map_err(pg)?;
                    if names.is_empty() && matches!(target, ObjectRef::Named { .. }) {
                        return Err(missing(format!("sequence {target}")));
                    }
                    for name in names {
                        add(Object::sequence(target.schema(), &name), privileges);
                    }
                }
            }
            GrantObjects::Types(list) => {
                for target in list {
                    let names = in_schema(client, target, Listing::Types)
                        .await
                        .map_err(pg)?;
                    if names.is_empty() && matches!(target, ObjectRef::Named { .. }) {
                        return Err(missing(format!("type {target}")));
                    }
                    for name in names {
                        add(Object::data_type(target.schema(), &name), privileges);
                    }
                }
            }
            GrantObjects::Functions(list) => {
                for target in list {
                    for object in routines(client, target)
                        .await
                        .map_err(pg)?
                        .map_err(missing)?
                    {
                        add(object, privileges);
                    }
                }
            }
        }
    }
    Ok(want)
}

async fn require_schema(
    c: &impl GenericClient,
    schema: &str,
) -> Result<Result<(), String>, tokio_postgres::Error> {
    let found = c
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await?;
    Ok(match found {
        Some(_) => Ok(()),
        None => Err(format!("schema {schema:?}")),
    })
}

async fn relations(
    c: &impl GenericClient,
    target: &TableRef,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let object = match target {
        TableRef::Table { schema, table } => ObjectRef::Named {
            schema: schema.clone(),
            name: table.clone(),
        },
        TableRef::AllInSchema { schema } => ObjectRef::AllInSchema {
            schema: schema.clone(),
        },
    };
    in_schema(c, &object, Listing::Relations).await
}

/// Kinds of object listed by name within a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Listing {
    Relations,
    Sequences,
    Types,
}

impl Listing {
    /// A query for the names of this kind in schema `$1`, ending in a condition that further
    /// conditions can be added to with `AND`.
    pub(super) fn query(self) -> String {
        match self {
            Listing::Relations | Listing::Sequences => format!(
                "SELECT c.relname FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN {}",
                if self == Listing::Relations {
                    RELKINDS
                } else {
                    "('S')"
                }
            ),
            Listing::Types => format!(
                "SELECT t.typname FROM pg_catalog.pg_type t \
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
                 WHERE n.nspname = $1 AND {GRANTABLE_TYPE}"
            ),
        }
    }

    fn name_column(self) -> &'static str {
        match self {
            Listing::Relations | Listing::Sequences => "c.relname",
            Listing::Types => "t.typname",
        }
    }
}

/// The names of one kind of object in a schema: the one named (if it exists) or all.
async fn in_schema(
    c: &impl GenericClient,
    target: &ObjectRef,
    listing: Listing,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let base = listing.query();
    let rows = match target {
        ObjectRef::Named { schema, name } => {
            let q = format!("{base} AND {} = $2", listing.name_column());
            c.query(&q, &[schema, name]).await?
        }
        ObjectRef::AllInSchema { schema } => {
            c.query(&format!("{base} ORDER BY 1"), &[schema]).await?
        }
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The routines a function reference names: one by its signature (which must exist), or every
/// function, procedure and aggregate of a schema.
async fn routines(
    c: &impl GenericClient,
    target: &FunctionRef,
) -> Result<Result<Vec<Object>, String>, tokio_postgres::Error> {
    match target {
        FunctionRef::Signature { schema, name, args } => {
            let oids = match argument_types(c, args).await? {
                Ok(oids) => oids,
                Err(arg) => return Ok(Err(format!("type {arg:?} (in function {target})"))),
            };
            Ok(match routine(c, schema, name, &oids).await? {
                Some(o) => Ok(vec![o]),
                None => Err(format!("function {target}")),
            })
        }
        FunctionRef::AllInSchema { schema } => {
            let q = format!(
                "SELECT {ROUTINE_COLUMNS} FROM pg_catalog.pg_proc p \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1"
            );
            Ok(Ok(c
                .query(&q, &[schema])
                .await?
                .iter()
                .map(routine_object)
                .collect()))
        }
    }
}

/// The sequences a table owns (serial columns): INSERT needs USAGE on them.
async fn owned_sequences(
    c: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT sn.nspname, s.relname FROM pg_catalog.pg_class s \
             JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace \
             JOIN pg_catalog.pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass \
               AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a' \
             JOIN pg_catalog.pg_class t ON t.oid = d.refobjid \
             JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
             WHERE s.relkind = 'S' AND tn.nspname = $1 AND t.relname = $2",
            &[&schema, &table],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
