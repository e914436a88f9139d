//! What a group role holds now: its entries in the ACLs of the current database's relations,
//! sequences, schemas, the database itself, types and routines (`aclexplode`), as the same
//! [`Privileges`] map the policy's wanted grants are resolved into.

use tokio_postgres::GenericClient;

use super::ddl::Object;
use super::objects::{routine_object, Privileges, ROUTINE_COLUMNS};
use crate::policy::Privilege;

/// The grantee condition: `x` is the `aclexplode` row, `$1` the role's name.
const GRANTEE: &str = "x.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)";

pub(super) async fn held(
    c: &impl GenericClient,
    role: &str,
) -> Result<Privileges, tokio_postgres::Error> {
    let mut have = Privileges::new();
    let mut add = |object: Object, privilege: String| {
        // Privileges pgid does not manage (MAINTAIN on PostgreSQL 17) are left alone.
        if let Some(p) = Privilege::parse(&privilege) {
            have.entry(object).or_default().insert(p);
        }
    };

    let q = format!(
        "SELECT n.nspname, c.relname, c.relkind = 'S', x.privilege_type FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL aclexplode(c.relacl) x WHERE {GRANTEE}"
    );
    for r in c.query(&q, &[&role]).await? {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let object = if r.get(2) {
            Object::sequence(&schema, &name)
        } else {
            Object::table(&schema, &name)
        };
        add(object, r.get(3));
    }

    let q = format!(
        "SELECT n.nspname, x.privilege_type FROM pg_catalog.pg_namespace n \
         CROSS JOIN LATERAL aclexplode(n.nspacl) x WHERE {GRANTEE}"
    );
    for r in c.query(&q, &[&role]).await? {
        add(Object::schema(r.get(0)), r.get(1));
    }

    let q = format!(
        "SELECT d.datname, x.privilege_type FROM pg_catalog.pg_database d \
         CROSS JOIN LATERAL aclexplode(d.datacl) x \
         WHERE d.datname = current_database() AND {GRANTEE}"
    );
    for r in c.query(&q, &[&role]).await? {
        add(Object::database(r.get(0)), r.get(1));
    }

    // Array and multirange types follow their element and range types: never named here.
    let q = format!(
        "SELECT n.nspname, t.typname, x.privilege_type FROM pg_catalog.pg_type t \
         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         CROSS JOIN LATERAL aclexplode(t.typacl) x WHERE t.typtype <> 'm' \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid) AND {GRANTEE}"
    );
    for r in c.query(&q, &[&role]).await? {
        add(Object::data_type(r.get(0), r.get(1)), r.get(2));
    }

    let q = format!(
        "SELECT {ROUTINE_COLUMNS}, x.privilege_type FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         CROSS JOIN LATERAL aclexplode(p.proacl) x WHERE {GRANTEE}"
    );
    for r in c.query(&q, &[&role]).await? {
        add(routine_object(&r), r.get(4));
    }
    Ok(have)
}
