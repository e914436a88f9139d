//! Guardrails through the real proxy: a table of statements, simple and extended protocol,
//! refused ones leave the data unchanged, allowed ones return what a direct connection returns,
//! and the session carries on (inside a transaction, a refusal aborts it like a server error).

mod common;

use std::collections::HashMap;

use common::Harness;
use serde_json::json;
use tokio_postgres::{Client, SimpleQueryMessage};

const STRICT: &str = r#"
name = "strict"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:strict"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers", "crm.orders"]
[[grant]]
privileges = ["SELECT", "UPDATE", "DELETE"]
on = ["crm.tickets"]
[[grant]]
privileges = ["SELECT", "INSERT"]
on = ["crm.notes"]
"#;

const ALLOWED: &[&str] = &[
    "SELECT count(*) FROM crm.customers",
    "select COUNT(*) from CRM.CUSTOMERS",
    "SELECT 'DROP TABLE crm.customers'",
    "SELECT 1 AS \"delete\"",
    "SELECT \"name\" AS \"drop\" FROM crm.customers ORDER BY 1",
    "SELECT id FROM crm.tickets WHERE id = 1",
    "UPDATE crm.tickets SET status = 'open' WHERE id = 1",
    "DELETE FROM crm.tickets WHERE id = -1",
    "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
    "SELECT /* DROP TABLE x */ 1",
    "SELECT 1 -- ; DROP TABLE crm.customers",
    "SELECT U&'\\0044ROP TABLE'",
    "SELECT E'it\\'s; DROP TABLE crm.customers'",
    "SELECT $$DROP TABLE crm.customers$$",
    "SELECT $x$;DELETE FROM crm.tickets$x$",
    "EXPLAIN SELECT 1",
    "SHOW search_path",
    "SELECT lower(name), upper(email) FROM crm.customers ORDER BY 1",
    "INSERT INTO crm.notes (customer_id, body) SELECT 1, 'x' WHERE false",
    "SET statement_timeout = '5s'",
    "SELECT 'ünïcødé', 'データ'",
    "SELECT query_to_xml('SELECT 1 AS one', true, false, '')",
    "SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)",
    "MERGE INTO crm.tickets t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED AND t.id = 1 THEN UPDATE SET status = 'open'",
    "INSERT INTO crm.notes (customer_id, body) VALUES (1, 'x') ON CONFLICT (id) DO NOTHING",
];

const ALLOWED_SIMPLE_ONLY: &[&str] = &["BEGIN; SELECT 1; COMMIT", "SELECT 1; SELECT 2"];

