//! The statement audit through the real proxy: decision and outcome records (parameters,
//! errors, pipelines, COPY), policy choices (no parameters, normalised literals), the
//! `pgid.audit_events` table sink and what happens when it fails, `pgid audit tail`, and a
//! `kill -9` of pgid in the middle of a pgbench run.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Harness;
use serde_json::{json, Value};

const WRITER: &str = r#"
name = "writer"
database = "app"
ttl = "15m"
max_connections = 20
[identity]
subject = "agent:writer"
[[grant]]
privileges = ["SELECT", "INSERT", "UPDATE"]
on = ["crm.notes", "crm.tickets"]
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
"#;

const QUIET: &str = r#"
name = "quiet"
database = "app"
ttl = "15m"
[identity]
subject = "agent:quiet"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[audit]
parameters = false
literals = "normalize"
"#;

fn key(d: &Value) -> (String, u64) {
    (
        d["session_id"].as_str().unwrap().to_string(),
        d["seq"].as_u64().unwrap(),
    )
}

/// Runs `pgid audit <args>`, expects exit 0, returns its output.
fn audit_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = pgid_bin().arg("audit").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `pgid audit verify FILE` exits 0.
fn verify_file(file: &std::path::Path) {
    audit_cli(&[std::ffi::OsStr::new("verify"), file.as_os_str()]);
}

