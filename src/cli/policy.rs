//! `pgid policy check`, `plan` and `test`.

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
    /// Validate every policy file; exit 1 with file:line for each problem. Without --database
    /// only the files themselves are checked, not the names they use.
    Check {
        /// Policy directory (default: the config's `policies`, else ./policies).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also check that each policy's database is configured.
        #[arg(long, short, env = "PGID_CONFIG")]
        config: Option<PathBuf>,
        /// Check every table, schema and column the policies name against this database:
        /// `postgres://…` for all policies, or `NAME=postgres://…` for the policies of database
        /// NAME (repeat for several). A database no URL covers is a problem.
        #[arg(long = "database", value_name = "[NAME=]URL")]
        databases: Vec<String>,
        /// Check the running `pgid dev`'s policies with its configuration, and their names
        /// against its database.
        #[arg(long, conflicts_with_all = ["dir", "config"])]
        dev: bool,
    },
    /// Print the SQL that would bring the group roles in line with the policies.
    Plan {
        #[arg(long, short, env = "PGID_CONFIG", default_value = "pgid.toml")]
        config: PathBuf,
        /// Use the running `pgid dev`'s configuration (instead of --config).
        #[arg(long)]
        dev: bool,
    },
    /// Evaluate statements for an identity: which policy applies, and each statement's outcome —
    /// refused (with the rule), held for approval (with the rule), or allowed — and the columns
    /// its results would have masked. Exit 0 if none is refused, 1 if any is.
    Test {
        /// Policy directory.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// Use the running `pgid dev`'s policy directory (instead of --dir).
        #[arg(long)]
        dev: bool,
        /// The identity's claims as JSON (`sub` and `iss` included), e.g. '{"sub":"svc:x"}'.
        #[arg(long)]
        claims: String,
        /// Ask for this database / policy, as a credential request would.
        #[arg(long)]
        database: Option<String>,
        #[arg(long)]
        policy: Option<String>,
        /// Statements to judge (each may hold several, separated by semicolons).
        #[arg(required = true)]
        statements: Vec<String>,
    },
}

pub async fn run(cmd: PolicyCommand) -> anyhow::Result<u8> {
    match cmd {
        PolicyCommand::Check {
            dir,
            config: _,
            databases,
            dev,
        } if dev => {
            // The dev session's own databases: names are checked against them too.
            let path = super::dev::Session::config()?;
            let config = Config::load(&path)?;
            let mut databases = databases;
            databases.extend(
                config
                    .databases
                    .iter()
                    .map(|d| format!("{}={}", d.name, d.admin_url.expose())),
            );
            check(dir, Some(path), &databases).await
        }
        PolicyCommand::Check {
            dir,
            config,
            databases,
            ..
        } => check(dir, config, &databases).await,
        PolicyCommand::Plan { config, dev } => plan(super::config_path(dev, config)?).await,
        PolicyCommand::Test {
            dir,
            dev,
            claims,
            database,
            policy,
            statements,
        } => super::policy_test::run(
            &match dev {
                true => Config::load(&super::dev::Session::config()?)?.policies,
                false => dir,
            },
            &claims,
            database.as_deref(),
            policy.as_deref(),
            statements,
        ),
    }
}

