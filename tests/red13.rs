//! Red-team round 13: the changes of issue 13 (real backend pids with per-session cancel secrets,
//! reuse of pooled connections checked by a peek, server-like syntax errors, masks in the
//! client's encoding, recovery of a torn audit tail), attacked by an agent holding a valid lease
//! that speaks the raw protocol. Each test failed while the weakness it names was there.
//!
//! Findings:
//! 1. `partial` decodes a DataRow in the client_encoding pgid last saw reported, but the server
//!    reports a change only before its next ReadyForQuery: rows of a statement that follows
//!    `SET client_encoding` in the same Query (or pipeline) are in the new encoding and read in
//!    the old one. From EUC_KR to WIN1251, two Cyrillic letters read as one EUC_KR character,
//!    so `keep = 4` shows eight letters:
//!    `red13_partial_mask_reads_rows_after_a_client_encoding_change_in_the_same_query` (and
//!    `…_in_the_same_pipeline`).
//! 2. A CancelRequest pgid has looked up is still on its way upstream when its session ends and
//!    the upstream connection goes back to the pool (same backend, same real key); the next client
//!    of the lease gets that backend, and the late cancel cancels its statement:
//!    `red13_a_late_cancel_of_an_earlier_client_never_reaches_the_next_clients_statement`.
//! 3. Under `[audit] literals = "normalize"` the record's text comes from pg_query's normaliser,
//!    which lexes as `standard_conforming_strings = on` whatever the session's setting: after
//!    `SET standard_conforming_strings = off`, `SELECT '\'' ; DELETE FROM crm.notes; --'` deletes
//!    every note and is recorded as `SELECT $1`:
//!    `red13_a_normalised_record_names_the_statement_that_ran_under_backslash_escapes`.
//! 4. (Unit tests in `src/audit/file.rs`.) The audit file's last record was looked for in its
//!    last 4 MiB only, but a record can be larger (a 1 MiB statement of control characters is
//!    6 MiB of JSON): a whole one stopped pgid from starting ("the last record is not JSON"), a
//!    torn one was not recovered; and a whole last record missing only its line end was cut.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::wire::Message;
use common::Harness;
use pgid::proxy::wire::backend::Backend;
use pgid::proxy::wire::frontend;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads customers; their names are masked with `partial`, keeping 4 characters.
const PARTIAL_NAME: &str = r#"
name = "partial-name"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:partial"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[[mask]]
columns = ["crm.customers.name"]
method = "partial"
keep = 4
"#;

/// A name of Cyrillic letters only: in WIN1251 each is one byte from 0xC0 up, and every two of
/// them make a valid EUC_KR character.
const NAME: &str = "Александрова";

/// The raw bytes of the first column of every DataRow.
fn raw_values(messages: &[Message]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .filter_map(|m| match m.decoded() {
            Backend::DataRow(b) => {
                let len = i32::from_be_bytes(b[2..6].try_into().unwrap());
                (len >= 0).then(|| b[6..6 + len as usize].to_vec())
            }
            _ => None,
        })
        .collect()
}

async fn partial_setup() -> Harness {
    let h = Harness::start(&[PARTIAL_NAME]).await;
    h.superuser()
        .await
        .batch_execute(&format!(
            "INSERT INTO crm.customers (id, name, email) VALUES (900, '{NAME}', 'a@example.com')"
        ))
        .await
        .unwrap();
    h
}

/// What a WIN1251 client sees after `****`: one byte per character.
fn shown_after_stars(value: &[u8]) -> usize {
    assert!(value.starts_with(b"****"), "{value:?}");
    value.len() - 4
}

