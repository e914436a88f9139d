//! Red-team findings against the session state machine: ways a lease holder speaking the raw
//! protocol makes pgid's picture of the session differ from the server's, each with its real
//! effect (rows changed, a masked value in clear, a statement run without its approval or
//! recorded as another). Every test here fails while the weakness is there and passes once it is
//! fixed; each names its class.

mod common;

use bytes::{BufMut, BytesMut};
use common::wire::{errors, leaked, values};
use common::{Harness, EMAIL_MASKED as MASKED, READER, REVIEWED, WRITER};
use pgid::proxy::wire::backend;
use pgid::proxy::wire::frontend::{self, Target};
use serde_json::{json, Value};

fn query(out: &mut BytesMut, sql: &str) {
    frontend::query(out, sql.as_bytes());
}

fn flush(out: &mut BytesMut) {
    backend::raw(out, b'H', b"");
}

fn copy_data(out: &mut BytesMut, data: &[u8]) {
    backend::raw(out, b'd', data);
}

fn copy_done(out: &mut BytesMut) {
    backend::raw(out, b'c', b"");
}

/// A Bind of portal `portal` to `statement`, no parameters, text results.
fn bind(out: &mut BytesMut, portal: &[u8], statement: &[u8]) {
    let mut body = BytesMut::new();
    body.put_slice(portal);
    body.put_u8(0);
    body.put_slice(statement);
    body.put_u8(0);
    body.put_i16(0);
    body.put_i16(0);
    body.put_i16(0);
    backend::raw(out, b'B', &body);
}

async fn orders(h: &Harness, id: i32) -> i64 {
    h.count(&format!("SELECT count(*) FROM crm.orders WHERE id = {id}"))
        .await
}

/// Every e-mail address of the demo customers, as stored and upper-cased.
async fn emails(h: &Harness) -> Vec<String> {
    let rows = h
        .superuser()
        .await
        .query("SELECT email, upper(email) FROM crm.customers", &[])
        .await
        .unwrap();
    rows.iter()
        .flat_map(|r| [r.get::<_, String>(0), r.get::<_, String>(1)])
        .collect()
}

/// Decision records whose statement text is `sql`.
fn decisions(h: &Harness, sql: &str) -> Vec<Value> {
    h.audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "statement" && r["statement"] == sql)
        .collect()
}

/// Decision records of statements whose text contains `part`.
fn decisions_containing(h: &Harness, part: &str) -> Vec<Value> {
    h.audit_records()
        .into_iter()
        .filter(|r| {
            r["kind"] == "statement" && r["statement"].as_str().is_some_and(|s| s.contains(part))
        })
        .collect()
}

// Class: pipelines without Sync; settings changed by SET. The server reports a change of
// standard_conforming_strings only before its next ReadyForQuery. pgid treats the context as
// known whenever its queue is empty (`queue::settled` → `Settled::Now`), but an Execute that ran
// and was answered (Flush, no Sync) leaves the queue empty while its SET is still unreported:
// the next Query is read under the old setting, the server reads it under the new one.
#[tokio::test(flavor = "multi_thread")]
async fn an_answered_set_before_any_sync_is_the_context_of_the_next_query() {
    let h = Harness::start(&[WRITER]).await;
    let tickets = "SELECT count(*) FROM crm.tickets";
    let before = h.count(tickets).await;
    assert!(before > 0);
    let mut c = h
        .raw_client(
            "agent:writer",
            &[("options", "-c standard_conforming_strings=off")],
        )
        .await
        .unwrap();
    // Under standard_conforming_strings = off one string literal; under on, a DELETE without
    // WHERE that the policy refuses.
    let smuggled = r"SELECT 'a\'; DELETE FROM crm.tickets; --'";
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", b"SET standard_conforming_strings = on", &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    flush(&mut out);
    c.send(&out).await;
    // ParseComplete, BindComplete, CommandComplete: pgid's queue is empty now, nothing reported.
    let answer = c.until(b'C').await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let answer = c.query(smuggled).await;
    assert_eq!(
        h.count(tickets).await,
        before,
        "a DELETE without WHERE ran: {answer:?}"
    );
    let record = &decisions(&h, smuggled)[0];
    assert_eq!(record["decision"], "deny", "{record}");
}

