//! The proxy with real clients (tokio-postgres, psql) against a real PostgreSQL: results equal a
//! direct connection's; cancel; lifetime; authentication failures; upstream reuse.

mod common;

use std::time::{Duration, Instant};

use common::{connect, eventually, Harness, AGENT};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("<{e}>"))
}

/// The server's message text (tokio-postgres's Display says only "db error").
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn simple_rows(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    msgs.into_iter()
        .map(|m| match m {
            SimpleQueryMessage::Row(r) => (0..r.len())
                .map(|i| r.get(i).unwrap_or("NULL").to_string())
                .collect::<Vec<_>>()
                .join("|"),
            SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
            SimpleQueryMessage::RowDescription(_) => "desc".into(),
            _ => "other".into(),
        })
        .collect()
}

/// A scripted workload: simple and extended protocol, binary results of many types, named
/// statements, transactions, errors and recovery, portals with a row limit, COPY both ways,
/// pipelining. Returns a transcript to compare across connections.
async fn workload(c: &Client) -> Vec<String> {
    let mut t = Vec::new();
    t.extend(simple_rows(
        c.simple_query("SELECT 1 AS a, 'x' AS b; SELECT count(*) FROM crm.customers")
            .await
            .unwrap(),
    ));
    for r in c
        .query(
            "SELECT id, name, email FROM crm.customers WHERE id > $1 ORDER BY id",
            &[&1i32],
        )
        .await
        .unwrap()
    {
        t.push(format!(
            "{}|{}|{}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ));
    }
    let r = c
        .query_one(
            "SELECT 1::int2, 2::int4, 3::int8, 1.5::float8, 12.34::numeric::text, true, DATE '2026-01-02', \
             '\\x0102ff'::bytea, ARRAY[1,2,3]::int4[], '{\"a\": [1, 2]}'::jsonb, NULL::text, \
             TIMESTAMPTZ '2026-11-28 10:00:00+00', 'ünïcødé'::text",
            &[],
        )
        .await
        .unwrap();
    t.push(format!(
        "{}|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{}|{}",
        r.get::<_, i16>(0),
        r.get::<_, i32>(1),
        r.get::<_, i64>(2),
        r.get::<_, f64>(3),
        r.get::<_, String>(4),
        r.get::<_, bool>(5),
        r.get::<_, chrono::NaiveDate>(6),
        r.get::<_, Vec<u8>>(7),
        r.get::<_, Vec<i32>>(8),
        r.get::<_, serde_json::Value>(9),
        r.get::<_, Option<String>>(10),
        r.get::<_, chrono::DateTime<chrono::Utc>>(11),
        r.get::<_, String>(12),
    ));
    let stmt = c
        .prepare("SELECT amount::text FROM crm.orders WHERE customer_id = $1 ORDER BY id LIMIT 2")
        .await
        .unwrap();
    for id in [1i32, 2] {
        for r in c.query(&stmt, &[&id]).await.unwrap() {
            t.push(r.get::<_, String>(0));
        }
    }
    // errors, and the connection carries on
    t.push(code(&c.simple_query("SELECT 1/0").await.unwrap_err()));
    t.extend(simple_rows(c.simple_query("SELECT 2").await.unwrap()));
    t.push(code(
        &c.execute(
            "INSERT INTO crm.customers (name, email) VALUES ('x', 'y')",
            &[],
        )
        .await
        .unwrap_err(),
    ));
    c.batch_execute("BEGIN").await.unwrap();
    t.push(code(&c.simple_query("SELECT 1/0").await.unwrap_err()));
    t.push(code(&c.simple_query("SELECT 1").await.unwrap_err()));
    c.batch_execute("ROLLBACK").await.unwrap();
    // a transaction with writes, rolled back
    c.batch_execute("BEGIN").await.unwrap();
    let id: i32 = c
        .query_one(
            "INSERT INTO crm.notes (customer_id, body) VALUES (1, 'hello') RETURNING customer_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    t.push(format!("inserted for {id}"));
    // COPY in and out inside the transaction
    let sink = c
        .copy_in("COPY crm.notes (customer_id, body) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"2\tfrom copy\n3\tmore copy\n"))
        .await
        .unwrap();
    t.push(format!("copied {}", sink.finish().await.unwrap()));
    let out = c
        .copy_out("COPY (SELECT customer_id, body FROM crm.notes ORDER BY customer_id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<_> = out.collect().await;
    t.push(
        chunks
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b.unwrap()).into_owned())
            .collect::<String>(),
    );
    // a portal fetched 3 rows at a time (Execute with a row limit → PortalSuspended)
    let tx_stmt = c
        .prepare("SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    c.batch_execute("DECLARE cur CURSOR FOR SELECT 1")
        .await
        .unwrap();
    c.batch_execute("CLOSE cur").await.unwrap();
    let portal_rows = {
        // tokio-postgres needs a Transaction for portals; emulate with the raw client in a tx
        let mut sizes = Vec::new();
        let rows = c.query(&tx_stmt, &[]).await.unwrap();
        sizes.push(rows.len());
        sizes
    };
    t.push(format!("{portal_rows:?}"));
    c.batch_execute("ROLLBACK").await.unwrap();
    t.extend(simple_rows(
        c.simple_query("SELECT count(*) FROM crm.notes")
            .await
            .unwrap(),
    ));
    // pipelining: several extended-protocol queries in flight at once
    let (a, b, d) = tokio::join!(
        c.query_one("SELECT 'a'::text", &[]),
        c.query_one("SELECT pg_sleep(0.05)::text || 'b'", &[]),
        c.query_one("SELECT 'd'::text", &[])
    );
    t.push(format!(
        "{}{}{}",
        a.unwrap().get::<_, String>(0),
        b.unwrap().get::<_, String>(0),
        d.unwrap().get::<_, String>(0)
    ));
    t
}

async fn portals(c: &mut Client) -> Vec<usize> {
    let tx = c.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut sizes = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 3).await.unwrap();
        if rows.is_empty() {
            break;
        }
        sizes.push(rows.len());
    }
    tx.commit().await.unwrap();
    sizes
}

#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_through_the_proxy_matches_a_direct_connection() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let direct = h.connect_lease_direct(&lease).await;
    let mut proxied = h.connect_proxy(&lease).await.expect("connect through pgid");
    let who: String = proxied
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, lease["username"].as_str().unwrap());
    let expected = workload(&direct).await;
    let got = workload(&proxied).await;
    assert!(
        expected.len() > 15
            && expected
                .iter()
                .any(|l| l.contains("ada@example.com") || l.contains("alan@example.com"))
    );
    assert_eq!(got, expected);
    assert_eq!(portals(&mut proxied).await, vec![3, 3, 3, 1]);
    let mut direct = direct;
    assert_eq!(portals(&mut direct).await, vec![3, 3, 3, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_request_reaches_the_running_query() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(3), sleeper)
        .await
        .expect("cancel took too long")
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&err), "57014");
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "took {:?}",
        started.elapsed()
    );
    // A made-up cancel key does nothing.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", h.proxy_port()))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        &pgid::proxy::wire::frontend::cancel_request(1, 2),
    )
    .await
    .unwrap();
}

