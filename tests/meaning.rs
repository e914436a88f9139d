//! Enforcement by meaning (through the real proxy, raw protocol): a statement is judged by every
//! action it takes (MERGE actions, upserts), by the SQL it hands to functions as text, and by the
//! functions the code it creates binds (operators, aggregates, casts, SQL function bodies). Each
//! test asserts the real effect: rows unchanged, a session not killed, an object not created, a
//! masked value absent from every byte received.

mod common;

use common::wire::{errors, values, Message};
use common::{Harness, EMAIL_MASKED, REVIEWED, WRITER};

/// May create code (FUNCTION is not denied), under the default denied functions.
const CODER: &str = r#"
name = "coder"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:coder"
[[grant]]
privileges = ["SELECT"]
on = ["crm.tickets"]
[guardrails]
deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "ROLE", "COPY_PROGRAM", "LOAD"]
"#;

fn refused_by(answer: &[Message], rule: &str) -> bool {
    errors(answer)
        .first()
        .is_some_and(|(code, m)| code == "42501" && m.starts_with(&format!("pgid: {rule}:")))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upsert_from_a_query_is_an_update_without_where() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = h.raw_client("agent:writer", &[]).await.unwrap();
    let touched = "SELECT count(*) FROM crm.tickets WHERE status = 'upserted'";
    let answer = c
        .query(
            "INSERT INTO crm.tickets SELECT * FROM crm.tickets \
             ON CONFLICT (id) DO UPDATE SET status = 'upserted'",
        )
        .await;
    assert!(refused_by(&answer, "require_where"), "{answer:?}");
    assert_eq!(h.count(touched).await, 0, "every ticket updated");
    // The same upsert with a condition of its own, and one row written out: both run.
    let answer = c
        .query(
            "INSERT INTO crm.tickets SELECT * FROM crm.tickets \
             ON CONFLICT (id) DO UPDATE SET status = 'upserted' WHERE crm.tickets.id = 1",
        )
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let answer = c
        .query(
            "INSERT INTO crm.tickets (id, customer_id, subject) VALUES (2, 1, 'x') \
             ON CONFLICT (id) DO UPDATE SET status = 'upserted'",
        )
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(h.count(touched).await, 2);
    // MERGE: an UPDATE action needs a condition of its own; ON is a join.
    let answer = c
        .query(
            "MERGE INTO crm.tickets t USING (SELECT 1 AS id) s ON true \
             WHEN MATCHED THEN UPDATE SET status = 'merged'",
        )
        .await;
    assert!(refused_by(&answer, "require_where"), "{answer:?}");
    let merged = "SELECT count(*) FROM crm.tickets WHERE status = 'merged'";
    assert_eq!(h.count(merged).await, 0);
    let answer = c
        .query(
            "MERGE INTO crm.tickets t USING (SELECT 3 AS id) s ON t.id = s.id \
             WHEN MATCHED AND t.id = 3 THEN UPDATE SET status = 'merged'",
        )
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(h.count(merged).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_given_to_a_function_as_text_is_judged() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = h.raw_client("agent:writer", &[]).await.unwrap();
    // A denied function inside the string: the session would end itself.
    for sql in [
        "SELECT query_to_xml('SELECT pg_terminate_backend(pg_backend_pid())', true, false, '')",
        "SELECT * FROM ts_stat('SELECT to_tsvector(pg_terminate_backend(pg_backend_pid())::text)')",
        "SELECT query_to_xml('SELECT query_to_xml(''SELECT pg_terminate_backend(pg_backend_pid())'', true, false, '''')', true, false, '')",
    ] {
        let answer = c.query(sql).await;
        assert!(refused_by(&answer, "deny_functions"), "{sql}: {answer:?}");
        assert_eq!(values(&c.query("SELECT 'alive'").await), ["alive"]);
    }
    // SQL pgid cannot read: refused.
    let answer = c
        .query("SELECT query_to_xml('SELECT pg_terminate_' || 'backend(pg_backend_pid())', true, false, '')")
        .await;
    assert!(refused_by(&answer, "sql_text"), "{answer:?}");
    let answer = c
        .query("SELECT table_to_xml('crm.tickets', true, false, '')")
        .await;
    assert!(refused_by(&answer, "sql_text"), "{answer:?}");
    // Identity through text: refused as SET ROLE is.
    let answer = c
        .query("SELECT query_to_xml('SELECT set_config(''role'', ''postgres'', false)', true, false, '')")
        .await;
    assert!(refused_by(&answer, "identity"), "{answer:?}");
    assert_eq!(values(&c.query("SELECT 'alive'").await), ["alive"]);
    // What can be read runs.
    let answer = c
        .query("SELECT query_to_xml('SELECT count(*) AS n FROM crm.tickets', true, false, '')")
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert!(values(&answer)[0].contains("<n>"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ts_rewrite_does_not_read_a_masked_column_in_clear() {
    let h = Harness::start(&[EMAIL_MASKED]).await;
    let secrets: Vec<String> = h
        .superuser()
        .await
        .query("SELECT email FROM crm.customers", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    for sql in [
        "SELECT ts_rewrite('x'::tsquery, 'SELECT ''x''::tsquery, plainto_tsquery(''simple'', email) FROM crm.customers LIMIT 1')",
        "SELECT * FROM ts_stat('SELECT to_tsvector(''simple'', email) FROM crm.customers')",
        "SELECT query_to_xml('SELECT email FROM crm.customers', true, false, '')",
    ] {
        let answer = c.query(sql).await;
        let leaked: Vec<_> = secrets
            .iter()
            .filter(|s| {
                answer
                    .iter()
                    .any(|m| m.body.windows(s.len()).any(|w| w == s.as_bytes()))
            })
            .collect();
        assert!(leaked.is_empty(), "{sql}: {leaked:?} in {answer:?}");
        assert!(!errors(&answer).is_empty(), "{sql}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn code_that_binds_a_denied_function_is_not_created() {
    let h = Harness::start(&[CODER]).await;
    let mut c = h.raw_client("agent:coder", &[]).await.unwrap();
    let operators = "SELECT count(*) FROM pg_operator WHERE oprname = '==='";
    let answer = c
        .query(
            "CREATE OPERATOR pg_temp.=== (FUNCTION = pg_terminate_backend, \
             LEFTARG = integer, RIGHTARG = bigint)",
        )
        .await;
    assert!(refused_by(&answer, "deny_functions"), "{answer:?}");
    assert_eq!(h.count(operators).await, 0);
    for sql in [
        "CREATE AGGREGATE pg_temp.kill (integer) (SFUNC = pg_catalog.pg_terminate_backend, STYPE = integer)",
        "CREATE FUNCTION pg_temp.k(p integer) RETURNS boolean LANGUAGE sql AS 'SELECT pg_terminate_backend(p)'",
        "CREATE FUNCTION pg_temp.k(p integer) RETURNS boolean LANGUAGE plpgsql AS 'BEGIN RETURN pg_terminate_backend(p); END'",
    ] {
        let answer = c.query(sql).await;
        assert!(refused_by(&answer, "deny_functions"), "{sql}: {answer:?}");
    }
    let functions = "SELECT count(*) FROM pg_proc WHERE proname IN ('kill', 'k')";
    assert_eq!(h.count(functions).await, 0);
    // Code that binds allowed functions is created.
    let answer = c
        .query(
            "CREATE OPERATOR pg_temp.=== (FUNCTION = int4eq, LEFTARG = integer, RIGHTARG = integer)",
        )
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(h.count(operators).await, 1);
}

/// The server's own catalog: every built-in function that runs SQL given as text, or reads the
/// relations, schemas or cursors a value names, is one pgid judges (`pgid::sql::text`).
#[tokio::test(flavor = "multi_thread")]
async fn every_function_the_catalog_shows_running_sql_given_as_text_is_known() {
    let h = Harness::start(&[WRITER]).await;
    let rows = h
        .superuser()
        .await
        .query(
            "SELECT DISTINCT p.proname::text FROM pg_proc p \
             WHERE p.pronamespace = 'pg_catalog'::regnamespace AND ( \
               EXISTS (SELECT 1 FROM unnest(p.proargnames) WITH ORDINALITY a(n, i) \
                       WHERE coalesce(p.proargmodes[i], 'i') IN ('i', 'b', 'v') \
                       AND n IN ('query', 'sqlquery', 'tbl', 'cursor', 'schema')) \
               OR 'refcursor'::regtype = ANY (p.proargtypes) \
               OR p.proname LIKE '%\\_to\\_xml%' \
               OR (p.proname = 'ts_rewrite' AND p.pronargs = 2))",
            &[],
        )
        .await
        .unwrap();
    let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(found.iter().any(|f| f == "query_to_xml"), "{found:?}");
    let unknown: Vec<&String> = found
        .iter()
        .filter(|f| !pgid::sql::text::known().any(|k| k == f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "functions pgid does not judge: {unknown:?}"
    );
}

/// A DELETE reaches a reviewed table through a view, a rewrite rule or an inheritance child
/// made by the database's owners before the session started: each is held as a DELETE on the
/// table itself, while a DELETE that reaches no reviewed table is not.
#[tokio::test(flavor = "multi_thread")]
async fn relations_that_reach_a_reviewed_table_are_reviewed_as_it() {
    let h = Harness::start(&[REVIEWED]).await;
    h.superuser()
        .await
        .batch_execute(
            "CREATE VIEW crm.big_orders AS SELECT * FROM crm.orders WHERE amount > 0;
             CREATE VIEW crm.big_orders_again AS SELECT * FROM crm.big_orders;
             CREATE TABLE crm.orders_archive () INHERITS (crm.orders);
             INSERT INTO crm.orders_archive (id, customer_id, amount) VALUES (9001, 1, 5);
             CREATE TABLE crm.outbox (id int);
             CREATE RULE purge AS ON DELETE TO crm.outbox DO ALSO DELETE FROM crm.orders;
             CREATE TABLE crm.scratch (id int);
             GRANT SELECT, DELETE ON crm.big_orders, crm.big_orders_again, crm.orders_archive,
                 crm.outbox, crm.scratch TO PUBLIC;
             GRANT DELETE ON crm.customers TO PUBLIC;",
        )
        .await
        .unwrap();
    let orders = "SELECT count(*) FROM crm.orders";
    let before = h.count(orders).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    for sql in [
        "DELETE FROM crm.big_orders WHERE id = 34",
        "DELETE FROM crm.big_orders_again WHERE id = 34",
        "DELETE FROM big_orders_again WHERE id = 34",
        "DELETE FROM crm.orders_archive WHERE id = 9001",
        "DELETE FROM crm.outbox WHERE id = 1",
        "WITH o AS (SELECT 1) DELETE FROM crm.big_orders WHERE id IN (SELECT * FROM o)",
        // Orders refer to customers: deleting customers can cascade into orders.
        "DELETE FROM crm.customers WHERE id > 100",
    ] {
        let answer = c.query(sql).await;
        let errs = errors(&answer);
        assert!(
            errs.first()
                .is_some_and(|(_, m)| m.starts_with("pgid: approval required")),
            "{sql}: not held: {answer:?}"
        );
    }
    assert_eq!(
        h.count(orders).await,
        before,
        "orders deleted without review"
    );
    // What reaches no reviewed table runs (a CTE is no relation).
    let answer = c
        .query("WITH o AS (SELECT 1 AS id) DELETE FROM crm.scratch WHERE id IN (SELECT id FROM o)")
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
}

/// A masked column read through an inheritance child (a partition is one) of its table, or
/// through a view on the child, is masked as it is in the table.
#[tokio::test(flavor = "multi_thread")]
async fn a_masked_column_is_masked_in_inheritance_children_and_views_on_them() {
    let h = Harness::start(&[EMAIL_MASKED]).await;
    let secret = "archived.secret@example.com";
    h.superuser()
        .await
        .batch_execute(&format!(
            "CREATE TABLE crm.customers_archive () INHERITS (crm.customers);
             INSERT INTO crm.customers_archive (id, name, email, ssn, card_number)
                 VALUES (9001, 'Old', '{secret}', '000-00-0000', '4000000000000002');
             CREATE VIEW crm.archive_emails AS SELECT id, email FROM crm.customers_archive;
             GRANT SELECT ON crm.customers_archive, crm.archive_emails TO PUBLIC;"
        ))
        .await
        .unwrap();
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    for sql in [
        "SELECT email FROM crm.customers_archive",
        "SELECT * FROM crm.customers_archive",
        "SELECT email FROM crm.archive_emails",
        "SELECT email FROM crm.customers WHERE id = 9001",
    ] {
        let answer = c.query(sql).await;
        assert!(
            !answer
                .iter()
                .any(|m| m.body.windows(secret.len()).any(|w| w == secret.as_bytes())),
            "{sql}: the masked value in clear: {answer:?}"
        );
    }
}

/// The server's own catalog: every built-in function attribute notation can call over a whole
/// row (`c.f` for `f(c)`) is one masking treats as reading the row (`pgid::mask::plan`).
#[tokio::test(flavor = "multi_thread")]
async fn every_function_the_catalog_shows_taking_any_row_is_known() {
    let h = Harness::start(&[WRITER]).await;
    let rows = h
        .superuser()
        .await
        .query(
            "SELECT DISTINCT p.proname::text FROM pg_proc p \
             WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f' \
               AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 \
               AND p.proargtypes[0] IN ('record'::regtype, 'anyelement'::regtype, \
                   'anycompatible'::regtype, '\"any\"'::regtype, 'anynonarray'::regtype, \
                   'anycompatiblenonarray'::regtype)",
            &[],
        )
        .await
        .unwrap();
    let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(found.iter().any(|f| f == "row_to_json"), "{found:?}");
    let unknown: Vec<&String> = found
        .iter()
        .filter(|f| !pgid::mask::plan::ROW_FUNCTIONS.contains(&f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "row functions pgid does not know: {unknown:?}"
    );
}