// Class: COPY in the extended/simple protocol. During COPY FROM STDIN the server ignores Sync
// (and Flush) — libpq itself sends one there — so that Sync is never answered. pgid queues it
// as awaiting a ReadyForQuery: from then on every answer is matched to the message before the
// one it answers, and the masking plan of a statement is taken from the wrong entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_sent_during_copy_in_shifts_masking_onto_the_wrong_statement() {
    let h = Harness::start(&[MASKED]).await;
    let secrets = emails(&h).await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let tainted = "SELECT upper(email) FROM crm.customers";
    // The control: masked as a whole (a tainted output).
    let answer = c.query(tainted).await;
    assert!(leaked(&secrets, &answer).is_empty(), "{answer:?}");
    assert!(errors(&c.query("CREATE TEMP TABLE sink (x text)").await).is_empty());
    let mut out = BytesMut::new();
    query(&mut out, "COPY sink FROM STDIN");
    frontend::sync(&mut out);
    copy_data(&mut out, b"row\n");
    copy_done(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let answer = c.query(tainted).await;
    let got = leaked(&secrets, &answer);
    assert!(got.is_empty(), "masked values in clear: {got:?}");
}

// Class: errors mid-pipeline, skip-to-Sync, approvals. After an error with no Sync queued pgid
// marks itself `skipping` (the server discards until its next Sync). A held statement's
// estimate then runs on the session's own connection and ends the server's skip with pgid's
// own Sync — but pgid stays `skipping`: the client's next messages are recorded as not run and
// never enter the queue, so a Parse the server accepted is missing from pgid's registry. A
// Bind of that name is then taken for a Bind of nothing, and the Execute after it for the
// portal bound before: a DELETE under review runs with no approval, on record as `SELECT 1`.
#[tokio::test(flavor = "multi_thread")]
async fn an_estimate_ending_the_servers_skip_leaves_pgid_skipping_and_a_delete_runs_unreviewed() {
    let h = Harness::start(&[REVIEWED]).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    let delete = "DELETE FROM crm.orders WHERE id = 32";
    assert_eq!(orders(&h, 32).await, 1);
    // An error, no Sync: the server skips.
    let mut out = BytesMut::new();
    frontend::bind_values(&mut out, b"no_such_statement", &[]);
    flush(&mut out);
    c.send(&out).await;
    let answer = c.until(b'E').await;
    assert_eq!(errors(&answer)[0].0, "26000", "{answer:?}");
    // A held statement sent while the server skips: the server ignores it, as it would on a
    // direct connection (pgid must not estimate it on this connection: its own Sync would end
    // the skip). The client's Sync ends it.
    let mut out = BytesMut::new();
    query(&mut out, &format!("{delete} AND true"));
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    let held_errors = errors(&answer);
    assert_eq!(orders(&h, 32).await, 1);
    // The DELETE, prepared: pgid records the Parse as not run; the server has it.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"d", delete.as_bytes(), &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    c.until_ready(1).await;
    // Bound over the unnamed portal pgid believes is `SELECT 1`, and executed.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", b"SELECT 1", &[]);
    bind(&mut out, b"", b"");
    bind(&mut out, b"", b"d");
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert_eq!(
        orders(&h, 32).await,
        1,
        "the DELETE ran without an approval: {answer:?}"
    );
    // Its Execute is on record as the DELETE it is, held for review.
    let named = decisions_containing(&h, delete);
    assert!(
        named
            .iter()
            .any(|r| r["protocol"] == "extended" && r["rule"] == "approval"),
        "no record names the DELETE: {named:?}"
    );
    assert!(
        held_errors
            .iter()
            .all(|(_, m)| m.starts_with("pgid: approval required")),
        "the refusal reached the client as the stand-in's own error: {held_errors:?}"
    );
}

// Class: errors mid-pipeline (a transaction's commit failing at Sync). A deferred constraint
// fails when the Sync commits: the ErrorResponse answers the Sync itself. pgid takes it for an
// error before the Sync, pops the Sync with it and sets `skipping` with nothing in flight; the
// server is not skipping. The client's next Bind and Execute are recorded as not run and never
// queued, so their rows reach the client unmatched — and unmasked.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_failing_at_sync_leaves_pgid_skipping_and_masked_rows_pass_in_clear() {
    let h = Harness::start(&[MASKED]).await;
    let secrets = emails(&h).await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let answer = c
        .query("CREATE TEMP TABLE u (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    // A masked statement, described by the client (so pgid adds no Describe of its own).
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"m", b"SELECT email FROM crm.customers", &[]);
    frontend::describe(&mut out, Target::Statement, b"m");
    frontend::sync(&mut out);
    c.send(&out).await;
    c.until_ready(1).await;
    // The control: executed, its rows are masked.
    let mut out = BytesMut::new();
    bind(&mut out, b"", b"m");
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert!(leaked(&secrets, &answer).is_empty(), "{answer:?}");
    assert!(values(&answer).iter().all(|v| v == "REDACTED"));
    // Two equal rows: the deferred check fails at the Sync's commit.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", b"INSERT INTO u VALUES (1), (1)", &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert_eq!(errors(&answer)[0].0, "23505", "{answer:?}");
    // The same masked statement again.
    let mut out = BytesMut::new();
    bind(&mut out, b"", b"m");
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    let got = leaked(&secrets, &answer);
    assert!(got.is_empty(), "masked values in clear: {got:?}");
}