#[tokio::test(flavor = "multi_thread")]
async fn red13_partial_mask_reads_rows_after_a_client_encoding_change_in_the_same_query() {
    let h = partial_setup().await;
    // The reference: a WIN1251 session sees the last four letters.
    let mut c = h
        .raw_client("agent:partial", &[("client_encoding", "WIN1251")])
        .await
        .unwrap();
    let got = raw_values(
        &c.query("SELECT name FROM crm.customers WHERE id = 900")
            .await,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(shown_after_stars(&got[0]), 4, "{:?}", got[0]);

    // An EUC_KR session switches to WIN1251 in the Query that reads the name.
    let mut c = h
        .raw_client("agent:partial", &[("client_encoding", "EUC_KR")])
        .await
        .unwrap();
    let answer = c
        .query("SET client_encoding TO 'WIN1251'; SELECT name FROM crm.customers WHERE id = 900")
        .await;
    let got = raw_values(&answer);
    assert_eq!(got.len(), 1, "{answer:?}");
    assert!(
        shown_after_stars(&got[0]) <= 4,
        "partial (keep = 4) showed {} characters of the name: {:?}",
        shown_after_stars(&got[0]),
        got[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn red13_partial_mask_reads_rows_after_a_client_encoding_change_in_the_same_pipeline() {
    let h = partial_setup().await;
    let mut c = h
        .raw_client("agent:partial", &[("client_encoding", "EUC_KR")])
        .await
        .unwrap();
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", b"SET client_encoding TO 'WIN1251'", &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::parse(
        &mut out,
        b"",
        b"SELECT name FROM crm.customers WHERE id = 900",
        &[],
    );
    frontend::bind_values(&mut out, b"", &[]);
    frontend::describe(&mut out, frontend::Target::Portal, b"");
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let answer = c.until_ready(1).await;
    let got = raw_values(&answer);
    assert_eq!(got.len(), 1, "{answer:?}");
    assert!(
        shown_after_stars(&got[0]) <= 4,
        "partial (keep = 4) showed {} characters of the name: {:?}",
        shown_after_stars(&got[0]),
        got[0]
    );
}

/// Forwards connections to `upstream`, holding each CancelRequest back for `delay` (a slow
/// network path to the database: a lost SYN costs a second).
async fn delaying_relay(upstream: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if inbound.read_exact(&mut head).await.is_err() {
                    return;
                }
                let cancel = i32::from_be_bytes(head[4..8].try_into().unwrap()) == 80877102;
                if cancel {
                    tokio::time::sleep(delay).await;
                }
                let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                if out.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn red13_a_late_cancel_of_an_earlier_client_never_reaches_the_next_clients_statement() {
    let mut h = Harness::start(&[common::AGENT]).await;
    // pgid reaches the database through a path where cancel requests are slow.
    let relay = delaying_relay(h.pg.port, Duration::from_millis(1500)).await;
    h.stop_pgid().await;
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let from = format!("@127.0.0.1:{}/", h.pg.port);
    assert!(config.contains(&from));
    std::fs::write(
        &h.config_path,
        config.replace(&from, &format!("@127.0.0.1:{relay}/")),
    )
    .unwrap();
    h.start_pgid().await.unwrap();

    let lease = h.lease("agent:app", json!({})).await;
    let first = h.connect_proxy(&lease).await.unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // The first client cancels (nothing is running: the server would ignore it) and leaves.
    let token = first.cancel_token();
    let cancel = tokio::spawn(async move { token.cancel_query(tokio_postgres::NoTls).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The next client of the lease: a long statement.
    let second = h.connect_proxy(&lease).await.unwrap();
    let reused: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let ran = second.simple_query("SELECT pg_sleep(3)").await;
    let _ = cancel.await;
    assert!(
        ran.is_ok(),
        "the earlier client's cancel cancelled the next client's statement (backend {pid}, \
         reused: {}): {ran:?}",
        reused == pid
    );
}

/// Writes notes; statements are recorded with their literals normalised away.
const QUIET_WRITER: &str = r#"
name = "quiet-writer"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:quiet-writer"
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.notes"]
[guardrails]
require_where = []
[audit]
literals = "normalize"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn red13_a_normalised_record_names_the_statement_that_ran_under_backslash_escapes() {
    let h = Harness::start(&[QUIET_WRITER]).await;
    let lease = h.lease("agent:quiet-writer", json!({})).await;
    let mut c = common::wire::RawClient::login(
        h.proxy_port(),
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
        &[],
    )
    .await
    .unwrap();
    h.superuser()
        .await
        .batch_execute("INSERT INTO crm.notes (body) VALUES ('one'), ('two')")
        .await
        .unwrap();
    c.query("SET standard_conforming_strings = off").await;
    // Under backslash escapes `'\''` is a quote and the DELETE runs; pg_query's normaliser lexes
    // as standard_conforming_strings = on, where the DELETE is inside the literal.
    let sql = r"SELECT '\'' ; DELETE FROM crm.notes; --'";
    let answer = c.query(sql).await;
    assert_eq!(
        h.count("SELECT count(*) FROM crm.notes").await,
        0,
        "{answer:?}"
    );
    let (decisions, _) = h.statement_audit(lease["lease_id"].as_str().unwrap()).await;
    let record = decisions
        .iter()
        .find(|d| d["classes"].to_string().contains("DELETE"))
        .expect("a DELETE was recorded");
    let text = record["statement"].as_str().unwrap();
    assert!(
        text.contains("DELETE FROM crm.notes"),
        "the record of the statement that deleted every note reads {text:?}"
    );
}
