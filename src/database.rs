//! Admin connections to each configured database (`[[databases]]`), pooled.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::postgres_tls::RustlsConnect;

use crate::config::DatabaseConfig;

/// No admin statement of pgid's should take longer; a hung one must not hold a lease hostage.
const ADMIN_STATEMENT_TIMEOUT: &str = "15s";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("database {name}: invalid admin_url: {message}")]
    Url { name: String, message: String },
    #[error("database {name}: {message}")]
    Pool { name: String, message: String },
}

/// One configured database: its pool and what pgid learned about it at start.
#[derive(Clone)]
pub struct Database {
    pub name: String,
    pub pool: Pool,
    /// The database name on the server (the `dbname` of admin_url).
    pub dbname: String,
    /// The admin role pgid logs in as.
    pub admin_user: String,
    /// Host and port of the upstream server (first host of admin_url).
    pub upstream: Upstream,
    pub upstream_tls: crate::config::UpstreamTls,
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// TLS towards this server (`upstream_tls`), for admin and lease connections alike.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Clone, Debug)]
pub enum Upstream {
    Tcp { host: String, port: u16 },
    Unix { dir: std::path::PathBuf, port: u16 },
}

#[derive(Clone, Default)]
pub struct Databases {
    by_name: BTreeMap<String, Database>,
}

impl Databases {
    pub fn connect(configs: &[DatabaseConfig]) -> Result<Databases, DatabaseError> {
        let mut by_name = BTreeMap::new();
        for c in configs {
            let db = Database::new(c)?;
            by_name.insert(c.name.clone(), db);
        }
        Ok(Databases { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Database> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Database> {
        self.by_name.values()
    }
}

impl Database {
    fn new(c: &DatabaseConfig) -> Result<Database, DatabaseError> {
        let tls = crate::postgres_tls::client_config(c.upstream_tls, c.upstream_ca_file.as_deref())
            .map_err(|message| DatabaseError::Pool {
                name: c.name.clone(),
                message: format!("upstream TLS: {message}"),
            })?;
        let (pool, pg) =
            pool(c.admin_url.expose(), c.pool_size, tls.clone()).map_err(|message| {
                DatabaseError::Url {
                    name: c.name.clone(),
                    message,
                }
            })?;
        let dbname = pg
            .get_dbname()
            .map(str::to_string)
            .or_else(|| pg.get_user().map(str::to_string))
            .unwrap_or_default();
        let admin_user = pg.get_user().unwrap_or_default().to_string();
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let upstream = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Upstream::Tcp {
                host: h.clone(),
                port,
            },
            Some(tokio_postgres::config::Host::Unix(p)) => Upstream::Unix {
                dir: p.clone(),
                port,
            },
            None => Upstream::Tcp {
                host: "localhost".into(),
                port,
            },
        };
        Ok(Database {
            name: c.name.clone(),
            pool,
            dbname,
            admin_user,
            upstream,
            upstream_tls: c.upstream_tls,
            upstream_ca_file: c.upstream_ca_file.clone(),
            tls,
        })
    }
}

/// A pool for a connection string, with pgid's session settings on every connection; over TLS
/// (required) when `tls` is given.
pub fn pool(
    url: &str,
    size: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Pool, tokio_postgres::Config), String> {
    let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    pg.application_name("pgid");
    pg.options(format!("-c statement_timeout={ADMIN_STATEMENT_TIMEOUT}"));
    let recycling = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match tls {
        Some(cfg) => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            Manager::from_config(pg.clone(), RustlsConnect(cfg), recycling)
        }
        None => Manager::from_config(pg.clone(), tokio_postgres::NoTls, recycling),
    };
    let pool = Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())?;
    Ok((pool, pg))
}

/// A Postgres error as an operator should read it — tokio-postgres's own text says only "db
/// error": the server's severity, SQLSTATE, message, detail and hint
/// (`ERROR 2BP01: role "x" cannot be dropped …; detail: …`), or for a client-side error (I/O,
/// TLS, a closed connection) its whole chain of causes ([`crate::errors`]).
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    crate::errors::chain(e)
}

/// A pool error as [`pg_message`] gives a Postgres one.
pub fn pool_message(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => pg_message(pg),
        other => crate::errors::chain(other),
    }
}
