//! `pgid serve`: run from pgid.toml until SIGTERM / Ctrl-C, then drain; SIGHUP reloads the
//! policies.

use std::path::Path;

use anyhow::Context;

use crate::app::App;
use crate::config::Config;

pub async fn run(config: &Path) -> anyhow::Result<u8> {
    let config = Config::load(config)?;
    let app = App::build(config).await.context("starting pgid")?;
    let running = app.start().await?;
    super::say(&format!(
        "pgid: broker on https://{}, proxy on {}",
        running.broker_addr, running.proxy_addr
    ));
    super::run_until_stopped(&running, super::Hangup::Reload).await?;
    tracing::info!("shutting down");
    super::stop(running).await;
    Ok(0)
}