/// Connects and keeps the connection task's outcome, to read the FATAL a session ends with.
async fn connect_watching(dsn: &str) -> (Client, tokio::sync::oneshot::Receiver<String>) {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = conn.await;
        let _ = tx.send(match r {
            Ok(()) => "closed cleanly".to_string(),
            Err(e) => format!("{e} {:?}", e.as_db_error().map(|d| d.message().to_string())),
        });
    });
    (client, rx)
}

/// Opens a session on `dsn`, revokes the lease through the broker, and expects the session to
/// end with pgid's FATAL within 2 s.
async fn revoke_and_expect_fatal(h: &Harness, token: &str, lease: &Value, dsn: &str) {
    let (c, ended) = connect_watching(dsn).await;
    c.simple_query("SELECT 1").await.unwrap();
    let started = Instant::now();
    let path = format!("/v1/credentials/{}", lease["lease_id"].as_str().unwrap());
    let (status, _) = h.call(Method::DELETE, &path, Some(token), None).await;
    assert_eq!(status, StatusCode::OK);
    let why = tokio::time::timeout(Duration::from_secs(2), ended)
        .await
        .expect("session survived revocation")
        .unwrap();
    assert!(why.contains("pgid: credential revoked"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_when_the_lease_expires_or_is_revoked() {
    let h = Harness::start(&[AGENT]).await;
    // Expiry: a 3 s lease.
    let lease = h.lease("agent:app", json!({"ttl": "3s"})).await;
    let (c, ended) = connect_watching(lease["dsn"].as_str().unwrap()).await;
    c.simple_query("SELECT 1").await.unwrap();
    let expires: chrono::DateTime<chrono::Utc> =
        lease["expires_at"].as_str().unwrap().parse().unwrap();
    let why = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("session outlived its lease")
        .unwrap();
    let late = chrono::Utc::now() - expires;
    assert!(why.contains("pgid: credential expired"), "{why}");
    assert!(
        late < chrono::Duration::seconds(2),
        "closed {late} after expiry"
    );
    assert!(c.simple_query("SELECT 1").await.is_err());
    let err = h.connect_proxy(&lease).await.unwrap_err();
    assert!(message(&err).contains("credential expired"), "{err}");
    assert_eq!(code(&err), "28000");

    // Revocation: the live session gets FATAL within 2 s.
    let token = h.token("agent:app");
    let lease = h.lease("agent:app", json!({})).await;
    revoke_and_expect_fatal(&h, &token, &lease, lease["dsn"].as_str().unwrap()).await;
    let err = h.connect_proxy(&lease).await.unwrap_err();
    assert!(message(&err).contains("credential revoked"), "{err}");

    // Renewal moves the deadline: a renewed 3 s lease outlives its first expiry.
    let lease = h.lease("agent:app", json!({"ttl": "3s"})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let (status, _) = h
        .call(
            Method::POST,
            &format!(
                "/v1/credentials/{}/renew",
                lease["lease_id"].as_str().unwrap()
            ),
            Some(&token),
            Some(json!({"ttl": "1m"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.simple_query("SELECT 1")
        .await
        .expect("renewed session is alive");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_through_one_instance_closes_sessions_on_another() {
    let h = Harness::start(&[AGENT]).await;
    let second = h.start_second().await;
    let token = h.token("agent:app");
    let lease = h.lease("agent:app", json!({})).await;
    let dsn = format!(
        "postgresql://{}:{}@127.0.0.1:{}/app",
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
        second.proxy_addr.port()
    );
    revoke_and_expect_fatal(&h, &token, &lease, &dsn).await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secrets_unknown_users_and_wrong_databases_are_refused() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let port = h.proxy_port();
    let user = lease["username"].as_str().unwrap();
    let try_connect = |user: String, password: String, db: &'static str| async move {
        connect(&format!(
            "postgresql://{user}:{password}@127.0.0.1:{port}/{db}"
        ))
        .await
        .map(|_| ())
        .unwrap_err()
    };
    let e = try_connect(user.into(), "wrong".into(), "app").await;
    assert_eq!(code(&e), "28P01", "{e}");
    let e = try_connect("pgid_nobody_xxxxxxxx".into(), "whatever".into(), "app").await;
    assert_eq!(code(&e), "28P01", "{e}");
    // The database password is not the client secret: it does not work at the proxy either.
    let e = try_connect(
        user.into(),
        h.database_password(lease["lease_id"].as_str().unwrap()),
        "app",
    )
    .await;
    assert_eq!(code(&e), "28P01", "{e}");
    let e = try_connect(
        user.into(),
        lease["password"].as_str().unwrap().into(),
        "postgres",
    )
    .await;
    assert_eq!(code(&e), "28000", "{e}");
    assert!(message(&e).contains("pgid:"), "{e}");
    // Startup options cannot change the identity.
    let e = connect(&format!(
        "{}?options=-c%20role%3Dpgid_admin",
        lease["dsn"].as_str().unwrap()
    ))
    .await
    .map(|_| ())
    .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    // The right secret still works after all that.
    h.connect_proxy(&lease)
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused_with_their_state_reset() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let first = h.connect_proxy(&lease).await.unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    first
        .batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1; LISTEN chan; SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    drop(first);
    // The first backend is reset (DISCARD ALL) and parked; the next client gets it.
    let proxy = h.pgid.as_ref().unwrap().proxy.clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.pool.idle_count() == 1
        })
        .await,
        "never parked"
    );
    let c = h.connect_proxy(&lease).await.unwrap();
    let again: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, pid, "the upstream backend was not reused");
    let state = c
        .query_one(
            "SELECT current_setting('work_mem'), to_regclass('pg_temp.scratch') IS NULL, \
             (SELECT count(*) FROM pg_prepared_statements WHERE name = 'p'), (SELECT count(*) FROM pg_listening_channels()), \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(state.get::<_, String>(0), "4MB", "settings reset");
    assert!(state.get::<_, bool>(1), "temp table gone");
    assert_eq!(state.get::<_, i64>(2), 0, "prepared statements gone");
    assert_eq!(state.get::<_, i64>(3), 0, "listens gone");
    assert_eq!(state.get::<_, i64>(4), 0, "advisory locks released");
    // A connection that leaves mid-transaction is not reused.
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute("BEGIN").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let su = h.superuser().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            su.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap()
                .is_none()
        })
        .await,
        "the in-transaction backend was closed"
    );
    let _ = Value::Null;
}

mod hostile {
    use super::*;
    use rand::{Rng, RngCore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads until EOF; false if the peer keeps the connection open past `limit`.
    async fn closes_within(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    fn startup_with(version: i32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hostile_input_never_panics_hangs_or_leaks() {
        let h = Harness::start(&[AGENT]).await;
        let lease = h.lease("agent:app", json!({})).await;
        let healthy = h.connect_proxy(&lease).await.unwrap();
        let port = h.proxy_port();
        let user = lease["username"].as_str().unwrap().to_string();
        let secret = lease["password"].as_str().unwrap().to_string();

        // Before authentication.
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0, 0, 0, 4],
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
            vec![0, 0, 0, 100, 0, 3, 0, 0, b'u'],
            startup_with(0x0002_0000, b""),
            startup_with(196608, b"user\0x"),
            startup_with(196608, b"user\0a\0user\0b\0\0"),
            startup_with(196608, b"\0"),
            [
                &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..],
                b"\x16\x03\x01garbage not a client hello",
            ]
            .concat(),
            [
                &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..],
                &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..],
            ]
            .concat(),
        ];
        let mut rng = rand::thread_rng();
        for _ in 0..100 {
            let mut junk = vec![0u8; rng.gen_range(1..2000)];
            rng.fill_bytes(&mut junk);
            cases.push(junk);
        }
        for (i, bytes) in cases.iter().enumerate() {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
            assert!(
                closes_within(&mut s, Duration::from_secs(5)).await,
                "case {i} hung"
            );
        }

        // After authentication.
        let after: Vec<Vec<u8>> = vec![
            vec![b'Q', 0, 0, 0, 3],
            vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
            vec![b'Q', 0, 0, 0, 100, b'S', b'E'],
            vec![b'Z', 0, 0, 0, 5, b'I'],
            vec![b'p', 0, 0, 0, 8, 1, 2, 3, 4],
            vec![b'P', 0, 0, 0, 6, 0, 0],
            vec![b'B', 0, 0, 0, 4],
        ];
        for (i, bytes) in after.iter().enumerate() {
            let mut s = common::raw_login(port, &user, &secret).await;
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
            assert!(
                closes_within(&mut s, Duration::from_secs(5)).await,
                "post-auth case {i} hung"
            );
        }
        for _ in 0..20 {
            let mut s = common::raw_login(port, &user, &secret).await;
            let mut junk = Vec::new();
            for _ in 0..rng.gen_range(1..10) {
                let body_len = rng.gen_range(0..200);
                junk.push(rng.gen_range(b'A'..=b'z'));
                junk.extend_from_slice(&((body_len + 4) as i32).to_be_bytes());
                junk.extend((0..body_len).map(|_| rng.gen::<u8>()));
            }
            let _ = s.write_all(&junk).await;
            let _ = s.shutdown().await;
            assert!(
                closes_within(&mut s, Duration::from_secs(5)).await,
                "random frames hung"
            );
        }

        // 200 connections that stall mid-handshake: timed out by pgid, and nobody else notices.
        let mut stalled = Vec::new();
        for i in 0..200 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let partial: &[u8] = if i % 2 == 0 {
                &[0, 0, 0, 40, 0, 3]
            } else {
                &[]
            };
            s.write_all(partial).await.unwrap();
            stalled.push(s);
        }
        let started = Instant::now();
        healthy
            .simple_query("SELECT 1")
            .await
            .expect("existing sessions keep working");
        let fresh = h
            .connect_proxy(&lease)
            .await
            .expect("new sessions still work");
        fresh.simple_query("SELECT 1").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "service slowed by stalled clients"
        );
        for s in stalled.iter_mut() {
            assert!(
                closes_within(s, Duration::from_secs(10)).await,
                "a stalled handshake was not timed out"
            );
        }
        healthy.simple_query("SELECT 1").await.expect("still fine");
    }
}

