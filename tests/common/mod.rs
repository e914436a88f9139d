//! Shared harness: a real throwaway PostgreSQL, the development issuer, and pgid started
//! in-process on port 0 — the same parts a user runs.
#![allow(dead_code)]

pub mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgid::app::{App, Running};
use pgid::config::Config;
use pgid::dev::{demo, DevClient, DevIssuer, TempPostgres};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

pub const NIGHTLY: &str = r#"
name = "nightly-report"
database = "app"
ttl = "15m"
max_ttl = "1h"
max_connections = 3
[identity]
subject = "svc:nightly-report"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers", "reporting.*"]
"#;

/// An agent that reads the CRM and writes notes and tickets (proxy and client tests).
pub const AGENT: &str = r#"
name = "app-agent"
database = "app"
ttl = "15m"
max_ttl = "1h"
max_connections = 20
[identity]
subject = "agent:app"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers", "crm.orders", "reporting.*"]
[[grant]]
privileges = ["SELECT", "INSERT", "UPDATE", "DELETE"]
on = ["crm.notes", "crm.tickets"]
# The transparency tests compare pgid with a direct connection: only the guardrails that are
# always on apply here (the guardrail tests use their own policies).
[guardrails]
deny = []
require_where = []
deny_functions = []
"#;

/// agent:x may DELETE from crm.orders once a reviewer in group dba approves (approval tests).
pub const GUARDED: &str = r#"
name = "guarded"
database = "app"
ttl = "15m"
[identity]
subject = "agent:x"
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.orders"]
[[approval]]
statements = ["DELETE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "dba" } }
timeout = "3s"
"#;

/// Writes to the CRM's tickets and notes; UPDATE and DELETE need a WHERE (session tests).
pub const WRITER: &str = r#"
name = "writer"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:writer"
[[grant]]
privileges = ["SELECT", "INSERT", "UPDATE", "DELETE"]
on = ["crm.tickets", "crm.notes"]
[guardrails]
require_where = ["UPDATE", "DELETE"]
"#;

/// Deleting orders needs a reviewer (retry mode: refused at once, a request is made).
pub const REVIEWED: &str = r#"
name = "reviewed"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:reviewed"
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.orders"]
[[approval]]
statements = ["DELETE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "dba" } }
mode = "retry"
timeout = "1m"
window = "1m"
"#;

/// Reads customers, nothing masked (the reload tests add a mask).
pub const READER: &str = r#"
name = "reader"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:reader"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
"#;

/// Reads customers with their e-mail addresses masked, under the default guardrails.
pub const EMAIL_MASKED: &str = r#"
name = "masked"
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
method = "redact"
"#;

pub struct Harness {
    pub pg: TempPostgres,
    pub admin_url: String,
    pub issuer: DevIssuer,
    pub state: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pgid: Option<Running>,
    pub http: reqwest::Client,
    pub base: String,
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("PGID_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects and hands over the notices the server (or pgid) sends, as their message texts.
pub async fn connect_with_notices(
    url: &str,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>), tokio_postgres::Error> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    Ok((client, rx))
}

impl Harness {
    /// Postgres with the demo schema, the dev issuer, and pgid with the given policy files.
    pub async fn start(policies: &[&str]) -> Harness {
        Harness::start_with(policies, "").await
    }

    pub async fn start_with(policies: &[&str], extra_config: &str) -> Harness {
        Harness::start_with_postgres(&[], "", policies, extra_config).await
    }

    /// [`Harness::start_with`] on a server started with extra `settings`, where `setup` runs in
    /// the database as its owner (pgid's admin role, which must be able to grant on what it
    /// creates) after the demo schema and before pgid starts (tables that policies grant on must
    /// exist then).
    pub async fn start_with_postgres(
        settings: &[(&str, &str)],
        setup: &str,
        policies: &[&str],
        extra_config: &str,
    ) -> Harness {
        Harness::start_all(settings, setup, policies, extra_config, "").await
    }

    /// [`Harness::start_with`] with more keys for the development issuer's `[[issuers]]` table
    /// (`jwks_fetch_timeout = "1s"` …; `jwks_refetch_cooldown` is set to 1s unless given).
    pub async fn start_with_issuer(
        policies: &[&str],
        extra_config: &str,
        issuer_config: &str,
    ) -> Harness {
        Harness::start_all(&[], "", policies, extra_config, issuer_config).await
    }

    async fn start_all(
        settings: &[(&str, &str)],
        setup: &str,
        policies: &[&str],
        extra_config: &str,
        issuer_config: &str,
    ) -> Harness {
        init_logging();
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pg = tokio::task::spawn_blocking(move || {
            let settings: Vec<(&str, &str)> = settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            TempPostgres::start_with(&settings)
        })
        .await
        .unwrap()
        .expect("start postgres");
        let admin_url = demo::provision(&pg, "app").await.expect("provision");
        if !setup.is_empty() {
            connect(&admin_url)
                .await
                .expect("admin")
                .batch_execute(setup)
                .await
                .expect("setup");
        }
        let clients = vec![DevClient {
            id: "nightly".into(),
            secret: "nightly-secret".into(),
            subject: "svc:nightly-report".into(),
            claims: Map::new(),
        }];
        let issuer = DevIssuer::start(0, "pgid", clients).await.unwrap();
        let state = tempfile::tempdir().unwrap();
        let pdir = state.path().join("policies");
        std::fs::create_dir_all(&pdir).unwrap();
        for (i, p) in policies.iter().enumerate() {
            std::fs::write(pdir.join(format!("p{i}.toml")), p).unwrap();
        }
        let config_path = state.path().join("pgid.toml");
        std::fs::write(
            &config_path,
            format!(
                "state_dir = \"state\"\npolicies = \"policies\"\n[broker]\nlisten = \"127.0.0.1:0\"\n[proxy]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"3s\"\ndrain_timeout = \"2s\"\n\
                 [[issuers]]\nissuer = \"{}\"\naudiences = [\"pgid\"]\n{}{issuer_config}\n\
                 [[databases]]\nname = \"app\"\nadmin_url = \"{admin_url}\"\n[leases]\nreaper_interval = \"1s\"\n{}{}",
                issuer.url(),
                if issuer_config.contains("jwks_refetch_cooldown") {
                    ""
                } else {
                    "jwks_refetch_cooldown = \"1s\"\n"
                },
                // Tests issue many leases as one identity: the per-identity limits are tested on
                // their own (tests/issue_limits.rs).
                if extra_config.contains("issue_")
                    || extra_config.contains("max_active_per_identity")
                {
                    ""
                } else {
                    "issue_rate = 100000\nissue_burst = 100000\nmax_active_per_identity = 100000\n"
                },
                // `{issuer}` in the extra configuration: the development issuer's URL.
                extra_config.replace("{issuer}", issuer.url()),
            ),
        )
        .unwrap();
        let mut h = Harness {
            pg,
            admin_url,
            issuer,
            state,
            config_path,
            pgid: None,
            http: reqwest::Client::new(),
            base: String::new(),
        };
        h.start_pgid().await.expect("start pgid");
        h
    }

    pub async fn start_pgid(&mut self) -> Result<(), String> {
        let config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let app = App::build(config).await.map_err(|e| e.to_string())?;
        let ca = std::fs::read(app.tls.ca.as_ref().unwrap()).unwrap();
        self.http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let running = app.start().await.map_err(|e| e.to_string())?;
        self.base = format!("https://127.0.0.1:{}", running.broker_addr.port());
        self.pgid = Some(running);
        Ok(())
    }

    /// A second pgid instance on the same configuration and state (other ports).
    pub async fn start_second(&self) -> Running {
        let config = Config::load(&self.config_path).unwrap();
        App::build(config).await.unwrap().start().await.unwrap()
    }

    pub async fn stop_pgid(&mut self) {
        if let Some(r) = self.pgid.take() {
            r.shutdown().await;
        }
    }

    pub fn proxy_port(&self) -> u16 {
        self.pgid.as_ref().expect("pgid running").proxy_addr.port()
    }

    /// Issues a lease for `subject` and returns (lease JSON).
    pub async fn lease(&self, subject: &str, body: Value) -> Value {
        let (status, lease) = self.issue(&self.token(subject), body).await;
        assert_eq!(status, StatusCode::CREATED, "{lease}");
        lease
    }

    /// A raw-protocol client of a new lease for `subject`, with `extra` startup parameters.
    pub async fn raw_client(
        &self,
        subject: &str,
        extra: &[(&str, &str)],
    ) -> Result<wire::RawClient, (String, String)> {
        let lease = self.lease(subject, json!({})).await;
        wire::RawClient::login(
            self.proxy_port(),
            lease["username"].as_str().unwrap(),
            lease["password"].as_str().unwrap(),
            extra,
        )
        .await
    }

    /// Connects through pgid's proxy with a lease's DSN (plaintext on loopback).
    pub async fn connect_proxy(&self, lease: &Value) -> Result<Client, tokio_postgres::Error> {
        connect(lease["dsn"].as_str().unwrap()).await
    }

    /// The same role, directly at Postgres (derived password): the reference for comparisons.
    pub async fn connect_lease_direct(&self, lease: &Value) -> Client {
        self.connect_direct(
            lease["username"].as_str().unwrap(),
            &self.database_password(lease["lease_id"].as_str().unwrap()),
        )
        .await
        .expect("direct login")
    }

    /// A libpq-style connection string for the direct reference connection.
    pub fn direct_dsn(&self, lease: &Value) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/app",
            lease["username"].as_str().unwrap(),
            self.database_password(lease["lease_id"].as_str().unwrap()),
            self.pg.port
        )
    }

    /// `/metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.state_dir().join("tls/ca.crt")
    }

    /// The audit file's records so far.
    pub fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The statement records of one lease, once every allowed statement has its outcome:
    /// (decision records in order, outcome records by (session id, seq)). Panics if an outcome
    /// is missing after a few seconds or appears twice.
    pub async fn statement_audit(
        &self,
        lease_id: &str,
    ) -> (Vec<Value>, HashMap<(String, u64), Value>) {
        let mut last = (Vec::new(), HashMap::new());
        for _ in 0..50 {
            let records = self.audit_records();
            let mine = |r: &&Value| r["lease_id"] == lease_id;
            let decisions: Vec<Value> = records
                .iter()
                .filter(mine)
                .filter(|r| r["kind"] == "statement")
                .cloned()
                .collect();
            let mut outcomes = HashMap::new();
            for r in records
                .iter()
                .filter(mine)
                .filter(|r| r["kind"] == "statement.outcome")
            {
                let key = (
                    r["session_id"].as_str().unwrap().to_string(),
                    r["seq"].as_u64().unwrap(),
                );
                assert!(
                    outcomes.insert(key, r.clone()).is_none(),
                    "two outcomes for {r}"
                );
            }
            let complete = decisions
                .iter()
                .filter(|d| d["decision"] == "allow")
                .all(|d| {
                    outcomes.contains_key(&(
                        d["session_id"].as_str().unwrap().to_string(),
                        d["seq"].as_u64().unwrap(),
                    ))
                });
            last = (decisions, outcomes);
            if complete {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let missing: Vec<&Value> = last
            .0
            .iter()
            .filter(|d| {
                d["decision"] == "allow"
                    && !last.1.contains_key(&(
                        d["session_id"].as_str().unwrap().to_string(),
                        d["seq"].as_u64().unwrap(),
                    ))
            })
            .collect();
        panic!("statements without an outcome record: {missing:?}");
    }

    pub fn token(&self, subject: &str) -> String {
        self.issuer.mint(&self.issuer.claims(subject))
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
        )
    }

    pub async fn issue(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/credentials",
            Some(token),
            Some(body),
        )
        .await
    }

    pub async fn superuser(&self) -> Client {
        connect(&self.pg.superuser_url("app")).await.unwrap()
    }

    /// Every e-mail address of the customers, as stored (what a mask must never let out).
    pub async fn emails(&self) -> Vec<String> {
        self.superuser()
            .await
            .query("SELECT email FROM crm.customers", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The single bigint a query returns, asked as the superuser (`SELECT count(*) …`).
    pub async fn count(&self, sql: &str) -> i64 {
        self.superuser()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The lease's database password, derived from the server key as pgid does (test-only).
    pub fn database_password(&self, lease_id: &str) -> String {
        let key =
            pgid::keys::ServerKey::load_or_create(&self.state_dir().join("server.key")).unwrap();
        pgid::roles::database_password(&key, Uuid::parse_str(lease_id).unwrap())
            .expose()
            .clone()
    }

    /// Logs in directly at Postgres (not through pgid).
    pub async fn connect_direct(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(&self.pg.url(user, password, "app")).await
    }

    /// Turns TLS on at the server (plaintext stays accepted): a certificate for 127.0.0.1 from a
    /// CA of the test's own, in the data directory; returns once new connections can use it.
    pub async fn enable_postgres_tls(&self) -> pgid::tls::TlsMaterial {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.state.path().join("pg-tls");
        let material = pgid::tls::TlsMaterial::resolve(&dir, None, &["127.0.0.1".into()]).unwrap();
        let data = self.pg.data_dir();
        for (from, to) in [
            (&material.cert, "server.crt"),
            (&material.key, "server.key"),
        ] {
            std::fs::copy(from, data.join(to)).unwrap();
            std::fs::set_permissions(data.join(to), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            if let Some((uid, gid)) = pgid::dev::postgres_user() {
                if unsafe { libc::geteuid() } == 0 {
                    std::os::unix::fs::chown(data.join(to), Some(uid), Some(gid)).unwrap();
                }
            }
        }
        let su = self.superuser().await;
        for sql in [
            "ALTER SYSTEM SET ssl = on",
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "SELECT pg_reload_conf()",
        ] {
            su.batch_execute(sql).await.unwrap();
        }
        // The reload is asynchronous; a new backend shows the postmaster's settings.
        let on = eventually(Duration::from_secs(10), || async {
            let c = self.superuser().await;
            let r = c.query_one("SHOW ssl", &[]).await.unwrap();
            r.get::<_, String>(0) == "on"
        })
        .await;
        assert!(on, "the server did not turn TLS on");
        material
    }

    pub async fn lease_roles(&self) -> Vec<String> {
        self.superuser()
            .await
            .query(
                "SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid \
                 JOIN pg_roles k ON k.oid = m.roleid WHERE k.rolname = 'pgid_lease' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub async fn lease_count(&self) -> i64 {
        self.superuser()
            .await
            .query_one("SELECT count(*) FROM pgid.leases", &[])
            .await
            .unwrap()
            .get(0)
    }
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A node script run for a test (a real OIDC provider, a browser): killed when dropped; its
/// stdout lines arrive on `lines`.
pub struct NodeScript {
    child: std::process::Child,
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl NodeScript {
    /// Runs `node <script>` in `dir` (relative to the repository) with `env`; fails the test if
    /// the directory's npm packages are missing.
    pub fn spawn(dir: &str, script: &str, env: &[(&str, String)]) -> NodeScript {
        use std::io::BufRead;
        let dir = repo_path(dir);
        assert!(
            dir.join("node_modules").exists(),
            "npm packages missing: run `npm ci --prefix {}` (scripts/test does this)",
            dir.display()
        );
        let mut cmd = std::process::Command::new("node");
        cmd.arg(script)
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("node");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeScript { child, lines }
    }

    /// The next stdout line starting with `prefix` (panics after `timeout` or at exit).
    pub async fn line(&mut self, prefix: &str, timeout: Duration) -> String {
        let wait = async {
            while let Some(l) = self.lines.recv().await {
                if l.starts_with(prefix) {
                    return l;
                }
            }
            panic!("the script ended before printing {prefix:?}");
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} line within {timeout:?}"))
    }

    /// Waits for the script to exit and returns whether it succeeded.
    pub async fn success(mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (for processes configured before they start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Logs in with SCRAM by hand (the raw protocol, for tests that send their own messages),
/// leaving the socket after ReadyForQuery.
pub async fn raw_login(port: u16, user: &str, password: &str) -> tokio::net::TcpStream {
    match wire::RawClient::login(port, user, password, &[]).await {
        Ok(c) => c.stream,
        Err(e) => panic!("login failed: {e:?}"),
    }
}

/// What a finished command printed, and its exit code.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `c` to the end off the async runtime's workers.
pub async fn run(mut c: std::process::Command) -> Output {
    let out = tokio::task::spawn_blocking(move || c.output().expect("run the command"))
        .await
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `POST /v1/credentials` at `broker` with `subject`'s token: the status (0: no answer).
pub async fn issue_at(h: &Harness, broker: &str, subject: &str) -> u16 {
    h.http
        .post(format!("{broker}/v1/credentials"))
        .bearer_auth(h.token(subject))
        .json(&json!({}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}
