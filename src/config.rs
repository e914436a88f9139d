//! `pgid.toml` → a validated [`Config`] (DESIGN §5).
//!
//! Two steps, as ripgrep does with its arguments: serde reads the file into raw structs (unknown
//! keys and malformed values are errors at their line), then [`Config::load`] applies `PGID_…`
//! environment overrides, reads secrets from files and checks what serde cannot (addresses,
//! URLs, cross references). Every error names the file, the key and, where known, the line.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::IdentityMatch;
use crate::secret::Secret;
use crate::units::{ByteSize, Span};

/// The longest clock skew pgid tolerates on token times (DESIGN §3).
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(10);
const DEFAULT_JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// A key fetch that takes longer than this is not worth waiting for.
const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_GRACE: Duration = Duration::from_secs(60);
const DEFAULT_REAPER_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_AUDIT_SYNC_INTERVAL: Duration = Duration::from_millis(10);
const DEFAULT_AUDIT_ROTATE_SIZE: u64 = 256 << 20;
/// Broker connections open at once; more wait in the listen backlog (no descriptor used).
pub const DEFAULT_BROKER_MAX_CONNECTIONS: usize = 512;
/// The approval page's live-update streams open at once, on this instance and per sign-in.
pub const DEFAULT_MAX_STREAMS: usize = 128;
pub const DEFAULT_MAX_STREAMS_PER_SESSION: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    /// Which roles on the database clusters are this deployment's (`deployment = "…"`).
    pub deployment: crate::roles::Deployment,
    pub state_dir: PathBuf,
    pub server_key_file: PathBuf,
    pub policies: PathBuf,
    pub state_url: Option<Secret<String>>,
    /// TLS towards `state_url`, as a database's `upstream_tls` (unused without `state_url`: the
    /// state then lives in the first database, under its `upstream_tls`).
    pub state_tls: UpstreamTls,
    pub state_ca_file: Option<PathBuf>,
    pub broker: BrokerConfig,
    pub proxy: ProxyConfig,
    pub issuers: Vec<IssuerConfig>,
    pub databases: Vec<DatabaseConfig>,
    pub audit: AuditConfig,
    pub leases: LeaseConfig,
    pub approvals: ApprovalsConfig,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Identities allowed to revoke any lease (same shape as a policy's `[identity]`).
    pub admins: Vec<IdentityMatch>,
    /// Connections served at once: broker clients can never take the descriptors the proxy
    /// needs.
    pub max_connections: usize,
    /// Deadline for a request's headers, from the connection's start or the previous response.
    pub header_timeout: Duration,
    /// Deadline for a request's body, once its headers are in.
    pub body_timeout: Duration,
}

/// Default `[broker] header_timeout` and `body_timeout`: request bodies are small JSON objects.
pub const DEFAULT_BROKER_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BROKER_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `[proxy] max_connections`: client connections served at once.
pub const DEFAULT_PROXY_MAX_CONNECTIONS: usize = 1000;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub public_host: String,
    pub public_port: Option<u16>,
    /// Accept unencrypted client connections from non-loopback addresses (default: no).
    pub allow_plaintext: bool,
    /// Check and record every statement (the default). `false` makes the proxy a plain relay:
    /// for measuring pgid's own cost only.
    pub inspect: bool,
    /// Deadline for a client to complete TLS, startup and authentication.
    pub handshake_timeout: Duration,
    /// How long an idle upstream connection is kept for the same lease's next client.
    pub pool_idle_timeout: Duration,
    /// On shutdown, how long live sessions may continue before they are closed.
    pub drain_timeout: Duration,
    /// The largest Bind (FunctionCall) message a client may send; larger ones are refused
    /// unread. Query and Parse are capped by the policy's `max_statement_bytes`.
    pub max_bind_bytes: usize,
    /// The largest CopyData message a client may send.
    pub max_copy_data_bytes: usize,
    /// Tokens presented as the password whose lease is kept for reuse (0: a lease per
    /// connection).
    pub token_lease_cache: usize,
    /// Client connections open at once; more are refused (53300).
    pub max_connections: usize,
}

/// Default cap of a Bind message (its parameter values) and of one CopyData message.
pub const DEFAULT_MAX_BIND_BYTES: usize = 64 << 20;
/// Default `[proxy] token_lease_cache`: tokens presented as the password whose lease is kept.
pub const DEFAULT_TOKEN_LEASE_CACHE: usize = 10_000;
pub const DEFAULT_MAX_COPY_DATA_BYTES: usize = 64 << 20;

/// TLS from pgid to Postgres: `disable`, `require` (encrypted, unverified, as libpq's
/// sslmode=require) or `verify-full` (certificate and host name checked against `upstream_ca_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub jwks_url: Option<String>,
    pub leeway: Duration,
    pub ca_file: Option<PathBuf>,
    /// Between unknown-kid refetches once their burst is spent, and the first back-off after a
    /// failed fetch (doubling per failure up to a minute).
    pub jwks_refetch_cooldown: Duration,
    /// Deadline of one whole key fetch (discovery and JWKS).
    pub jwks_fetch_timeout: Duration,
    /// Cached keys older than this are refreshed in the background when used.
    pub jwks_refresh_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub name: String,
    pub admin_url: Secret<String>,
    pub pool_size: usize,
    pub upstream_tls: UpstreamTls,
    pub upstream_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub file: PathBuf,
    /// `always`: fsync every group commit before the actions it records go ahead; `interval`:
    /// written to the OS first (survives a crash of pgid), fsynced within `sync_interval`.
    pub sync: crate::audit::Sync,
    /// Rotate the file once it reaches this size (`None`: never).
    pub rotate_size: Option<u64>,
    /// Also write every record to `pgid.audit_events` in the state database.
    pub table: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ApprovalsConfig {
    /// Where each new request is announced (POST, JSON or Slack-compatible).
    pub webhooks: Vec<Webhook>,
    /// Base URL of the review page, for links in notices and notifications.
    pub review_url: Option<String>,
    /// Reviewers' sign-in to the `/approvals` page (OIDC authorization code); `None`: the page
    /// says it is not configured, and reviewers use the API or the CLI.
    pub login: Option<ReviewLogin>,
    /// Requests waiting for review at once, per lease and per policy.
    pub pending: crate::store::PendingLimits,
    /// The page's live-update streams open at once (this instance), and per sign-in.
    pub max_streams: usize,
    pub max_streams_per_session: usize,
}

