//! Typed grants through the real stack: a policy's schema, database, sequence, type and function
//! privileges reach its group role, `pgid policy plan` shows them, a reload revokes what the
//! policy no longer grants, a name the database lacks refuses the reload, and revocation drops
//! what the lease made. Export limits can be switched off; what a lease creates stays under the
//! policy's masks.

mod common;

use std::process::Command;

use common::{connect, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Objects the typed grants name. PUBLIC's default EXECUTE on the functions and TEMPORARY on
/// the database are revoked, so what a lease may do comes from its policy alone.
const SETUP: &str = r#"
CREATE SCHEMA scratch;
CREATE TYPE crm.mood AS ENUM ('happy', 'sad');
CREATE SEQUENCE crm.ticket_no;
CREATE FUNCTION crm.order_total(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1 * 2';
CREATE FUNCTION crm.secret(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1 * 3';
REVOKE EXECUTE ON FUNCTION crm.order_total(integer), crm.secret(integer) FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE app FROM PUBLIC;
"#;

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
[[grant]]
privileges = ["TEMP"]
database = true
[[grant]]
privileges = ["USAGE"]
sequences = ["crm.ticket_no"]
[[grant]]
privileges = ["USAGE"]
types = ["crm.mood"]
[[grant]]
privileges = ["EXECUTE"]
functions = ["crm.order_total(integer)"]
[guardrails]
deny = []
require_where = []
deny_functions = []
max_rows = "unlimited"
max_bytes = "unlimited"
"#;

/// BUILDER without its function and database grants, and SELECT on the sequence too.
fn builder_reduced() -> String {
    BUILDER
        .replace("[[grant]]\nprivileges = [\"TEMP\"]\ndatabase = true\n", "")
        .replace(
            "[[grant]]\nprivileges = [\"EXECUTE\"]\nfunctions = [\"crm.order_total(integer)\"]\n",
            "",
        )
        .replace(
            "privileges = [\"USAGE\"]\nsequences",
            "privileges = [\"USAGE\", \"SELECT\"]\nsequences",
        )
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("<{e}>"))
}

async fn run(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", pgid_message(&e)))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

fn pgid_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} {}", d.code().code(), d.message()))
        .unwrap_or_else(|| e.to_string())
}

fn pgid() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgid"));
    c.env_remove("PGID_CONFIG").env("PGID_LOG", "warn");
    c
}

