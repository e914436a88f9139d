//! Masking through the real proxy: a corpus of statements that try to read masked columns —
//! aliases, expressions, nested queries, whole rows, set operations, error texts, side effects,
//! statistics — through the simple protocol and the extended protocol with binary results. Every
//! byte pgid sends the client is captured on the way (a tap in front of the proxy) and searched
//! for each secret and its upper/lower-case, reversed, base64, hex and md5 forms. Benign
//! statements return exactly what a direct connection returns.

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine;
use common::Harness;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};

const MASKED: &str = r#"
name = "masked"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:masked"
[[grant]]
privileges = ["SELECT"]
on = ["crm.*"]
[[mask]]
columns = ["crm.customers.email"]
method = "redact"
[[mask]]
columns = ["crm.customers.ssn"]
method = "hash"
[[mask]]
columns = ["crm.customers.card_number"]
method = "partial"
keep = 4
"#;

const SECRETS: &[&str] = &[
    "ada@example.com",
    "alan@example.com",
    "grace@example.com",
    "edsger@example.com",
    "078-05-1120",
    "219-09-9999",
    "457-55-5462",
    "123-45-6789",
    "4111111111111111",
    "5500005555555559",
    "340000000000009",
    "6011000000000004",
];

/// Every form of every secret the client must never see (md5 computed by Postgres).
async fn forbidden(admin: &Client) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in SECRETS {
        let md5: String = admin
            .query_one("SELECT md5($1)", &[s])
            .await
            .unwrap()
            .get(0);
        let forms = [
            s.to_string(),
            s.to_uppercase(),
            s.to_lowercase(),
            s.chars().rev().collect(),
            base64::engine::general_purpose::STANDARD.encode(s),
            hex::encode(s),
            md5,
        ];
        for f in forms {
            out.push((format!("{s} as {f}"), f.into_bytes()));
        }
    }
    out
}

/// Forwards one client connection to pgid, keeping every byte pgid sends back.
async fn tap(upstream: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
            .await
            .unwrap();
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = tokio::io::copy(&mut cr, &mut sw);
        let down = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = sr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                keep.lock().unwrap().extend_from_slice(&buf[..n]);
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::join!(up, down);
    });
    (port, seen)
}

async fn connect_via(port: u16, lease: &serde_json::Value) -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={port} dbname=app user={} password={} sslmode=disable",
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap()
    );
    common::connect(&dsn).await.unwrap()
}

