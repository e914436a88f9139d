//! Red-team round 12: judging by meaning (SQL given as text, SQL function bodies, code),
//! approvals by relation, masks by relation — written by a reviewer who had not seen the code's
//! own tests. Every test asserts a real effect (rows unchanged, a denied function not run, a
//! masked value absent from every byte received) and failed while the weakness it names was
//! there; each is fixed (where pgid now refuses an attack's set-up step, the test ends there).
//! Tests marked HELD were stopped from the start; they stay for coverage.
//!
//! Findings, and how each class is closed:
//! 1. SQL given as text is re-lexed at run time under that moment's standard_conforming_strings,
//!    while pgid lexed it once, when the statement holding it was judged:
//!    a `red12_prepared_query_to_xml_relexed_under_other_standard_strings_runs_a_denied_function`
//!    b `red12_parsed_query_to_xml_relexed_under_other_standard_strings_runs_a_denied_function`
//!    c `red12_view_over_query_to_xml_relexed_under_other_standard_strings_kills_its_backend`
//!    d `red12_sql_function_body_relexed_under_other_standard_strings_deletes_unreviewed`
//!    e `red12_prepared_query_to_xml_relexed_sets_role`
//!    f `red12_set_config_earlier_in_the_statement_relexes_query_to_xml_text`
//!    Closed: SQL given as text whose lexing depends on standard_conforming_strings (a backslash
//!    in a '…' literal) is refused, so it reads the same whenever it runs.
//! 2. An operator bound to ts_rewrite runs SQL text with no FuncCall:
//!    `red12_operator_bound_to_ts_rewrite_runs_sql_text_unjudged`
//!    Closed: binding any function that runs SQL or reads relations given as values is refused.
//! 3. Under masks, an operator calls a session SQL function with no FuncCall:
//!    `red12_operator_bound_to_a_session_sql_function_reads_a_masked_column_in_clear`
//!    Closed: under masks, creating code (the FUNCTION class) is refused.
//! 4. Approval rules match the statement's own class; the catalog changes it:
//!    `red12_insert_into_a_table_whose_rule_deletes_reviewed_rows_runs_unreviewed`,
//!    `red12_delete_whose_foreign_key_sets_null_updates_reviewed_rows_unreviewed`,
//!    `red12_update_moving_rows_out_of_a_reviewed_partition_deletes_them_unreviewed`
//!    Closed: a relation that reaches a rule's tables through a path that may change what a
//!    statement does (a rule, SET NULL/DEFAULT, a partition) brings any write under the rule.
//! 5. A retry-mode approval's fingerprint ignores the lexing:
//!    `red12_retry_approval_given_under_one_lexing_runs_under_another`
//!    Closed: the fingerprint includes standard_conforming_strings.
//! 6. Views nested deeper than MAX_VIEW_DEPTH are not masked:
//!    `red12_a_view_nested_nine_deep_on_a_masked_column_is_not_masked`
//!    Closed: followed 64 deep, and deeper refuses the policy's sessions.
//! 7. A view calling a database function is analysed by its text only:
//!    `red12_a_view_calling_a_database_function_reads_a_masked_column_in_clear`
//!    Closed: under masks, every view calling a function defined in the database is masked whole.
//! 8. Attribute notation (`c.row_to_json`) is a function call over the whole row written as a
//!    column reference: `red12_attribute_notation_function_calls_over_a_masked_row`
//!    Closed: `x.f` over a masked relation with f a built-in row function (from the catalog,
//!    checked in tests/meaning.rs) is a whole-row reference; with f a database function, refused.

mod common;

use common::wire::{errors, leaked_or_local_part as leaked, values, Message};
use common::{Harness, REVIEWED, WRITER};