/// Stopping pgid: an idle session ends at once with pgid's FATAL; a busy one finishes its
/// statement first, then ends — neither waits for the drain timeout.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_closes_idle_sessions_at_once_and_busy_ones_when_done() {
    let mut h = Harness::start_with(&[AGENT], "").await;
    let lease = h.lease("agent:app", json!({})).await;
    let dsn = lease["dsn"].as_str().unwrap().to_string();
    let (idle, idle_ended) = connect_watching(&dsn).await;
    idle.simple_query("SELECT 1").await.unwrap();
    let (busy, busy_ended) = connect_watching(&dsn).await;
    // The client comes back with its result and stays open: dropped, it would end the
    // connection itself (cleanly) before pgid's FATAL could be read.
    let running = tokio::spawn(async move {
        let r = busy.simple_query("SELECT pg_sleep(1), 'finished'").await;
        (busy, r)
    });
    let su = h.superuser().await;
    // The busy session's statement is running before pgid is told to stop.
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(1)%' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await
    );
    let started = Instant::now();
    h.stop_pgid().await;
    let took = started.elapsed();
    let why = idle_ended.await.unwrap();
    assert!(why.contains("pgid: server shutting down"), "{why}");
    let (_busy, done) = running.await.unwrap();
    let done = done.expect("the busy statement finished");
    assert!(
        done.iter().any(|m| matches!(
            m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(1) == Some("finished")
        )),
        "its row came back"
    );
    let why = busy_ended.await.unwrap();
    assert!(why.contains("pgid: server shutting down"), "{why}");
    assert!(
        took < Duration::from_millis(1900),
        "stopping took {took:?}: the drain timeout (2 s) was waited out"
    );
}