fn text_rows(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Statements that try to get at masked values.
const ATTEMPTS: &[&str] = &[
    "SELECT email FROM crm.customers",
    "SELECT ssn, card_number FROM crm.customers",
    "SELECT * FROM crm.customers",
    "TABLE crm.customers",
    "SELECT email AS x FROM crm.customers",
    "SELECT c.ssn AS not_a_secret FROM crm.customers c",
    "SELECT \"email\" FROM \"crm\".\"customers\"",
    "select EMAIL from CRM.CUSTOMERS",
    "SELECT x FROM (SELECT email AS x FROM crm.customers) s",
    "WITH t AS (SELECT ssn FROM crm.customers) SELECT * FROM t",
    "SELECT o.id, c.card_number FROM crm.orders o JOIN crm.customers c ON c.id = o.customer_id",
    "SELECT DISTINCT email FROM crm.customers ORDER BY 1 LIMIT 2",
    "SELECT upper(email) FROM crm.customers",
    "SELECT lower(ssn) FROM crm.customers",
    "SELECT reverse(ssn) FROM crm.customers",
    "SELECT md5(ssn) FROM crm.customers",
    "SELECT encode(ssn::bytea, 'base64') FROM crm.customers",
    "SELECT encode(ssn::bytea, 'hex') FROM crm.customers",
    "SELECT ssn || '' FROM crm.customers",
    "SELECT substring(card_number from 1 for 12) FROM crm.customers",
    "SELECT left(card_number, 15) FROM crm.customers",
    "SELECT CASE WHEN id > 0 THEN email END FROM crm.customers",
    "SELECT coalesce(ssn, 'none') FROM crm.customers",
    "SELECT concat('<', email, '>') FROM crm.customers",
    "SELECT format('%s', ssn) FROM crm.customers",
    "SELECT replace(email, '@', ' at ') FROM crm.customers",
    "SELECT split_part(email, '@', 1) || '@' || split_part(email, '@', 2) FROM crm.customers",
    "SELECT string_agg(email, ',') FROM crm.customers",
    "SELECT array_agg(ssn) FROM crm.customers",
    "SELECT json_agg(c) FROM crm.customers c",
    "SELECT row_to_json(c) FROM crm.customers c",
    "SELECT to_json(c.*) FROM crm.customers c",
    "SELECT ROW(c.*) FROM crm.customers c",
    "SELECT c FROM crm.customers c",
    "SELECT json_build_object('s', ssn) FROM crm.customers",
    "SELECT (SELECT ssn FROM crm.customers ORDER BY id LIMIT 1)",
    "SELECT email FROM crm.customers UNION SELECT 'x'",
    "SELECT ssn FROM crm.customers INTERSECT SELECT ssn FROM crm.customers",
    "SELECT email FROM crm.customers EXCEPT SELECT 'nobody'",
    "SELECT * FROM (VALUES (1)) v(n), LATERAL (SELECT ssn FROM crm.customers LIMIT 1) l",
    "SELECT ssn::int FROM crm.customers",
    "SELECT id FROM crm.customers WHERE email::int > 0",
    "SELECT 1 / (length(ssn) - 11) FROM crm.customers",
    "SELECT pg_notify('leak', ssn) FROM crm.customers",
    "SELECT set_config('application_name', email, false) FROM crm.customers",
    "CREATE TEMP TABLE leak AS SELECT ssn FROM crm.customers",
    "SELECT ssn INTO TEMP leak2 FROM crm.customers",
    "CREATE TEMP VIEW leak3 AS SELECT ssn FROM crm.customers",
    "COPY crm.customers TO STDOUT",
    "COPY (SELECT email FROM crm.customers) TO STDOUT",
    "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'",
    "SELECT * FROM pg_catalog.pg_stats",
    "DECLARE leak CURSOR FOR SELECT ssn FROM crm.customers",
    "SELECT query_to_xml('SELECT ssn FROM crm.customers', true, true, '')",
    "EXPLAIN ANALYZE SELECT ssn FROM crm.customers WHERE ssn = '078-05-1120'",
    "SELECT * FROM crm.customer_contacts",
    "SELECT upper(v.email) FROM crm.customer_contacts v",
    "SELECT * FROM crm.contact_secrets",
    "SELECT s, card FROM crm.contact_secrets",
    "SELECT * FROM crm.contacts_again",
    "PREPARE leak_p AS SELECT upper(ssn), email FROM crm.customers",
    "EXECUTE leak_p",
    "SELECT 1; SELECT email FROM crm.customers; SELECT upper(ssn) FROM crm.customers",
    // Merged join columns: no single source column, so RowDescription names none.
    "SELECT email FROM crm.customers a FULL JOIN crm.customers b USING (email)",
    "SELECT * FROM crm.customers a NATURAL FULL JOIN crm.customers b",
    "SELECT j.ssn FROM (crm.customers a FULL JOIN crm.customers b USING (ssn)) j",
    "SELECT u.card_number FROM crm.customers a FULL JOIN crm.customers b USING (card_number) AS u",
    "SELECT * FROM crm.customers a LEFT JOIN crm.customers b USING (email, ssn)",
    "SELECT email FROM (VALUES ('x'::text)) v(email) FULL JOIN crm.customers USING (email)",
    "SELECT ssn FROM (SELECT 'x'::text AS ssn) s RIGHT JOIN crm.customers USING (ssn)",
    "SELECT * FROM (SELECT email FROM crm.customers a FULL JOIN crm.customers b USING (email)) s",
    "WITH t AS (SELECT * FROM crm.customers a NATURAL FULL JOIN crm.customers b) SELECT * FROM t",
    "SELECT ssn FROM crm.customers a FULL JOIN crm.customers b USING (ssn) UNION ALL SELECT 'x'",
    "SELECT upper(email) FROM crm.customers a FULL JOIN crm.customers b USING (email)",
    // Columns renamed by alias column lists.
    "SELECT upper(x) FROM crm.customers AS c(i, n, x)",
    "SELECT x::int FROM crm.customers AS c(i, n, e, x)",
    "SELECT j.x FROM (crm.customers CROSS JOIN (SELECT 1) o) AS j(a, b, x)",
    "SELECT x FROM crm.customers a(i, n, x) FULL JOIN crm.customers b(i, n, x) USING (x)",
    "SELECT x || '' FROM crm.customers c(i, n, e, s, x)",
    // Notifications and inline code.
    "LISTEN leak",
    "NOTIFY leak, 'x'",
    "SELECT pg_notify('leak', x) FROM crm.customers AS c(i, n, x)",
    "DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn FROM crm.customers LIMIT 1); END $$",
];

/// Statements a masked agent still runs exactly as a direct connection would.
const BENIGN: &[&str] = &[
    "SELECT id, name FROM crm.customers ORDER BY id",
    "SELECT count(*) FROM crm.customers",
    "SELECT count(*) FROM crm.customers WHERE email LIKE '%@example.com'",
    "SELECT name FROM crm.customers WHERE ssn = '078-05-1120'",
    "SELECT o.id, c.name FROM crm.orders o JOIN crm.customers c ON c.id = o.customer_id ORDER BY 1",
    "SELECT name FROM crm.customers ORDER BY email",
    "SELECT count(DISTINCT customer_id) FROM crm.orders",
    "SELECT id, name FROM crm.customer_contacts ORDER BY id",
    "SELECT id FROM crm.contact_secrets WHERE s IS NOT NULL ORDER BY id",
];

#[tokio::test(flavor = "multi_thread")]
async fn masked_columns_never_reach_the_client_in_clear() {
    let mut h = Harness::start(&[MASKED]).await;
    // Views over masked columns (and a view over such a view): their columns resolve to the base
    // columns they come from. Created before pgid (re)starts so the policy's grants cover them.
    let admin = common::connect(&h.admin_url).await.unwrap();
    admin
        .batch_execute(
            "CREATE VIEW crm.customer_contacts AS SELECT id, name, email FROM crm.customers;
             CREATE VIEW crm.contact_secrets AS
                 SELECT id, lower(ssn) AS s, card_number AS card FROM crm.customers;
             CREATE VIEW crm.contacts_again AS SELECT id, email FROM crm.customer_contacts;",
        )
        .await
        .unwrap();
    h.stop_pgid().await;
    h.start_pgid().await.unwrap();
    let lease = h.lease("agent:masked", json!({})).await;
    let (port, seen) = tap(h.proxy_port()).await;
    let c = connect_via(port, &lease).await;
    let forbidden = forbidden(&admin).await;
    let check = |label: &str| {
        let bytes = std::mem::take(&mut *seen.lock().unwrap());
        for (what, form) in &forbidden {
            assert!(
                !bytes.windows(form.len()).any(|w| w == &form[..]),
                "{label}: the client received {what}"
            );
        }
    };
    let mut runs = 0;
    let mut refused = 0;
    for sql in ATTEMPTS {
        // Simple protocol (text results).
        match c.simple_query(sql).await {
            Ok(_) => {}
            Err(e) => {
                if let Some(db) = e.as_db_error() {
                    if db.message().starts_with("pgid: mask:") {
                        assert_eq!(db.code().code(), "42501");
                        refused += 1;
                    }
                }
            }
        }
        c.simple_query("ROLLBACK").await.ok();
        check(&format!("simple: {sql}"));
        // Extended protocol, binary results.
        let _ = c.query(*sql, &[]).await;
        c.simple_query("ROLLBACK").await.ok();
        check(&format!("extended: {sql}"));
        runs += 2;
    }
    assert!(ATTEMPTS.len() >= 50, "{} statements", ATTEMPTS.len());
    assert!(refused > 5 && refused < ATTEMPTS.len(), "{refused} refused");
    eprintln!("{runs} runs, {refused} refused (simple protocol)");

    // Masked values decode as what the method makes of them.
    let row = c
        .query_one(
            "SELECT email, ssn, card_number, name FROM crm.customers WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "REDACTED");
    let hashed: String = row.get(1);
    assert!(hashed.starts_with("h_"), "{hashed}");
    assert_eq!(row.get::<_, String>(2), "****1111");
    assert_eq!(row.get::<_, String>(3), "Ada Lovelace");
    // Equal values hash equally, in text and binary results alike.
    let text = text_rows(
        c.simple_query("SELECT ssn FROM crm.customers WHERE id = 1")
            .await
            .unwrap(),
    );
    assert_eq!(text[0][0].as_deref(), Some(hashed.as_str()));

    // Benign statements: exactly what a direct connection returns.
    let direct = h.connect_lease_direct(&lease).await;
    for sql in BENIGN {
        let want = text_rows(direct.simple_query(sql).await.unwrap());
        let got = text_rows(
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        );
        assert_eq!(got, want, "{sql}");
        let got = c
            .query(*sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(got.len(), want.len(), "extended {sql}");
        check(sql);
    }

    // The audit names the masked columns each statement read.
    let records = h.audit_records();
    let d = records
        .iter()
        .find(|r| {
            r["kind"] == "statement"
                && r["statement"] == "SELECT ssn, card_number FROM crm.customers"
        })
        .unwrap();
    assert_eq!(
        d["masked"],
        json!(["crm.customers.card_number", "crm.customers.ssn"])
    );
}

/// Runs a client program; it must succeed. Returns its output.
async fn client(mut c: std::process::Command) -> String {
    let out = tokio::task::spawn_blocking(move || c.output().expect("start client"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_and_pgjdbc_decode_masked_values() {
    let h = Harness::start(&[MASKED]).await;
    let lease = h.lease("agent:masked", json!({})).await;
    let clients = common::repo_path("tests/clients");
    let expect = |name: &str, out: &str, runs: usize| {
        for s in SECRETS {
            assert!(!out.contains(s), "{name} received {s}:\n{out}");
        }
        assert!(
            out.matches("REDACTED").count() >= runs * 4,
            "{name}: masked emails missing:\n{out}"
        );
        assert!(
            out.contains("****1111"),
            "{name}: partial card missing:\n{out}"
        );
        assert!(out.contains("h_"), "{name}: hashed ssn missing:\n{out}");
        assert!(
            out.contains("Ada Lovelace") || name == "psycopg",
            "{name}:\n{out}"
        );
    };

    let python = clients.join(".venv/bin/python");
    assert!(python.exists(), "run scripts/setup --test (psycopg venv)");
    let mut py = std::process::Command::new(&python);
    py.arg(clients.join("masked_psycopg.py"))
        .arg(lease["dsn"].as_str().unwrap());
    let out = client(py).await;
    expect("psycopg", &out, 8);
    // Only the output built from a masked column is masked; the window count is not.
    assert!(out.contains("derived ('REDACTED', 4)"), "{out}");

    let jar = std::path::Path::new("/usr/share/java/postgresql.jar");
    assert!(jar.exists(), "run scripts/setup --test (pgjdbc)");
    let classes = h.state.path().join("java");
    std::fs::create_dir_all(&classes).unwrap();
    let mut javac = std::process::Command::new("javac");
    javac
        .arg("-cp")
        .arg(jar)
        .arg("-d")
        .arg(&classes)
        .arg(clients.join("MaskedWorkload.java"));
    client(javac).await;
    let mut java = std::process::Command::new("java");
    java.arg("-cp")
        .arg(format!("{}:{}", jar.display(), classes.display()))
        .arg("MaskedWorkload")
        .arg(format!(
            "jdbc:postgresql://127.0.0.1:{}/app",
            h.proxy_port()
        ))
        .arg(lease["username"].as_str().unwrap())
        .arg(lease["password"].as_str().unwrap());
    let out = client(java).await;
    expect("pgjdbc", &out, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execute_nobody_described_is_masked_all_the_same() {
    use bytes::{BufMut, BytesMut};
    use pgid::proxy::wire::framing::{Frames, MAX_MESSAGE_BYTES};
    use pgid::proxy::wire::{message, put_cstr};
    // Parse, Bind, Execute, Sync and no Describe: pgid learns the result's columns with a
    // Describe of its own, whose answer stays with pgid.
    let h = Harness::start(&[MASKED]).await;
    let lease = h.lease("agent:masked", json!({})).await;
    let mut s = common::raw_login(
        h.proxy_port(),
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
    )
    .await;
    let mut frames = Frames::new(MAX_MESSAGE_BYTES);
    for format in [0i16, 1] {
        let mut out = BytesMut::new();
        message(&mut out, b'P', |b| {
            put_cstr(b, "");
            put_cstr(b, "SELECT email, name FROM crm.customers ORDER BY id");
            b.put_i16(0);
        });
        message(&mut out, b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "");
            b.put_i16(0);
            b.put_i16(0);
            b.put_i16(1);
            b.put_i16(format);
        });
        message(&mut out, b'E', |b| {
            put_cstr(b, "");
            b.put_i32(0);
        });
        message(&mut out, b'S', |_| {});
        s.write_all(&out).await.unwrap();
        let mut rows = Vec::new();
        let mut others = Vec::new();
        loop {
            let m = frames.read(&mut s).await.unwrap();
            match m.tag {
                b'D' => rows.push(String::from_utf8_lossy(&m.body).into_owned()),
                b'Z' => break,
                t => others.push(t),
            }
        }
        assert_eq!(
            others, b"12C",
            "format {format}: only what the client asked for"
        );
        assert!(rows.len() >= 4, "{rows:?}");
        assert!(rows.iter().all(|r| r.contains("REDACTED")), "{rows:?}");
        assert!(rows.iter().any(|r| r.contains("Ada Lovelace")));
        for secret in SECRETS {
            assert!(rows.iter().all(|r| !r.contains(secret)), "{secret} leaked");
        }
    }
}