/// May create code (FUNCTION is not denied) under the default denied functions and
/// `require_where`; deleting orders needs a reviewer (retry mode).
const CODER_REVIEWED: &str = r#"
name = "coder-reviewed"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:coder"
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.orders", "crm.tickets"]
[guardrails]
deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "ROLE", "COPY_PROGRAM", "LOAD"]
[[approval]]
statements = ["DELETE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "dba" } }
mode = "retry"
timeout = "1m"
window = "1m"
"#;

/// The attack stopped where it was set up: pgid refused this step, so the effect the test
/// checks cannot follow (any other error fails the test).
fn refused_at_setup(answer: &[Message]) -> bool {
    match errors(answer).first() {
        Some((code, m)) => {
            assert!(code == "42501" && m.starts_with("pgid: "), "{answer:?}");
            true
        }
        None => false,
    }
}

fn refused_by(answer: &[Message], rule: &str) -> bool {
    errors(answer)
        .first()
        .is_some_and(|(code, m)| code == "42501" && m.starts_with(&format!("pgid: {rule}:")))
}

async fn show(c: &mut common::wire::RawClient, setting: &str) -> String {
    values(&c.query(&format!("SHOW {setting}")).await)
        .first()
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// FINDING 1 (class: SQL given as text is re-lexed when it RUNS, under the settings of that
// moment; pgid lexes it once, when the statement holding it is judged).
//
// pgid reads the SQL inside query_to_xml/ts_stat/ts_rewrite (and LANGUAGE sql bodies) with the
// dialect of the session when the *outer* statement is judged. For a statement judged now and
// run later — PREPARE/Parse then EXECUTE/Execute, a view, a function — the server lexes that
// text at run time, under the standard_conforming_strings of that moment. `'x\', f() --'` is one
// string literal with backslash escapes (standard_conforming_strings = off) and a literal `x\`,
// a call of f and a comment without them.
// ---------------------------------------------------------------------------------------------

/// The SQL a query_to_xml call runs, hidden from pgid in a literal under
/// standard_conforming_strings = off, and a call of set_config (denied by default) under on.
const HIDDEN_SET_CONFIG: &str =
    r"$q$SELECT 'x\', set_config($a$application_name$a$, $a$pwned$a$, false) AS n --'$q$";

/// FINDING 1a: PREPARE under standard_conforming_strings = off, EXECUTE under on: set_config
/// (in deny_functions) runs.
#[tokio::test(flavor = "multi_thread")]
async fn red12_prepared_query_to_xml_relexed_under_other_standard_strings_runs_a_denied_function() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = h.raw_client("agent:writer", &[]).await.unwrap();
    // Sanity: written plainly, it is refused.
    let plain = c
        .query("SELECT query_to_xml('SELECT set_config(''application_name'', ''pwned'', false)', true, false, '')")
        .await;
    assert!(refused_by(&plain, "deny_functions"), "{plain:?}");

    let off = c.query("SET standard_conforming_strings = off").await;
    assert!(errors(&off).is_empty(), "{off:?}");
    let prep = c
        .query(&format!(
            "PREPARE p AS SELECT query_to_xml({HIDDEN_SET_CONFIG}, true, false, '')"
        ))
        .await;
    if refused_at_setup(&prep) {
        return;
    }
    let on = c.query("SET standard_conforming_strings = on").await;
    assert!(errors(&on).is_empty(), "{on:?}");
    let run = c.query("EXECUTE p").await;
    assert_ne!(
        show(&mut c, "application_name").await,
        "pwned",
        "set_config (deny_functions) ran through a prepared query_to_xml: {run:?}"
    );
}

/// FINDING 1b: the same through the extended protocol (Parse under off, Bind/Execute under on).
#[tokio::test(flavor = "multi_thread")]
async fn red12_parsed_query_to_xml_relexed_under_other_standard_strings_runs_a_denied_function() {
    use bytes::BytesMut;
    use pgid::proxy::wire::frontend;
    let h = Harness::start(&[WRITER]).await;
    let mut c = h.raw_client("agent:writer", &[]).await.unwrap();
    c.query("SET standard_conforming_strings = off").await;
    let mut out = BytesMut::new();
    let sql = format!("SELECT query_to_xml({HIDDEN_SET_CONFIG}, true, false, '')");
    frontend::parse(&mut out, b"s", sql.as_bytes(), &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    let parsed = c.until_ready(1).await;
    if refused_at_setup(&parsed) {
        return;
    }
    c.query("SET standard_conforming_strings = on").await;
    let mut out = BytesMut::new();
    frontend::bind_values(&mut out, b"s", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let run = c.until_ready(1).await;
    assert_ne!(
        show(&mut c, "application_name").await,
        "pwned",
        "set_config (deny_functions) ran through a parsed query_to_xml: {run:?}"
    );
}

/// FINDING 1c: a temporary view made under off and read under on: pg_terminate_backend (denied
/// by default) ends the session's own backend. CREATE is allowed by the default guardrails.
#[tokio::test(flavor = "multi_thread")]
async fn red12_view_over_query_to_xml_relexed_under_other_standard_strings_kills_its_backend() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = h.raw_client("agent:writer", &[]).await.unwrap();
    c.query("SET standard_conforming_strings = off").await;
    let made = c
        .query(
            r"CREATE TEMP VIEW v AS SELECT query_to_xml($q$SELECT 'x\', pg_terminate_backend(pg_backend_pid()) AS k --'$q$, true, false, '') AS x",
        )
        .await;
    if refused_at_setup(&made) {
        return;
    }
    let made = c
        .query(
            r"CREATE TEMP VIEW harmless AS SELECT query_to_xml($q$SELECT 'x\', pg_backend_pid() AS k --'$q$, true, false, '') AS x",
        )
        .await;
    assert!(errors(&made).is_empty(), "{made:?}");
    c.query("SET standard_conforming_strings = on").await;
    // Control: the same view with a harmless call is read and the session carries on.
    let answer = c.query("SELECT * FROM harmless").await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(values(&c.query("SELECT 'alive'").await), ["alive"]);
    // The session ends (its backend is killed) if pg_terminate_backend ran: the raw client then
    // panics reading, which the task reports.
    let run = tokio::spawn(async move { c.query("SELECT * FROM v").await }).await;
    let killed = match &run {
        Err(_) => true,
        Ok(answer) => errors(answer).iter().any(|(code, _)| code == "57P01"),
    };
    assert!(
        !killed,
        "pg_terminate_backend (deny_functions) ran through a view and ended the session: {run:?}"
    );
}

/// FINDING 1d: a LANGUAGE sql function body made under off and called under on: a DELETE
/// without WHERE (require_where) on a reviewed table (approval rule on DELETE crm.orders) runs
/// with neither refused nor sent for review.
#[tokio::test(flavor = "multi_thread")]
async fn red12_sql_function_body_relexed_under_other_standard_strings_deletes_unreviewed() {
    let h = Harness::start(&[CODER_REVIEWED]).await;
    let orders = "SELECT count(*) FROM crm.orders";
    let before = h.count(orders).await;
    assert!(before > 0);
    let mut c = h.raw_client("agent:coder", &[]).await.unwrap();
    // Sanity: written plainly, it is refused.
    let plain = c
        .query("CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS 'DELETE FROM crm.orders'")
        .await;
    assert!(!errors(&plain).is_empty(), "{plain:?}");
    c.query("SET standard_conforming_strings = off").await;
    let made = c
        .query(
            r"CREATE FUNCTION pg_temp.g() RETURNS void LANGUAGE sql AS $b$SELECT 'x\'; DELETE FROM crm.orders; --'$b$",
        )
        .await;
    if refused_at_setup(&made) {
        return;
    }
    c.query("SET standard_conforming_strings = on").await;
    let run = c.query("SELECT pg_temp.g()").await;
    assert_eq!(
        h.count(orders).await,
        before,
        "every order deleted without WHERE and without review: {run:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 2 (class: a function that runs SQL given as text, reached without naming it). pgid
// judges the SQL text of query_to_xml/ts_stat/ts_rewrite only at a FuncCall of that name. An
// operator (or aggregate) bound to ts_rewrite(tsquery, text) runs the text without a FuncCall:
// the right operand is a plain literal to pgid. CREATE OPERATOR is the FUNCTION class, and
// ts_rewrite is no denied function, so the operator is created.
// ---------------------------------------------------------------------------------------------

/// May create code (FUNCTION is not denied) under the default denied functions.
const CODER: &str = r#"
name = "coder"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:coder2"
[[grant]]
privileges = ["SELECT"]
on = ["crm.tickets"]
[guardrails]
deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "ROLE", "COPY_PROGRAM", "LOAD"]
"#;

/// FINDING 2a: set_config (denied) runs through an operator bound to ts_rewrite.
#[tokio::test(flavor = "multi_thread")]
async fn red12_operator_bound_to_ts_rewrite_runs_sql_text_unjudged() {
    let h = Harness::start(&[CODER]).await;
    let mut c = h.raw_client("agent:coder2", &[]).await.unwrap();
    let made = c
        .query("CREATE OPERATOR pg_temp.%%% (FUNCTION = ts_rewrite, LEFTARG = tsquery, RIGHTARG = text)")
        .await;
    if refused_at_setup(&made) {
        return;
    }
    let run = c
        .query(
            "SELECT 'a'::tsquery OPERATOR(pg_temp.%%%) 'SELECT ''a''::tsquery, ''b''::tsquery \
             FROM (SELECT set_config(''application_name'', ''pwned'', false)) s'",
        )
        .await;
    assert_ne!(
        show(&mut c, "application_name").await,
        "pwned",
        "set_config (deny_functions) ran through an operator bound to ts_rewrite: {run:?}"
    );
}

/// Masks e-mail addresses, and may create code (FUNCTION not denied).
const MASKED_CODER: &str = r#"
name = "masked-coder"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:masked-coder"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[guardrails]
deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "ROLE", "COPY_PROGRAM", "LOAD"]
[[mask]]
columns = ["crm.customers.email"]
method = "redact"
"#;

/// HELD: under masks, binding ts_rewrite to an operator or aggregate is refused (the bound name
/// is judged as a call).
#[tokio::test(flavor = "multi_thread")]
async fn red12_operator_bound_to_ts_rewrite_reads_a_masked_column_in_clear() {
    let h = Harness::start(&[MASKED_CODER]).await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked-coder", &[]).await.unwrap();
    let made = c
        .query("CREATE OPERATOR pg_temp.%%% (FUNCTION = ts_rewrite, LEFTARG = tsquery, RIGHTARG = text)")
        .await;
    let made_agg = c
        .query("CREATE AGGREGATE pg_temp.rw (text) (SFUNC = ts_rewrite, STYPE = tsquery, INITCOND = 'x')")
        .await;
    let mut all = Vec::new();
    for sql in [
        "SELECT 'x'::tsquery OPERATOR(pg_temp.%%%) 'SELECT ''x''::tsquery, plainto_tsquery(''simple'', email) FROM crm.customers LIMIT 1'",
        "SELECT pg_temp.rw(q) FROM (VALUES ('SELECT ''x''::tsquery, plainto_tsquery(''simple'', email) FROM crm.customers LIMIT 1')) v(q)",
    ] {
        let answer = c.query(sql).await;
        let l = leaked(&secrets, &answer);
        if !l.is_empty() {
            all.push(format!("{sql}: {l:?} in {answer:?}"));
        }
    }
    assert!(
        all.is_empty(),
        "masked e-mail in clear (operator made: {made:?}; aggregate made: {made_agg:?}): {all:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 3 (class: a session-made function called without naming it, under masks). Under a
// policy with masks "a function defined in the database is refused in any statement" — judged
// by the FuncCalls a statement names. An operator bound to a LANGUAGE sql function calls it
// with no FuncCall. The body is hidden from pgid with the re-lexing of FINDING 1 (made under
// standard_conforming_strings = off, run under on) if pgid would refuse it written plainly.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn red12_operator_bound_to_a_session_sql_function_reads_a_masked_column_in_clear() {
    let h = Harness::start(&[MASKED_CODER]).await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked-coder", &[]).await.unwrap();
    let plain = c
        .query(
            "CREATE FUNCTION pg_temp.leak(i int) RETURNS text LANGUAGE sql \
             AS 'SELECT email FROM crm.customers WHERE id = i'",
        )
        .await;
    let mut notes = vec![format!("plain body: {:?}", errors(&plain))];
    if !errors(&plain).is_empty() {
        c.query("SET standard_conforming_strings = off").await;
        let hidden = c
            .query(
                r"CREATE FUNCTION pg_temp.leak(i int) RETURNS text LANGUAGE sql AS $b$SELECT 'x\' || (SELECT email FROM crm.customers WHERE id = i) --'$b$",
            )
            .await;
        notes.push(format!("hidden body: {:?}", errors(&hidden)));
        c.query("SET standard_conforming_strings = on").await;
    }
    let op = c
        .query("CREATE OPERATOR pg_temp.### (FUNCTION = pg_temp.leak, RIGHTARG = int)")
        .await;
    notes.push(format!("operator: {:?}", errors(&op)));
    let answer = c.query("SELECT OPERATOR(pg_temp.###) 1").await;
    let l = leaked(&secrets, &answer);
    assert!(
        l.is_empty(),
        "masked e-mail in clear through an operator: {l:?} ({notes:?}) in {answer:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 4 (class: approval rules match by the statement's own class, but the catalog turns
// one class into another). A rewrite rule made by the database's owners before the session
// (`ON INSERT … DO ALSO DELETE FROM crm.orders`) turns an INSERT into a DELETE of the reviewed
// table; a foreign key `ON DELETE SET NULL` turns a DELETE into an UPDATE of it. pgid counts the
// relation as reaching the reviewed table, but the statement's class (INSERT; DELETE) is not
// the rule's (DELETE; UPDATE), so it is not held.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn red12_insert_into_a_table_whose_rule_deletes_reviewed_rows_runs_unreviewed() {
    let h = Harness::start(&[REVIEWED]).await;
    h.superuser()
        .await
        .batch_execute(
            "CREATE TABLE crm.order_cancellations (id int);
             CREATE RULE cancel AS ON INSERT TO crm.order_cancellations
                 DO ALSO DELETE FROM crm.orders WHERE id = NEW.id;
             GRANT INSERT ON crm.order_cancellations TO PUBLIC;",
        )
        .await
        .unwrap();
    let orders = "SELECT count(*) FROM crm.orders";
    let before = h.count(orders).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    // Sanity: the DELETE itself is held.
    let direct = c.query("DELETE FROM crm.orders WHERE id = 1").await;
    assert!(
        errors(&direct)
            .first()
            .is_some_and(|(_, m)| m.starts_with("pgid: approval required")),
        "{direct:?}"
    );
    let answer = c
        .query("INSERT INTO crm.order_cancellations SELECT g FROM generate_series(1, 40) g")
        .await;
    assert_eq!(
        h.count(orders).await,
        before,
        "orders deleted by an INSERT through a rule, without review: {answer:?}"
    );
}

/// Updating shipments needs a reviewer; deleting orders does not.
const SHIPMENTS_REVIEWED: &str = r#"
name = "shipments-reviewed"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:shipper"
[[grant]]
privileges = ["SELECT", "UPDATE", "DELETE"]
on = ["crm.orders", "crm.shipments"]
[[approval]]
statements = ["UPDATE"]
tables = ["crm.shipments"]
approvers = { claims = { groups = "dba" } }
mode = "retry"
timeout = "1m"
window = "1m"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn red12_delete_whose_foreign_key_sets_null_updates_reviewed_rows_unreviewed() {
    let h = Harness::start_with_postgres(
        &[],
        "CREATE TABLE IF NOT EXISTS crm.shipments (
             id int PRIMARY KEY,
             order_id int REFERENCES crm.orders ON DELETE SET NULL);
         INSERT INTO crm.shipments SELECT g, g FROM generate_series(1, 40) g
             ON CONFLICT DO NOTHING;",
        &[SHIPMENTS_REVIEWED],
        "",
    )
    .await;
    let linked = "SELECT count(*) FROM crm.shipments WHERE order_id IS NOT NULL";
    let before = h.count(linked).await;
    assert_eq!(before, 40);
    let mut c = h.raw_client("agent:shipper", &[]).await.unwrap();
    let direct = c
        .query("UPDATE crm.shipments SET order_id = NULL WHERE id > 0")
        .await;
    assert!(
        errors(&direct)
            .first()
            .is_some_and(|(_, m)| m.starts_with("pgid: approval required")),
        "{direct:?}"
    );
    let answer = c.query("DELETE FROM crm.orders WHERE id > 0").await;
    assert_eq!(
        h.count(linked).await,
        before,
        "every shipment updated (order_id set to NULL) by a DELETE, without review: {answer:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Masks by relation: views on the masked table made by the database's owners before the
// session, written in ways the view analysis has to resolve. Each view is read with
// `SELECT * FROM view`; no e-mail address may appear in any byte received.
// ---------------------------------------------------------------------------------------------

const MASKED_VIEWS: &[(&str, &str)] = &[
    ("v_whole", "SELECT c AS whole FROM crm.customers c"),
    ("v_json", "SELECT row_to_json(c) AS j FROM crm.customers c"),
    ("v_field", "SELECT (c).email AS e FROM crm.customers c"),
    ("v_sub", "SELECT x.email AS e FROM (SELECT * FROM crm.customers) x"),
    ("v_lateral", "SELECT s.e FROM crm.customers c, LATERAL (SELECT c.email) s(e)"),
    ("v_cte", "WITH w AS (SELECT email FROM crm.customers) SELECT email AS e FROM w"),
    ("v_scalar", "SELECT (SELECT email FROM crm.customers ORDER BY id LIMIT 1) AS e"),
    ("v_renamed", "SELECT b AS e FROM crm.customers AS c(a, n, b)"),
    ("v_union", "SELECT email AS e FROM crm.customers UNION ALL SELECT 'x'"),
    ("v_case", "SELECT CASE WHEN id > 0 THEN email END AS e FROM crm.customers"),
    ("v_agg", "SELECT string_agg(email, ',') AS e FROM crm.customers"),
    ("v_array", "SELECT ARRAY[email] AS e FROM crm.customers"),
    ("v_values", "SELECT v.e FROM crm.customers c CROSS JOIN LATERAL (VALUES (c.email)) v(e)"),
    ("v_join_using", "SELECT email AS e, a.id FROM crm.customers a FULL JOIN crm.customers b USING (email)"),
    ("v_window", "SELECT first_value(email) OVER (ORDER BY id) AS e FROM crm.customers"),
    ("v_json_table", "SELECT jsonb_build_object('k', email) AS e FROM crm.customers"),
    ("v_srf", "SELECT unnest(ARRAY[email, name]) AS e FROM crm.customers"),
    ("v_collate", "SELECT email COLLATE \"C\" AS e FROM crm.customers"),
    ("v_rowexpr", "SELECT ROW(id, email)::text AS e FROM crm.customers"),
    ("v_in_sub", "SELECT * FROM (SELECT email AS e FROM crm.customers ORDER BY 1) s"),
    ("v_groupby", "SELECT email AS e FROM crm.customers GROUP BY email"),
    ("v_distinct", "SELECT DISTINCT ON (email) email AS e FROM crm.customers"),
    ("v_xml", "SELECT xmlelement(name e, email) AS e FROM crm.customers"),
    ("v_tablesample", "SELECT email AS e FROM crm.customers TABLESAMPLE SYSTEM (100)"),
    ("v_only", "SELECT email AS e FROM ONLY crm.customers"),
    ("v_returning_cte", "WITH w(e) AS (SELECT email FROM crm.customers) SELECT * FROM w"),
    ("v_recursive", "WITH RECURSIVE w(e, n) AS (SELECT email, 1 FROM crm.customers UNION ALL SELECT e, n + 1 FROM w WHERE n < 1) SELECT e FROM w"),
    ("v_nested_view", "SELECT * FROM crm.v_sub"),
    ("v_colnames", "SELECT * FROM crm.v_cols"),
];

#[tokio::test(flavor = "multi_thread")]
async fn red12_views_made_before_the_session_mask_the_column_however_written() {
    let mut setup = String::from(
        "CREATE VIEW crm.v_cols (a, b, c) AS SELECT id, name, email FROM crm.customers;\n",
    );
    for (name, def) in MASKED_VIEWS {
        if *name == "v_colnames" {
            continue;
        }
        setup.push_str(&format!("CREATE VIEW crm.{name} AS {def};\n"));
    }
    setup.push_str("CREATE VIEW crm.v_colnames AS SELECT * FROM crm.v_cols;\n");
    setup.push_str("GRANT SELECT ON ALL TABLES IN SCHEMA crm TO PUBLIC;\n");
    let h = Harness::start_with_postgres(&[], &setup, &[common::EMAIL_MASKED], "").await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let mut leaks = Vec::new();
    let mut refused = Vec::new();
    for (name, _) in MASKED_VIEWS.iter().chain([("v_cols", "")].iter()) {
        let sql = format!("SELECT * FROM crm.{name}");
        let answer = c.query(&sql).await;
        let l = leaked(&secrets, &answer);
        if !l.is_empty() {
            leaks.push(format!("{sql}: {l:?}"));
        }
        if !errors(&answer).is_empty() {
            refused.push(format!("{sql}: {:?}", errors(&answer)));
        }
    }
    assert!(leaks.is_empty(), "masked e-mail in clear: {leaks:#?}");
    // Reading a view is refused only when it cannot be masked; these all can.
    assert!(refused.len() <= 3, "refused: {refused:#?}");
}

/// HELD (same class as 3, no re-lexing): an operator bound to a session SQL function
/// whose body reads a masked column through a view made by the owners, or bound to a function
/// the owners made; under masks pgid refuses calling such functions by name only.
#[tokio::test(flavor = "multi_thread")]
async fn red12_operator_over_owner_view_or_function_reads_a_masked_column_in_clear() {
    let setup = "CREATE VIEW crm.customer_emails AS SELECT id, email AS e FROM crm.customers;
        CREATE FUNCTION crm.email_of(i int) RETURNS text LANGUAGE sql STABLE
            AS 'SELECT email FROM crm.customers WHERE id = i';
        GRANT SELECT ON crm.customer_emails TO PUBLIC;";
    let h = Harness::start_with_postgres(&[], setup, &[MASKED_CODER], "").await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked-coder", &[]).await.unwrap();
    let mut notes = Vec::new();
    let mut leaks = Vec::new();
    for (setup, sql) in [
        (
            "CREATE FUNCTION pg_temp.v_leak(i int) RETURNS text LANGUAGE sql AS 'SELECT e FROM crm.customer_emails WHERE id = i'",
            "SELECT pg_temp.v_leak(1)",
        ),
        (
            "CREATE OPERATOR pg_temp.#@# (FUNCTION = pg_temp.v_leak, RIGHTARG = int)",
            "SELECT OPERATOR(pg_temp.#@#) 1",
        ),
        (
            "CREATE OPERATOR pg_temp.#%# (FUNCTION = crm.email_of, RIGHTARG = int)",
            "SELECT OPERATOR(pg_temp.#%#) 2",
        ),
        ("SELECT 1", "SELECT crm.email_of(3)"),
    ] {
        let made = c.query(setup).await;
        let answer = c.query(sql).await;
        notes.push(format!(
            "{setup} -> {:?}; {sql} -> {:?}",
            errors(&made),
            errors(&answer)
        ));
        let l = leaked(&secrets, &answer);
        if !l.is_empty() {
            leaks.push(format!("{sql}: {l:?}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "masked e-mail in clear: {leaks:#?}\n{notes:#?}"
    );
}

/// FINDING 1e (class of FINDING 1): the identity rule (`role` can never be set through pgid)
/// falls the same way: a prepared query_to_xml re-lexed under standard_conforming_strings = on
/// runs set_config('role', …) and the session becomes its group role.
#[tokio::test(flavor = "multi_thread")]
async fn red12_prepared_query_to_xml_relexed_sets_role() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = h.raw_client("agent:writer", &[]).await.unwrap();
    let me = values(&c.query("SELECT current_user::text").await)[0].clone();
    let groups = values(
        &c.query(
            "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
             WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
        )
        .await,
    );
    let group = groups
        .first()
        .cloned()
        .expect("the lease role is in a group role");
    c.query("SET standard_conforming_strings = off").await;
    let prep = c
        .query(&format!(
            r"PREPARE r AS SELECT query_to_xml($q$SELECT 'x\', set_config($a$role$a$, $a${group}$a$, false) AS n --'$q$, true, false, '')"
        ))
        .await;
    if refused_at_setup(&prep) {
        return;
    }
    c.query("SET standard_conforming_strings = on").await;
    let run = c.query("EXECUTE r").await;
    let now = values(&c.query("SELECT current_user::text").await)
        .first()
        .cloned()
        .unwrap_or_default();
    assert_eq!(now, me, "role changed to {group} through pgid: {run:?}");
}

/// HELD: SQL taken from a value at run time, by a text function inside objects the default
/// guardrails let a lease create (domains, CHECK constraints, defaults, policies): refused.
#[tokio::test(flavor = "multi_thread")]
async fn red12_text_functions_inside_created_objects_are_judged() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = h.raw_client("agent:writer", &[]).await.unwrap();
    let mut ran = Vec::new();
    for (make, run) in [
        (
            "CREATE DOMAIN pg_temp.sqlrun AS text CHECK (query_to_xml(VALUE, true, false, '') IS NOT NULL)",
            "SELECT 'SELECT pg_terminate_backend(pg_backend_pid())'::pg_temp.sqlrun",
        ),
        (
            "CREATE TEMP TABLE t1 (q text CHECK (query_to_xml(q, true, false, '') IS NOT NULL))",
            "INSERT INTO t1 VALUES ('SELECT pg_terminate_backend(pg_backend_pid())')",
        ),
        (
            "CREATE TEMP TABLE t2 (q text, x xml DEFAULT query_to_xml(current_setting('application_name'), true, false, ''))",
            "SET application_name = 'SELECT pg_terminate_backend(pg_backend_pid())'; INSERT INTO t2 (q) VALUES ('a')",
        ),
        (
            "CREATE TEMP TABLE t3 (q text, x tsquery GENERATED ALWAYS AS (ts_rewrite('a'::tsquery, q)) STORED)",
            "INSERT INTO t3 (q) VALUES ('SELECT ''a''::tsquery, ''b''::tsquery WHERE pg_terminate_backend(pg_backend_pid())')",
        ),
    ] {
        let made = c.query(make).await;
        if errors(&made).is_empty() {
            let answer = c.query(run).await;
            ran.push(format!("{make}: {answer:?}"));
        }
    }
    assert!(ran.is_empty(), "created and run: {ran:#?}");
}

// ---------------------------------------------------------------------------------------------
// FINDING 5 (class: a retry-mode approval is for the statement's canonical text, which does not
// say how the text was lexed). Under standard_conforming_strings = off the canonical text is
// the text as sent; under on it is its tokens joined by single spaces. A text already in that
// form has the same fingerprint either way, but another meaning: what the reviewer approved
// (read under off: a DELETE matching no row) runs under on as a DELETE of every order.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn red12_retry_approval_given_under_one_lexing_runs_under_another() {
    let h = Harness::start(&[REVIEWED]).await;
    let orders = "SELECT count(*) FROM crm.orders";
    let before = h.count(orders).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    // Under off: WHERE id = 1 AND status = 'a'' OR id > 0 OR status = ' (then a comment): no
    // row. Under on: WHERE id = 1 AND status = 'a\' OR id > 0 OR status = '--': every row.
    let t = r"DELETE FROM crm.orders WHERE id = 1 AND status = 'a\' OR id > 0 OR status = '--'";
    c.query("SET standard_conforming_strings = off").await;
    let asked = c.query(t).await;
    let message = errors(&asked)
        .first()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    assert!(message.starts_with("pgid: approval required"), "{asked:?}");
    let id = message
        .split_whitespace()
        .skip_while(|w| *w != "request")
        .nth(1)
        .unwrap()
        .to_string();
    let mut claims = h.issuer.claims("alice");
    claims.insert("groups".into(), serde_json::json!(["dba"]));
    let alice = h.issuer.mint(&claims);
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    // What the reviewer approved, run as they read it, deletes nothing (checked as superuser).
    let su = h.superuser().await;
    su.batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    let would = su
        .query_one(
            &format!(
                "SELECT count(*) FROM crm.orders WHERE {}",
                &t[t.find("id = 1").unwrap()..]
            ),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(would, 0);
    c.query("SET standard_conforming_strings = on").await;
    let ran = c.query(t).await;
    assert_eq!(
        h.count(orders).await,
        before,
        "an approval for a DELETE of no row deleted every order: {ran:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 6 (class: masks by relation stop following views after MAX_VIEW_DEPTH = 8 levels,
// open rather than closed). A chain of views on the masked column made by the database's owners
// before the session: the ninth view is neither masked nor refused.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn red12_a_view_nested_nine_deep_on_a_masked_column_is_not_masked() {
    let mut setup =
        String::from("CREATE VIEW crm.chain1 AS SELECT id, email FROM crm.customers;\n");
    for i in 2..=10 {
        setup.push_str(&format!(
            "CREATE VIEW crm.chain{i} AS SELECT id, email FROM crm.chain{};\n",
            i - 1
        ));
    }
    setup.push_str("GRANT SELECT ON ALL TABLES IN SCHEMA crm TO PUBLIC;\n");
    let h = Harness::start_with_postgres(&[], &setup, &[common::EMAIL_MASKED], "").await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let mut leaks = Vec::new();
    for i in 1..=10 {
        let sql = format!("SELECT email FROM crm.chain{i}");
        let answer = c.query(&sql).await;
        let l = leaked(&secrets, &answer);
        if !l.is_empty() {
            leaks.push(format!("{sql}: {l:?}"));
        }
    }
    assert!(leaks.is_empty(), "masked e-mail in clear: {leaks:#?}");
}

/// FINDING 7 (class: masks by relation, a view that reads the masked column through a function
/// defined in the database). Under masks, pgid refuses a statement that names such a function
/// ("it could read the column itself"), but a view made by the owners that calls it is analysed
/// by its own text only: `crm.email_of(id)` names no masked column, so the view's output is
/// neither masked nor refused.
#[tokio::test(flavor = "multi_thread")]
async fn red12_a_view_calling_a_database_function_reads_a_masked_column_in_clear() {
    let setup = "CREATE FUNCTION crm.email_of(i int) RETURNS text LANGUAGE sql STABLE
            AS 'SELECT email FROM crm.customers WHERE id = i';
        CREATE VIEW crm.customer_contacts AS SELECT id, name, crm.email_of(id) AS contact
            FROM crm.customers;
        GRANT SELECT ON crm.customer_contacts TO PUBLIC;";
    let h = Harness::start_with_postgres(&[], setup, &[common::EMAIL_MASKED], "").await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    // Named in the statement, the function is refused.
    let direct = c.query("SELECT crm.email_of(1)").await;
    assert!(refused_by(&direct, "mask"), "{direct:?}");
    let answer = c.query("SELECT * FROM crm.customer_contacts").await;
    let l = leaked(&secrets, &answer);
    assert!(
        l.is_empty(),
        "masked e-mail in clear through a view: {l:?} in {answer:?}"
    );
}

/// HELD: a DELETE prepared (SQL PREPARE, or a protocol Parse) on a name that reaches no reviewed
/// table, then a temporary view of that name over the reviewed table, then the execution: the
/// server re-resolves the name (search_path now has pg_temp), and pgid holds it.
#[tokio::test(flavor = "multi_thread")]
async fn red12_statements_prepared_before_a_temporary_view_are_held_at_execution() {
    use bytes::BytesMut;
    use pgid::proxy::wire::frontend;
    let h = Harness::start(&[CODER_REVIEWED]).await;
    let orders = "SELECT count(*) FROM crm.orders";
    let before = h.count(orders).await;
    let mut c = h.raw_client("agent:coder", &[]).await.unwrap();
    c.query("SET search_path = crm, public").await;
    let prep = c
        .query("PREPARE p AS DELETE FROM tickets WHERE id > 0")
        .await;
    assert!(errors(&prep).is_empty(), "{prep:?}");
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"d", b"DELETE FROM tickets WHERE id > 0", &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    let parsed = c.until_ready(1).await;
    assert!(errors(&parsed).is_empty(), "{parsed:?}");
    let made = c
        .query("CREATE TEMP VIEW tickets AS SELECT * FROM crm.orders")
        .await;
    assert!(errors(&made).is_empty(), "{made:?}");
    let a = c.query("EXECUTE p").await;
    let mut out = BytesMut::new();
    frontend::bind_values(&mut out, b"d", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let b = c.until_ready(1).await;
    assert_eq!(
        h.count(orders).await,
        before,
        "orders deleted without review: {a:?} {b:?}"
    );
}

/// HELD: a temporary view and the DELETE through it in one pipeline (no Sync between) or one
/// simple Query: held.
#[tokio::test(flavor = "multi_thread")]
async fn red12_a_temporary_view_and_a_delete_through_it_in_one_batch_are_held() {
    use bytes::BytesMut;
    use pgid::proxy::wire::frontend;
    let h = Harness::start(&[CODER_REVIEWED]).await;
    let orders = "SELECT count(*) FROM crm.orders";
    let before = h.count(orders).await;
    let mut c = h.raw_client("agent:coder", &[]).await.unwrap();
    let mut out = BytesMut::new();
    for sql in [
        "CREATE TEMP VIEW tv AS SELECT * FROM crm.orders",
        "DELETE FROM tv WHERE id > 0",
    ] {
        frontend::parse(&mut out, b"", sql.as_bytes(), &[]);
        frontend::bind_values(&mut out, b"", &[]);
        frontend::execute(&mut out, b"", 0);
    }
    frontend::sync(&mut out);
    c.send(&out).await;
    let a = c.until_ready(1).await;
    let b = c
        .query("CREATE TEMP VIEW tw AS SELECT * FROM crm.orders; DELETE FROM tw WHERE id > 0")
        .await;
    let d = c
        .query("WITH tickets AS (SELECT 1) DELETE FROM tv WHERE id > 0")
        .await;
    assert_eq!(
        h.count(orders).await,
        before,
        "orders deleted without review: {a:?} {b:?} {d:?}"
    );
}

/// May call set_config (removed from deny_functions), never pg_terminate_backend.
const SETTER: &str = r#"
name = "setter"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:setter"
[[grant]]
privileges = ["SELECT"]
on = ["crm.tickets"]
[guardrails]
deny_functions = ["pg_terminate_backend", "pg_cancel_backend", "pg_read_file"]
"#;

/// FINDING 1f (class of FINDING 1, within one statement): set_config changes
/// standard_conforming_strings before query_to_xml, in the same target list, lexes its text.
#[tokio::test(flavor = "multi_thread")]
async fn red12_set_config_earlier_in_the_statement_relexes_query_to_xml_text() {
    let h = Harness::start(&[SETTER]).await;
    let mut c = h.raw_client("agent:setter", &[]).await.unwrap();
    // The same statement with a harmless call: the session carries on.
    c.query("SET standard_conforming_strings = off").await;
    let harmless = r"SELECT set_config('standard_conforming_strings', 'on', false) AS a, query_to_xml($q$SELECT 'x\', pg_backend_pid() AS k --'$q$, true, false, '') AS x";
    let answer = c.query(harmless).await;
    assert!(
        errors(&answer).is_empty() || refused_at_setup(&answer),
        "{answer:?}"
    );
    assert_eq!(values(&c.query("SELECT 'alive'").await), ["alive"]);
    c.query("SET standard_conforming_strings = off").await;
    let sql = r"SELECT set_config('standard_conforming_strings', 'on', false) AS a, query_to_xml($q$SELECT 'x\', pg_terminate_backend(pg_backend_pid()) AS k --'$q$, true, false, '') AS x";
    let run = tokio::spawn(async move { c.query(sql).await }).await;
    let killed = match &run {
        Err(_) => true,
        Ok(answer) => errors(answer).iter().any(|(code, _)| code == "57P01"),
    };
    assert!(
        !killed,
        "pg_terminate_backend (deny_functions) ran and ended the session: {run:?}"
    );
}

/// Deleting 2026 invoices needs a reviewer; updating invoices does not.
const INVOICES_REVIEWED: &str = r#"
name = "invoices-reviewed"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:invoicer"
[[grant]]
privileges = ["SELECT", "UPDATE", "DELETE"]
on = ["crm.invoices"]
[[approval]]
statements = ["DELETE"]
tables = ["crm.invoices_2026"]
approvers = { claims = { groups = "dba" } }
mode = "retry"
timeout = "1m"
window = "1m"
"#;

/// FINDING 4c (class of FINDING 4): an UPDATE that moves rows to another partition deletes them
/// from the reviewed partition (Postgres runs it as a DELETE there and an INSERT in the other,
/// with DELETE triggers) — not held, since the statement is an UPDATE.
#[tokio::test(flavor = "multi_thread")]
async fn red12_update_moving_rows_out_of_a_reviewed_partition_deletes_them_unreviewed() {
    let setup = "CREATE TABLE crm.invoices (id int, year int) PARTITION BY LIST (year);
        CREATE TABLE crm.invoices_2026 PARTITION OF crm.invoices FOR VALUES IN (2026);
        CREATE TABLE crm.invoices_other PARTITION OF crm.invoices DEFAULT;
        INSERT INTO crm.invoices SELECT g, 2026 FROM generate_series(1, 10) g;";
    let h = Harness::start_with_postgres(&[], setup, &[INVOICES_REVIEWED], "").await;
    let reviewed = "SELECT count(*) FROM crm.invoices_2026";
    let before = h.count(reviewed).await;
    assert_eq!(before, 10);
    let mut c = h.raw_client("agent:invoicer", &[]).await.unwrap();
    let direct = c.query("DELETE FROM crm.invoices WHERE id > 0").await;
    assert!(
        errors(&direct)
            .first()
            .is_some_and(|(_, m)| m.starts_with("pgid: approval required")),
        "{direct:?}"
    );
    let answer = c
        .query("UPDATE crm.invoices SET year = 1999 WHERE id > 0")
        .await;
    assert_eq!(
        h.count(reviewed).await,
        before,
        "rows deleted from the reviewed partition by an UPDATE, without review: {answer:?}"
    );
}

/// Attribute notation: `c.f` calls `f(c)` when f takes the row's type (or record, anyelement):
/// a function call with no FuncCall, over the whole row, written as a column reference.
#[tokio::test(flavor = "multi_thread")]
async fn red12_attribute_notation_function_calls_over_a_masked_row() {
    let h = Harness::start(&[common::EMAIL_MASKED]).await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let mut leaks = Vec::new();
    let mut notes = Vec::new();
    for sql in [
        "SELECT c.row_to_json FROM crm.customers c",
        "SELECT c.to_json FROM crm.customers c",
        "SELECT c.to_jsonb FROM crm.customers c",
        "SELECT (c).row_to_json FROM crm.customers AS c",
        "SELECT customers.to_json FROM crm.customers",
        "SELECT x.to_json FROM (SELECT * FROM crm.customers) x",
        "SELECT c.hstore FROM crm.customers c",
        "SELECT c.json_populate_record FROM crm.customers c",
    ] {
        let answer = c.query(sql).await;
        notes.push(format!("{sql}: {:?}", errors(&answer)));
        let l = leaked(&secrets, &answer);
        if !l.is_empty() {
            leaks.push(format!("{sql}: {l:?}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "masked e-mail in clear: {leaks:#?}\n{notes:#?}"
    );
}

/// HELD (coverage next to FINDING 8): whole-row values written as function arguments, casts
/// and aggregates are masked or refused.
#[tokio::test(flavor = "multi_thread")]
async fn red12_whole_row_values_are_masked() {
    let h = Harness::start(&[common::EMAIL_MASKED]).await;
    let secrets = h.emails().await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let mut leaks = Vec::new();
    for sql in [
        "SELECT c FROM crm.customers c",
        "SELECT c::text FROM crm.customers c",
        "SELECT ROW(c.*)::text FROM crm.customers c",
        "SELECT json_agg(c) FROM crm.customers c",
        "SELECT format('%s', c) FROM crm.customers c",
        "SELECT concat(c) FROM crm.customers c",
        "SELECT to_json(c) FROM crm.customers c",
        "SELECT customers FROM crm.customers",
        "SELECT (SELECT c FROM crm.customers c LIMIT 1)::text",
        "SELECT t.c FROM (SELECT c FROM crm.customers c) t",
    ] {
        let answer = c.query(sql).await;
        let l = leaked(&secrets, &answer);
        if !l.is_empty() {
            leaks.push(format!("{sql}: {l:?}"));
        }
    }
    assert!(leaks.is_empty(), "masked e-mail in clear: {leaks:#?}");
}
