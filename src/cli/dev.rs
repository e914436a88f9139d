//! `pgid dev`: pgid's whole job on one machine, for trying it out. Development only.

use std::fmt::Write as _;
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

/// What `pgid login --dev` (and `policy`, `audit`, `approvals` with `--dev`) needs to find the
/// running `pgid dev`.
#[derive(Serialize, Deserialize)]
pub struct Session {
    pub issuer: String,
    pub broker: String,
    pub ca: PathBuf,
    pub clients: Vec<SessionClient>,
    /// The development reviewer (group `dba`), for `pgid approvals … --dev`.
    pub reviewer: SessionClient,
    /// The configuration `pgid dev` runs with.
    pub config: PathBuf,
}

#[derive(Serialize, Deserialize)]
pub struct SessionClient {
    pub id: String,
    pub secret: String,
    pub subject: String,
}

impl SessionClient {
    fn of(c: &DevClient) -> SessionClient {
        SessionClient {
            id: c.id.clone(),
            secret: c.secret.clone(),
            subject: c.subject.clone(),
        }
    }
}

impl Session {
    pub fn path() -> PathBuf {
        std::env::temp_dir().join(format!("pgid-dev-{}.json", unsafe { libc::geteuid() }))
    }

    pub fn read() -> anyhow::Result<Session> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let path = Session::path();
        // In a shared temporary directory: only a file of this user, private to them, not
        // through a link, is this user's session (another user could plant one).
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| {
                format!(
                    "no pgid dev session ({}): is `pgid dev` running?",
                    path.display()
                )
            })?;
        let meta = file.metadata()?;
        if meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o077 != 0 {
            anyhow::bail!(
                "{} is not this user's private pgid dev session (owner {}, mode {:o}): not used",
                path.display(),
                meta.uid(),
                meta.mode() & 0o777
            );
        }
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a session of this pgid dev (written by another version?): stop \
                 `pgid dev`, remove the file and start it again",
                path.display()
            )
        })
    }

    /// The running `pgid dev`'s configuration, for the commands that read one.
    pub fn config() -> anyhow::Result<PathBuf> {
        Ok(Session::read()?.config)
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

/// The development reviewer: a client whose tokens say group `dba`, the approvers of the
/// example policies, so `pgid approvals … --dev` can try the API's review path.
const REVIEWER: (&str, &str) = ("dev-reviewer", "human:dev-reviewer");

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
            super::say("pgid dev: starting a throwaway PostgreSQL…");
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
    let reviewer = DevClient {
        id: REVIEWER.0.into(),
        secret: client_secret(),
        subject: REVIEWER.1.into(),
        claims: serde_json::json!({"name": "Development reviewer", "groups": ["dba"]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let issuer = DevIssuer::start(
        0,
        "pgid",
        clients.iter().chain([&reviewer]).cloned().collect(),
    )
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
    // With the user's own database the state outlives this run, and with it the fingerprint of
    // the server key it was set up with: that database gets one dev key per user, kept.
    let key_line = match &args.database_url {
        Some(_) => format!(
            "server_key_file = {:?}\n",
            dev_key_path()?.display().to_string()
        ),
        None => String::new(),
    };
    let toml = format!(
        "{key_line}state_dir = {state:?}\npolicies = {policies:?}\n\n[broker]\nlisten = \"127.0.0.1:{}\"\n\n[proxy]\nlisten = \"127.0.0.1:{}\"\n\n\
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
        clients: clients.iter().map(SessionClient::of).collect(),
        reviewer: SessionClient::of(&reviewer),
        config: config_path.clone(),
    };
    let session_path = Session::path();
    // Written under a fresh name and renamed into place: a file or link another user left at
    // the path is replaced, never written through (in a sticky directory the rename fails).
    let fresh = session_path.with_extension(format!("{}.tmp", client_secret()));
    write_private(&fresh, &serde_json::to_string_pretty(&session)?)?;
    std::fs::rename(&fresh, &session_path)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&fresh);
        })
        .with_context(|| format!("writing {}", session_path.display()))?;

    // One write, through `say`: a terminal closed meanwhile must not panic pgid dev.
    let mut out = String::new();
    out.push('\n');
    let _ = writeln!(out, "pgid dev is running. DEVELOPMENT ONLY: its issuer gives a token to anyone holding the client secrets in {}.", session_path.display());
    if let Some(pg) = &pg {
        let _ = writeln!(
            out,
            "  postgres   127.0.0.1:{} (throwaway, removed on exit)",
            pg.port
        );
    }
    let _ = writeln!(out, "  issuer     {}", issuer.url());
    let _ = writeln!(
        out,
        "  broker     https://{}   (CA {})",
        running.broker_addr,
        ca.display()
    );
    let _ = writeln!(
        out,
        "  approvals  https://{}/approvals   (sign in with any name; group \"dba\" approves)",
        running.broker_addr
    );
    let _ = writeln!(out, "  config     {}", config_path.display());
    let _ = writeln!(out, "  clients    {}", session.client_names());
    let _ = writeln!(
        out,
        "  reviewer   {} (group dba): pgid approvals list --dev",
        session.reviewer.id
    );
    out.push('\n');
    let _ = writeln!(out, "Next, in another terminal:");
    let _ = writeln!(
        out,
        "  DSN=$(pgid login --dev --client analyst-agent) && psql \"$DSN\""
    );
    let _ = writeln!(
        out,
        "  pgid login --dev --client support-bot --format json   # the whole lease"
    );
    let _ = writeln!(
        out,
        "  pgid policy plan --dev; pgid audit tail --dev -f; pgid approvals list --dev"
    );
    out.push('\n');
    let _ = writeln!(out, "Edit a policy and `kill -HUP {}` to reload. Ctrl-C stops pgid and removes everything it created.", std::process::id());

    super::say(out.trim_end());

    super::run_until_stopped(&running, super::Hangup::StopsWithTheTerminal).await?;
    super::stop(running).await;
    let _ = std::fs::remove_file(&session_path);
    drop(issuer);
    drop(pg);
    drop(state);
    Ok(0)
}

/// Where `pgid dev --database-url` keeps its server key: `$XDG_STATE_HOME/pgid/dev-server.key`
/// (else `~/.local/state/pgid/…`), in a directory only the user can enter.
fn dev_key_path() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .context("neither XDG_STATE_HOME nor HOME is set: nowhere to keep the dev server key")?;
    let dir = base.join("pgid");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join("dev-server.key"))
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
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
