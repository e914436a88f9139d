//! node-postgres's own integration suite (the `pg` package's `test/integration`, vendored in
//! `tests/clients/node-postgres`), run file by file with `node <file>` and `PG*` pointing first
//! directly at Postgres, as a login role that is a member of the policy's group role (exactly the
//! lease's grants), then through pgid with one lease of that policy for the whole run, as a CI
//! job would hold it. Every file that passes directly must pass through pgid. The server takes
//! TLS (the suite's TLS files run too: pgid answers SSLRequest with its own certificate), and its
//! `authentication_timeout` matches pgid's handshake timeout. The lists below are exact: a file
//! listed as failing that passes, or one failing that is not listed, fails the test, so they
//! cannot rot.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{repo_path, Harness};
use serde_json::json;

const SUBJECT: &str = "ci:node-postgres";

/// What an application needs to run the suite. Grants: none. It creates only temporary tables,
/// and PUBLIC has TEMPORARY on the database (with typed grants, `TEMPORARY` on the database is
/// the one this policy would name). Guardrails: the defaults, less what the suite does on
/// purpose — it drops its temporary tables and empties them without a WHERE, ends and cancels
/// its own backends (`pg_terminate_backend`, `pg_cancel_backend`: a lease role can signal only
/// its own sessions), and raises a notice from a PL/pgSQL `DO` block (which pgid allows only
/// while no function is denied, since it cannot see what the block calls).
const POLICY: &str = r#"
name = "node-postgres"
database = "app"
ttl = "15m"
max_connections = 50
[identity]
subject = "ci:node-postgres"
[guardrails]
deny = ["TRUNCATE", "ALTER", "GRANT", "FUNCTION", "COPY_PROGRAM"]
require_where = []
deny_functions = []
"#;

/// The direct role's connection limit: the lease role's (`max_connections`).
const CONNECTION_LIMIT: u32 = 50;

/// One file's run; a file that hangs (a connection the server never closes) fails.
const FILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Files not run, and why.
const EXCLUDED: &[(&str, &str)] = &[
    (
        "gh-issues/981-tests.js",
        "native bindings only (pg-native): returns at once in JavaScript mode",
    ),
    (
        "gh-issues/130-tests.js",
        "another database: ends its backend with psql connected to template1, and a lease is \
         for its own database only",
    ),
];

/// Files run through pgid with a lease of their own instead of the run's shared one, and why.
const OWN_LEASE: &[(&str, &str)] = &[];

/// Files that fail directly with the least-privilege role, and why.
const FAIL_DIRECT: &[(&str, &str)] = &[];

/// Files that pass directly and fail through pgid, with the cause (to be fixed; an entry whose
/// file passes fails the test until it is removed).
const FAIL_THROUGH_PGID: &[(&str, &str)] = &[];

struct Outcome {
    passed: bool,
    seconds: f64,
    output: String,
}

/// `node <file>` in the vendored package, with `env` and no other `PG*` variable.
async fn run_file(dir: &Path, file: &str, env: &[(String, String)]) -> Outcome {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("-r")
        .arg(repo_path("tests/clients/node_suite_timeouts.cjs"))
        .arg(Path::new("test/integration").join(file))
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("SCRAM_TEST_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let result = tokio::time::timeout(FILE_TIMEOUT, cmd.output()).await;
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(Ok(out)) => Outcome {
            passed: out.status.success(),
            seconds,
            output: format!(
                "{}{}(exit: {})",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                out.status
            ),
        },
        Ok(Err(e)) => panic!("cannot run node: {e}"),
        Err(_) => Outcome {
            passed: false,
            seconds,
            output: format!("timed out after {FILE_TIMEOUT:?}"),
        },
    }
}

/// The environment that points a file at `host:port` as `user`; the SCRAM tests use the same
/// login (their Unicode-password variant needs a role of its own and stays skipped).
fn pg_env(host: &str, port: u16, user: &str, password: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for prefix in ["PG", "SCRAM_TEST_PG"] {
        for (k, v) in [
            ("HOST", host.to_string()),
            ("PORT", port.to_string()),
            ("USER", user.to_string()),
            ("PASSWORD", password.to_string()),
            ("DATABASE", "app".to_string()),
        ] {
            env.push((format!("{prefix}{k}"), v));
        }
    }
    env
}

