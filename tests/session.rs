//! The session state machine against the ways a lease holder could talk it into a different
//! picture of the session than the server's: lexing settings changed in a pipeline, encodings,
//! statement and portal names redefined, skipped or cut, identity set at startup. Each test
//! speaks the raw protocol through the real proxy and checks the real effect (rows unchanged,
//! masked values absent from every byte, the record present and right).

mod common;

use bytes::BytesMut;
use common::wire::{errors, values, Message, RawClient};
use common::{Harness, EMAIL_MASKED as MASKED, REVIEWED, WRITER};
use pgid::proxy::wire::frontend::{self, Target};
use serde_json::{json, Value};

async fn client(
    h: &Harness,
    subject: &str,
    extra: &[(&str, &str)],
) -> Result<RawClient, (String, String)> {
    h.raw_client(subject, extra).await
}

fn query(out: &mut BytesMut, sql: &str) {
    frontend::query(out, sql.as_bytes());
}

/// The values of `sql`'s first column, read directly as the superuser: what must not leak.
async fn secrets(h: &Harness, sql: &str) -> Vec<String> {
    let rows = h.superuser().await.query(sql, &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The first of `secrets` found in any byte the client received.
fn in_clear<'a>(secrets: &'a [String], answer: &[Message]) -> Option<&'a str> {
    secrets
        .iter()
        .find(|e| {
            answer
                .iter()
                .any(|m| m.body.windows(e.len()).any(|w| w == e.as_bytes()))
        })
        .map(String::as_str)
}

