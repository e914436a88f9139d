//! `pgid dev`: pgid's whole job on one machine, for trying it out. Development only.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::config::Config;
use crate::dev::{demo, DevClient, DevIssuer, ReviewClient, TempPostgres};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Use this database (admin URL: CREATEROLE, owner of the tables) instead of a throwaway one.
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value_t = 7443)]
    broker_port: u16,
    #[arg(long, default_value_t = 7432)]
    proxy_port: u16,
    /// Policy directory.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

/// What `pgid login --dev` needs to find the running `pgid dev`.
#[derive(Serialize, Deserialize)]
pub struct Session {
    pub issuer: String,
    pub broker: String,
    pub ca: PathBuf,
    pub clients: Vec<SessionClient>,
}

#[derive(Serialize, Deserialize)]
pub struct SessionClient {
    pub id: String,
    pub secret: String,
    pub subject: String,
}

impl Session {
    pub fn path() -> PathBuf {
        std::env::temp_dir().join(format!("pgid-dev-{}.json", unsafe { libc::geteuid() }))
    }

    pub fn read() -> anyhow::Result<Session> {
        let path = Session::path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no pgid dev session ({}): is `pgid dev` running?",
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    pub fn client_names(&self) -> String {
        self.clients
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The approval page's client at the development issuer.
const REVIEW_CLIENT: &str = "pgid-approvals";

/// Development clients, one per example policy subject.
const CLIENTS: &[(&str, &str)] = &[
    ("analyst-agent", "agent:analyst"),
    ("nightly-report", "svc:nightly-report"),
    ("support-bot", "agent:support-bot"),
];

pub async fn run(args: DevArgs) -> anyhow::Result<u8> {
    let policies = std::fs::canonicalize(&args.policies)
        .with_context(|| format!("policy directory {}", args.policies.display()))?;
    let (pg, admin_url) = match &args.database_url {
        Some(url) => {
            demo::install_demo(url)
                .await
                .context("installing the demo schema")?;
            (None, url.clone())
        }
        None => {
            eprintln!("pgid dev: starting a throwaway PostgreSQL…");
            let pg = tokio::task::spawn_blocking(TempPostgres::start).await??;
            let url = demo::provision(&pg, "app")
                .await
                .context("preparing the throwaway database")?;
            (Some(pg), url)
        }
    };
    demo::analyze_demo(&admin_url)
        .await
        .context("analysing the demo tables")?;

    let clients: Vec<DevClient> = CLIENTS
        .iter()
        .map(|(id, subject)| DevClient {
            id: id.to_string(),
            secret: client_secret(),
            subject: subject.to_string(),
            claims: Default::default(),
        })
        .collect();
    let issuer = DevIssuer::start(0, "pgid", clients.clone())
        .await
        .context("starting the development issuer")?;

    let state = tempfile::Builder::new()
        .prefix("pgid-dev-state-")
        .tempdir()?;
    let config_path = state.path().join("pgid.toml");
    // The approval page signs reviewers in through the development issuer's form.
    let review_secret = client_secret();
    write_private(&state.path().join("review_client_secret"), &review_secret)?;
    let review_url = match args.broker_port {
        0 => String::new(),
        port => format!("review_url = \"https://127.0.0.1:{port}/approvals\"\n"),
    };
    let toml = format!(
        "state_dir = {state:?}\npolicies = {policies:?}\n\n[broker]\nlisten = \"127.0.0.1:{}\"\n\n[proxy]\nlisten = \"127.0.0.1:{}\"\n\n\
         [[issuers]]\nissuer = {:?}\naudiences = [\"pgid\"]\n\n[[databases]]\nname = \"app\"\nadmin_url_file = \"admin_url\"\n\n[leases]\nreaper_interval = \"2s\"\n\n\
         [approvals]\n{review_url}\n[approvals.login]\nissuer = {:?}\nclient_id = \"{REVIEW_CLIENT}\"\n\
         client_secret_file = \"review_client_secret\"\nscopes = [\"openid\", \"profile\", \"groups\"]\n",
        args.broker_port,
        args.proxy_port,
        issuer.url(),
        issuer.url(),
        state = state.path().display().to_string(),
        policies = policies.display().to_string(),
    );
    write_private(&state.path().join("admin_url"), &admin_url)?;
    std::fs::write(&config_path, toml)?;
    let config = Config::load(&config_path)?;
    let app = App::build(config).await.context("starting pgid")?;
    let ca = app.tls.ca.clone().unwrap_or_default();
    let running = app.start().await?;
    let port = running.broker_addr.port();
    issuer.register_reviewer_client(ReviewClient {
        id: REVIEW_CLIENT.into(),
        secret: review_secret,
        redirect_uris: vec![
            format!("https://127.0.0.1:{port}/approvals/callback"),
            format!("https://localhost:{port}/approvals/callback"),
        ],
    });

    let session = Session {
        issuer: issuer.url().to_string(),
        broker: format!("https://{}", running.broker_addr),
        ca: ca.clone(),
        clients: clients
            .iter()
            .map(|c| SessionClient {
                id: c.id.clone(),
                secret: c.secret.clone(),
                subject: c.subject.clone(),
            })
            .collect(),
    };
    let session_path = Session::path();
    let _ = std::fs::remove_file(&session_path);
    write_private(&session_path, &serde_json::to_string_pretty(&session)?)?;

    eprintln!();
    eprintln!("pgid dev is running. DEVELOPMENT ONLY: its issuer gives a token to anyone holding the client secrets in {}.", session_path.display());
    if let Some(pg) = &pg {
        eprintln!(
            "  postgres   127.0.0.1:{} (throwaway, removed on exit)",
            pg.port
        );
    }
    eprintln!("  issuer     {}", issuer.url());
    eprintln!(
        "  broker     https://{}   (CA {})",
        running.broker_addr,
        ca.display()
    );
    eprintln!(
        "  approvals  https://{}/approvals   (sign in with any name; group \"dba\" approves)",
        running.broker_addr
    );
    eprintln!("  config     {}", config_path.display());
    eprintln!("  clients    {}", session.client_names());
    eprintln!();
    eprintln!("Next, in another terminal:");
    eprintln!("  DSN=$(pgid login --dev --client analyst-agent) && psql \"$DSN\"");
    eprintln!("  pgid login --dev --client support-bot --format json   # the whole lease");
    eprintln!();
    eprintln!("Edit a policy and `kill -HUP {}` to reload. Ctrl-C stops pgid and removes everything it created.", std::process::id());

    super::run_until_stopped(&running).await?;
    super::stop(running).await;
    let _ = std::fs::remove_file(&session_path);
    drop(issuer);
    drop(pg);
    drop(state);
    Ok(0)
}

/// A fresh secret for a development client.
fn client_secret() -> String {
    let mut s = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut s);
    hex::encode(s)
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