const REFUSED: &[(&str, &str)] = &[
    ("DROP TABLE crm.customers", "deny"),
    ("drop table crm.customers", "deny"),
    ("DrOp TaBlE crm.customers", "deny"),
    ("/* hello */ DROP /* x */ TABLE crm.customers", "deny"),
    ("TRUNCATE crm.tickets", "deny"),
    ("DELETE FROM crm.tickets", "require_where"),
    ("UPDATE crm.tickets SET status = 'x'", "require_where"),
    ("delete from \"crm\".\"tickets\"", "require_where"),
    (
        "WITH d AS (DELETE FROM crm.tickets RETURNING *) SELECT count(*) FROM d",
        "require_where",
    ),
    ("EXPLAIN ANALYZE DELETE FROM crm.tickets", "require_where"),
    ("ALTER TABLE crm.customers ADD COLUMN x int", "deny"),
    ("GRANT SELECT ON crm.customers TO PUBLIC", "deny"),
    ("SET ROLE pgid_admin", "identity"),
    ("SET SESSION AUTHORIZATION pgid_admin", "identity"),
    ("RESET ROLE", "identity"),
    ("ALTER ROLE CURRENT_USER VALID UNTIL 'infinity'", "identity"),
    ("ALTER USER CURRENT_USER PASSWORD 'mine'", "identity"),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "deny",
    ),
    ("DO $$ BEGIN PERFORM 1; END $$", "deny"),
    ("COPY crm.customers TO PROGRAM 'cat'", "identity"),
    ("COPY crm.customers FROM '/etc/passwd'", "identity"),
    ("LOAD 'plpgsql'", "identity"),
    ("SELECT pg_read_file('/etc/passwd')", "deny_functions"),
    (
        "SELECT * FROM pg_catalog.pg_read_file('/etc/passwd')",
        "deny_functions",
    ),
    ("SELECT pg_terminate_backend(1)", "deny_functions"),
    // Changing the role is refused whatever the policy says, before its denied functions.
    ("SELECT set_config('role', 'pgid_admin', false)", "identity"),
    (
        "SELECT set_config('search_path', 'crm', false)",
        "deny_functions",
    ),
    ("SELECT * FROM pgid.leases", "pgid_schema"),
    ("PREPARE p AS DELETE FROM crm.tickets", "require_where"),
    // Issue 12: statements judged by every action they take, the SQL they give functions as
    // text, and the functions the code they create binds.
    ("MERGE INTO crm.tickets t USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE", "require_where"),
    ("MERGE INTO crm.tickets t USING crm.customers c ON t.customer_id = c.id WHEN MATCHED THEN UPDATE SET status = 'x'", "require_where"),
    ("MERGE INTO crm.tickets USING (VALUES (1)) v(id) ON true WHEN MATCHED THEN UPDATE SET status = 'x'", "require_where"),
    ("merge into crm.tickets t using (select 1 as id) s on t.id = s.id when not matched then insert (customer_id, subject) values (1, 'x') when matched then delete", "require_where"),
    ("WITH s AS (SELECT id FROM crm.tickets) MERGE INTO crm.tickets t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "require_where"),
    ("EXPLAIN ANALYZE MERGE INTO crm.tickets t USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE", "require_where"),
    ("MERGE INTO crm.tickets t USING (SELECT 1) s ON true WHEN MATCHED AND true THEN DO NOTHING WHEN MATCHED THEN DELETE", "require_where"),
    ("PREPARE m AS MERGE INTO crm.tickets t USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE", "require_where"),
    ("INSERT INTO crm.tickets SELECT * FROM crm.tickets ON CONFLICT (id) DO UPDATE SET status = 'x'", "require_where"),
    ("INSERT INTO crm.tickets (id, customer_id, subject) SELECT id, customer_id, subject FROM crm.tickets ON CONFLICT (id) DO UPDATE SET status = excluded.status || 'x'", "require_where"),
    ("WITH u AS (INSERT INTO crm.tickets SELECT * FROM crm.tickets ON CONFLICT (id) DO UPDATE SET status = 'x' RETURNING 1) SELECT count(*) FROM u", "require_where"),
    ("INSERT INTO crm.tickets TABLE crm.tickets ON CONFLICT (id) DO UPDATE SET status = 'x'", "require_where"),
    ("INSERT INTO crm.tickets SELECT * FROM crm.tickets UNION ALL SELECT * FROM crm.tickets ON CONFLICT ON CONSTRAINT tickets_pkey DO UPDATE SET status = 'x'", "require_where"),
    ("INSERT INTO crm.tickets (SELECT * FROM crm.tickets) ON CONFLICT (id) DO UPDATE SET status = 'x'", "require_where"),
    ("TRUNCATE ONLY crm.tickets", "deny"),
    ("truncate table crm.tickets restart identity", "deny"),
    ("SELECT query_to_xml('SELECT pg_terminate_backend(1)', true, false, '')", "deny_functions"),
    ("SELECT pg_catalog.query_to_xml('SELECT pg_read_file(''/etc/passwd'')', true, false, '')", "deny_functions"),
    ("SELECT query_to_xmlschema('SELECT pg_cancel_backend(1)', true, false, '')", "deny_functions"),
    ("SELECT query_to_xml_and_xmlschema($q$SELECT pg_reload_conf()$q$, true, false, '')", "deny_functions"),
    ("SELECT * FROM ts_stat('SELECT to_tsvector(pg_read_file(''/etc/passwd''))')", "deny_functions"),
    ("SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, pg_terminate_backend(1)::text::tsquery')", "deny_functions"),
    ("SELECT query_to_xml(E'SELECT pg_terminate_backend(1)\\n', true, false, '')", "deny_functions"),
    ("SELECT query_to_xml(U&'SELECT pg_terminate\\005fbackend(1)', true, false, '')", "deny_functions"),
    ("SELECT query_to_xml('SELECT set_config(''role'', ''pgid_admin'', false)', true, false, '')", "identity"),
    ("SELECT query_to_xml('SELECT set_config(''search_path'', ''crm'', false)', true, false, '')", "deny_functions"),
    ("SELECT query_to_xml('SELECT * FROM pgid.leases', true, false, '')", "pgid_schema"),
    ("SELECT query_to_xml('SELECT ' || 'pg_terminate_backend(1)', true, false, '')", "sql_text"),
    ("SELECT query_to_xml(name, true, false, '') FROM crm.customers", "sql_text"),
    ("SELECT query_to_xml(query => 'SELECT 1', nulls => true, tableforest => false, targetns => '')", "sql_text"),
    ("SELECT query_to_xml('SELECT 1'::varchar(3), true, false, '')", "sql_text"),
    ("SELECT table_to_xml('crm.customers', true, false, '')", "sql_text"),
    ("SELECT table_to_xmlschema('crm.customers'::regclass, true, false, '')", "sql_text"),
    ("SELECT schema_to_xml('crm', true, false, '')", "sql_text"),
    ("SELECT database_to_xml(true, false, '')", "sql_text"),
    ("SELECT cursor_to_xml('c', 1, true, false, '')", "sql_text"),
    ("SELECT query_to_xml('SELEC 1', true, false, '')", "sql_text"),
    ("SELECT query_to_xml('SELECT query_to_xml(''SELECT pg_terminate_backend(1)'', true, false, '''')', true, false, '')", "deny_functions"),
    ("SELECT query_to_xml('PREPARE x AS SELECT 1', true, false, '')", "sql_text"),
    ("SELECT * FROM ts_stat(format('SELECT %s', 'x'))", "sql_text"),
    ("SELECT 1 WHERE EXISTS (SELECT query_to_xml('SELECT pg_terminate_backend(1)', true, false, ''))", "deny_functions"),
    ("CREATE OPERATOR pg_temp.=== (FUNCTION = pg_terminate_backend, LEFTARG = integer, RIGHTARG = bigint)", "deny"),
    ("CREATE AGGREGATE pg_temp.a (integer) (SFUNC = int4pl, STYPE = integer)", "deny"),
    ("CREATE TYPE pg_temp.t (INPUT = int4in, OUTPUT = int4out)", "deny"),
    ("CREATE CAST (text AS integer) WITH FUNCTION pg_read_file(text)", "deny"),
    ("CREATE TYPE pg_temp.r AS RANGE (SUBTYPE = integer, SUBTYPE_DIFF = int4mi)", "deny"),
    ("CREATE CONVERSION pg_temp.c FOR 'UTF8' TO 'LATIN1' FROM utf8_to_iso8859_1", "deny"),
    ("CREATE OPERATOR CLASS c FOR TYPE integer USING btree AS OPERATOR 1 <, FUNCTION 1 btint4cmp(integer, integer)", "deny"),
    ("ALTER OPERATOR FAMILY integer_ops USING btree ADD FUNCTION 9 btint4cmp(integer, integer)", "deny"),
    ("CREATE FOREIGN DATA WRAPPER w HANDLER h", "deny"),
    ("ALTER OPERATOR === (integer, bigint) SET (RESTRICT = eqsel)", "deny"),
    ("CREATE ACCESS METHOD m TYPE TABLE HANDLER heap_tableam_handler", "deny"),
    ("CREATE LANGUAGE l HANDLER plpgsql_call_handler", "deny"),
    ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT pg_terminate_backend(1)::int'", "deny"),
];

