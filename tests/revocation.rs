//! Revoking a lease removes its role whatever the lease created — a large object from a
//! SELECT-only lease, tables, views, sequences, functions, temporary tables and default
//! privileges in a schema it may create in, what other roles built on them, privileges another
//! lease granted it — with the realistic admin role (CREATEROLE, not superuser) and with a
//! superuser one. A removal that fails keeps Postgres's own message and is retried until it
//! succeeds.

mod common;

use std::time::Duration;

use common::{connect, eventually, Harness, NIGHTLY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// May create in schema `scratch` (and, like every role by default, temporary tables).
const BUILDER: &str = r#"
name = "builder"
database = "app"
ttl = "15m"
max_connections = 5
[identity]
subject = "agent:builder"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[[grant]]
privileges = ["CREATE", "USAGE"]
schemas = ["scratch"]
[guardrails]
deny = []
require_where = []
deny_functions = []
"#;

async fn revoke(h: &Harness, subject: &str, lease: &Value) -> (StatusCode, Value) {
    h.call(
        Method::DELETE,
        &format!("/v1/credentials/{}", lease["lease_id"].as_str().unwrap()),
        Some(&h.token(subject)),
        None,
    )
    .await
}

async fn role_exists(h: &Harness, role: &str) -> bool {
    h.superuser()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

/// (state, last_error) of a lease row.
async fn lease_row(h: &Harness, lease: &Value) -> (String, Option<String>) {
    let row = h
        .superuser()
        .await
        .query_one(
            "SELECT state, last_error FROM pgid.leases WHERE id = $1::text::uuid",
            &[&lease["lease_id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Roles the admin role (`admin_url`'s user) is a member of, besides pg_signal_backend.
async fn admin_memberships(h: &Harness) -> Vec<String> {
    connect(&h.admin_url)
        .await
        .unwrap()
        .query(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
             WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
             AND r.rolname <> 'pg_signal_backend'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn large_object_exists(h: &Harness, oid: u32) -> bool {
    h.superuser()
        .await
        .query_opt(
            "SELECT 1 FROM pg_largeobject_metadata WHERE oid = $1",
            &[&oid],
        )
        .await
        .unwrap()
        .is_some()
}

/// A SELECT-only lease makes a large object through the proxy (and keeps its session open); its
/// revocation removes both the role and the object.
async fn large_object_lease_is_revoked(h: &Harness) {
    let lease = h.lease("svc:nightly-report", json!({})).await;
    let role = lease["username"].as_str().unwrap();
    let c = h.connect_proxy(&lease).await.unwrap();
    let oid: u32 = c
        .query_one("SELECT lo_from_bytea(0, 'x')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(large_object_exists(h, oid).await);

    let (status, body) = revoke(h, "svc:nightly-report", &lease).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked", "{body}");
    assert!(!role_exists(h, role).await, "role dropped");
    assert!(!large_object_exists(h, oid).await, "large object dropped");
    assert_eq!(lease_row(h, &lease).await, ("revoked".to_string(), None));
    assert!(c.simple_query("SELECT 1").await.is_err(), "session ended");
    assert!(
        admin_memberships(h).await.is_empty(),
        "{:?}",
        admin_memberships(h).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_select_only_lease_that_made_a_large_object_is_removed() {
    let mut h = Harness::start(&[NIGHTLY]).await;
    // The realistic admin role: CREATEROLE, not superuser. On PostgreSQL 15 it cannot DROP
    // OWNED BY a role without taking that role's privileges first.
    let (superuser, createrole): (bool, bool) = {
        let row = connect(&h.admin_url)
            .await
            .unwrap()
            .query_one(
                "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(!superuser && createrole);
    large_object_lease_is_revoked(&h).await;

    // The same with a superuser admin role.
    h.stop_pgid().await;
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        config.replace(&h.admin_url, &h.pg.superuser_url("app")),
    )
    .unwrap();
    h.start_pgid().await.unwrap();
    large_object_lease_is_revoked(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_that_built_in_its_schema_is_removed_with_what_it_built() {
    let h = Harness::start_with_postgres(&[], "CREATE SCHEMA scratch;", &[BUILDER], "").await;
    let lease = h.lease("agent:builder", json!({})).await;
    let role = lease["username"].as_str().unwrap();
    let c = h.connect_proxy(&lease).await.unwrap();
    for sql in [
        "CREATE TABLE scratch.t (id serial PRIMARY KEY, v text)",
        "INSERT INTO scratch.t (v) VALUES ('a')",
        "CREATE VIEW scratch.v AS SELECT id, v FROM scratch.t",
        "CREATE SEQUENCE scratch.s",
        "CREATE FUNCTION scratch.f(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1 + 1'",
        "CREATE TEMP TABLE tmp (x integer)",
        "INSERT INTO tmp VALUES (1)",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA scratch GRANT SELECT ON TABLES TO PUBLIC",
        "SELECT lo_from_bytea(0, 'y')",
    ] {
        c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let su = h.superuser().await;
    // Another role builds on what the lease made: CASCADE takes it too.
    su.batch_execute("CREATE VIEW public.on_lease AS SELECT v FROM scratch.t")
        .await
        .unwrap();
    let owned = h
        .count(&format!(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = '{role}'::regrole) \
             + (SELECT count(*) FROM pg_proc WHERE proowner = '{role}'::regrole) \
             + (SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner = '{role}'::regrole) \
             + (SELECT count(*) FROM pg_default_acl WHERE defaclrole = '{role}'::regrole)"
        ))
        .await;
    // t, its sequence, its index, v, s, f, tmp, the large object, the default privileges.
    assert!(owned >= 9, "{owned}");

    let (status, body) = revoke(&h, "agent:builder", &lease).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked", "{body}");
    assert!(!role_exists(&h, role).await);
    assert_eq!(
        h.count(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = 'scratch' OR c.relname IN ('tmp', 'on_lease')) \
             + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
               WHERE n.nspname = 'scratch') \
             + (SELECT count(*) FROM pg_largeobject_metadata) + (SELECT count(*) FROM pg_default_acl)"
        )
        .await,
        0,
        "everything the lease made, and the view built on it, is gone"
    );
    // The schema the lease created in is the database's and stays.
    assert_eq!(
        h.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'scratch'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removal_that_fails_keeps_the_postgres_message_and_is_retried() {
    let h = Harness::start(&[NIGHTLY]).await;
    let lease = h.lease("svc:nightly-report", json!({})).await;
    let role = lease["username"].as_str().unwrap().to_string();
    // Something DROP OWNED in the lease's database cannot reach: a table in another database.
    let other = connect(&h.pg.superuser_url("postgres")).await.unwrap();
    other
        .batch_execute(&format!(
            "CREATE TABLE pinned (); ALTER TABLE pinned OWNER TO \"{role}\""
        ))
        .await
        .unwrap();

    let (status, body) = revoke(&h, "svc:nightly-report", &lease).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "revoking", "{body}");
    let (state, error) = lease_row(&h, &lease).await;
    assert_eq!(state, "revoking");
    let error = error.expect("the failure is stored");
    assert!(
        error.contains("ERROR 2BP01")
            && error.contains(&format!(
                "role \"{role}\" cannot be dropped because some objects depend on it"
            ))
            && error.contains("1 object in database postgres"),
        "{error}"
    );
    assert!(!error.contains("db error"), "{error}");
    // The role stays, unable to log in, and the admin holds none of its privileges meanwhile.
    assert!(role_exists(&h, &role).await);
    assert!(
        admin_memberships(&h).await.is_empty(),
        "{:?}",
        admin_memberships(&h).await
    );
    assert!(h
        .connect_direct(
            &role,
            &h.database_password(lease["lease_id"].as_str().unwrap())
        )
        .await
        .is_err());

    // Once the object is gone, the reaper's next attempt succeeds.
    other.batch_execute("DROP TABLE pinned").await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            lease_row(&h, &lease).await.0 == "revoked"
        })
        .await,
        "{:?}",
        lease_row(&h, &lease).await
    );
    assert!(!role_exists(&h, &role).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_another_lease_granted_privileges_to_is_removed() {
    let h = Harness::start_with_postgres(&[], "CREATE SCHEMA scratch;", &[BUILDER], "").await;
    let a = h.lease("agent:builder", json!({})).await;
    let b = h.lease("agent:builder", json!({})).await;
    let b_role = b["username"].as_str().unwrap();
    let ca = h.connect_proxy(&a).await.unwrap();
    ca.simple_query("CREATE TABLE scratch.shared (x integer)")
        .await
        .unwrap();
    ca.simple_query(&format!("GRANT SELECT ON scratch.shared TO \"{b_role}\""))
        .await
        .unwrap();
    let (status, body) = revoke(&h, "agent:builder", &b).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{body} {:?}",
        lease_row(&h, &b).await
    );
    assert!(!role_exists(&h, b_role).await);
    // A's table stays, without the grant.
    ca.simple_query("SELECT * FROM scratch.shared")
        .await
        .unwrap();
    assert!(admin_memberships(&h).await.is_empty());
}
