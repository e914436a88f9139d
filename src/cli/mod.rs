//! The `pgid` command line: `serve`, `dev`, `login`, `policy check|plan|test`, `approvals`,
//! `audit`.

mod approvals;
mod audit;
mod dev;
mod login;
mod policy;
mod policy_test;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "pgid", version, about = "Non-human identity for PostgreSQL")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker and the reaper (and, later, the proxy) from pgid.toml.
    Serve {
        #[arg(long, short, env = "PGID_CONFIG", default_value = "pgid.toml")]
        config: PathBuf,
    },
    /// Everything on one machine: a throwaway Postgres with demo data, a development issuer,
    /// the example policies and pgid. Ctrl-C removes it all.
    Dev(dev::DevArgs),
    /// Get a lease: token (or client credentials) → DSN.
    Login(Box<login::LoginArgs>),
    /// Check, plan and test policies.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Review statements held for approval.
    Approvals {
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Serve { config } => serve::run(&config).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Login(args) => login::run(*args).await,
        Command::Policy { command } => policy::run(command).await,
        Command::Audit { command } => audit::run(command).await,
        Command::Approvals { command } => approvals::run(command).await,
    }
}

/// The configuration a command reads: the running `pgid dev`'s with `--dev`, else `config`.
fn config_path(dev: bool, config: PathBuf) -> anyhow::Result<PathBuf> {
    if dev {
        dev::Session::config()
    } else {
        Ok(config)
    }
}

/// An HTTPS client for the broker, trusting `cacert` in addition to nothing else pgid knows.
pub fn broker_client(cacert: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30));
    if let Some(ca) = cacert {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
        );
    }
    Ok(b.build()?)
}

/// Logs go to stderr; `PGID_LOG` (or `RUST_LOG`) sets the filter, `PGID_LOG_FORMAT=json` the format.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("PGID_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    // A log line that cannot be written (stderr closed, a terminal gone) is dropped: the
    // subscriber's own report of it would go through `eprintln!`, which panics then.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if std::env::var("PGID_LOG_FORMAT").is_ok_and(|f| f == "json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// What a SIGHUP means besides reloading the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    /// `pgid serve`: a reload, whatever became of stderr (a service's stderr may be closed).
    Reload,
    /// `pgid dev`, run from a terminal: a SIGHUP whose terminal has gone away (the window was
    /// closed: stderr cannot be written) stops pgid, as a hang-up means.
    StopsWithTheTerminal,
}

/// Serves until Ctrl-C or SIGTERM; each SIGHUP reloads the policies (a reload that fails leaves
/// the running ones in place, and says why), or stops `pgid dev` whose terminal is gone.
pub async fn run_until_stopped(
    running: &crate::app::Running,
    hangup_means: Hangup,
) -> anyhow::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = hangup.recv() => {
                if !say("pgid: SIGHUP: reloading the policies") && hangup_means == Hangup::StopsWithTheTerminal {
                    tracing::info!("the terminal went away (SIGHUP): stopping");
                    return Ok(());
                }
                // The outcome goes to the log as well: stderr may be gone.
                match running.reload().await {
                    Ok(summary) => say(&format!("pgid: policies reloaded: {summary}")),
                    Err(e) => {
                        tracing::error!(error = %e, "policies NOT reloaded (the running ones stay)");
                        say(&format!("pgid: policies NOT reloaded (the running ones stay):\n{e}"))
                    }
                };
            }
        }
    }
}

/// Writes a line to stderr; false when it cannot be written (never panics, unlike `eprintln!`).
pub fn say(line: &str) -> bool {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    writeln!(err, "{line}").and_then(|()| err.flush()).is_ok()
}

/// Stops `running`: idle sessions end at once, the others when what they run has finished or at
/// the drain timeout; says so, and a second Ctrl-C or SIGTERM stops at once.
pub async fn stop(running: crate::app::Running) {
    let drain = running.app.config.proxy.drain_timeout;
    say(&format!(
        "pgid: stopping: idle sessions close now, busy ones when their statement or transaction \
         ends (at most {} s); Ctrl-C again to stop at once",
        drain.as_secs()
    ));
    tokio::select! {
        _ = running.shutdown() => {}
        _ = shutdown_signal() => {
            say("pgid: stopping at once");
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
