//! Message size limits are applied while reading: a message over its limit is refused without
//! being buffered, so a session's memory stays bounded whatever a client sends. (Its own test
//! binary: the test measures the process's resident memory, which other tests would disturb.)

mod common;

use bytes::{BufMut, BytesMut};
use common::wire::{errors, values, RawClient};
use common::{Harness, AGENT};
use serde_json::json;

/// Resident memory of this process (pgid runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Writes a message of type `tag` whose body is `head`, then `fill` bytes up to `len`, then
/// `tail`, in 1 MiB pieces: the test itself never holds it whole.
async fn stream_message(c: &mut RawClient, tag: u8, len: usize, head: &[u8], tail: &[u8]) {
    let mut start = BytesMut::new();
    start.put_u8(tag);
    start.put_i32((len + 4) as i32);
    start.put_slice(head);
    c.send(&start).await;
    let piece = vec![b'x'; 1 << 20];
    let mut left = len - head.len() - tail.len();
    while left > 0 {
        let n = left.min(piece.len());
        c.send(&piece[..n]).await;
        left -= n;
    }
    c.send(tail).await;
}

/// The tests here measure this process's memory: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_unread_and_memory_stays_bounded() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let (user, secret) = (
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
    );
    let mut c = RawClient::login(h.proxy_port(), user, secret, &[])
        .await
        .unwrap();
    // Warm up: a statement through every layer.
    assert_eq!(values(&c.query("SELECT 1").await), ["1"]);
    let before = rss();

    // A 256 MiB Query, which would be valid SQL if it were read: SELECT 'xxx…'.
    stream_message(&mut c, b'Q', 256 << 20, b"SELECT '", b"'\0").await;
    let answer = c.until_ready(1).await;
    let grown = rss().saturating_sub(before);
    let errs = errors(&answer);
    assert_eq!(errs.len(), 1, "{answer:?}");
    assert_eq!(errs[0].0, "54000");
    assert!(
        errs[0]
            .1
            .starts_with("pgid: max_message_bytes: a Query message of 268435461 bytes"),
        "{errs:?}"
    );
    println!("RSS grew by {} KiB for a 256 MiB Query", grown / 1024);
    assert!(grown < 8 << 20, "RSS grew by {grown} bytes");
    // The session carries on.
    assert_eq!(values(&c.query("SELECT 2").await), ["2"]);

    // A Bind over max_bind_bytes (64 MiB by default) in a pipeline: it fails in its place, the
    // server skips to Sync, the pipeline keeps its order.
    let mut parse = BytesMut::new();
    pgid::proxy::wire::frontend::parse(&mut parse, b"", b"SELECT length($1)", &[25]);
    c.send(&parse).await;
    let len = 65 << 20;
    let mut head = BytesMut::new();
    head.put_slice(b"\0\0"); // portal "", statement ""
    head.put_i16(0); // text parameters
    head.put_i16(1); // one value
    head.put_i32((len - 12 - 2) as i32);
    stream_message(&mut c, b'B', len, &head, &[0, 0]).await;
    let mut rest = BytesMut::new();
    pgid::proxy::wire::frontend::execute(&mut rest, b"", 0);
    pgid::proxy::wire::frontend::sync(&mut rest);
    c.send(&rest).await;
    let answer = c.until_ready(1).await;
    let errs = errors(&answer);
    assert_eq!(errs.len(), 1, "{answer:?}");
    assert!(errs[0].1.contains("a Bind message of"), "{errs:?}");
    assert!(
        values(&answer).is_empty(),
        "the Execute after it was skipped"
    );
    assert!(rss().saturating_sub(before) < 8 << 20);
    assert_eq!(values(&c.query("SELECT 3").await), ["3"]);

    // The refusals are on record, as what was sent (never its content).
    let records = h.audit_records();
    let refused: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "statement" && r["rule"] == "max_message_bytes")
        .map(|r| r["statement"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        [
            "<Query message of 268435461 bytes, not read>",
            "<Bind message of 68157445 bytes, not read>"
        ]
    );
}

/// Refused messages the server will skip (after an error, until a Sync that never comes) keep
/// nothing: their refusals are dropped with them.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_the_server_skips_are_not_kept() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let (user, secret) = (
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
    );
    let mut c = RawClient::login(h.proxy_port(), user, secret, &[])
        .await
        .unwrap();
    // An error and no Sync: the server skips everything until one.
    let mut out = BytesMut::new();
    pgid::proxy::wire::frontend::bind_values(&mut out, b"no_such_statement", &[]);
    pgid::proxy::wire::backend::raw(&mut out, b'H', b"");
    c.send(&out).await;
    assert_eq!(errors(&c.until_complete(1).await)[0].0, "26000");
    // Binds whose portal name is not UTF-8 (refused by pgid, each with a stand-in), 300,000.
    let mut bad = BytesMut::new();
    pgid::proxy::wire::frontend::bind_portal(&mut bad, b"\xff", b"", &[]);
    let chunk = bad.repeat(20_000);
    let before = rss();
    for _ in 0..15 {
        c.send(&chunk).await;
    }
    // Everything read and judged: a Sync after it is answered.
    let mut sync = BytesMut::new();
    pgid::proxy::wire::frontend::sync(&mut sync);
    c.send(&sync).await;
    c.until_ready(1).await;
    let grown = rss().saturating_sub(before);
    let sent = (chunk.len() * 15) as u64;
    println!(
        "RSS grew by {} KiB for {} KiB of skipped refusals",
        grown >> 10,
        sent >> 10
    );
    assert!(
        grown < sent,
        "pgid kept {grown} bytes for {sent} bytes of skipped refusals"
    );
    assert_eq!(values(&c.query("SELECT 1").await), ["1"]);
}
