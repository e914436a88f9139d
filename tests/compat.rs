//! Indistinguishable from Postgres (issue 13): the client libraries that showed a difference, each
//! run against a direct connection (the lease's own role, derived password) and through pgid; the
//! transcripts must be equal.
//! - psycopg: the backend pid clients are given (notifications, cancel, pg_terminate_backend);
//!   client encodings other than UTF-8 (data, identifiers, error texts, masking).
//! - psql: statements the server cannot parse are answered as the server answers them.
//! - node-postgres: a pooled upstream connection whose backend died is never handed out.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{eventually, repo_path, Harness, AGENT};
use serde_json::{json, Value};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(mut c: Command) -> Run {
    let out = tokio::task::spawn_blocking(move || c.output().expect("start client"))
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn clients() -> PathBuf {
    repo_path("tests/clients")
}

fn python() -> PathBuf {
    let p = clients().join(".venv/bin/python");
    assert!(p.exists(), "psycopg venv missing: run scripts/setup --test");
    p
}

fn psycopg(script: &str, dsn: &str, encoding: &str) -> Command {
    let mut c = Command::new(python());
    c.arg(clients().join(script))
        .arg(dsn)
        .env("PGCLIENTENCODING", encoding);
    c
}

/// Runs `direct` and `proxied`; both must succeed with the same output, which contains `needles`.
async fn same(name: &str, direct: Command, proxied: Command, needles: &[&str]) -> String {
    let d = run(direct).await;
    let p = run(proxied).await;
    assert!(d.ok, "{name} direct failed:\n{}\n{}", d.stdout, d.stderr);
    assert!(
        p.ok,
        "{name} through pgid failed:\n{}\n{}",
        p.stdout, p.stderr
    );
    for n in needles {
        assert!(
            d.stdout.contains(n),
            "{name}: direct lacks {n:?}:\n{}",
            d.stdout
        );
    }
    assert_eq!(
        p.stdout, d.stdout,
        "{name}: stdout differs through pgid (stderr through pgid:\n{}\ndirect:\n{})",
        p.stderr, d.stderr
    );
    assert_eq!(p.stderr, d.stderr, "{name}: stderr differs through pgid");
    p.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_is_given_its_real_backend() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let script = "compat_backend.py";
    same(
        "psycopg backend",
        psycopg(script, &h.direct_dsn(&lease), "UTF8"),
        psycopg(script, lease["dsn"].as_str().unwrap(), "UTF8"),
        &[
            "BackendKeyData pid is pg_backend_pid(): True",
            "notification mine from this session: True from the other: False",
            "notification theirs from this session: False from the other: True",
            "cancelled: canceling statement due to user request",
            "terminated: True",
            "the terminated session is gone",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_works_in_ascii_safe_client_encodings() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let dsn = lease["dsn"].as_str().unwrap();
    for encoding in ["LATIN9", "WIN1252", "UTF8"] {
        same(
            encoding,
            psycopg("compat_encoding.py", &h.direct_dsn(&lease), encoding),
            psycopg("compat_encoding.py", dsn, encoding),
            &[
                "['prix €', 'param'] ('café €', '€ 12,50')",
                "binary: ('ünï €', 'Ÿ€')",
                "[('payé 7 €',), ('reçu 5 €',)]",
                "InvalidTextRepresentation 22P02 invalid input syntax for type integer: \"x€\" 8",
                "UndefinedTable 42P01 relation \"tablé€\" does not exist 15",
                "SyntaxError 42601 syntax error at or near \"FROM\" 18",
                "SyntaxError 42601 syntax error at end of input 14",
                "session still usable: ok €",
            ],
        )
        .await;
    }

    // Encodings pgid cannot read as the server does are refused with a clear error: at login,
    // and by SET without losing the session.
    let login = "import sys, psycopg\n\
        try:\n    psycopg.connect(sys.argv[1])\nexcept psycopg.OperationalError as e:\n    print(e)\n";
    let mut c = Command::new(python());
    c.args(["-c", login, dsn]).env("PGCLIENTENCODING", "SJIS");
    let out = run(c).await;
    assert!(
        out.stdout
            .contains("pgid: client_encoding SJIS is not supported"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let set = "import sys, psycopg\n\
        c = psycopg.connect(sys.argv[1], autocommit=True)\n\
        try:\n    c.execute(\"SET client_encoding = 'SJIS'\")\nexcept psycopg.Error as e:\n    print(e.sqlstate, e)\n\
        print('still', c.info.encoding, c.execute('SELECT 1').fetchone()[0])\n";
    let mut c = Command::new(python());
    c.args(["-c", set, dsn]);
    let out = run(c).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("client_encoding SJIS is not ASCII-safe")
            && out.stdout.contains("still utf-8 1"),
        "{}",
        out.stdout
    );
}

/// A partial and a hashed mask over values with non-ASCII characters: a LATIN9 client sees the
/// same masked text as a UTF-8 client, in its own encoding.
#[tokio::test(flavor = "multi_thread")]
async fn masks_answer_in_the_clients_encoding() {
    const MASKED: &str = r#"
name = "masked-enc"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:masked"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[[mask]]
columns = ["crm.customers.email"]
method = "partial"
keep = 8
[[mask]]
columns = ["crm.customers.name"]
method = "hash"
"#;
    let h = Harness::start(&[MASKED]).await;
    h.superuser()
        .await
        .batch_execute(
            "INSERT INTO crm.customers (id, name, email) VALUES (900, 'Zoë Müller', 'zoë@exämple.€u')",
        )
        .await
        .unwrap();
    let lease = h.lease("agent:masked", json!({})).await;
    let read = "import sys, psycopg\n\
        c = psycopg.connect(sys.argv[1], autocommit=True)\n\
        print(c.execute('SELECT name, email FROM crm.customers WHERE id = 900').fetchone())\n\
        print(c.cursor(binary=True).execute('SELECT name, email FROM crm.customers WHERE id = 900').fetchone())\n";
    let mut seen = Vec::new();
    for encoding in ["UTF8", "LATIN9", "WIN1252"] {
        let mut c = Command::new(python());
        c.args(["-c", read, lease["dsn"].as_str().unwrap()])
            .env("PGCLIENTENCODING", encoding);
        let out = run(c).await;
        assert!(out.ok, "{encoding}: {}{}", out.stdout, out.stderr);
        seen.push(out.stdout);
    }
    assert!(seen[0].contains("'****ämple.€u')"), "{}", seen[0]);
    assert!(seen[0].contains("('h_"), "{}", seen[0]);
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "every encoding sees the same masked values: {seen:?}"
    );
}

/// psql, in UTF-8 and LATIN9: every statement of the file fails to parse (alone, or with others
/// in one Query); the client sees what the server says — SQLSTATE, message, position (psql's
/// `LINE …` and caret) — and pgid forwarded none of them. (pg_query is PostgreSQL 18's parser:
/// where a newer grammar words an error differently — `ALTER TYPE … DROP VALUE` is 0A000 in 18,
/// a syntax error in 15, and `CREATE ASSERTION` has a position in 18 only — the client gets the newer wording; the statement fails either way.)
#[tokio::test(flavor = "multi_thread")]
async fn psql_gets_the_servers_syntax_errors() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let statements = [
        "SELEC 1;",
        "SELECT 1 +;",
        "SELECT * FROM crm.customers WHERE;",
        "SELECT 'é€' FROM FROM;",
        "SELECT 1,\n  2 FROM\n  WHERE x;",
        "SELECT 1 \\; SELECT 'é' + + ;",
        "INSERT INTO crm.notes (body) VALUES ('€') RETURNING;",
        "SELECT count(*) OVER (ROWS UNBOUNDED FOLLOWING) FROM crm.customers;",
        "SELECT count(*) OVER (ROWS BETWEEN CURRENT ROW AND UNBOUNDED PRECEDING) FROM crm.notes;",
        "SELECT UNIQUE (SELECT 1);",
        "SELECT 1::float(0);",
        "SELECT 1::float(60);",
        "GRANT SELECT ON crm.notes TO none;",
        "CREATE TABLE t (a int) PARTITION BY HASH (a) PARTITION OF x FOR VALUES WITH (MODULUS 2, MODULUS 3);",
        "SELECT $1 $2;",
        "DELETE FROM crm.notes WHERE id IN (SELECT 1 FROM);",
    ];
    let mut script = String::from("\\set ON_ERROR_STOP off\n");
    for s in statements {
        script.push_str(s);
        script.push_str("\n\\echo sqlstate :LAST_ERROR_SQLSTATE\n");
    }
    script.push_str("SELECT count(*) AS notes FROM crm.notes;\n");
    let utf8 = h.state.path().join("syntax.sql");
    std::fs::write(&utf8, &script).unwrap();
    // The same file in LATIN9: é is 0xE9, € is 0xA4.
    let latin9 = h.state.path().join("syntax-latin9.sql");
    let bytes: Vec<u8> = script
        .chars()
        .map(|c| match c {
            'é' => 0xE9,
            '€' => 0xA4,
            c => u8::try_from(c as u32).expect("ASCII"),
        })
        .collect();
    std::fs::write(&latin9, bytes).unwrap();
    let before = h.count("SELECT count(*) FROM crm.notes").await;
    for (file, encoding) in [(&utf8, "UTF8"), (&latin9, "LATIN9")] {
        let psql = |dsn: &str| {
            let mut c = Command::new("psql");
            c.args(["-X", "-f"])
                .arg(file)
                .arg(dsn)
                .env("PGCLIENTENCODING", encoding);
            c
        };
        let out = same(
            encoding,
            psql(&h.direct_dsn(&lease)),
            psql(lease["dsn"].as_str().unwrap()),
            &[
                "sqlstate 42601",
                "sqlstate 42P20",
                "sqlstate 0A000",
                "sqlstate 22023",
            ],
        )
        .await;
        assert_eq!(out.matches("sqlstate").count(), statements.len());
    }
    // Nothing was forwarded: the direct runs inserted nothing either (every INSERT failed to
    // parse), and pgid's records say pgid answered each itself.
    assert_eq!(h.count("SELECT count(*) FROM crm.notes").await, before);
    let syntax = h
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "statement" && r["rule"] == "syntax")
        .count();
    assert!(
        syntax >= 2 * statements.len(),
        "{syntax} syntax refusals recorded"
    );
}

/// node-postgres through pgid after the backend of a pooled upstream connection was terminated
/// (a DBA, a restart, a failover): the next client gets a live connection, never the dead one.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_pooled_connection_is_never_handed_out() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let dsn = lease["dsn"].as_str().unwrap().to_string();
    let node = |dsn: &str| {
        let mut c = Command::new("node");
        c.arg(clients().join("compat_pool.mjs"))
            .arg(dsn)
            .current_dir(clients());
        c
    };
    let answer = |r: &Run| -> Value {
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|_| panic!("{}{}", r.stdout, r.stderr))
    };
    let first = run(node(&dsn)).await;
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    let first = answer(&first);
    assert_eq!(
        first["key"], true,
        "BackendKeyData carries the real pid: {first}"
    );
    let pid = first["pid"].as_i64().unwrap();

    // The connection is back in pgid's pool once it has been reset; then it is terminated.
    let su = h.superuser().await;
    let pooled = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'idle' AND query = 'DISCARD ALL'"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.count(&pooled).await == 1
        })
        .await,
        "the upstream connection went back to the pool"
    );
    su.execute(&format!("SELECT pg_terminate_backend({pid}, 10000)"), &[])
        .await
        .unwrap();
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.count(&gone).await == 0
        })
        .await
    );

    for _ in 0..3 {
        let next = run(node(&dsn)).await;
        assert!(
            next.ok,
            "the next client got a dead connection: {}{}",
            next.stdout, next.stderr
        );
        let next = answer(&next);
        assert_eq!(next["two"], 2);
        assert_ne!(next["pid"].as_i64().unwrap(), pid);
    }
}
