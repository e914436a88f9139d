//! `pgid policy check` and `pgid policy plan`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::app::load_policies;
use crate::config::Config;
use crate::database::Databases;
use crate::policy;
use crate::roles;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate every policy file; exit 1 with file:line for each problem.
    Check {
        /// Policy directory (default: the config's `policies`, else ./policies).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also check that each policy's database is configured.
        #[arg(long, short, env = "PGID_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the SQL that would bring the group roles in line with the policies.
    Plan {
        #[arg(long, short, env = "PGID_CONFIG", default_value = "pgid.toml")]
        config: PathBuf,
    },
}

pub async fn run(cmd: PolicyCommand) -> anyhow::Result<u8> {
    match cmd {
        PolicyCommand::Check { dir, config } => check(dir, config),
        PolicyCommand::Plan { config } => plan(config).await,
    }
}

fn check(dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<u8> {
    let config = match config {
        Some(path) => Some(Config::load(&path)?),
        None if dir.is_none() && std::path::Path::new("pgid.toml").exists() => {
            Some(Config::load("pgid.toml".as_ref())?)
        }
        None => None,
    };
    let dir = dir
        .or_else(|| config.as_ref().map(|c| c.policies.clone()))
        .unwrap_or_else(|| "policies".into());
    let mut errors = match policy::load_dir(&dir) {
        Ok(set) => {
            let problems = match &config {
                Some(c) => set.check_databases(
                    &c.databases
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>(),
                ),
                None => Vec::new(),
            };
            if problems.is_empty() {
                println!(
                    "ok: {} polic{} in {}",
                    set.len(),
                    if set.len() == 1 { "y" } else { "ies" },
                    dir.display()
                );
                return Ok(0);
            }
            problems
        }
        Err(e) => e,
    };
    errors.sort_by(|a, b| a.location.cmp(&b.location));
    for e in &errors {
        eprintln!("{e}");
    }
    eprintln!(
        "{} problem{} found",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    Ok(1)
}

async fn plan(config: PathBuf) -> anyhow::Result<u8> {
    let config = Config::load(&config)?;
    let policies = load_policies(&config)?;
    let databases = Databases::connect(&config.databases)?;
    for db in databases.iter() {
        let c = db
            .pool
            .get()
            .await
            .with_context(|| format!("connecting to database {}", db.name))?;
        for p in policies.iter().filter(|p| p.database == db.name) {
            let plan = roles::plan_policy(&**c, p, &db.dbname).await?;
            println!(
                "-- policy {} → role {} in database {}",
                plan.policy, plan.role, db.name
            );
            if plan.statements.is_empty() {
                println!("-- (up to date)");
            }
            for s in &plan.statements {
                println!("{s};");
            }
        }
    }
    Ok(0)
}
