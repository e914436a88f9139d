//! The `pgid` binary as a user runs it: login (token, client credentials against the development
//! issuer and against a real OIDC provider), policy check and plan.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{repo_path, run, Harness, NIGHTLY};
use serde_json::Value;

fn pgid() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgid"));
    c.env_remove("PGID_TOKEN")
        .env_remove("PGID_CONFIG")
        .env("PGID_LOG", "warn");
    c
}

fn login(h: &Harness) -> Command {
    let mut c = pgid();
    c.args(["login", "--broker", &h.base, "--cacert"])
        .arg(h.ca_path());
    c
}

/// The lease behind a DSN works at Postgres with its derived password.
async fn assert_dsn_works(h: &Harness, dsn: &str) -> String {
    let cfg: tokio_postgres::Config = dsn
        .parse()
        .unwrap_or_else(|e| panic!("not a DSN {dsn:?}: {e}"));
    let user = cfg.get_user().unwrap().to_string();
    let su = h.superuser().await;
    let id: uuid::Uuid = su
        .query_one("SELECT id FROM pgid.leases WHERE role_name = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    let db = h
        .connect_direct(&user, &h.database_password(&id.to_string()))
        .await
        .expect("lease logs in");
    db.query_one("SELECT count(*) FROM crm.customers", &[])
        .await
        .unwrap();
    user
}

#[tokio::test(flavor = "multi_thread")]
async fn login_with_token_sources_and_formats() {
    let h = Harness::start(&[NIGHTLY]).await;

    // Client credentials against the development issuer, DSN on stdout.
    let mut c = login(&h);
    c.args([
        "--issuer",
        h.issuer.url(),
        "--client-id",
        "nightly",
        "--client-secret",
        "nightly-secret",
    ]);
    let out = run(c).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .trim()
            .starts_with("postgresql://pgid_nightly_report_"),
        "{}",
        out.stdout
    );
    assert_dsn_works(&h, out.stdout.trim()).await;

    // --token-file and --format json.
    let file = h.state.path().join("token");
    std::fs::write(&file, format!("{}\n", h.token("svc:nightly-report"))).unwrap();
    let mut c = login(&h);
    c.arg("--token-file")
        .arg(&file)
        .args(["--format", "json", "--ttl", "5m"]);
    let out = run(c).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lease: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(lease["policy"], "nightly-report");
    assert_dsn_works(&h, lease["dsn"].as_str().unwrap()).await;

    // PGID_TOKEN and --format env.
    let mut c = login(&h);
    c.env("PGID_TOKEN", h.token("svc:nightly-report"))
        .args(["--format", "env"]);
    let out = run(c).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for var in [
        "PGHOST",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGID_LEASE_ID",
    ] {
        assert!(
            out.stdout.contains(&format!("export {var}='")),
            "{var} missing: {}",
            out.stdout
        );
    }

    // Refusals are explained, exit non-zero, and never print a secret.
    let mut c = login(&h);
    c.args([
        "--issuer",
        h.issuer.url(),
        "--client-id",
        "nightly",
        "--client-secret",
        "wrong-secret",
    ]);
    let out = run(c).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("token request") && !out.stderr.contains("wrong-secret"),
        "{}",
        out.stderr
    );
    let mut c = login(&h);
    c.env("PGID_TOKEN", h.token("svc:nobody"));
    let out = run(c).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no_policy"), "{}", out.stderr);
    let out = run(login(&h)).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no token"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_against_a_real_oidc_provider() {
    let port = common::free_port();
    let mut node = common::NodeScript::spawn(
        "tests/idp",
        "provider.mjs",
        &[
            ("PORT", port.to_string()),
            ("CLIENT_ID", "reporting-job".into()),
            ("CLIENT_SECRET", "a-long-client-secret-for-tests".into()),
        ],
    );
    node.line("ready", Duration::from_secs(30)).await;
    let issuer = format!("http://127.0.0.1:{port}");

    let policy = format!(
        "name = \"reporting-job\"\ndatabase = \"app\"\nttl = \"10m\"\n[identity]\nissuer = \"{issuer}\"\nsubject = \"reporting-job\"\n\
         [identity.claims]\nscope = \"db\"\n[[grant]]\nprivileges = [\"SELECT\"]\non = [\"crm.customers\"]\n"
    );
    let h = Harness::start_with(
        &[&policy],
        &format!("[[issuers]]\nissuer = \"{issuer}\"\naudiences = [\"pgid\"]\n"),
    )
    .await;
    let mut c = login(&h);
    c.args([
        "--issuer",
        &issuer,
        "--client-id",
        "reporting-job",
        "--client-secret",
        "a-long-client-secret-for-tests",
        "--scope",
        "db",
    ]);
    let out = run(c).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let user = assert_dsn_works(&h, out.stdout.trim()).await;
    assert!(user.starts_with("pgid_reporting_job_"));
    drop(node);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_check_reports_every_problem_with_file_and_line() {
    let out = run({
        let mut c = pgid();
        c.args(["policy", "check", "--dir"])
            .arg(repo_path("policies"));
        c
    })
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("ok: 3 policies"), "{}", out.stdout);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        NIGHTLY.replace("max_connections", "max_conns"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        NIGHTLY.replace("\"SELECT\"", "\"SELEKT\""),
    )
    .unwrap();
    std::fs::write(dir.path().join("c.toml"), NIGHTLY).unwrap();
    std::fs::write(dir.path().join("d.toml"), NIGHTLY).unwrap();
    let out = run({
        let mut c = pgid();
        c.args(["policy", "check", "--dir"]).arg(dir.path());
        c
    })
    .await;
    assert_eq!(out.code, 1);
    let a = dir.path().join("a.toml").display().to_string();
    let b = dir.path().join("b.toml").display().to_string();
    assert!(
        out.stderr.contains(&format!("{a}:6:")) && out.stderr.contains("max_conns"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{b}:10:")) && out.stderr.contains("SELEKT"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("already used by"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_plan_prints_the_sql_for_the_group_roles() {
    let h = Harness::start(&[NIGHTLY]).await;
    let plan = |h: &Harness| {
        let mut c = pgid();
        c.args(["policy", "plan", "--config"]).arg(&h.config_path);
        run(c)
    };
    let out = plan(&h).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("(up to date)"), "{}", out.stdout);

    // The file changes: grant on orders, no longer on reporting.*
    let changed = NIGHTLY.replace(
        "on = [\"crm.customers\", \"reporting.*\"]",
        "on = [\"crm.customers\", \"crm.orders\"]",
    );
    std::fs::write(h.state.path().join("policies/p0.toml"), changed).unwrap();
    let out = plan(&h).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("GRANT SELECT ON TABLE \"crm\".\"orders\" TO \"pgid_p_nightly-report\";"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("REVOKE SELECT ON TABLE \"reporting\".\"daily_revenue\" FROM \"pgid_p_nightly-report\";"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("REVOKE USAGE ON SCHEMA \"reporting\" FROM \"pgid_p_nightly-report\";"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_records_credentials_and_sessions_and_detects_tampering() {
    let h = Harness::start(&[NIGHTLY]).await;
    let token = h.token("svc:nightly-report");
    let (_, lease) = h.issue(&token, serde_json::json!({})).await;
    let id = lease["lease_id"].as_str().unwrap().to_string();
    h.issue("garbage", serde_json::json!({})).await;
    h.issue(&h.token("svc:nobody"), serde_json::json!({})).await;
    let c = common::connect(lease["dsn"].as_str().unwrap())
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    let bad = lease["dsn"]
        .as_str()
        .unwrap()
        .replace(lease["password"].as_str().unwrap(), "wrong");
    assert!(common::connect(&bad).await.is_err());
    h.call(
        reqwest::Method::DELETE,
        &format!("/v1/credentials/{id}"),
        Some(&token),
        None,
    )
    .await;

    let path = h.state_dir().join("audit.jsonl");
    let mut text = String::new();
    let complete = common::eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        let t = text.clone();
        async move { t.contains("\"session.end\"") && t.contains("\"credential.revoked\"") }
    })
    .await;
    assert!(complete, "{text}");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "credential.issued",
        "credential.denied",
        "session.start",
        "session.end",
        "session.refused",
        "credential.revoked",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let issued = records
        .iter()
        .find(|r| r["kind"] == "credential.issued")
        .unwrap();
    assert_eq!(issued["lease_id"], id.as_str());
    assert_eq!(issued["subject"], "svc:nightly-report");
    assert_eq!(issued["policy"], "nightly-report");
    assert!(records.iter().any(|r| r["kind"] == "credential.denied"
        && r["reason"].as_str().unwrap().contains("invalid_token")));
    assert!(records
        .iter()
        .any(|r| r["kind"] == "credential.denied" && r["reason"] == "no_policy"));
    assert!(
        !text.contains(lease["password"].as_str().unwrap()),
        "the client secret is never audited"
    );

    let verify = |p: &std::path::Path| {
        let mut c = pgid();
        c.args(["audit", "verify"]).arg(p);
        run(c)
    };
    let out = verify(&path).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("ok: {} records", records.len())),
        "{}",
        out.stdout
    );

    let copy = h.state.path().join("copy.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    // Flip one byte inside line 3.
    let mut flipped: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    flipped[2] = flipped[2].replacen("\"kind\"", "\"kinD\"", 1);
    std::fs::write(&copy, flipped.join("\n") + "\n").unwrap();
    let out = verify(&copy).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("copy.jsonl:3:"), "{}", out.stderr);
    // Delete line 2.
    let mut deleted: Vec<&str> = lines.clone();
    deleted.remove(1);
    std::fs::write(&copy, deleted.join("\n") + "\n").unwrap();
    let out = verify(&copy).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("copy.jsonl:2:"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_test_prints_each_verdict_and_the_rule_that_decided() {
    let mut c = pgid();
    c.args(["policy", "test", "--dir"])
        .arg(repo_path("policies"))
        .args([
            "--claims",
            r#"{"sub": "agent:support-bot", "iss": "https://idp.example.com"}"#,
        ])
        .args([
            "SELECT * FROM crm.tickets WHERE id = 1",
            "DELETE FROM crm.tickets",
            "SELECT 1; DROP TABLE crm.tickets",
        ]);
    let out = run(c).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.starts_with("policy support-bot"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("allow  SELECT * FROM crm.tickets WHERE id = 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("rule require_where: DELETE without a WHERE clause"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("rule deny: DROP statements are not allowed"),
        "{}",
        out.stdout
    );

    let mut c = pgid();
    c.args(["policy", "test", "--dir"])
        .arg(repo_path("policies"))
        .args([
            "--claims",
            r#"{"sub": "agent:analyst"}"#,
            "SELECT count(*) FROM crm.orders",
        ]);
    let out = run(c).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    let mut c = pgid();
    c.args(["policy", "test", "--dir"])
        .arg(repo_path("policies"))
        .args(["--claims", r#"{"sub": "nobody"}"#, "SELECT 1"]);
    let out = run(c).await;
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("no policy matches"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_test_prints_masked_columns_and_held_statements() {
    let mut c = pgid();
    c.args(["policy", "test", "--dir"])
        .arg(repo_path("policies"))
        .args([
            "--claims",
            r#"{"sub": "agent:support-bot", "iss": "https://idp.example.com"}"#,
        ])
        .args([
            "SELECT name, ssn, card_number FROM crm.customers",
            "SELECT name FROM crm.customers",
            "DELETE FROM crm.tickets WHERE status = 'open'",
        ]);
    let out = run(c).await;
    // Nothing is refused: held is not refused.
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let after = |first: &str| {
        let i = lines
            .iter()
            .position(|l| *l == first)
            .unwrap_or_else(|| panic!("no line {first:?} in\n{}", out.stdout));
        lines.get(i + 1).copied().unwrap_or("")
    };
    assert_eq!(
        after("allow  SELECT name, ssn, card_number FROM crm.customers"),
        "       mask crm.customers.card_number (hash), crm.customers.ssn (hash)"
    );
    assert!(
        !after("allow  SELECT name FROM crm.customers").contains("mask"),
        "{}",
        out.stdout
    );
    let held = after("hold   DELETE FROM crm.tickets WHERE status = 'open'");
    assert!(
        held.starts_with(
            "       approval [[approval]] #1 (DELETE, UPDATE on crm.tickets): waits up to 5m \
             for a reviewer; approvers {\"claims\":{\"groups\":\"dba\"}}; only if the planner \
             estimates 5 rows or more"
        ),
        "{held}"
    );
}

/// The next line starting with `prefix` (fails the test after 30 s, or if the process ended).
async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    prefix: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let l = lines.recv().await.expect("the process exited");
            if l.starts_with(prefix) {
                return l;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {prefix:?} line"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_policies_of_a_running_pgid_serve() {
    use std::io::{BufRead, BufReader};
    let h = Harness::start(&[NIGHTLY]).await;
    let mut child = pgid()
        .args(["serve", "--config"])
        .arg(&h.config_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let started = next_line(&mut lines, "pgid: broker on ").await;
    let broker = started
        .trim_start_matches("pgid: broker on ")
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let issue = |subject: &'static str| common::issue_at(&h, &broker, subject);
    assert_eq!(issue("agent:writer").await, 403);

    let policies = h.state.path().join("policies");
    std::fs::write(
        policies.join("writer.toml"),
        "name = \"writer\"\ndatabase = \"app\"\nttl = \"10m\"\n[identity]\nsubject = \"agent:writer\"\n\
         [[grant]]\nprivileges = [\"SELECT\"]\non = [\"crm.notes\"]\n",
    )
    .unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloaded = next_line(&mut lines, "pgid: policies").await;
    assert!(reloaded.contains("added writer"), "{reloaded}");
    assert_eq!(issue("agent:writer").await, 201);

    // A broken file: refused, said why, and the running policies stay.
    std::fs::write(policies.join("broken.toml"), "name = \"x\"\nbogus = 1\n").unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let refused = next_line(&mut lines, "pgid: policies NOT reloaded").await;
    assert!(!refused.is_empty());
    assert!(next_line(&mut lines, "").await.contains("broken.toml"));
    assert_eq!(issue("agent:writer").await, 201);

    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_check_and_plan_find_names_the_database_lacks() {
    let h = Harness::start(&[NIGHTLY]).await;
    let dir = tempfile::tempdir().unwrap();
    let typo =
        format!("{NIGHTLY}\n[[mask]]\ncolumns = [\"crm.customers.emial\"]\nmethod = \"redact\"\n");
    std::fs::write(dir.path().join("a.toml"), &typo).unwrap();
    let line = typo.lines().position(|l| l.contains("emial")).unwrap() + 1;
    let file = dir.path().join("a.toml").display().to_string();
    let check = |database: Option<String>| {
        let mut c = pgid();
        c.args(["policy", "check", "--dir"]).arg(dir.path());
        if let Some(d) = database {
            c.args(["--database", &d]);
        }
        run(c)
    };

    // The files alone check, and the output says the names were not.
    let out = check(None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("names not checked against a database"),
        "{}",
        out.stdout
    );
    // Against the database: the misspelt column, with file:line and a suggestion.
    for database in [h.admin_url.clone(), format!("app={}", h.admin_url)] {
        let out = check(Some(database)).await;
        assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "{file}:{line}: policy nightly-report: [[mask]] names column crm.customers.emial, \
                 which does not exist in database app (did you mean \"email\"?)"
            )),
            "{}",
            out.stderr
        );
    }
    // A database no --database covers is not silently skipped.
    let out = check(Some(format!("other={}", h.admin_url))).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("names not checked"), "{}", out.stderr);
    // Corrected, it passes.
    std::fs::write(dir.path().join("a.toml"), typo.replace("emial", "email")).unwrap();
    let out = check(Some(h.admin_url.clone())).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("names checked"), "{}", out.stdout);

    // plan refuses to plan for it.
    std::fs::write(h.state.path().join("policies/p0.toml"), &typo).unwrap();
    let mut c = pgid();
    c.args(["policy", "plan", "--config"]).arg(&h.config_path);
    let out = run(c).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("crm.customers.emial") && out.stderr.contains("no plan"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("GRANT"), "{}", out.stdout);
}

/// `pgid serve` that cannot reach its database says why, as Postgres or the network said it —
/// never only "db error" — and never shows the password it tried.
#[tokio::test(flavor = "multi_thread")]
async fn serve_reports_the_cause_of_a_database_it_cannot_use() {
    let pg = tokio::task::spawn_blocking(pgid::dev::TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refused_port = common::free_port();
    for (url, wanted) in [
        (
            pg.url("postgres", "wrong-password-1234", "postgres"),
            &[
                "FATAL 28P01",
                "password authentication failed for user \"postgres\"",
            ][..],
        ),
        (
            pg.superuser_url("nodb"),
            &["FATAL 3D000", "database \"nodb\" does not exist"][..],
        ),
        (
            format!("postgres://postgres:pw@127.0.0.1:{refused_port}/postgres"),
            &["Connection refused"][..],
        ),
    ] {
        let config = dir.path().join("pgid.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\npolicies = {:?}\n[broker]\nlisten = \"127.0.0.1:0\"\n\
                 [proxy]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"https://issuer.example.com\"\n\
                 audiences = [\"pgid\"]\n[[databases]]\nname = \"app\"\nadmin_url = {url:?}\n",
                dir.path().join("state"),
                repo_path("policies"),
            ),
        )
        .unwrap();
        let mut serve = pgid();
        serve.args(["serve", "--config"]).arg(&config);
        let out = run(serve).await;
        assert_eq!(out.code, 2, "{}", out.stderr);
        for w in wanted {
            // Each cause once: errors that print their source are not repeated by the chain.
            assert_eq!(
                out.stderr.matches(w).count(),
                1,
                "{w:?} not exactly once in:\n{}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("wrong-password"), "{}", out.stderr);
        assert!(!out.stderr.contains(&pg.password), "{}", out.stderr);
    }
}

/// `pgid login` tells an untrusted certificate from a broker that is not there.
#[tokio::test(flavor = "multi_thread")]
async fn login_says_why_the_broker_cannot_be_reached() {
    let h = Harness::start(&[NIGHTLY]).await;
    let token = h.token("svc:nightly-report");
    let mut untrusted = pgid();
    untrusted.args(["login", "--broker", &h.base, "--token", &token]);
    let out = run(untrusted).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid peer certificate") && out.stderr.contains("UnknownIssuer"),
        "{}",
        out.stderr
    );
    let mut down = pgid();
    down.args([
        "login",
        "--broker",
        &format!("https://127.0.0.1:{}", common::free_port()),
        "--token",
        &token,
        "--cacert",
    ])
    .arg(h.ca_path());
    let out = run(down).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("Connection refused"), "{}", out.stderr);
    assert!(!out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
}

/// `pgid serve` whose stderr is gone (a service started with it closed) keeps serving on SIGHUP
/// and reloads; only `pgid dev` takes a hang-up without a terminal as the end (tests/dev.rs).
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_pgid_serve_even_without_a_stderr() {
    let h = Harness::start(&[NIGHTLY]).await;
    let port = common::free_port();
    let mut child = pgid()
        .args(["serve", "--config"])
        .arg(&h.config_path)
        .env("PGID_BROKER_LISTEN", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let broker = format!("https://127.0.0.1:{port}");
    let issue = |subject: &'static str| common::issue_at(&h, &broker, subject);
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            issue("svc:nightly-report").await == 201
        })
        .await,
        "pgid serve did not come up"
    );
    assert_eq!(issue("agent:writer").await, 403);
    std::fs::write(
        h.state.path().join("policies").join("writer.toml"),
        "name = \"writer\"\ndatabase = \"app\"\nttl = \"10m\"\n[identity]\nsubject = \"agent:writer\"\n\
         [[grant]]\nprivileges = [\"SELECT\"]\non = [\"crm.notes\"]\n",
    )
    .unwrap();
    let pid = child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            issue("agent:writer").await == 201
        })
        .await,
        "the reload did not happen"
    );
    assert!(child.try_wait().unwrap().is_none(), "pgid serve stopped");
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}