// Class: SQL-level FETCH/MOVE mixed with the protocol; approvals. A protocol portal is a cursor
// to SQL: `FETCH ALL FROM p` runs the portal's statement (a DELETE … RETURNING fills its store
// at the first fetch). pgid holds a portal for approval only at its first protocol Execute and
// judges a FETCH by the FETCH's own classes (SELECT), so the DELETE runs unreviewed and its
// record names only the FETCH.
#[tokio::test(flavor = "multi_thread")]
async fn a_sql_fetch_of_a_protocol_portal_runs_its_delete_without_approval() {
    let h = Harness::start(&[REVIEWED]).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    assert_eq!(orders(&h, 33).await, 1);
    assert!(errors(&c.query("BEGIN").await).is_empty());
    let mut out = BytesMut::new();
    frontend::parse(
        &mut out,
        b"s",
        b"DELETE FROM crm.orders WHERE id = 33 RETURNING id",
        &[],
    );
    bind(&mut out, b"p", b"s");
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let fetched = c.query("FETCH ALL FROM p").await;
    c.query("COMMIT").await;
    assert_eq!(
        orders(&h, 33).await,
        1,
        "the DELETE ran through FETCH without an approval: {fetched:?}"
    );
}

// Class: approvals (what a rule's `tables` match). A rule for DELETE on crm.orders matches the
// statement's table names; a temporary view (CREATE is not denied by default, TEMP is granted
// to PUBLIC) is another name for the table, and an auto-updatable one deletes from it.
#[tokio::test(flavor = "multi_thread")]
async fn a_temporary_view_deletes_from_a_reviewed_table_without_approval() {
    let h = Harness::start(&[REVIEWED]).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    assert_eq!(orders(&h, 34).await, 1);
    let answer = c
        .query("CREATE TEMP VIEW o AS SELECT * FROM crm.orders")
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let answer = c.query("DELETE FROM o WHERE id = 34").await;
    assert_eq!(
        orders(&h, 34).await,
        1,
        "deleted through the view without review: {answer:?}"
    );
}

// Class: policy reload mid-session; cursors' lifetimes. A reload judges every prepared
// statement again and re-points the portals bound to them, but a cursor declared by SQL is a
// portal whose definition is in no statement table: it keeps the plan it was declared with.
// A mask added by the reload does not reach rows fetched from it afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_declared_before_a_reload_escapes_the_mask_it_adds() {
    let h = Harness::start(&[READER]).await;
    let secrets = emails(&h).await;
    let mut c = h.raw_client("agent:reader", &[]).await.unwrap();
    assert!(errors(&c.query("BEGIN").await).is_empty());
    let answer = c
        .query("DECLARE c CURSOR FOR SELECT email FROM crm.customers")
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    std::fs::write(
        h.state.path().join("policies/p0.toml"),
        format!("{READER}\n[[mask]]\ncolumns = [\"crm.customers.email\"]\nmethod = \"redact\"\n"),
    )
    .unwrap();
    h.pgid.as_ref().unwrap().reload().await.unwrap();
    // The control: a new statement is masked.
    let answer = c.query("SELECT email FROM crm.customers").await;
    assert!(leaked(&secrets, &answer).is_empty(), "{answer:?}");
    let mut out = BytesMut::new();
    frontend::execute(&mut out, b"c", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    c.query("COMMIT").await;
    let got = leaked(&secrets, &answer);
    assert!(
        got.is_empty(),
        "masked values in clear after the reload: {got:?}"
    );
}

// Class: SQL-level PREPARE/EXECUTE mixed with masking. A statement that writes what it reads
// elsewhere (CREATE TABLE AS …) is refused when its own tree uses masked columns; one that
// takes its rows from `EXECUTE m` has no masked column in its tree, and merging the prepared
// statement's plan in yields a plan to mask (not to refuse) — but the rows go into a table,
// not to the client. Read back from that table they carry its origin, not the customers'.
#[tokio::test(flavor = "multi_thread")]
async fn create_table_as_execute_copies_masked_values_into_a_table_read_in_clear() {
    let h = Harness::start(&[MASKED]).await;
    let secrets = emails(&h).await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    // Prepared through the protocol (a SQL PREPARE of it is refused as not a plain SELECT).
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"m", b"SELECT email FROM crm.customers", &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    assert!(errors(&c.until_ready(1).await).is_empty());
    let copied = c.query("CREATE TEMP TABLE x AS EXECUTE m").await;
    let answer = c.query("SELECT * FROM x").await;
    let got = leaked(&secrets, &answer);
    assert!(
        got.is_empty(),
        "masked values in clear: {got:?} (CREATE TABLE AS EXECUTE: {:?})",
        errors(&copied)
    );
}