const REFUSED_SIMPLE_ONLY: &[(&str, &str)] = &[
    ("SELECT 1; DROP TABLE crm.customers", "deny"),
    (
        "SELECT 1 FROM crm.customers; DELETE FROM crm.tickets",
        "require_where",
    ),
    ("select 1;DrOp TABLE crm.tickets;select 2", "deny"),
];

fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            SimpleQueryMessage::CommandComplete(n) => Some(format!("complete {n}")),
            _ => None,
        })
        .collect()
}

fn refusal(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn snapshot(c: &Client) -> Vec<String> {
    rows(c
        .simple_query(
            "SELECT (SELECT count(*) FROM crm.customers), (SELECT count(*) FROM crm.tickets), \
             (SELECT string_agg(status, ',' ORDER BY id) FROM crm.tickets), \
             (SELECT count(*) FROM pg_proc WHERE proname = 'f'), to_regclass('crm.customers') IS NOT NULL",
        )
        .await
        .unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_statement_is_judged_before_it_reaches_postgres() {
    let h = Harness::start(&[STRICT]).await;
    let lease = h.lease("agent:strict", json!({})).await;
    let direct = h.connect_lease_direct(&lease).await;
    let proxied = h.connect_proxy(&lease).await.unwrap();
    let su = h.superuser().await;
    let before = snapshot(&su).await;
    let mut checked = 0;
    // What the audit must hold afterwards: (protocol, statement) → (decision, times).
    let mut expected: HashMap<(&str, String), (&str, usize)> = HashMap::new();
    let mut expect = |protocol: &'static str, sql: &str, decision: &'static str| {
        expected
            .entry((protocol, sql.to_string()))
            .or_insert((decision, 0))
            .1 += 1;
    };

    for sql in ALLOWED.iter().chain(ALLOWED_SIMPLE_ONLY) {
        let want = rows(
            direct
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("direct {sql}: {e}")),
        );
        let got = rows(
            proxied
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("through pgid {sql}: {e}")),
        );
        assert_eq!(got, want, "{sql}");
        expect("simple", sql, "allow");
        checked += 1;
    }
    for sql in ALLOWED {
        // Extended protocol: Parse/Bind/Execute.
        proxied
            .query(*sql, &[])
            .await
            .unwrap_or_else(|e| panic!("extended {sql}: {e}"));
        expect("extended", sql, "allow");
        checked += 1;
    }
    for (sql, rule) in REFUSED.iter().chain(REFUSED_SIMPLE_ONLY) {
        let e = proxied.simple_query(sql).await.map(|_| ()).expect_err(sql);
        let (code, message) = refusal(&e);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.starts_with(&format!("pgid: {rule}:")),
            "{sql}: {message}"
        );
        proxied
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("session unusable after {sql}: {e}"));
        expect("simple", sql, "deny");
        expect("simple", "SELECT 1", "allow");
        checked += 1;
    }
    for (sql, rule) in REFUSED {
        let e = proxied.query(*sql, &[]).await.map(|_| ()).expect_err(sql);
        let (code, message) = refusal(&e);
        assert_eq!(code, "42501", "extended {sql}: {message}");
        assert!(
            message.starts_with(&format!("pgid: {rule}:")),
            "extended {sql}: {message}"
        );
        proxied
            .query("SELECT 1", &[])
            .await
            .unwrap_or_else(|e| panic!("session unusable after extended {sql}: {e}"));
        expect("extended", sql, "deny");
        expect("extended", "SELECT 1", "allow");
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} statement runs");
    assert_eq!(
        snapshot(&su).await,
        before,
        "a refused statement changed the data"
    );

    // Every statement run through pgid is in the audit exactly once, with its decision, and
    // each allowed one with exactly one outcome.
    let (decisions, outcomes) = h.statement_audit(lease["lease_id"].as_str().unwrap()).await;
    let mut seen: HashMap<(&str, String), (&str, usize)> = HashMap::new();
    for d in &decisions {
        let key = (
            d["protocol"].as_str().unwrap(),
            d["statement"].as_str().unwrap().to_string(),
        );
        let decision = d["decision"].as_str().unwrap();
        let entry = seen.entry(key.clone()).or_insert((decision, 0));
        assert_eq!(entry.0, decision, "{key:?} decided both ways");
        entry.1 += 1;
        let outcome = outcomes.get(&(
            d["session_id"].as_str().unwrap().to_string(),
            d["seq"].as_u64().unwrap(),
        ));
        match decision {
            "allow" => assert!(outcome.is_some(), "no outcome for {d}"),
            _ => {
                assert!(outcome.is_none(), "a refused statement has an outcome: {d}");
                assert_eq!(d["sqlstate"], "42501");
                assert!(d["rule"].is_string() && d["reason"].is_string(), "{d}");
            }
        }
        assert_eq!(d["subject"], "agent:strict");
        assert_eq!(d["policy"], "strict");
    }
    for (key, want) in &expected {
        assert_eq!(seen.get(key), Some(want), "audit of {key:?}");
    }
    assert_eq!(seen.len(), expected.len(), "unexpected records: {seen:?}");
    let drop = decisions
        .iter()
        .find(|d| d["statement"] == "DROP TABLE crm.customers")
        .unwrap();
    assert_eq!(drop["classes"], json!(["DROP"]));
    assert_eq!(drop["rule"], "deny");
    let count = decisions
        .iter()
        .find(|d| d["statement"] == "SELECT count(*) FROM crm.customers")
        .unwrap();
    let o = &outcomes[&(
        count["session_id"].as_str().unwrap().to_string(),
        count["seq"].as_u64().unwrap(),
    )];
    assert_eq!(
        (o["result"].as_str(), o["rows"].as_u64()),
        (Some("ok"), Some(1))
    );
    assert!(o["duration_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_aborts_the_transaction_and_pipelines_keep_their_order() {
    let h = Harness::start(&[STRICT]).await;
    let lease = h.lease("agent:strict", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();

    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("UPDATE crm.tickets SET status = 'mid' WHERE id = 2")
        .await
        .unwrap();
    let e = c
        .batch_execute("DELETE FROM crm.tickets")
        .await
        .unwrap_err();
    assert_eq!(refusal(&e).0, "42501");
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        refusal(&e).0,
        "25P02",
        "the transaction is aborted, as after a server error"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    let status: String = c
        .query_one("SELECT status FROM crm.tickets WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "open", "the transaction was rolled back");

    // Extended protocol, pipelined: allowed, refused, allowed — answered in order.
    let (a, b, d) = tokio::join!(
        c.query_one("SELECT 'first'::text", &[]),
        c.query("DROP TABLE crm.notes", &[]),
        c.query_one("SELECT 'third'::text", &[])
    );
    assert_eq!(a.unwrap().get::<_, String>(0), "first");
    assert_eq!(refusal(&b.unwrap_err()).0, "42501");
    assert_eq!(d.unwrap().get::<_, String>(0), "third");

    // SQL-level PREPARE/EXECUTE: judged at PREPARE; EXECUTE of unknown names refused.
    c.batch_execute("PREPARE ok (int) AS SELECT name FROM crm.customers WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(
        rows(c.simple_query("EXECUTE ok(1)").await.unwrap())[0],
        "Ada Lovelace"
    );
    let e = c
        .simple_query("EXECUTE not_prepared_here")
        .await
        .unwrap_err();
    assert!(refusal(&e).1.starts_with("pgid: prepared:"));
}

const EXPORT: &str = r#"
name = "export"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:export"
[[grant]]
privileges = ["SELECT"]
on = ["crm.orders"]
[guardrails]
max_rows = 1000
"#;

#[tokio::test(flavor = "multi_thread")]
async fn max_rows_stops_a_bulk_export_and_cancels_the_query() {
    use futures::{pin_mut, StreamExt};
    let h = Harness::start(&[EXPORT]).await;
    let admin = common::connect(&h.admin_url).await.unwrap();
    admin
        .batch_execute("INSERT INTO crm.orders (customer_id, amount) SELECT 1 + g % 4, g FROM generate_series(1, 100000) g")
        .await
        .unwrap();
    let lease = h.lease("agent:export", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let user = lease["username"].as_str().unwrap().to_string();

    // A SELECT, streamed row by row (extended protocol, binary results).
    let stream = c
        .query_raw("SELECT * FROM crm.orders", std::iter::empty::<i32>())
        .await
        .unwrap();
    pin_mut!(stream);
    let mut rows = 0;
    let mut error = None;
    while let Some(r) = stream.next().await {
        match r {
            Ok(_) => rows += 1,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(rows <= 1000, "{rows} rows got through");
    let (code, message) = refusal(&error.expect("the export was not stopped"));
    assert_eq!(code, "54000");
    assert!(message.starts_with("pgid: max_rows:"), "{message}");

    // COPY TO STDOUT: the same limit on lines.
    let out = c.copy_out("COPY crm.orders TO STDOUT").await.unwrap();
    pin_mut!(out);
    let mut lines = 0;
    let mut copy_error = None;
    while let Some(chunk) = out.next().await {
        match chunk {
            Ok(b) => lines += b.iter().filter(|c| **c == b'\n').count(),
            Err(e) => {
                copy_error = Some(e);
                break;
            }
        }
    }
    assert!(lines <= 1000, "{lines} COPY lines got through");
    assert!(refusal(&copy_error.expect("the COPY was not stopped"))
        .1
        .starts_with("pgid: max_rows:"));

    // The upstream query was cancelled, not left running; the session goes on.
    let su = h.superuser().await;
    let idle = common::eventually(std::time::Duration::from_secs(5), || async {
        su.query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND state = 'active'",
            &[&user],
        )
        .await
        .unwrap()
        .is_none()
    })
    .await;
    assert!(idle, "the upstream query is still running");
    let n: i64 = c
        .query_one("SELECT count(*) FROM crm.orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_040);
    let small = rows_of(
        c.simple_query("SELECT id FROM crm.orders ORDER BY id LIMIT 1000")
            .await
            .unwrap(),
    );
    assert_eq!(
        small.len(),
        1001,
        "exactly max_rows rows pass (plus the completion)"
    );
}

fn rows_of(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    rows(msgs)
}