/// Every `*-tests.js` under `dir`, relative to it, sorted.
fn test_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, at: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.to_string_lossy().ends_with("-tests.js") {
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn listed<'a>(list: &'a [(&str, &'a str)], file: &str) -> Option<&'a str> {
    list.iter().find(|(f, _)| *f == file).map(|(_, why)| *why)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn node_postgres_integration_suite_passes_through_pgid_wherever_it_passes_directly() {
    let suite: PathBuf = repo_path("tests/clients/node-postgres");
    assert!(
        repo_path("tests/clients/node_modules/pg-copy-streams").exists(),
        "npm packages missing: run `npm ci --prefix tests/clients` (scripts/test does this)"
    );
    let files = test_files(&suite.join("test/integration"));
    for (file, _) in EXCLUDED
        .iter()
        .chain(OWN_LEASE)
        .chain(FAIL_DIRECT)
        .chain(FAIL_THROUGH_PGID)
    {
        assert!(
            files.iter().any(|f| f == file),
            "{file} is listed but not in the suite"
        );
    }

    // The server's authentication_timeout ends a login the client abandoned (sasl-scram-tests
    // leaves one behind), as pgid's handshake_timeout (3 s in the harness) does.
    let h =
        Harness::start_with_postgres(&[("authentication_timeout", "3s")], "", &[POLICY], "").await;
    // ssl-tests and gh-issues/2085 connect with TLS (pgid answers SSLRequest with its own).
    h.enable_postgres_tls().await;
    let direct_password = "node-postgres-direct";
    h.superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE npg_direct LOGIN CONNECTION LIMIT {CONNECTION_LIMIT} \
             PASSWORD '{direct_password}' IN ROLE \"pgid_p_node-postgres\""
        ))
        .await
        .unwrap();

    // One lease for the whole run, as a CI job would hold: pgid's upstream connections are
    // reused from file to file (and some files end their own backends).
    let lease = h.lease(SUBJECT, json!({})).await;
    let lease_env = |lease: &serde_json::Value| {
        pg_env(
            lease["host"].as_str().unwrap(),
            lease["port"].as_u64().unwrap() as u16,
            lease["username"].as_str().unwrap(),
            lease["password"].as_str().unwrap(),
        )
    };
    let shared_env = lease_env(&lease);
    let direct_env = pg_env("127.0.0.1", h.pg.port, "npg_direct", direct_password);

    let started = Instant::now();
    let mut results: BTreeMap<&str, (Outcome, Outcome)> = BTreeMap::new();
    for file in files.iter().filter(|f| listed(EXCLUDED, f).is_none()) {
        let direct = run_file(&suite, file, &direct_env).await;
        let env = match listed(OWN_LEASE, file) {
            Some(_) => lease_env(&h.lease(SUBJECT, json!({})).await),
            None => shared_env.clone(),
        };
        let proxied = run_file(&suite, file, &env).await;
        results.insert(file, (direct, proxied));
    }

    let mark = |o: &Outcome| {
        format!(
            "{} {:>5.1}s",
            if o.passed { "pass" } else { "FAIL" },
            o.seconds
        )
    };
    println!("\n{:<58} {:<11} {:<11}", "file", "direct", "pgid");
    for file in &files {
        let note = [
            (OWN_LEASE, "own lease"),
            (FAIL_DIRECT, "listed: fails directly"),
            (FAIL_THROUGH_PGID, "listed: fails through pgid"),
        ]
        .iter()
        .filter(|(list, _)| listed(list, file).is_some())
        .map(|(_, note)| *note)
        .collect::<Vec<_>>()
        .join(", ");
        match results.get(file.as_str()) {
            Some((d, p)) => println!("{file:<58} {:<11} {:<11} {note}", mark(d), mark(p)),
            None => println!("{file:<58} excluded"),
        }
    }
    for (title, list) in [
        ("excluded", EXCLUDED),
        ("own lease", OWN_LEASE),
        ("fails directly", FAIL_DIRECT),
        ("fails through pgid", FAIL_THROUGH_PGID),
    ] {
        for (file, why) in list {
            println!("{title}: {file}: {why}");
        }
    }
    println!("({:.0} s)", started.elapsed().as_secs_f64());

    let mut problems = Vec::new();
    for (file, (direct, proxied)) in &results {
        match (listed(FAIL_DIRECT, file), direct.passed) {
            (None, false) => problems.push(format!(
                "{file} fails directly (list it in FAIL_DIRECT with the reason):\n{}",
                tail(&direct.output, 60)
            )),
            (Some(why), true) => problems.push(format!(
                "{file} passes directly now: remove it from FAIL_DIRECT ({why})"
            )),
            _ => {}
        }
        if !direct.passed {
            continue;
        }
        match (listed(FAIL_THROUGH_PGID, file), proxied.passed) {
            (None, false) => problems.push(format!(
                "{file} passes directly and fails through pgid:\n{}",
                tail(&proxied.output, 60)
            )),
            (Some(why), true) => problems.push(format!(
                "{file} passes through pgid now: remove it from FAIL_THROUGH_PGID ({why})"
            )),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
}
