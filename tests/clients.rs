//! Real client libraries through pgid: each runs a scripted workload against a direct connection
//! (same role, derived password) and through the proxy; the transcripts must be equal.

mod common;

use std::path::Path;
use std::process::Command;

use common::{repo_path, Harness, AGENT};
use serde_json::json;

struct Run {
    stdout: String,
    stderr: String,
}

async fn run(mut c: Command) -> Run {
    let out = tokio::task::spawn_blocking(move || c.output().expect("start client"))
        .await
        .unwrap();
    let r = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        r.stdout,
        r.stderr
    );
    r
}

/// Backend PIDs differ between any two connections; everything else must match.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_string();
        if let Some(i) = l.find("PID ") {
            let digits: String = l[i + 4..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            l = l.replacen(&format!("PID {digits}"), "PID <n>", 1);
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

async fn compare(name: &str, direct: Command, proxied: Command, must_contain: &[&str]) {
    let d = run(direct).await;
    let p = run(proxied).await;
    for needle in must_contain {
        assert!(
            d.stdout.contains(needle) || d.stderr.contains(needle),
            "{name}: direct run lacks {needle:?}:\n{}\n{}",
            d.stdout,
            d.stderr
        );
    }
    assert_eq!(
        normalise(&p.stdout),
        normalise(&d.stdout),
        "{name}: stdout differs through pgid"
    );
    assert_eq!(
        normalise(&p.stderr),
        normalise(&d.stderr),
        "{name}: stderr differs through pgid"
    );
}

fn tool(path: &Path, what: &str) -> std::path::PathBuf {
    assert!(
        path.exists(),
        "{what} is not installed at {}: run scripts/setup --test",
        path.display()
    );
    path.to_path_buf()
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_psycopg_node_postgres_and_pgjdbc_see_what_a_direct_connection_sees() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let proxy_dsn = lease["dsn"].as_str().unwrap().to_string();
    let direct_dsn = h.direct_dsn(&lease);
    let clients = repo_path("tests/clients");

    // psql, plaintext on loopback and TLS verified against pgid's CA.
    let notes = h.state.path().join("notes.tsv");
    std::fs::write(&notes, "3\tfrom psql copy\n4\tsecond row\n").unwrap();
    // \copy does not expand psql variables: the script gets the file's path written in.
    let script = h.state.path().join("workload.sql");
    let text = std::fs::read_to_string(clients.join("workload.sql")).unwrap();
    std::fs::write(
        &script,
        text.replace(":'notes'", &format!("'{}'", notes.display())),
    )
    .unwrap();
    let psql = |dsn: &str| {
        let mut c = Command::new("psql");
        c.args(["-X", "-f"]).arg(&script).arg(dsn);
        c
    };
    compare(
        "psql",
        psql(&direct_dsn),
        psql(&proxy_dsn),
        &[
            "Ada Lovelace",
            "from psql copy",
            "hello from psql",
            "division by zero",
            "still here",
            "payload",
        ],
    )
    .await;
    let verified = format!(
        "{proxy_dsn}?sslmode=verify-full&sslrootcert={}",
        h.ca_path().display()
    );
    compare(
        "psql over TLS",
        psql(&direct_dsn),
        psql(&verified),
        &["Ada Lovelace"],
    )
    .await;
    // libpq refuses to go on unless the server binds SCRAM to the TLS channel.
    compare(
        "psql over TLS with channel_binding=require",
        psql(&direct_dsn),
        psql(&format!("{verified}&channel_binding=require")),
        &["Ada Lovelace"],
    )
    .await;

    // psycopg 3 (pipeline mode, server-side cursor, COPY, notices, LISTEN/NOTIFY)
    let python = tool(&clients.join(".venv/bin/python"), "the psycopg venv");
    let py = |dsn: &str| {
        let mut c = Command::new(&python);
        c.arg(clients.join("workload_psycopg.py")).arg(dsn);
        c
    };
    compare(
        "psycopg",
        py(&direct_dsn),
        py(&proxy_dsn),
        &[
            "server-side cursor rows: 23",
            "note from psycopg",
            "error 22012",
            "notify chan payload",
        ],
    )
    .await;

    // node-postgres
    tool(&clients.join("node_modules/pg"), "node-postgres");
    let node = |dsn: &str| {
        let mut c = Command::new("node");
        c.arg("--no-deprecation")
            .arg(clients.join("workload_pg.mjs"))
            .arg(dsn)
            .current_dir(&clients);
        c
    };
    compare(
        "node-postgres",
        node(&direct_dsn),
        node(&proxy_dsn),
        &[
            "[{\"n\":42}]",
            "error 22012",
            "notify chan payload",
            "[10,20,30]",
        ],
    )
    .await;

    // pgjdbc (Debian's libpostgresql-jdbc-java) with the machine's Java
    let jar = tool(Path::new("/usr/share/java/postgresql.jar"), "pgjdbc");
    let classes = h.state.path().join("java");
    std::fs::create_dir_all(&classes).unwrap();
    let mut javac = Command::new("javac");
    javac
        .arg("-cp")
        .arg(&jar)
        .arg("-d")
        .arg(&classes)
        .arg(clients.join("Workload.java"));
    run(javac).await;
    let user = lease["username"].as_str().unwrap();
    let cp = format!("{}:{}", jar.display(), classes.display());
    let java = |port: u16, password: &str| {
        let mut c = Command::new("java");
        c.args([
            "-cp",
            &cp,
            "Workload",
            &format!("jdbc:postgresql://127.0.0.1:{port}/app"),
            user,
            password,
        ]);
        c
    };
    let direct_password = h.database_password(lease["lease_id"].as_str().unwrap());
    compare(
        "pgjdbc",
        java(h.pg.port, &direct_password),
        java(h.proxy_port(), lease["password"].as_str().unwrap()),
        &[
            "fetched sum 55",
            "error 22012",
            "error 42501",
            "hello from jdbc",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_as_the_password_over_tls_issues_a_lease_inline() {
    let h = Harness::start(&[AGENT]).await;
    let token = h.token("agent:app");
    let conn = |sslmode: &str, password: &str, extra: &str| {
        let mut c = Command::new("psql");
        c.args(["-X", "-At", "-c", "SELECT current_user"])
            .arg(format!(
                "host=127.0.0.1 port={} user=agent dbname=app sslmode={sslmode} sslrootcert={} {extra}",
                h.proxy_port(),
                h.ca_path().display()
            ))
            .env("PGPASSWORD", password);
        c
    };
    let out = tokio::task::spawn_blocking({
        let mut c = conn("verify-full", &token, "");
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(user.starts_with("pgid_app_agent_"), "{user}");
    let su = h.superuser().await;
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM pgid.leases WHERE role_name = $1 AND subject = 'agent:app'",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the inline lease is recorded like a broker lease");

    // Choosing a policy with options, a bad token, and a token without TLS.
    let out = tokio::task::spawn_blocking({
        let mut c = conn(
            "verify-full",
            &token,
            "options='-c pgid.policy=nonexistent'",
        );
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no policy matches"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    let out = tokio::task::spawn_blocking({
        let mut c = conn("verify-full", &forged, "");
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("token refused"),
        "{err}"
    );
    assert!(!err.contains(&token[..30]), "the token is not echoed");
    let out = tokio::task::spawn_blocking({
        let mut c = conn("disable", &token, "");
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "a token is never accepted without TLS"
    );
}