impl ApprovalsConfig {
    /// The names policies may give in `[[approval]] webhooks`.
    pub fn webhook_names(&self) -> Vec<&str> {
        self.webhooks
            .iter()
            .filter_map(|w| w.name.as_deref())
            .collect()
    }
}

/// `[approvals.login]`: pgid as an OIDC client of the reviewers' identity provider.
#[derive(Debug, Clone)]
pub struct ReviewLogin {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret<String>>,
    /// Where the provider sends the reviewer back; default `https://<Host>/approvals/callback`.
    pub redirect_url: Option<String>,
    pub scopes: Vec<String>,
    /// How long a sign-in lasts on the page.
    pub session_ttl: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// What `[[approval]] webhooks = […]` in a policy calls it.
    pub name: Option<String>,
    pub url: String,
    pub slack: bool,
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Added to `VALID UNTIL` so clock skew between pgid and Postgres never cuts a lease short.
    pub grace: Duration,
    pub reaper_interval: Duration,
    /// Per identity: leases per minute after a burst, and live leases at once.
    pub limits: crate::roles::IssueLimits,
}

// ---- raw file shape -------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    deployment: Option<Spanned<String>>,
    state_dir: Option<String>,
    server_key_file: Option<String>,
    policies: Option<String>,
    state_url: Option<String>,
    state_url_file: Option<String>,
    state_tls: Option<UpstreamTls>,
    state_ca_file: Option<String>,
    #[serde(default)]
    broker: RawBroker,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    issuers: Vec<Spanned<RawIssuer>>,
    #[serde(default)]
    databases: Vec<Spanned<RawDatabase>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    leases: RawLeases,
    #[serde(default)]
    approvals: RawApprovals,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listen: Option<Spanned<String>>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    #[serde(default)]
    admins: Vec<IdentityMatch>,
    max_connections: Option<Spanned<usize>>,
    header_timeout: Option<Span>,
    body_timeout: Option<Span>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Spanned<String>>,
    public_host: Option<String>,
    public_port: Option<u16>,
    allow_plaintext: Option<bool>,
    handshake_timeout: Option<Span>,
    pool_idle_timeout: Option<Span>,
    drain_timeout: Option<Span>,
    inspect: Option<bool>,
    max_bind_bytes: Option<ByteSize>,
    max_copy_data_bytes: Option<ByteSize>,
    token_lease_cache: Option<usize>,
    max_connections: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Option<Vec<String>>,
    jwks_url: Option<String>,
    leeway: Option<Span>,
    ca_file: Option<String>,
    jwks_refetch_cooldown: Option<Span>,
    jwks_fetch_timeout: Option<Span>,
    jwks_refresh_interval: Option<Span>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    name: String,
    admin_url: Option<String>,
    admin_url_file: Option<String>,
    pool_size: Option<usize>,
    upstream_tls: Option<UpstreamTls>,
    upstream_ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    file: Option<String>,
    sync: Option<Spanned<String>>,
    sync_interval: Option<Span>,
    rotate_size: Option<ByteSize>,
    table: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    #[serde(default)]
    webhooks: Vec<Spanned<RawWebhook>>,
    review_url: Option<String>,
    login: Option<RawReviewLogin>,
    max_pending_per_lease: Option<Spanned<usize>>,
    max_pending_per_policy: Option<Spanned<usize>>,
    max_streams: Option<Spanned<usize>>,
    max_streams_per_session: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReviewLogin {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    client_secret_file: Option<String>,
    redirect_url: Option<String>,
    scopes: Option<Vec<String>>,
    session_ttl: Option<Span>,
    ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Option<String>,
    url: String,
    format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLeases {
    grace: Option<Span>,
    reaper_interval: Option<Span>,
    issue_rate: Option<Spanned<usize>>,
    issue_burst: Option<Spanned<usize>>,
    max_active_per_identity: Option<Spanned<usize>>,
}

/// Where an error points: `file:line` when the offending text is known.
struct Locator<'a> {
    file: String,
    text: &'a str,
}

