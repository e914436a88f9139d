//! Two pgid deployments on one Postgres cluster, each with its own state database: neither
//! touches the other's roles, and a deployment drops the group role of a policy removed while it
//! was down at its next start.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use pgid::app::{App, Running};
use pgid::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DOOMED: &str = r#"
name = "doomed"
database = "app"
ttl = "15m"
[identity]
subject = "svc:doomed"
[[grant]]
privileges = ["SELECT"]
on = ["crm.orders"]
"#;

/// The second deployment, `prod`: same cluster and database, its own state database, state
/// directory and policy directory.
struct Prod {
    config: PathBuf,
    running: Option<Running>,
    http: reqwest::Client,
    base: String,
}

impl Prod {
    async fn start(&mut self) -> Result<(), String> {
        let config = Config::load(&self.config).map_err(|e| e.to_string())?;
        let app = App::build(config).await.map_err(|e| e.to_string())?;
        let ca = std::fs::read(app.tls.ca.as_ref().unwrap()).unwrap();
        self.http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let running = app.start().await.map_err(|e| e.to_string())?;
        self.base = format!("https://127.0.0.1:{}", running.broker_addr.port());
        self.running = Some(running);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    async fn lease(&self, token: &str) -> Value {
        let resp = self
            .http
            .post(format!("{}/v1/credentials", self.base))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.unwrap()
    }
}

/// Direct members of `marker`.
async fn members(h: &Harness, marker: &str) -> Vec<String> {
    h.superuser()
        .await
        .query(
            "SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid \
             JOIN pg_roles k ON k.oid = m.roleid WHERE k.rolname = $1 ORDER BY 1",
            &[&marker],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn role_exists(h: &Harness, role: &str) -> bool {
    h.superuser()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

async fn selects_one(dsn: &str) -> bool {
    match connect(dsn).await {
        Ok(c) => c.query_one("SELECT 1", &[]).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_keep_each_others_roles_and_drop_removed_groups() {
    let mut h = Harness::start(&[NIGHTLY]).await;
    let admin = connect(&h.admin_url).await.unwrap();
    let admin_role: String = admin
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    h.superuser()
        .await
        .batch_execute(&format!(
            "CREATE DATABASE prod_state OWNER {}",
            pgid::roles::ddl::ident(&admin_role)
        ))
        .await
        .unwrap();
    let prod_state_url = h.admin_url.replacen("/app", "/prod_state", 1);
    assert_ne!(prod_state_url, h.admin_url);

    let dir = h.state.path();
    std::fs::create_dir_all(dir.join("policies-prod")).unwrap();
    std::fs::write(dir.join("policies-prod/nightly.toml"), NIGHTLY).unwrap();
    std::fs::write(dir.join("policies-prod/doomed.toml"), DOOMED).unwrap();
    let default_config = std::fs::read_to_string(&h.config_path).unwrap();
    let prod_config = default_config.replace(
        "state_dir = \"state\"\npolicies = \"policies\"\n",
        &format!(
            "deployment = \"prod\"\nstate_dir = \"state-prod\"\npolicies = \"policies-prod\"\n\
                 state_url = \"{prod_state_url}\"\n"
        ),
    );
    assert!(prod_config.contains("deployment = \"prod\""));
    let mut prod = Prod {
        config: dir.join("pgid-prod.toml"),
        running: None,
        http: reqwest::Client::new(),
        base: String::new(),
    };
    std::fs::write(&prod.config, prod_config).unwrap();
    prod.start().await.expect("start the prod deployment");

    // Each deployment's roles carry its own markers.
    assert_eq!(members(&h, "pgid_groups").await, ["pgid_p_nightly-report"]);
    assert_eq!(
        members(&h, "pgid_groups_prod").await,
        ["pgid_d_prod_p_doomed", "pgid_d_prod_p_nightly-report"]
    );
    let token = h.token("svc:nightly-report");
    let default_lease = h.lease("svc:nightly-report", json!({})).await;
    let prod_lease = prod.lease(&token).await;
    let default_role = default_lease["username"].as_str().unwrap().to_string();
    let prod_role = prod_lease["username"].as_str().unwrap().to_string();
    assert_eq!(members(&h, "pgid_lease").await, [default_role.as_str()]);
    assert_eq!(members(&h, "pgid_lease_prod").await, [prod_role.as_str()]);

    // Both reapers run every second: after several passes each lease still works.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(role_exists(&h, &default_role).await);
    assert!(role_exists(&h, &prod_role).await);
    assert!(selects_one(default_lease["dsn"].as_str().unwrap()).await);
    assert!(selects_one(prod_lease["dsn"].as_str().unwrap()).await);

    // A policy removed while prod is down: its group role goes at the next start; the other
    // deployment's roles stay.
    prod.stop().await;
    std::fs::remove_file(dir.join("policies-prod/doomed.toml")).unwrap();
    prod.start().await.expect("restart prod");
    assert!(!role_exists(&h, "pgid_d_prod_p_doomed").await);
    assert_eq!(
        members(&h, "pgid_groups_prod").await,
        ["pgid_d_prod_p_nightly-report"]
    );
    assert_eq!(members(&h, "pgid_groups").await, ["pgid_p_nightly-report"]);
    assert!(role_exists(&h, &default_role).await);
    assert!(role_exists(&h, &prod_role).await);

    // A role with the name of a group role that is not the deployment's is refused, not used.
    prod.stop().await;
    h.superuser()
        .await
        .batch_execute("CREATE ROLE \"pgid_d_prod_p_doomed\" NOLOGIN")
        .await
        .unwrap();
    std::fs::write(dir.join("policies-prod/doomed.toml"), DOOMED).unwrap();
    let refused = prod.start().await.unwrap_err();
    assert!(
        refused.contains("pgid_d_prod_p_doomed exists but is not this deployment's group role"),
        "{refused}"
    );

    // The default deployment adopts its unmarked group roles (made before markers existed).
    h.stop_pgid().await;
    h.superuser()
        .await
        .batch_execute("REVOKE pgid_groups FROM \"pgid_p_nightly-report\"")
        .await
        .unwrap();
    assert!(members(&h, "pgid_groups").await.is_empty());
    h.start_pgid().await.expect("restart default");
    assert_eq!(members(&h, "pgid_groups").await, ["pgid_p_nightly-report"]);
    // The prod lease outlived all of it (its deployment is down, not revoked).
    assert!(role_exists(&h, &prod_role).await);
    h.stop_pgid().await;
}