/// Decision records whose statement text is `sql`.
fn decisions(h: &Harness, sql: &str) -> Vec<Value> {
    h.audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "statement" && r["statement"] == sql)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_settings_change_is_read_before_the_statement_after_it() {
    let h = Harness::start(&[WRITER]).await;
    let tickets = "SELECT count(*) FROM crm.tickets";
    let before = h.count(tickets).await;
    // Under standard_conforming_strings = off this is one string literal; under on, a DELETE.
    let smuggled = r"SELECT 'a\'; DELETE FROM crm.tickets; --'";
    let mut c = client(
        &h,
        "agent:writer",
        &[("options", "-c standard_conforming_strings=off")],
    )
    .await
    .unwrap();
    assert_eq!(
        values(&c.query("SHOW standard_conforming_strings").await),
        ["off"]
    );
    // The change back to `on` and the statement go in one write: pgid must read the statement
    // as the server will, after the SET.
    let mut out = BytesMut::new();
    query(&mut out, "SET standard_conforming_strings = on");
    query(&mut out, smuggled);
    c.send(&out).await;
    let answer = c.until_ready(2).await;
    let errs = errors(&answer);
    assert_eq!(errs.len(), 1, "{answer:?}");
    assert!(
        errs[0].1.starts_with("pgid: require_where: DELETE"),
        "{errs:?}"
    );
    assert_eq!(h.count(tickets).await, before, "no row was deleted");
    let record = &decisions(&h, smuggled)[0];
    assert_eq!(record["decision"], "deny");
    assert!(record["classes"]
        .as_array()
        .unwrap()
        .contains(&json!("DELETE")));

    // The other way: off, then the same text is a harmless literal, read as such.
    let mut out = BytesMut::new();
    query(&mut out, "SET standard_conforming_strings = off");
    query(&mut out, smuggled);
    c.send(&out).await;
    let answer = c.until_ready(2).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(values(&answer), ["a'; DELETE FROM crm.tickets; --"]);

    // In one pipeline with no Sync between, a statement that runs may change the settings
    // before the server reads the next message, and nothing is reported until the Sync:
    // text that depends on them is refused there.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", b"SET standard_conforming_strings = on", &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::parse(&mut out, b"", smuggled.as_bytes(), &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    let errs = errors(&answer);
    assert_eq!(errs.len(), 1, "{answer:?}");
    assert!(errs[0].1.starts_with("pgid: lexing:"), "{errs:?}");
    assert_eq!(h.count(tickets).await, before);
    // The same with a Flush between: the SET's answers arrive, but nothing is reported until
    // a Sync, so what the client sends after reading them is still refused.
    let mut c = client(
        &h,
        "agent:writer",
        &[("options", "-c standard_conforming_strings=off")],
    )
    .await
    .unwrap();
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", b"SET standard_conforming_strings = on", &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    pgid::proxy::wire::backend::raw(&mut out, b'H', b"");
    c.send(&out).await;
    c.until_complete(3).await;
    let errs = errors(&c.query(smuggled).await);
    assert!(errs[0].1.starts_with("pgid: lexing:"), "{errs:?}");
    assert_eq!(h.count(tickets).await, before);
    // Text that reads the same either way goes through in such a pipeline.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", b"SET standard_conforming_strings = off", &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::parse(&mut out, b"", b"SELECT 'plain'", &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(values(&answer), ["plain"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_encodings_that_are_not_ascii_safe_are_refused_and_safe_ones_work() {
    let h = Harness::start(&[WRITER]).await;
    for extra in [
        [("client_encoding", "SJIS")],
        [("client_encoding", "big5")],
        [("options", "-c client_encoding=GBK")],
        [("options", "-c\u{b}client_encoding=UHC")],
        [("options", "--client-encoding=gb18030")],
    ] {
        let (code, message) = client(&h, "agent:writer", &extra).await.err().unwrap();
        assert!(
            message.contains("is not supported") && message.contains("client_encoding"),
            "{extra:?}: {code} {message}"
        );
    }
    // LATIN9: the euro sign is 0xA4; pgid reads it as the server does.
    let mut c = client(&h, "agent:writer", &[("client_encoding", "LATIN9")])
        .await
        .unwrap();
    let mut out = BytesMut::new();
    frontend::query(&mut out, b"SELECT '\xa4' AS euro");
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let row = answer.iter().find(|m| m.tag == b'D').unwrap();
    assert!(
        row.body.ends_with(b"\xa4"),
        "the value comes back in LATIN9"
    );
    assert_eq!(decisions(&h, "SELECT '€' AS euro")[0]["decision"], "allow");
    // Bytes that are not valid in the encoding are refused, as the server would, and the
    // session carries on.
    let mut c = client(&h, "agent:writer", &[]).await.unwrap();
    let mut out = BytesMut::new();
    frontend::query(&mut out, b"SELECT '\xff'");
    c.send(&out).await;
    let errs = errors(&c.until_ready(1).await);
    assert_eq!(errs[0].0, "22021", "{errs:?}");
    assert_eq!(values(&c.query("SELECT 1").await), ["1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_cannot_be_chosen_at_startup() {
    let h = Harness::start(&[WRITER]).await;
    for extra in [
        vec![("role", "pgid_lease")],
        vec![("session_authorization", "postgres")],
        vec![("options", "-c role=pgid_lease")],
        vec![("options", "-c\u{b}role=pgid_lease")],
        vec![(
            "options",
            "-c application_name=x\u{c}-c\u{b}role=pgid_lease",
        )],
        vec![("options", "--ROLE=pgid_lease")],
    ] {
        let refused = client(&h, "agent:writer", &extra).await;
        let (code, message) = refused
            .err()
            .unwrap_or_else(|| panic!("{extra:?} was accepted"));
        assert_eq!(code, "42501", "{extra:?}: {message}");
    }
    // A value with white space of every kind stays one value (the server shows the vertical
    // tab of an application_name as `?`).
    let mut c = client(
        &h,
        "agent:writer",
        &[("options", "-c application_name=a\\\u{b}-c\\ role=x")],
    )
    .await
    .unwrap();
    assert_eq!(
        values(&c.query("SHOW application_name").await),
        ["a?-c role=x"]
    );
    assert_eq!(
        values(&c.query("SELECT current_user = session_user").await),
        ["t"]
    );
}

/// The request id in a retry-mode refusal.
fn request_id(message: &str) -> String {
    message
        .split_whitespace()
        .skip_while(|w| *w != "request")
        .nth(1)
        .unwrap()
        .to_string()
}

async fn orders(h: &Harness, id: i32) -> i64 {
    h.count(&format!("SELECT count(*) FROM crm.orders WHERE id = {id}"))
        .await
}

/// Bind and Execute of `statement`, then Sync.
fn run(out: &mut BytesMut, statement: &[u8], values: &[(bool, Option<Vec<u8>>)]) {
    frontend::bind_values(out, statement, values);
    frontend::execute(out, b"", 0);
    frontend::sync(out);
}

/// Parse `sql` under a 64-byte name and run it under another that shares its first 63 bytes
/// (one name to the server), each followed by a Sync.
fn under_cut_names(sql: &[u8]) -> BytesMut {
    let a = "a".repeat(63);
    let mut out = BytesMut::new();
    frontend::parse(&mut out, format!("{a}x").as_bytes(), sql, &[]);
    frontend::sync(&mut out);
    run(&mut out, format!("{a}y").as_bytes(), &[]);
    out
}

fn approval_required(answer: &[Message]) -> String {
    let errs = errors(answer);
    assert_eq!(errs.len(), 1, "{answer:?}");
    assert!(errs[0].1.starts_with("pgid: approval required"), "{errs:?}");
    errs[0].1.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_means_what_the_server_kept_under_it() {
    let h = Harness::start(&[REVIEWED]).await;
    let mut c = client(&h, "agent:reviewed", &[]).await.unwrap();

    // A re-Parse of an existing name fails at the server (42P05), which keeps the first
    // statement: its Execute is held as the DELETE it is.
    let mut out = BytesMut::new();
    frontend::parse(
        &mut out,
        b"s1",
        b"DELETE FROM crm.orders WHERE id = 31",
        &[],
    );
    frontend::sync(&mut out);
    frontend::parse(&mut out, b"s1", b"SELECT 1", &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(2).await;
    assert_eq!(errors(&answer)[0].0, "42P05");
    let mut out = BytesMut::new();
    run(&mut out, b"s1", &[]);
    c.send(&out).await;
    approval_required(&c.until_ready(1).await);
    assert_eq!(orders(&h, 31).await, 1, "not deleted without review");

    // A second SQL PREPARE of a name fails too; EXECUTE runs the first.
    c.query("PREPARE p AS DELETE FROM crm.orders WHERE id = 32")
        .await;
    let second = c.query("PREPARE p AS SELECT 1").await;
    assert_eq!(errors(&second)[0].0, "42P05");
    approval_required(&c.query("EXECUTE p").await);
    assert_eq!(orders(&h, 32).await, 1);

    // A SQL-prepared statement bound and executed through the protocol is what it prepared.
    c.query("PREPARE q AS DELETE FROM crm.orders WHERE id = 33")
        .await;
    let mut out = BytesMut::new();
    run(&mut out, b"q", &[]);
    c.send(&out).await;
    approval_required(&c.until_ready(1).await);
    assert_eq!(orders(&h, 33).await, 1);

    // Names the server cuts at 63 bytes are one name.
    c.send(&under_cut_names(b"DELETE FROM crm.orders WHERE id = 34"))
        .await;
    approval_required(&c.until_ready(2).await);
    assert_eq!(orders(&h, 34).await, 1);

    // A Close skipped after an error leaves the statement in place, and its Execute is held.
    let mut out = BytesMut::new();
    frontend::parse(
        &mut out,
        b"s2",
        b"DELETE FROM crm.orders WHERE id = 35",
        &[],
    );
    frontend::sync(&mut out);
    frontend::bind_values(&mut out, b"missing", &[]);
    frontend::describe(&mut out, Target::Statement, b"s2");
    let mut close = BytesMut::new();
    pgid::proxy::wire::backend::raw(&mut close, b'C', b"Ss2\0");
    out.extend_from_slice(&close);
    frontend::sync(&mut out);
    run(&mut out, b"s2", &[]);
    c.send(&out).await;
    let answer = c.until_ready(3).await;
    let errs = errors(&answer);
    assert_eq!(errs.len(), 2, "{answer:?}");
    assert_eq!(errs[0].0, "26000", "{errs:?}");
    assert!(errs[1].1.starts_with("pgid: approval required"), "{errs:?}");
    assert_eq!(orders(&h, 35).await, 1);

    // An Execute of a portal pgid never saw bound is refused, and on record.
    let mut out = BytesMut::new();
    frontend::execute(&mut out, b"nobody", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let errs = errors(&c.until_ready(1).await);
    assert!(errs[0].1.contains("was not bound through pgid"), "{errs:?}");
    assert_eq!(
        decisions(&h, "<Execute of portal \"nobody\">")[0]["decision"],
        "deny"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_approval_is_for_the_parameters_types_and_formats_too() {
    let h = Harness::start(&[REVIEWED]).await;
    let alice = h.issuer.mint(&{
        let mut c = h.issuer.claims("alice");
        c.insert("groups".into(), json!(["dba"]));
        c
    });
    let mut c = client(&h, "agent:reviewed", &[]).await.unwrap();
    let sql = b"DELETE FROM crm.orders WHERE id = length($1) + 34";
    let value = vec![(false, Some(b"xx".to_vec()))];
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", sql, &[25]);
    run(&mut out, b"", &value);
    c.send(&out).await;
    let id = request_id(&approval_required(&c.until_ready(1).await));
    let (status, _) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert!(status.is_success());
    // The same text and bytes, bound as bytea: another statement, another review.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", sql, &[17]);
    run(&mut out, b"", &value);
    c.send(&out).await;
    let other = request_id(&approval_required(&c.until_ready(1).await));
    assert_ne!(other, id);
    assert_eq!(orders(&h, 36).await, 1);
    // As approved, it runs once.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", sql, &[25]);
    run(&mut out, b"", &value);
    c.send(&out).await;
    assert!(errors(&c.until_ready(1).await).is_empty());
    assert_eq!(orders(&h, 36).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn masks_follow_the_statement_the_server_runs() {
    let h = Harness::start(&[MASKED]).await;
    let emails = secrets(&h, "SELECT email FROM crm.customers").await;
    let leaked = |answer: &[Message]| in_clear(&emails, answer).is_some();
    let mut c = client(&h, "agent:masked", &[]).await.unwrap();
    // The masked statement keeps its name; the re-Parse that would have replaced it with an
    // unmasked one fails at the server.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"m", b"SELECT email FROM crm.customers", &[]);
    frontend::sync(&mut out);
    frontend::parse(&mut out, b"m", b"SELECT id FROM crm.customers", &[]);
    frontend::sync(&mut out);
    run(&mut out, b"m", &[]);
    c.send(&out).await;
    let answer = c.until_ready(3).await;
    assert!(!leaked(&answer), "{answer:?}");
    assert!(
        values(&answer).iter().all(|v| v == "REDACTED"),
        "{answer:?}"
    );
    // Bound under a longer name that the server cuts to the same 63 bytes.
    c.send(&under_cut_names(b"SELECT email FROM crm.customers"))
        .await;
    let answer = c.until_ready(2).await;
    assert!(!leaked(&answer), "{answer:?}");
    assert_eq!(values(&answer).len(), emails.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_pgid_cannot_follow_are_refused_where_they_are_set() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = client(&h, "agent:writer", &[]).await.unwrap();
    for sql in [
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'big5'",
        "SET client_encoding TO 'no-such-encoding'",
    ] {
        let errs = errors(&c.query(sql).await);
        assert!(errs[0].1.starts_with("pgid: encoding:"), "{sql}: {errs:?}");
    }
    for sql in [
        "SELECT set_config('role', 'pgid_lease', false)",
        "SELECT set_config('ROLE', 'pgid_lease', false)",
        "SET \"Role\" = pgid_lease",
        "SELECT set_config(lower('ROLE'), 'pgid_lease', false)",
    ] {
        let errs = errors(&c.query(sql).await);
        assert_eq!(errs.len(), 1, "{sql}");
        assert!(errs[0].1.starts_with("pgid: identity:"), "{sql}: {errs:?}");
    }
    assert_eq!(values(&c.query("SHOW client_encoding").await), ["UTF8"]);
    assert_eq!(
        values(&c.query("SELECT current_user = session_user").await),
        ["t"]
    );
    // A safe encoding can be chosen, and pgid reads the session in it from then on.
    c.query("SET client_encoding = 'LATIN1'").await;
    let mut out = BytesMut::new();
    frontend::query(&mut out, b"SELECT '\xe9t\xe9' AS summer");
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(decisions(&h, "SELECT 'été' AS summer").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_analysis_is_never_another_statements() {
    let h = Harness::start(&[WRITER, MASKED]).await;
    let mut c = client(&h, "agent:writer", &[]).await.unwrap();
    // UESCAPE decides what a U& identifier names: with `#` this names no function; with `!`
    // it names set_config, which the policy denies.
    let harmless = c
        .query("SELECT U&\"set_confi!0067\" UESCAPE '#' ('application_name', 'pwned', false)")
        .await;
    assert_eq!(errors(&harmless)[0].0, "42883", "{harmless:?}");
    let denied = c
        .query("SELECT U&\"set_confi!0067\" UESCAPE '!' ('application_name', 'pwned', false)")
        .await;
    assert!(
        errors(&denied)[0].1.starts_with("pgid: deny_functions:"),
        "{denied:?}"
    );
    assert_ne!(values(&c.query("SHOW application_name").await), ["pwned"]);
    // COPY to '' (no file at all) and COPY to a server file share a shape.
    c.query("COPY crm.tickets TO ''").await;
    let errs = errors(&c.query("COPY crm.tickets TO '/tmp/pgid-never'").await);
    assert!(errs[0].1.starts_with("pgid: identity:"), "{errs:?}");

    // A masked column named through UESCAPE inside an expression.
    let emails = secrets(&h, "SELECT upper(email) FROM crm.customers").await;
    let mut m = client(&h, "agent:masked", &[]).await.unwrap();
    m.query("SELECT upper(U&\"em!0061il\" UESCAPE '#') FROM crm.customers")
        .await;
    let answer = m
        .query("SELECT upper(U&\"em!0061il\" UESCAPE '!') FROM crm.customers")
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(in_clear(&emails, &answer), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_executed_through_the_protocol_is_recorded_as_what_it_runs() {
    let h = Harness::start(&[WRITER]).await;
    let mut c = client(&h, "agent:writer", &[]).await.unwrap();
    let declare = "DECLARE c CURSOR FOR SELECT id FROM crm.tickets ORDER BY id";
    let mut out = BytesMut::new();
    query(&mut out, "BEGIN");
    query(&mut out, declare);
    frontend::execute(&mut out, b"c", 2);
    frontend::sync(&mut out);
    query(&mut out, "COMMIT");
    c.send(&out).await;
    let answer = c.until_ready(4).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    assert_eq!(values(&answer), ["1", "2"]);
    let records = decisions(&h, declare);
    assert_eq!(
        records.len(),
        2,
        "the DECLARE and the Execute of its cursor"
    );
    assert_eq!(records[1]["protocol"], "extended");
    assert_eq!(records[1]["decision"], "allow");
    // The cursor is gone with its transaction: an Execute of it now is refused by pgid.
    let mut out = BytesMut::new();
    frontend::execute(&mut out, b"c", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let errs = errors(&c.until_ready(1).await);
    assert!(errs[0].1.contains("was not bound through pgid"), "{errs:?}");
}