impl Locator<'_> {
    fn at(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let location = match span {
            Some(s) => format!("{}:{}", self.file, line_of(self.text, s.start)),
            None => self.file.clone(),
        };
        ConfigError::Invalid {
            location,
            message: format!("{key}: {}", message.into()),
        }
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Splits a `toml` deserialization error into (`file:line`, message).
pub fn toml_error(file: &str, text: &str, err: &toml::de::Error) -> (String, String) {
    let msg = err.message().trim_end().to_string();
    match err.span() {
        Some(span) => (format!("{file}:{}", line_of(text, span.start)), msg),
        None => (file.to_string(), msg),
    }
}

/// Reads the environment through a function so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Loads `path` with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::parse(path, &text, &process_env)
    }

    pub fn parse(path: &Path, text: &str, env: Env<'_>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (location, message) = toml_error(&file, text, &e);
            ConfigError::Invalid { location, message }
        })?;
        let loc = Locator {
            file: file.clone(),
            text,
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let resolve = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let over = |name: &str, value: Option<String>| env(name).or(value);

        let deployment = match env("PGID_DEPLOYMENT") {
            Some(name) => crate::roles::Deployment::new(&name)
                .map_err(|m| loc.at(None, "PGID_DEPLOYMENT", m))?,
            None => match &raw.deployment {
                Some(name) => crate::roles::Deployment::new(name.get_ref())
                    .map_err(|m| loc.at(Some(name.span()), "deployment", m))?,
                None => crate::roles::Deployment::default(),
            },
        };
        // `PGID_DEFAULT_*`: defaults an environment sets below the file (the container image
        // keeps its state on its volume and listens on every address), where `PGID_*` overrides it.
        let state_dir = resolve(
            over("PGID_STATE_DIR", raw.state_dir)
                .or_else(|| env("PGID_DEFAULT_STATE_DIR"))
                .unwrap_or_else(|| "pgid-state".into()),
        );
        let listen_host = env("PGID_DEFAULT_LISTEN_HOST");
        let default_listen = |port: u16| match &listen_host {
            Some(host) if host.contains(':') => format!("[{host}]:{port}"),
            Some(host) => format!("{host}:{port}"),
            None => format!("127.0.0.1:{port}"),
        };
        let server_key_file = over("PGID_SERVER_KEY_FILE", raw.server_key_file)
            .map(resolve)
            .unwrap_or_else(|| state_dir.join("server.key"));
        let policies =
            resolve(over("PGID_POLICIES", raw.policies).unwrap_or_else(|| "policies".into()));
        let state_url = secret_value(
            &loc,
            env,
            "state_url",
            "PGID_STATE_URL",
            raw.state_url,
            raw.state_url_file,
            &resolve,
        )?;
        let state_tls = match &state_url {
            Some(url) => {
                let parsed = tokio_postgres::Config::from_str(url.expose()).map_err(|e| {
                    loc.at(
                        None,
                        "state_url",
                        format!(
                            "not a valid connection string: {e}{}",
                            sslmode_hint(url.expose(), "state_tls", "state_ca_file")
                        ),
                    )
                })?;
                // As for databases: loopback and Unix sockets in the clear, anything else
                // encrypted, unless the file says otherwise (or the URL asks for sslmode=require).
                raw.state_tls.unwrap_or(
                    if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Require
                        || !parsed.get_hosts().iter().all(is_local_host)
                    {
                        UpstreamTls::Require
                    } else {
                        UpstreamTls::Disable
                    },
                )
            }
            None if raw.state_tls.is_some() || raw.state_ca_file.is_some() => {
                return Err(loc.at(
                    None,
                    "state_tls",
                    "state_tls and state_ca_file apply to state_url; without it the state lives \
                     in the first database, under its upstream_tls",
                ))
            }
            None => UpstreamTls::Disable,
        };
        if state_tls == UpstreamTls::VerifyFull && raw.state_ca_file.is_none() {
            return Err(loc.at(
                None,
                "state_ca_file",
                "state_tls = \"verify-full\" needs state_ca_file",
            ));
        }
        let state_ca_file = raw.state_ca_file.map(&resolve);

        let broker_listen = listen_addr(
            &loc,
            env,
            "broker.listen",
            "PGID_BROKER_LISTEN",
            raw.broker.listen,
            &default_listen(7443),
        )?;
        let tls = match (
            over("PGID_BROKER_TLS_CERT", raw.broker.tls_cert),
            over("PGID_BROKER_TLS_KEY", raw.broker.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: resolve(cert),
                key: resolve(key),
            }),
            (None, None) => None,
            _ => {
                return Err(loc.at(
                    None,
                    "broker.tls_cert",
                    "tls_cert and tls_key must be given together",
                ))
            }
        };
        for admin in &raw.broker.admins {
            admin
                .validate()
                .map_err(|m| loc.at(None, "broker.admins", m))?;
        }

        let proxy_listen = listen_addr(
            &loc,
            env,
            "proxy.listen",
            "PGID_PROXY_LISTEN",
            raw.proxy.listen,
            &default_listen(7432),
        )?;
        // Listening on every address says nothing about the name clients use: loopback (a
        // published container port) unless `public_host` says otherwise.
        let public_host =
            over("PGID_PROXY_PUBLIC_HOST", raw.proxy.public_host).unwrap_or_else(|| {
                match proxy_listen.ip() {
                    ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                    ip => ip.to_string(),
                }
            });
        let public_port = match env("PGID_PROXY_PUBLIC_PORT") {
            Some(p) => Some(p.parse().map_err(|_| {
                loc.at(
                    None,
                    "PGID_PROXY_PUBLIC_PORT",
                    format!("not a port number: {p:?}"),
                )
            })?),
            None => raw.proxy.public_port,
        };

        if raw.issuers.is_empty() {
            return Err(loc.at(
                None,
                "issuers",
                "at least one [[issuers]] entry is required",
            ));
        }
        let mut issuers = Vec::new();
        let mut seen = BTreeSet::new();
        for spanned in raw.issuers {
            let span = spanned.span();
            let r = spanned.into_inner();
            issuers.push(issuer(&loc, span.clone(), r, &resolve)?);
            let name = &issuers.last().unwrap().issuer;
            if !seen.insert(name.clone()) {
                return Err(loc.at(
                    Some(span),
                    "issuers.issuer",
                    format!("{name} is listed twice"),
                ));
            }
        }

        if raw.databases.is_empty() {
            return Err(loc.at(
                None,
                "databases",
                "at least one [[databases]] entry is required",
            ));
        }
        let mut databases = Vec::new();
        let mut names = BTreeSet::new();
        for spanned in raw.databases {
            let span = spanned.span();
            let r = spanned.into_inner();
            if !crate::policy::valid_name(&r.name) {
                return Err(loc.at(
                    Some(span),
                    "databases.name",
                    format!("{:?} must match [a-z0-9_-]{{1,32}}", r.name),
                ));
            }
            if !names.insert(r.name.clone()) {
                return Err(loc.at(
                    Some(span),
                    "databases.name",
                    format!("{:?} is listed twice", r.name),
                ));
            }
            let var = format!(
                "PGID_DATABASES_{}_ADMIN_URL",
                r.name.to_ascii_uppercase().replace('-', "_")
            );
            let admin_url = secret_value(
                &loc,
                env,
                "databases.admin_url",
                &var,
                r.admin_url,
                r.admin_url_file,
                &resolve,
            )?
            .ok_or_else(|| {
                loc.at(
                    Some(span.clone()),
                    "databases.admin_url",
                    format!(
                        "database {:?} needs admin_url or admin_url_file (or {var})",
                        r.name
                    ),
                )
            })?;
            tokio_postgres::Config::from_str(admin_url.expose()).map_err(|e| {
                loc.at(
                    Some(span.clone()),
                    "databases.admin_url",
                    format!(
                        "not a valid connection string: {e}{}",
                        sslmode_hint(admin_url.expose(), "upstream_tls", "upstream_ca_file")
                    ),
                )
            })?;
            let pool_size = r.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
            if pool_size == 0 {
                return Err(loc.at(Some(span), "databases.pool_size", "must be at least 1"));
            }
            let host_is_local = tokio_postgres::Config::from_str(admin_url.expose())
                .ok()
                .is_some_and(|c| c.get_hosts().iter().all(is_local_host));
            // Loopback and Unix sockets need no encryption; anything else is encrypted by default.
            let upstream_tls = r.upstream_tls.unwrap_or(if host_is_local {
                UpstreamTls::Disable
            } else {
                UpstreamTls::Require
            });
            if upstream_tls == UpstreamTls::VerifyFull && r.upstream_ca_file.is_none() {
                return Err(loc.at(
                    Some(span),
                    "databases.upstream_ca_file",
                    "upstream_tls = \"verify-full\" needs upstream_ca_file",
                ));
            }
            databases.push(DatabaseConfig {
                name: r.name,
                admin_url,
                pool_size,
                upstream_tls,
                upstream_ca_file: r.upstream_ca_file.map(&resolve),
            });
        }

        let audit_file =
            over("PGID_AUDIT_FILE", raw.audit.file).unwrap_or_else(|| "audit.jsonl".into());
        let audit_file = {
            let p = PathBuf::from(audit_file);
            if p.is_absolute() {
                p
            } else {
                state_dir.join(p)
            }
        };
        let sync_env = env("PGID_AUDIT_SYNC");
        let sync_text = match sync_env.as_deref() {
            Some(v) => Some((v, None)),
            None => raw
                .audit
                .sync
                .as_ref()
                .map(|s| (s.get_ref().as_str(), Some(s.span()))),
        };
        let sync = match sync_text {
            Some(("always", _)) => crate::audit::Sync::Always,
            None | Some(("interval", _)) => crate::audit::Sync::Interval(
                raw.audit
                    .sync_interval
                    .map(Span::as_std)
                    .unwrap_or(DEFAULT_AUDIT_SYNC_INTERVAL),
            ),
            Some((other, span)) => {
                return Err(loc.at(
                    span,
                    "audit.sync",
                    format!("{other:?} is not a sync mode (use \"always\" or \"interval\")"),
                ))
            }
        };
        let audit = AuditConfig {
            file: audit_file,
            sync,
            rotate_size: match raw.audit.rotate_size {
                Some(ByteSize(0)) => None,
                Some(ByteSize(n)) => Some(n),
                None => Some(DEFAULT_AUDIT_ROTATE_SIZE),
            },
            table: match env("PGID_AUDIT_TABLE") {
                Some(v) => v == "true" || v == "1",
                None => raw.audit.table.unwrap_or(false),
            },
        };
        let span_env =
            |name: &str, value: Option<Span>, default: Duration| -> Result<Duration, ConfigError> {
                match env(name) {
                    Some(v) => Span::parse(&v)
                        .map(Span::as_std)
                        .map_err(|m| loc.at(None, name, m)),
                    None => Ok(value.map(Span::as_std).unwrap_or(default)),
                }
            };
        let mut leases = LeaseConfig {
            grace: span_env("PGID_LEASES_GRACE", raw.leases.grace, DEFAULT_GRACE)?,
            reaper_interval: span_env(
                "PGID_LEASES_REAPER_INTERVAL",
                raw.leases.reaper_interval,
                DEFAULT_REAPER_INTERVAL,
            )?,
            limits: crate::roles::DEFAULT_ISSUE_LIMITS,
        };

        let mut webhooks: Vec<Webhook> = Vec::new();
        for w in raw.approvals.webhooks {
            let span = w.span();
            let w = w.into_inner();
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                return Err(loc.at(Some(span), "approvals.webhooks", "url must be http(s)://…"));
            }
            if let Some(n) = &w.name {
                if !valid_webhook_name(n) {
                    return Err(loc.at(
                        Some(span),
                        "approvals.webhooks",
                        format!("name {n:?} must be 1-64 of a-z, 0-9, - and _"),
                    ));
                }
                if webhooks.iter().any(|o| o.name.as_ref() == Some(n)) {
                    return Err(loc.at(
                        Some(span),
                        "approvals.webhooks",
                        format!("two webhooks are named {n:?}"),
                    ));
                }
            }
            let slack = match w.format.as_deref() {
                None | Some("json") => false,
                Some("slack") => true,
                Some(other) => {
                    return Err(loc.at(
                        Some(span),
                        "approvals.webhooks",
                        format!("format {other:?} is not \"json\" or \"slack\""),
                    ))
                }
            };
            webhooks.push(Webhook {
                name: w.name,
                url: w.url,
                slack,
            });
        }
        let login = match raw.approvals.login {
            None => None,
            Some(l) => Some(review_login(&loc, env, l, &resolve)?),
        };
        let at_least_one = |v: Option<Spanned<usize>>, key: &str, default: usize| match v {
            Some(n) if *n.get_ref() == 0 => Err(loc.at(Some(n.span()), key, "must be at least 1")),
            Some(n) => Ok(n.into_inner()),
            None => Ok(default),
        };
        let narrow = |n: usize| n.min(u32::MAX as usize) as u32;
        let defaults = crate::store::PendingLimits::default();
        let pending = crate::store::PendingLimits {
            per_lease: narrow(at_least_one(
                raw.approvals.max_pending_per_lease,
                "approvals.max_pending_per_lease",
                defaults.per_lease as usize,
            )?),
            per_policy: narrow(at_least_one(
                raw.approvals.max_pending_per_policy,
                "approvals.max_pending_per_policy",
                defaults.per_policy as usize,
            )?),
        };
        let max_streams = at_least_one(
            raw.approvals.max_streams,
            "approvals.max_streams",
            DEFAULT_MAX_STREAMS,
        )?;
        let max_streams_per_session = at_least_one(
            raw.approvals.max_streams_per_session,
            "approvals.max_streams_per_session",
            DEFAULT_MAX_STREAMS_PER_SESSION,
        )?;
        let broker_max_connections = at_least_one(
            raw.broker.max_connections,
            "broker.max_connections",
            DEFAULT_BROKER_MAX_CONNECTIONS,
        )?;
        let issue_defaults = crate::roles::DEFAULT_ISSUE_LIMITS;
        leases.limits = crate::roles::IssueLimits {
            rate_per_minute: narrow(at_least_one(
                raw.leases.issue_rate,
                "leases.issue_rate",
                issue_defaults.rate_per_minute as usize,
            )?),
            burst: narrow(at_least_one(
                raw.leases.issue_burst,
                "leases.issue_burst",
                issue_defaults.burst as usize,
            )?),
            max_active: narrow(at_least_one(
                raw.leases.max_active_per_identity,
                "leases.max_active_per_identity",
                issue_defaults.max_active as usize,
            )?),
        };
        let proxy_max_connections = at_least_one(
            raw.proxy.max_connections,
            "proxy.max_connections",
            DEFAULT_PROXY_MAX_CONNECTIONS,
        )?;
        let approvals = ApprovalsConfig {
            webhooks,
            review_url: raw.approvals.review_url,
            login,
            pending,
            max_streams,
            max_streams_per_session,
        };

        Ok(Config {
            source: path.to_path_buf(),
            deployment,
            state_dir,
            server_key_file,
            policies,
            state_url,
            state_tls,
            state_ca_file,
            broker: BrokerConfig {
                listen: broker_listen,
                tls,
                admins: raw.broker.admins,
                max_connections: broker_max_connections,
                header_timeout: raw
                    .broker
                    .header_timeout
                    .map(Span::as_std)
                    .unwrap_or(DEFAULT_BROKER_HEADER_TIMEOUT),
                body_timeout: raw
                    .broker
                    .body_timeout
                    .map(Span::as_std)
                    .unwrap_or(DEFAULT_BROKER_BODY_TIMEOUT),
            },
            proxy: ProxyConfig {
                listen: proxy_listen,
                public_host,
                public_port,
                allow_plaintext: raw.proxy.allow_plaintext.unwrap_or(false),
                inspect: match env("PGID_PROXY_INSPECT") {
                    Some(v) => v != "false" && v != "0",
                    None => raw.proxy.inspect.unwrap_or(true),
                },
                handshake_timeout: raw
                    .proxy
                    .handshake_timeout
                    .map(Span::as_std)
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
                pool_idle_timeout: raw
                    .proxy
                    .pool_idle_timeout
                    .map(Span::as_std)
                    .unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
                drain_timeout: raw
                    .proxy
                    .drain_timeout
                    .map(Span::as_std)
                    .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
                max_bind_bytes: message_cap(raw.proxy.max_bind_bytes, DEFAULT_MAX_BIND_BYTES),
                max_copy_data_bytes: message_cap(
                    raw.proxy.max_copy_data_bytes,
                    DEFAULT_MAX_COPY_DATA_BYTES,
                ),
                token_lease_cache: raw
                    .proxy
                    .token_lease_cache
                    .unwrap_or(DEFAULT_TOKEN_LEASE_CACHE),
                max_connections: proxy_max_connections,
            },
            issuers,
            databases,
            audit,
            leases,
            approvals,
        })
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// The port written into DSNs: `public_port`, else the proxy's listening port.
    pub fn proxy_public_port(&self) -> u16 {
        self.proxy.public_port.unwrap_or(self.proxy.listen.port())
    }
}