/// Stopping pgid while a statement waits for approval: undecided at the drain timeout, the
/// request is withdrawn and the client told why — the stop does not wait for the rule's own
/// timeout (five minutes here); meanwhile the broker refuses new connections.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_withdraws_a_statement_still_waiting_for_approval_at_the_drain_timeout() {
    // GUARDED with a rule timeout far beyond the drain timeout.
    let held = common::GUARDED.replace("timeout = \"3s\"", "timeout = \"5m\"");
    let mut h = Harness::start_with(&[&held], "").await;
    let lease = h.lease("agent:x", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let run = tokio::spawn(async move {
        c.simple_query("DELETE FROM crm.orders WHERE id = 1")
            .await
            .map(|_| ())
    });
    let su = h.superuser().await;
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            su.query_one(
                "SELECT count(*) FROM pgid.approvals WHERE state = 'pending'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await,
        "the statement was not held"
    );
    let broker = h.base.trim_start_matches("https://").to_string();
    let running = h.pgid.take().unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(running.shutdown());
    // While the session drains, the broker's port refuses new connections at once (a balancer's
    // health check fails fast instead of waiting unanswered).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = tokio::net::TcpStream::connect(&broker).await;
    assert!(
        refused.is_err(),
        "the broker still accepts connections while stopping"
    );
    assert!(!stopping.is_finished());
    stopping.await.unwrap();
    let took = started.elapsed();
    // The harness's drain timeout is 2 s.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "stopping took {took:?}"
    );
    let e = run.await.unwrap().expect_err("the held statement ran");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("pgid is shutting down"), "{e:?}");
    let state: String = su
        .query_one("SELECT state FROM pgid.approvals", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "withdrawn");
    let deleted: i64 = su
        .query_one("SELECT count(*) FROM crm.orders WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 1, "the order is still there");
}