async fn check(
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
    databases: &[String],
) -> anyhow::Result<u8> {
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
            let mut problems = match &config {
                Some(c) => {
                    let mut p = set.check_databases(
                        &c.databases
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>(),
                    );
                    p.extend(set.check_webhooks(&c.approvals.webhook_names()));
                    p
                }
                None => Vec::new(),
            };
            if !databases.is_empty() {
                problems.extend(check_names(&set, databases).await?);
            }
            if problems.is_empty() {
                println!(
                    "ok: {} polic{} in {} ({})",
                    set.len(),
                    if set.len() == 1 { "y" } else { "ies" },
                    dir.display(),
                    if databases.is_empty() {
                        "the files only: names not checked against a database; use --database URL"
                    } else {
                        "names checked against the database"
                    }
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

/// `--database [NAME=]URL` values: the URL for every database (`None` key), or per name.
fn database_urls(values: &[String]) -> anyhow::Result<Vec<(Option<String>, String)>> {
    values
        .iter()
        .map(|v| {
            let is_url = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
            match v.split_once('=') {
                _ if is_url(v) => Ok((None, v.clone())),
                Some((name, url)) if policy::valid_name(name) && is_url(url) => {
                    Ok((Some(name.to_string()), url.to_string()))
                }
                _ => anyhow::bail!("--database takes postgres://… or NAME=postgres://…"),
            }
        })
        .collect()
}

/// Every name each policy uses, checked in the database given for it.
async fn check_names(
    set: &policy::PolicySet,
    databases: &[String],
) -> anyhow::Result<Vec<policy::PolicyError>> {
    let urls = database_urls(databases)?;
    let mut problems = Vec::new();
    let mut by_url: Vec<(&str, Vec<&policy::Policy>)> = Vec::new();
    for p in set.iter() {
        let url = urls
            .iter()
            .find(|(name, _)| name.as_deref() == Some(p.database.as_str()))
            .or_else(|| urls.iter().find(|(name, _)| name.is_none()));
        match url {
            Some((_, url)) => match by_url.iter_mut().find(|(u, _)| u == url) {
                Some((_, list)) => list.push(p),
                None => by_url.push((url, vec![p])),
            },
            None => problems.push(policy::PolicyError {
                location: p.source.display().to_string(),
                message: format!(
                    "names not checked: no --database for database {} (use --database {}=postgres://…)",
                    p.database, p.database
                ),
            }),
        }
    }
    for (url, policies) in by_url {
        let tls = crate::postgres_tls::client_config(
            if url
                .parse::<tokio_postgres::Config>()
                .is_ok_and(|c| c.get_ssl_mode() == tokio_postgres::config::SslMode::Require)
            {
                crate::config::UpstreamTls::Require
            } else {
                crate::config::UpstreamTls::Disable
            },
            None,
        )
        .map_err(|e| anyhow::anyhow!("--database: TLS: {e}"))?;
        let (pool, _) =
            crate::database::pool(url, 1, tls).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
        let mut c = pool.get().await.context("--database: connecting")?;
        for missing in roles::check_names(&mut **c, &policies)
            .await
            .map_err(|e| anyhow::anyhow!("--database: {}", crate::database::pg_message(&e)))?
        {
            problems.push(policy::PolicyError {
                location: missing.location.clone(),
                message: format!(
                    "policy {}: {} {}",
                    missing.policy, missing.rule, missing.message
                ),
            });
        }
    }
    Ok(problems)
}

async fn plan(config: PathBuf) -> anyhow::Result<u8> {
    let config = Config::load(&config)?;
    let policies = load_policies(&config)?;
    let databases = Databases::connect(&config.databases)?;
    // A policy naming what does not exist would apply without protecting anything: no plan.
    let mut missing = Vec::new();
    for db in databases.iter() {
        let mut c = db
            .pool
            .get()
            .await
            .with_context(|| format!("connecting to database {}", db.name))?;
        let mine: Vec<&policy::Policy> = policies
            .iter()
            .filter(|p| p.database == db.name)
            .map(|p| &**p)
            .collect();
        missing.extend(
            roles::check_names(&mut **c, &mine)
                .await
                .with_context(|| format!("database {}", db.name))?,
        );
    }
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("{m}");
        }
        eprintln!(
            "{} name{} not found: no plan",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" }
        );
        return Ok(1);
    }
    for db in databases.iter() {
        let c = db
            .pool
            .get()
            .await
            .with_context(|| format!("connecting to database {}", db.name))?;
        for p in policies.iter().filter(|p| p.database == db.name) {
            let plan = roles::plan_policy(&**c, p, &db.dbname, &config.deployment).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_their_database_or_cover_all() {
        let urls = database_urls(&[
            "postgres://a@h/app".into(),
            "crm=postgresql://b@h/crm".into(),
        ])
        .unwrap();
        assert_eq!(
            urls,
            [
                (None, "postgres://a@h/app".to_string()),
                (Some("crm".to_string()), "postgresql://b@h/crm".to_string())
            ]
        );
        // A URL whose query holds '=' is still one URL.
        assert_eq!(
            database_urls(&["postgres://a@h/app?sslmode=require".into()]).unwrap()[0].0,
            None
        );
        assert!(database_urls(&["host=h dbname=app".into()]).is_err());
        assert!(database_urls(&["Bad Name=postgres://h/app".into()]).is_err());
    }
}