/// A webhook's name, as policies refer to it.
fn valid_webhook_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// For a URL asking for `sslmode=verify-ca|verify-full` (which the connection string parser
/// refuses): where pgid takes certificate verification instead.
fn sslmode_hint(url: &str, tls_key: &str, ca_key: &str) -> String {
    if url.contains("sslmode=verify") {
        format!(
            "; pgid verifies the server's certificate with {tls_key} = \"verify-full\" and \
             {ca_key} instead of sslmode in the URL"
        )
    } else {
        String::new()
    }
}

fn is_local_host(h: &tokio_postgres::config::Host) -> bool {
    match h {
        tokio_postgres::config::Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

fn listen_addr(
    loc: &Locator<'_>,
    env: Env<'_>,
    key: &str,
    var: &str,
    value: Option<Spanned<String>>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let (text, span) = match (env(var), value) {
        (Some(v), _) => (v, None),
        (None, Some(s)) => (s.get_ref().clone(), Some(s.span())),
        (None, None) => (default.to_string(), None),
    };
    text.parse().map_err(|_| {
        loc.at(
            span,
            key,
            format!("{text:?} is not an address such as 127.0.0.1:7443"),
        )
    })
}

/// A secret given inline, in a file (`<key>_file`), or by the environment (`VAR`, `VAR_FILE`).
fn secret_value(
    loc: &Locator<'_>,
    env: Env<'_>,
    key: &str,
    var: &str,
    inline: Option<String>,
    file: Option<String>,
    resolve: &dyn Fn(String) -> PathBuf,
) -> Result<Option<Secret<String>>, ConfigError> {
    if let Some(v) = env(var) {
        return Ok(Some(Secret::new(v)));
    }
    // The environment's file replaces whatever the config file says.
    let (inline, file) = match env(&format!("{var}_FILE")) {
        Some(f) => (None, Some(PathBuf::from(f))),
        None => (inline, file.map(resolve)),
    };
    match (inline, file) {
        (Some(_), Some(_)) => Err(loc.at(None, key, format!("give {key} or {key}_file, not both"))),
        (Some(v), None) => Ok(Some(Secret::new(v))),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(&f).map_err(|e| {
                loc.at(
                    None,
                    &format!("{key}_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            Ok(Some(Secret::new(
                text.trim_end_matches(['\n', '\r']).to_string(),
            )))
        }
        (None, None) => Ok(None),
    }
}

const DEFAULT_REVIEW_SESSION: Duration = Duration::from_secs(3600);

fn review_login(
    loc: &Locator<'_>,
    env: Env<'_>,
    r: RawReviewLogin,
    resolve: &dyn Fn(String) -> PathBuf,
) -> Result<ReviewLogin, ConfigError> {
    let key = "approvals.login";
    crate::identity::check_fetch_url(&r.issuer)
        .map_err(|m| loc.at(None, &format!("{key}.issuer"), m))?;
    if r.client_id.is_empty() {
        return Err(loc.at(None, &format!("{key}.client_id"), "must not be empty"));
    }
    if let Some(u) = &r.redirect_url {
        let ok = url::Url::parse(u)
            .is_ok_and(|u| u.scheme() == "https" && u.path().ends_with("/approvals/callback"));
        if !ok {
            return Err(loc.at(
                None,
                &format!("{key}.redirect_url"),
                "must be an https:// URL ending in /approvals/callback",
            ));
        }
    }
    let mut scopes = r.scopes.unwrap_or_default();
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let session_ttl = r
        .session_ttl
        .map(Span::as_std)
        .unwrap_or(DEFAULT_REVIEW_SESSION);
    if session_ttl < Duration::from_secs(60) || session_ttl > Duration::from_secs(24 * 3600) {
        return Err(loc.at(
            None,
            &format!("{key}.session_ttl"),
            "must be between 1m and 24h",
        ));
    }
    Ok(ReviewLogin {
        client_secret: secret_value(
            loc,
            env,
            &format!("{key}.client_secret"),
            "PGID_APPROVALS_LOGIN_CLIENT_SECRET",
            r.client_secret,
            r.client_secret_file,
            resolve,
        )?,
        issuer: r.issuer,
        client_id: r.client_id,
        redirect_url: r.redirect_url,
        scopes,
        session_ttl,
        ca_file: r.ca_file.map(resolve),
    })
}

fn issuer(
    loc: &Locator<'_>,
    span: std::ops::Range<usize>,
    r: RawIssuer,
    resolve: &dyn Fn(String) -> PathBuf,
) -> Result<IssuerConfig, ConfigError> {
    let at = |key: &str, m: String| loc.at(Some(span.clone()), key, m);
    crate::identity::check_fetch_url(&r.issuer).map_err(|m| at("issuers.issuer", m))?;
    if let Some(u) = &r.jwks_url {
        crate::identity::check_fetch_url(u).map_err(|m| at("issuers.jwks_url", m))?;
    }
    if r.audiences.is_empty() || r.audiences.iter().any(|a| a.is_empty()) {
        return Err(at(
            "issuers.audiences",
            "list at least one non-empty audience".into(),
        ));
    }
    let algorithms = match r.algorithms {
        None => crate::identity::DEFAULT_ALGORITHMS.to_vec(),
        Some(names) => {
            let mut out = Vec::new();
            for n in names {
                out.push(
                    crate::identity::parse_algorithm(&n)
                        .map_err(|m| at("issuers.algorithms", m))?,
                );
            }
            if out.is_empty() {
                return Err(at(
                    "issuers.algorithms",
                    "list at least one algorithm".into(),
                ));
            }
            out
        }
    };
    let leeway = r.leeway.map(Span::as_std).unwrap_or(DEFAULT_LEEWAY);
    if leeway > MAX_LEEWAY {
        return Err(at(
            "issuers.leeway",
            format!("at most {}s", MAX_LEEWAY.as_secs()),
        ));
    }
    let jwks_fetch_timeout = r
        .jwks_fetch_timeout
        .map(Span::as_std)
        .unwrap_or(DEFAULT_JWKS_FETCH_TIMEOUT);
    if jwks_fetch_timeout < Duration::from_millis(100) || jwks_fetch_timeout > MAX_FETCH_TIMEOUT {
        return Err(at(
            "issuers.jwks_fetch_timeout",
            format!("between 100ms and {}s", MAX_FETCH_TIMEOUT.as_secs()),
        ));
    }
    let jwks_refresh_interval = r
        .jwks_refresh_interval
        .map(Span::as_std)
        .unwrap_or(DEFAULT_JWKS_REFRESH_INTERVAL);
    if jwks_refresh_interval < Duration::from_secs(1) {
        return Err(at("issuers.jwks_refresh_interval", "at least 1s".into()));
    }
    Ok(IssuerConfig {
        issuer: r.issuer,
        audiences: r.audiences,
        algorithms,
        jwks_url: r.jwks_url,
        leeway,
        ca_file: r.ca_file.map(resolve),
        jwks_refetch_cooldown: r
            .jwks_refetch_cooldown
            .map(Span::as_std)
            .unwrap_or(DEFAULT_REFETCH_COOLDOWN),
        jwks_fetch_timeout,
        jwks_refresh_interval,
    })
}

/// A message cap from the file: at least 1 KiB, at most the protocol's own 1 GiB.
fn message_cap(v: Option<ByteSize>, default: usize) -> usize {
    v.map_or(default, |b| (b.0 as usize).clamp(1024, 1 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "/tmp/pgid-state"
[broker]
listen = "127.0.0.1:7443"
[proxy]
listen = "127.0.0.1:7432"
public_host = "db.example.com"
[[issuers]]
issuer = "https://idp.example.com"
audiences = ["pgid"]
[[databases]]
name = "app"
admin_url = "postgres://pgid_admin:pw@127.0.0.1:5432/app"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str, env: Env<'_>) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/pgid/pgid.toml"), text, env)
    }

    #[test]
    fn container_defaults_sit_below_the_file() {
        let bare = GOOD
            .replace("state_dir = \"/tmp/pgid-state\"\n", "")
            .replace("listen = \"127.0.0.1:7443\"\n", "")
            .replace(
                "listen = \"127.0.0.1:7432\"\npublic_host = \"db.example.com\"\n",
                "",
            );
        let plain = parse(&bare, &no_env).unwrap();
        assert_eq!(plain.broker.listen.to_string(), "127.0.0.1:7443");
        assert_eq!(plain.proxy.listen.to_string(), "127.0.0.1:7432");
        assert_eq!(plain.state_dir, PathBuf::from("/etc/pgid/pgid-state"));
        let image = |k: &str| match k {
            "PGID_DEFAULT_LISTEN_HOST" => Some("0.0.0.0".to_string()),
            "PGID_DEFAULT_STATE_DIR" => Some("/var/lib/pgid".to_string()),
            _ => None,
        };
        let c = parse(&bare, &image).unwrap();
        assert_eq!(c.broker.listen.to_string(), "0.0.0.0:7443");
        assert_eq!(c.proxy.listen.to_string(), "0.0.0.0:7432");
        assert_eq!(c.proxy.public_host, "127.0.0.1");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/pgid"));
        assert_eq!(c.server_key_file, PathBuf::from("/var/lib/pgid/server.key"));
        // What the file says wins over the image's defaults.
        let c = parse(GOOD, &image).unwrap();
        assert_eq!(c.broker.listen.to_string(), "127.0.0.1:7443");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/pgid-state"));
    }

    #[test]
    fn state_tls_defaults_like_a_database_and_verify_full_needs_a_ca() {
        let with = |top: &str| parse(&format!("{top}\n{GOOD}"), &no_env);
        let tls = |top: &str| with(top).unwrap().state_tls;
        assert_eq!(
            tls("state_url = \"postgres://p:pw@127.0.0.1/state\""),
            UpstreamTls::Disable
        );
        assert_eq!(
            tls("state_url = \"postgres://p:pw@state.internal/state\""),
            UpstreamTls::Require
        );
        assert_eq!(
            tls("state_url = \"postgres://p:pw@127.0.0.1/state?sslmode=require\""),
            UpstreamTls::Require
        );
        let verified = with(
            "state_url = \"postgres://p:pw@state.internal/state\"\nstate_tls = \"verify-full\"\n\
             state_ca_file = \"ca.crt\"",
        )
        .unwrap();
        assert_eq!(verified.state_tls, UpstreamTls::VerifyFull);
        assert_eq!(
            verified.state_ca_file,
            Some(PathBuf::from("/etc/pgid/ca.crt"))
        );
        let e = with("state_url = \"postgres://p:pw@s/state\"\nstate_tls = \"verify-full\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs state_ca_file"), "{e}");
        let e = with("state_tls = \"require\"").unwrap_err().to_string();
        assert!(e.contains("apply to state_url"), "{e}");
        let e = with("state_url = \"postgres://p:pw@s/state?sslmode=verify-full\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_tls = \"verify-full\""), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }

    #[test]
    fn deployment_name_is_checked_and_overridable() {
        let named = format!("deployment = \"prod\"\n{GOOD}");
        assert_eq!(parse(&named, &no_env).unwrap().deployment.name(), "prod");
        let bad = format!("deployment = \"Prod_1\"\n{GOOD}");
        let e = parse(&bad, &no_env).unwrap_err().to_string();
        assert!(e.starts_with("/etc/pgid/pgid.toml:1: deployment:"), "{e}");
        let env = |k: &str| (k == "PGID_DEPLOYMENT").then(|| "staging".to_string());
        assert_eq!(parse(&named, &env).unwrap().deployment.name(), "staging");
    }

    #[test]
    fn reads_a_good_file_with_defaults() {
        let c = parse(GOOD, &no_env).unwrap();
        assert_eq!(c.deployment.name(), "default");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/pgid-state"));
        assert_eq!(
            c.server_key_file,
            PathBuf::from("/tmp/pgid-state/server.key")
        );
        assert_eq!(c.policies, PathBuf::from("/etc/pgid/policies"));
        assert_eq!(c.audit.file, PathBuf::from("/tmp/pgid-state/audit.jsonl"));
        assert_eq!(c.proxy.public_host, "db.example.com");
        assert_eq!(c.proxy_public_port(), 7432);
        assert_eq!(c.issuers[0].leeway, DEFAULT_LEEWAY);
        assert_eq!(c.issuers[0].jwks_fetch_timeout, Duration::from_secs(5));
        assert_eq!(c.issuers[0].jwks_refresh_interval, Duration::from_secs(300));
        assert_eq!(c.issuers[0].jwks_refetch_cooldown, Duration::from_secs(10));
        assert_eq!(c.proxy.token_lease_cache, 10_000);
        assert!(format!("{c:?}").contains("[redacted]"));
        assert!(!format!("{c:?}").contains(":pw@"));
    }

    #[test]
    fn limits_have_defaults_and_can_be_set() {
        let c = parse(GOOD, &no_env).unwrap();
        assert_eq!(c.broker.max_connections, DEFAULT_BROKER_MAX_CONNECTIONS);
        assert_eq!(c.approvals.pending, crate::store::PendingLimits::default());
        assert_eq!(c.approvals.max_streams, DEFAULT_MAX_STREAMS);
        assert_eq!(
            c.approvals.max_streams_per_session,
            DEFAULT_MAX_STREAMS_PER_SESSION
        );
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7443\"",
            "listen = \"127.0.0.1:7443\"\nmax_connections = 64",
        ) + "[approvals]\nmax_pending_per_lease = 3\nmax_pending_per_policy = 9\n\
             max_streams = 10\nmax_streams_per_session = 2\n";
        let c = parse(&text, &no_env).unwrap();
        assert_eq!(c.broker.max_connections, 64);
        assert_eq!(
            c.approvals.pending,
            crate::store::PendingLimits {
                per_lease: 3,
                per_policy: 9
            }
        );
        assert_eq!(
            (c.approvals.max_streams, c.approvals.max_streams_per_session),
            (10, 2)
        );
        let err = parse(&format!("{GOOD}[approvals]\nmax_streams = 0\n"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("approvals.max_streams: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn identity_limits_deadlines_and_the_proxy_cap_have_defaults_and_can_be_set() {
        let c = parse(GOOD, &no_env).unwrap();
        assert_eq!(c.leases.limits, crate::roles::DEFAULT_ISSUE_LIMITS);
        assert_eq!(c.broker.header_timeout, DEFAULT_BROKER_HEADER_TIMEOUT);
        assert_eq!(c.broker.body_timeout, DEFAULT_BROKER_BODY_TIMEOUT);
        assert_eq!(c.proxy.max_connections, DEFAULT_PROXY_MAX_CONNECTIONS);
        let text =
            GOOD.replace(
                "listen = \"127.0.0.1:7443\"",
                "listen = \"127.0.0.1:7443\"\nheader_timeout = \"3s\"\nbody_timeout = \"4s\"",
            )
            .replace(
                "listen = \"127.0.0.1:7432\"",
                "listen = \"127.0.0.1:7432\"\nmax_connections = 7",
            ) + "[leases]\nissue_rate = 5\nissue_burst = 2\nmax_active_per_identity = 3\n";
        let c = parse(&text, &no_env).unwrap();
        assert_eq!(
            c.leases.limits,
            crate::roles::IssueLimits {
                rate_per_minute: 5,
                burst: 2,
                max_active: 3
            }
        );
        assert_eq!(c.broker.header_timeout, Duration::from_secs(3));
        assert_eq!(c.broker.body_timeout, Duration::from_secs(4));
        assert_eq!(c.proxy.max_connections, 7);
        for bad in ["issue_rate", "issue_burst", "max_active_per_identity"] {
            let err = parse(&format!("{GOOD}[leases]\n{bad} = 0\n"), &no_env)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("leases.{bad}: must be at least 1")),
                "{err}"
            );
        }
    }

    #[test]
    fn webhooks_have_unique_names_that_policies_use() {
        let hooks = |list: &str| format!("{GOOD}[approvals]\nwebhooks = [{list}]\n");
        let c = parse(
            &hooks(
                "{ name = \"dba\", url = \"https://a\" }, { url = \"https://b\", format = \"slack\" }",
            ),
            &no_env,
        )
        .unwrap();
        assert_eq!(c.approvals.webhook_names(), ["dba"]);
        assert!(c.approvals.webhooks[1].slack && c.approvals.webhooks[1].name.is_none());
        for (bad, says) in [
            (
                "{ name = \"a\", url = \"https://a\" }, { name = \"a\", url = \"https://b\" }",
                "two webhooks are named",
            ),
            ("{ name = \"Not OK\", url = \"https://a\" }", "must be 1-64"),
        ] {
            let err = parse(&hooks(bad), &no_env).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let text = GOOD.replace("public_host", "publik_host");
        let err = parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.starts_with("/etc/pgid/pgid.toml:7:"), "{err}");
        assert!(err.contains("publik_host"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse(&GOOD.replace("127.0.0.1:7443", "localhost"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":4:") && err.contains("broker.listen"),
            "{err}"
        );
        let err = parse(&GOOD.replace("https://idp", "http://idp"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("issuers.issuer") && err.contains("loopback"),
            "{err}"
        );
        for (key, value, says) in [
            ("jwks_fetch_timeout", "10ms", "between 100ms and 60s"),
            ("jwks_fetch_timeout", "5m", "between 100ms and 60s"),
            ("jwks_refresh_interval", "500ms", "at least 1s"),
        ] {
            let text = GOOD.replace(
                "audiences = [\"pgid\"]",
                &format!("audiences = [\"pgid\"]\n{key} = \"{value}\""),
            );
            let err = parse(&text, &no_env).unwrap_err().to_string();
            assert!(
                err.contains(&format!("issuers.{key}")) && err.contains(says),
                "{err}"
            );
        }
        let err = parse(&format!("{GOOD}\n[leases]\ngrace = \"soon\"\n"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn environment_overrides_and_secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("url");
        std::fs::write(&secret, "postgres://a:b@10.0.0.1/app\n").unwrap();
        let secret_path = secret.display().to_string();
        let env = move |name: &str| match name {
            "PGID_PROXY_LISTEN" => Some("0.0.0.0:6432".to_string()),
            "PGID_DATABASES_APP_ADMIN_URL_FILE" => Some(secret_path.clone()),
            _ => None,
        };
        let c = parse(GOOD, &env).unwrap();
        assert_eq!(c.proxy.listen.port(), 6432);
        assert_eq!(
            c.databases[0].admin_url.expose(),
            "postgres://a:b@10.0.0.1/app"
        );
    }
}