/// Deletes are not allowed at all on tickets; orders are reviewed (as REVIEWED).
const NO_DELETE: &str = r#"
name = "no-delete"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:no-delete"
[[grant]]
privileges = ["SELECT", "UPDATE", "DELETE"]
on = ["crm.tickets"]
[guardrails]
deny = ["DELETE", "DROP", "TRUNCATE", "ALTER", "GRANT", "ROLE", "FUNCTION", "DO", "COPY_PROGRAM", "LOAD"]
require_where = ["UPDATE", "DELETE"]
"#;

// Class: statement classes (guardrails and approvals). MERGE … WHEN MATCHED THEN DELETE deletes
// rows, but pgid classes the statement MERGE only: a policy's `deny = ["DELETE"]`, its
// `require_where` for DELETE, and approval rules for DELETE do not see it.
#[tokio::test(flavor = "multi_thread")]
async fn merge_then_delete_is_not_a_delete_to_guardrails_or_approvals() {
    let h = Harness::start(&[NO_DELETE, REVIEWED]).await;
    let tickets = "SELECT count(*) FROM crm.tickets";
    let before = h.count(tickets).await;
    let mut c = h.raw_client("agent:no-delete", &[]).await.unwrap();
    // The control: a DELETE is refused.
    let errs = errors(&c.query("DELETE FROM crm.tickets WHERE id = 1").await);
    assert!(errs[0].1.starts_with("pgid: deny:"), "{errs:?}");
    let merged = c
        .query("MERGE INTO crm.tickets t USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE")
        .await;
    let after = h.count(tickets).await;
    let mut r = h.raw_client("agent:reviewed", &[]).await.unwrap();
    let reviewed = r
        .query(
            "MERGE INTO crm.orders o USING (SELECT 35 AS id) s ON o.id = s.id \
             WHEN MATCHED THEN DELETE",
        )
        .await;
    assert_eq!(after, before, "every ticket deleted: {merged:?}");
    assert_eq!(
        orders(&h, 35).await,
        1,
        "an order deleted without review: {reviewed:?}"
    );
}

/// The resident memory of this process (pgid runs in it), in bytes.
fn request_id(message: &str) -> String {
    message
        .split_whitespace()
        .skip_while(|w| *w != "request")
        .nth(1)
        .unwrap()
        .to_string()
}

// Class: approvals (retry mode) and pgid's own use of the session's connection. The planner
// estimate runs `EXPLAIN (FORMAT JSON) …` on the session's idle connection as a Parse of the
// unnamed statement, which replaces the client's unnamed statement at the server; pgid's
// registry still holds the client's. Once approved, the client's `Bind ""` of its unnamed
// statement binds pgid's EXPLAIN: the approval is used and the record says the DELETE ran —
// what ran is an EXPLAIN, and the approved DELETE never does.
#[tokio::test(flavor = "multi_thread")]
async fn the_estimate_replaces_the_clients_unnamed_statement_and_the_approval_runs_an_explain() {
    let h = Harness::start(&[REVIEWED]).await;
    let alice = h.issuer.mint(&{
        let mut c = h.issuer.claims("alice");
        c.insert("groups".into(), json!(["dba"]));
        c
    });
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    let delete = "DELETE FROM crm.orders WHERE id = 36";
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", delete.as_bytes(), &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    assert!(errors(&c.until_ready(1).await).is_empty());
    let run = |out: &mut BytesMut| {
        bind(out, b"", b"");
        frontend::execute(out, b"", 0);
        frontend::sync(out);
    };
    let mut out = BytesMut::new();
    run(&mut out);
    c.send(&out).await;
    let errs = errors(&c.until_ready(1).await);
    assert!(errs[0].1.starts_with("pgid: approval required"), "{errs:?}");
    let id = request_id(&errs[0].1);
    let (status, _) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert!(status.is_success());
    let mut out = BytesMut::new();
    run(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(
        orders(&h, 36).await,
        0,
        "the approved DELETE did not run; the server ran: {:?}",
        values(&answer)
    );
}