fn pgid_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgid"))
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_are_recorded_with_parameters_and_outcomes() {
    let h = Harness::start(&[WRITER, QUIET]).await;
    let lease = h.lease("agent:writer", json!({})).await;
    let id = lease["lease_id"].as_str().unwrap();
    let c = h.connect_proxy(&lease).await.unwrap();

    // Extended protocol with parameters, text and binary.
    let rows = c
        .query(
            "SELECT name FROM crm.customers WHERE id = $1 AND name <> $2",
            &[&1i32, &"nobody"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    // An error, and a pipeline where the statement after it is skipped by the server.
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    let s1 = c.prepare("SELECT 1/$1::int").await.unwrap();
    let s2 = c.prepare("SELECT 'after'::text").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let (a, b) = tokio::join!(c.query(&s1, &[&0i32]), c.query(&s2, &[]));
    assert!(a.is_err());
    assert!(b.is_err());
    c.batch_execute("ROLLBACK").await.unwrap();
    // Rows affected, multi-statement, COPY, NULL parameter.
    c.execute(
        "INSERT INTO crm.notes (customer_id, body) VALUES ($1, 'audited'), ($1, $2)",
        &[&2i32, &"second"],
    )
    .await
    .unwrap();
    c.simple_query("UPDATE crm.tickets SET status = status WHERE id > 0; SELECT 1")
        .await
        .unwrap();
    c.execute(
        "UPDATE crm.notes SET body = body WHERE body = $1 OR $2::text IS NULL",
        &[&"audited", &None::<String>],
    )
    .await
    .unwrap();
    drop(c);

    let (decisions, outcomes) = h.statement_audit(id).await;
    let find = |text: &str| -> (&Value, &Value) {
        let d = decisions
            .iter()
            .find(|d| d["statement"] == text)
            .unwrap_or_else(|| panic!("no record of {text}"));
        (d, &outcomes[&key(d)])
    };
    let (d, o) = find("SELECT name FROM crm.customers WHERE id = $1 AND name <> $2");
    assert_eq!(d["protocol"], "extended");
    assert_eq!(d["parameters"][1], "nobody");
    // tokio-postgres sends parameters in binary: decoded by the types Postgres described.
    assert_eq!(d["parameters"][0], "1");
    assert_eq!(d["tables"], json!(["crm.customers"]));
    assert_eq!(
        (o["result"].as_str(), o["rows"].as_u64()),
        (Some("ok"), Some(1))
    );

    let (_, o) = find("SELECT 1/0");
    assert_eq!(
        (o["result"].as_str(), o["sqlstate"].as_str()),
        (Some("error"), Some("22012"))
    );
    let (_, o) = find("SELECT 1/$1::int");
    assert_eq!(o["result"], "error");
    let (_, o) = find("SELECT 'after'::text");
    assert_eq!(
        (o["result"].as_str(), o["sqlstate"].as_str()),
        (Some("error"), Some("25P02")),
        "the transaction was aborted by the error before it"
    );

    let (d, o) = find("INSERT INTO crm.notes (customer_id, body) VALUES ($1, 'audited'), ($1, $2)");
    assert!(d["classes"].as_array().unwrap().contains(&json!("INSERT")));
    assert_eq!(o["rows"], 2);
    let (d, o) = find("UPDATE crm.tickets SET status = status WHERE id > 0; SELECT 1");
    assert_eq!(d["protocol"], "simple");
    assert_eq!(d["classes"], json!(["SELECT", "UPDATE"]));
    assert!(o["rows"].as_u64().unwrap() >= 2, "{o}");
    let (d, _) = find("UPDATE crm.notes SET body = body WHERE body = $1 OR $2::text IS NULL");
    assert_eq!(d["parameters"], json!(["audited", null]));

    // A policy that keeps neither parameter values nor literals.
    let quiet = h.lease("agent:quiet", json!({})).await;
    let c = h.connect_proxy(&quiet).await.unwrap();
    c.query("SELECT name FROM crm.customers WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    c.simple_query("SELECT name FROM crm.customers WHERE email = 'grace@example.com'")
        .await
        .unwrap();
    drop(c);
    let (decisions, _) = h.statement_audit(quiet["lease_id"].as_str().unwrap()).await;
    let text = serde_json::to_string(&decisions).unwrap();
    assert!(!text.contains("grace@example.com"), "{text}");
    assert!(decisions.iter().all(|d| d.get("parameters").is_none()));
    assert!(decisions
        .iter()
        .any(|d| d["statement"] == "SELECT name FROM crm.customers WHERE email = $1"));

    // The whole file verifies, and `audit tail` finds what a reviewer asks for.
    let file = h.state_dir().join("audit.jsonl");
    verify_file(&file);
    let tail = |args: &[&str]| {
        let mut all = vec!["tail", "--json", "--file", file.to_str().unwrap()];
        all.extend_from_slice(args);
        audit_cli(&all)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let got = tail(&["-n", "1000", "--lease", id, "--kind", "statement"]);
    assert_eq!(got.len(), decisions_of(&h, id));
    assert!(got
        .iter()
        .all(|r| r["lease_id"] == id && r["kind"] == "statement"));
    let got = tail(&["-n", "2", "--subject", "agent:q*"]);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r["subject"] == "agent:quiet"));
    let bad = pgid_bin()
        .args(["audit", "tail", "--decision", "maybe", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

fn decisions_of(h: &Harness, lease: &str) -> usize {
    h.audit_records()
        .iter()
        .filter(|r| r["lease_id"] == lease && r["kind"] == "statement")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_tail_follows_new_records() {
    let h = Harness::start(&[WRITER]).await;
    let lease = h.lease("agent:writer", json!({})).await;
    let file = h.state_dir().join("audit.jsonl");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgid"))
        .args([
            "audit",
            "tail",
            "--follow",
            "-n",
            "0",
            "--decision",
            "deny",
            "--file",
        ])
        .arg(&file)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    assert!(c.simple_query("DROP TABLE crm.notes").await.is_err());
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("tail --follow printed nothing")
        .unwrap()
        .unwrap();
    assert!(line.contains("decision=deny"), "{line}");
    assert!(line.contains("DROP TABLE crm.notes"), "{line}");
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_sink_mirrors_the_file_and_a_failing_sink_refuses_statements() {
    let h = Harness::start_with(&[WRITER], "[audit]\ntable = true\n").await;
    let lease = h.lease("agent:writer", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    c.simple_query("SELECT count(*) FROM crm.customers")
        .await
        .unwrap();
    let su = h.superuser().await;

    // The sink goes away: statements are refused, with the reason, and the session survives.
    su.batch_execute("ALTER TABLE pgid.audit_events RENAME TO audit_events_away")
        .await
        .unwrap();
    let e = c
        .simple_query("SELECT count(*) FROM crm.notes")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501");
    assert!(db.message().starts_with("pgid: audit:"), "{}", db.message());
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .starts_with("pgid: audit:"));
    su.batch_execute("ALTER TABLE pgid.audit_events_away RENAME TO audit_events")
        .await
        .unwrap();
    // Back: statements run again, and the table caught up with everything the file has.
    let n: i64 = c
        .query_one("SELECT count(*) FROM crm.notes", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 0);
    drop(c);
    let _ = h.statement_audit(lease["lease_id"].as_str().unwrap()).await;
    let file_lines: Vec<String> = std::fs::read_to_string(h.state_dir().join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut table_lines: Vec<String> = Vec::new();
    let mut caught_up = false;
    for _ in 0..50 {
        table_lines = su
            .query("SELECT line FROM pgid.audit_events ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if table_lines.len() >= file_lines.len() {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        caught_up,
        "table {} < file {}",
        table_lines.len(),
        file_lines.len()
    );
    assert_eq!(table_lines[..file_lines.len()], file_lines[..]);
    // The decisions that reached the file before the table failed are closed as not run.
    let (decisions, outcomes) = h.statement_audit(lease["lease_id"].as_str().unwrap()).await;
    let results: Vec<(String, Option<String>)> = decisions
        .iter()
        .map(|d| {
            let o = &outcomes[&key(d)];
            (
                o["result"].as_str().unwrap().to_string(),
                o["sqlstate"].as_str().map(str::to_string),
            )
        })
        .collect();
    let ran = results.iter().filter(|r| r.0 == "ok").count();
    let refused = results
        .iter()
        .filter(|r| r.0 == "not_run" && r.1.as_deref() == Some("42501"))
        .count();
    assert_eq!((ran, refused, results.len()), (2, 2, 4), "{results:?}");

    // `pgid audit verify --table`: intact; a column edited or a row deleted is found.
    let verify_table = || {
        let out = pgid_bin()
            .args(["audit", "verify", "--table", "--config"])
            .arg(&h.config_path)
            .env("PGID_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = verify_table();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
    let victim: i64 = su
        .query_one(
            "SELECT id FROM pgid.audit_events WHERE kind = 'statement' ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    su.execute(
        "UPDATE pgid.audit_events SET statement = 'SELECT 1' WHERE id = $1",
        &[&victim],
    )
    .await
    .unwrap();
    let (code, _, err) = verify_table();
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("id {victim}: a column differs")),
        "{err}"
    );
    su.execute(
        "UPDATE pgid.audit_events SET statement = line::jsonb->>'statement' WHERE id = $1",
        &[&victim],
    )
    .await
    .unwrap();
    su.execute("DELETE FROM pgid.audit_events WHERE id = $1", &[&victim])
        .await
        .unwrap();
    let (code, _, err) = verify_table();
    assert_eq!(code, Some(1));
    assert!(err.contains("chain broken"), "{err}");
}

/// `pgid serve` with `config`, once its proxy accepts connections on `port`.
async fn serve(config: &std::path::Path, port: u16) -> std::process::Child {
    let child = pgid_bin()
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = common::eventually(Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "pgid serve did not start");
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_pgbench_loses_no_statement_that_reached_postgres() {
    let mut h = Harness::start(&[WRITER]).await;
    let lease = h.lease("agent:writer", json!({})).await;
    h.stop_pgid().await;
    // The same configuration and state, as a separate process on a known port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = std::fs::read_to_string(&h.config_path).unwrap().replacen(
        "[proxy]\nlisten = \"127.0.0.1:0\"",
        &format!("[proxy]\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(&h.config_path, config).unwrap();
    let mut pgid = serve(&h.config_path, port).await;

    let script = h.state.path().join("insert.sql");
    std::fs::write(
        &script,
        "\\set n random(1, 2000000000)\nINSERT INTO crm.notes (customer_id, body) VALUES (1, 'k' || :n);\n",
    )
    .unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={port} dbname=app user={} password={} sslmode=disable",
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap()
    );
    let pgbench = std::process::Command::new("pgbench")
        .args(["-n", "-M", "simple", "-c", "4", "-j", "2", "-T", "20", "-f"])
        .arg(&script)
        .arg(&dsn)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench (postgresql-contrib / postgresql client tools)");
    let su = h.superuser().await;
    let started = common::eventually(Duration::from_secs(20), || {
        let su = &su;
        async move {
            let n: i64 = su
                .query_one("SELECT count(*) FROM crm.notes WHERE body LIKE 'k%'", &[])
                .await
                .unwrap()
                .get(0);
            n > 500
        }
    })
    .await;
    assert!(started, "pgbench made no progress through pgid");
    tokio::time::sleep(Duration::from_millis(700)).await;
    pgid.kill().unwrap(); // SIGKILL
    pgid.wait().unwrap();
    let mut pgbench = pgbench;
    let _ = pgbench.kill();
    let _ = pgbench.wait();

    // The next start cuts an incomplete last record and says so. (`kill -9` tears one only
    // sometimes: the test tears one itself when the kill did not, so the recovery runs every time.)
    let file = h.state_dir().join("audit.jsonl");
    let mut bytes = std::fs::read(&file).unwrap();
    if bytes.ends_with(b"\n") {
        let torn = b"{\"time\":\"2026-01-01T00:00:00Z\",\"kind\":\"statement\",\"stat";
        bytes.extend_from_slice(torn);
        std::fs::write(&file, &bytes).unwrap();
    }
    let out = pgid_bin()
        .args(["audit", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a torn last record fails verification until pgid recovers it"
    );
    let mut again = serve(&h.config_path, port).await;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
    assert!(again.wait().unwrap().success());
    verify_file(&file);
    let recovered: Vec<Value> = h
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "audit.recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0]["cut_bytes"].as_u64().unwrap() > 0);

    // The value each recorded INSERT carried: `… 'k' || <n>)…`.
    let recorded: std::collections::HashSet<String> = h
        .audit_records()
        .iter()
        .filter(|r| r["kind"] == "statement" && r["decision"] == "allow")
        .filter_map(|r| {
            let text = r["statement"].as_str()?;
            let at = text.find("'k' || ")? + "'k' || ".len();
            Some(
                text[at..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect(),
            )
        })
        .collect();
    let bodies: Vec<String> = su
        .query("SELECT body FROM crm.notes WHERE body LIKE 'k%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(bodies.len() > 500);
    let missing: Vec<&String> = bodies
        .iter()
        .filter(|b| !recorded.contains(&b[1..]))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} inserted rows have no audit record, e.g. {:?}",
        missing.len(),
        bodies.len(),
        &missing[..missing.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_files_verify_together_and_each_alone() {
    let h = Harness::start_with(&[WRITER], "[audit]\nrotate_size = \"4KB\"\n").await;
    let lease = h.lease("agent:writer", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    for i in 0..40 {
        c.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    drop(c);
    let _ = h.statement_audit(lease["lease_id"].as_str().unwrap()).await;
    let mut rotated: Vec<std::path::PathBuf> = std::fs::read_dir(h.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("audit.") && name.ends_with(".jsonl") && name != "audit.jsonl"
        })
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 3, "{rotated:?}");
    let current = h.state_dir().join("audit.jsonl");
    let mut all: Vec<&std::ffi::OsStr> = vec![std::ffi::OsStr::new("verify")];
    all.extend(rotated.iter().map(|p| p.as_os_str()));
    all.push(current.as_os_str());
    let out = audit_cli(&all);
    assert!(out.starts_with("ok:"), "{out}");
    // The newest file alone verifies from its continuation record, and says so.
    let out = audit_cli(&[std::ffi::OsStr::new("verify"), current.as_os_str()]);
    assert!(out.contains("continues a rotated chain"), "{out}");
    // A file left out of the sequence breaks the link.
    let out = pgid_bin()
        .args(["audit", "verify"])
        .arg(&rotated[0])
        .arg(&rotated[2])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1: chain broken"));
    // Every statement is still recorded exactly once across the files.
    let mut count = 0;
    for f in rotated.iter().chain([&current]) {
        count += std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"kind\":\"statement\"") && l.contains("\"SELECT 7\""))
            .count();
    }
    assert_eq!(count, 1);
}