async fn output(mut c: Command) -> (i32, String, String) {
    let out = tokio::task::spawn_blocking(move || c.output().expect("run pgid"))
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn plan(h: &Harness) -> String {
    let mut c = pgid();
    c.args(["policy", "plan", "--config"]).arg(&h.config_path);
    let (code, stdout, stderr) = output(c).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    stdout
}

/// `has_<kind>_privilege` of the builder's group role, asked as the superuser.
async fn group_has(h: &Harness, check: &str) -> bool {
    h.superuser()
        .await
        .query_one(&format!("SELECT {check}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn write_policy(h: &Harness, text: &str) {
    std::fs::write(h.state.path().join("policies/p0.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_grants_reach_the_lease_and_follow_the_policy_file() {
    let h = Harness::start_with_postgres(&[], SETUP, &[BUILDER], "").await;
    let running = h.pgid.as_ref().unwrap();
    assert!(plan(&h).await.contains("(up to date)"));

    let lease = h.lease("agent:builder", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    run(&c, "CREATE TEMP TABLE tmp AS SELECT 1 AS x").await;
    run(
        &c,
        "CREATE TABLE scratch.t (m crm.mood, n bigint DEFAULT nextval('crm.ticket_no'))",
    )
    .await;
    run(&c, "INSERT INTO scratch.t (m) VALUES ('happy'), ('sad')").await;
    assert_eq!(
        run(&c, "SELECT nextval('crm.ticket_no')").await,
        ["3"],
        "the sequence is usable"
    );
    assert_eq!(run(&c, "SELECT crm.order_total(21)").await, ["42"]);
    // What it made stays its own: given to its group role or pgid's marker role, it would
    // outlive the lease.
    for sql in [
        "ALTER TABLE scratch.t OWNER TO \"pgid_p_builder\"",
        "ALTER TABLE scratch.t OWNER TO pgid_lease",
        "CREATE SCHEMA kept AUTHORIZATION \"pgid_p_builder\"",
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"pgid_p_builder\" GRANT SELECT ON TABLES TO PUBLIC",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}: {}", pgid_message(&e));
        assert!(
            pgid_message(&e).contains("pgid: identity: giving an object"),
            "{sql}: {}",
            pgid_message(&e)
        );
    }
    let e = c.simple_query("SELECT crm.secret(1)").await.unwrap_err();
    assert_eq!(code(&e), "42501", "{}", pgid_message(&e));
    assert!(
        pgid_message(&e).contains("permission denied for function secret"),
        "Postgres refuses what the policy does not grant: {}",
        pgid_message(&e)
    );
    let oid = run(&c, "SELECT lo_from_bytea(0, 'z')").await;
    // max_rows = "unlimited": past the default limit of 100000 rows.
    let rows = c
        .simple_query("SELECT g FROM generate_series(1, 100001) g")
        .await
        .unwrap()
        .into_iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 100_001);

    // The file changes: plan shows the difference for each kind, and a reload applies it.
    write_policy(&h, &builder_reduced());
    let out = plan(&h).await;
    for line in [
        "GRANT SELECT ON SEQUENCE \"crm\".\"ticket_no\" TO \"pgid_p_builder\";",
        "REVOKE TEMPORARY ON DATABASE \"app\" FROM \"pgid_p_builder\";",
        "REVOKE EXECUTE ON ROUTINE \"crm\".\"order_total\"(\"pg_catalog\".\"int4\") FROM \"pgid_p_builder\";",
    ] {
        assert!(out.contains(line), "{line} in\n{out}");
    }
    assert!(!out.contains("SCHEMA"), "{out}");
    assert!(!out.contains("TYPE"), "{out}");
    running.reload().await.unwrap();
    assert!(plan(&h).await.contains("(up to date)"));
    assert!(
        !group_has(
            &h,
            "has_function_privilege('pgid_p_builder', 'crm.order_total(integer)', 'EXECUTE')"
        )
        .await
    );
    assert!(
        !group_has(
            &h,
            "has_database_privilege('pgid_p_builder', 'app', 'TEMPORARY')"
        )
        .await
    );
    assert!(
        group_has(
            &h,
            "has_sequence_privilege('pgid_p_builder', 'crm.ticket_no', 'SELECT')"
        )
        .await
    );
    assert!(
        group_has(
            &h,
            "has_schema_privilege('pgid_p_builder', 'scratch', 'CREATE')"
        )
        .await
    );
    assert!(
        group_has(
            &h,
            "has_type_privilege('pgid_p_builder', 'crm.mood', 'USAGE')"
        )
        .await
    );
    // A new session of the same lease has lost them.
    let again = h.connect_proxy(&lease).await.unwrap();
    let e = again
        .simple_query("SELECT crm.order_total(1)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{}", pgid_message(&e));
    let e = again
        .simple_query("CREATE TEMP TABLE t2 (x integer)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{}", pgid_message(&e));
    run(&again, "SELECT last_value FROM crm.ticket_no").await;

    // Revocation drops what the lease made in the schema, and its large object.
    let (status, body) = h
        .call(
            Method::DELETE,
            &format!("/v1/credentials/{}", lease["lease_id"].as_str().unwrap()),
            Some(&h.token("agent:builder")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked");
    assert_eq!(
        h.count("SELECT count(*) FROM pg_class WHERE relname = 't' AND relnamespace = 'scratch'::regnamespace")
            .await,
        0
    );
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = {}",
            oid[0]
        ))
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_typed_grant_naming_what_the_database_lacks_is_refused() {
    let h = Harness::start_with_postgres(&[], SETUP, &[BUILDER], "").await;
    let running = h.pgid.as_ref().unwrap();
    let bad = BUILDER
        .replace(
            "functions = [\"crm.order_total(integer)\"]",
            "functions = [\"crm.order_total(text)\", \"crm.order_total(int eger)\", \"crm.ordr_total()\"]",
        )
        .replace("types = [\"crm.mood\"]", "types = [\"crm.moood\"]")
        .replace("sequences = [\"crm.ticket_no\"]", "sequences = [\"crm.ticket_nr\", \"nowhere.*\"]")
        .replace("schemas = [\"scratch\"]", "schemas = [\"scrach\"]");
    write_policy(&h, &bad);
    let e = running.reload().await.unwrap_err();
    for expected in [
        "[[grant]] names function crm.order_total(text), which does not exist in database app (there is crm.order_total(integer))",
        "[[grant]] names function crm.order_total(int eger), whose argument types the server cannot read: ERROR 42601",
        "[[grant]] names function crm.ordr_total(), which does not exist in database app (did you mean \"order_total\"?)",
        "[[grant]] names type crm.moood, which does not exist in database app (did you mean \"mood\"?)",
        "[[grant]] names sequence crm.ticket_nr, which does not exist in database app (did you mean \"ticket_no\"?)",
        "[[grant]] names schema \"nowhere\", which does not exist in database app",
        "[[grant]] names schema \"scrach\", which does not exist in database app (did you mean \"scratch\"?)",
    ] {
        assert!(e.contains(expected), "{expected}\nin\n{e}");
    }
    // Nothing changed.
    assert!(
        group_has(
            &h,
            "has_function_privilege('pgid_p_builder', 'crm.order_total(integer)', 'EXECUTE')"
        )
        .await
    );
    // `pgid policy check --database` says the same, outside a transaction.
    let mut c = pgid();
    c.args(["policy", "check", "--dir"])
        .arg(h.state.path().join("policies"))
        .args(["--database", &h.admin_url]);
    let (code, stdout, stderr) = output(c).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("crm.order_total(int eger), whose argument types the server cannot read")
            && stderr.contains("names type crm.moood"),
        "{stderr}"
    );
}

/// May create tables and views in `scratch` and temporary ones, reads customers with their
/// e-mail addresses masked.
const COPIER: &str = r#"
name = "copier"
database = "app"
ttl = "15m"
max_connections = 5
[identity]
subject = "agent:copier"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[[grant]]
privileges = ["CREATE", "USAGE"]
schemas = ["scratch"]
[[grant]]
privileges = ["TEMPORARY"]
database = true
[guardrails]
deny = []
require_where = []
[[mask]]
columns = ["crm.customers.email"]
method = "redact"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn what_a_lease_creates_cannot_carry_a_masked_column_out_in_clear() {
    let h = Harness::start_with_postgres(&[], SETUP, &[COPIER], "").await;
    let lease: Value = h.lease("agent:copier", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    run(&c, "CREATE TABLE scratch.box (e text)").await;
    run(&c, "CREATE TEMP TABLE tbox (e text)").await;
    for sql in [
        "CREATE TABLE scratch.copy AS SELECT email FROM crm.customers",
        "CREATE TEMP TABLE tcopy AS SELECT email FROM crm.customers",
        "SELECT email INTO TEMP tinto FROM crm.customers",
        "CREATE VIEW scratch.v AS SELECT email FROM crm.customers",
        "CREATE TEMP VIEW tv AS SELECT lower(email) AS e FROM crm.customers",
        "INSERT INTO scratch.box SELECT email FROM crm.customers",
        "INSERT INTO tbox SELECT email FROM crm.customers",
        "WITH x AS (SELECT email FROM crm.customers) INSERT INTO tbox SELECT * FROM x",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}: {}", pgid_message(&e));
    }
    // A view over the whole table is masked when read back, if pgid lets it be made at all.
    match c
        .simple_query("CREATE VIEW scratch.everything AS SELECT * FROM crm.customers")
        .await
    {
        Err(e) => assert_eq!(code(&e), "42501", "{}", pgid_message(&e)),
        Ok(_) => {
            let emails = run(&c, "SELECT email FROM scratch.everything").await;
            assert!(!emails.is_empty());
            assert!(emails.iter().all(|e| e == "REDACTED"), "{emails:?}");
        }
    }
    assert!(run(&c, "SELECT email FROM crm.customers")
        .await
        .iter()
        .all(|e| e == "REDACTED"));
    // Nothing reached the lease's own objects.
    let su = connect(&h.pg.superuser_url("app")).await.unwrap();
    let n: i64 = su
        .query_one("SELECT count(*) FROM scratch.box", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(run(&c, "SELECT count(*) FROM tbox").await, ["0"]);
    assert_eq!(
        h.count(
            "SELECT count(*) FROM pg_class WHERE relname IN ('copy', 'v', 'tcopy', 'tinto', 'tv')"
        )
        .await,
        0
    );
}
