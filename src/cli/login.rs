//! `pgid login`: a token (given, or fetched with the client-credentials grant) → a lease → DSN.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use openidconnect::core::{CoreClient, CoreProviderMetadata};
use openidconnect::{ClientId, ClientSecret, IssuerUrl, OAuth2TokenResponse, Scope};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Broker URL.
    #[arg(long, env = "PGID_BROKER", default_value = "https://127.0.0.1:7443")]
    broker: String,
    /// CA certificate to trust for the broker (pgid's generated one is <state_dir>/tls/ca.crt).
    #[arg(long, env = "PGID_CACERT")]
    cacert: Option<PathBuf>,
    /// A bearer token (prefer --token-file or PGID_TOKEN: arguments are visible to other users).
    #[arg(long, conflicts_with_all = ["token_file", "client_id"])]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, conflicts_with = "client_id")]
    token_file: Option<PathBuf>,
    /// OIDC issuer for the client-credentials grant.
    #[arg(long, env = "PGID_ISSUER")]
    issuer: Option<String>,
    #[arg(long, env = "PGID_CLIENT_ID", requires = "issuer")]
    client_id: Option<String>,
    #[arg(long, env = "PGID_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Scopes to request (repeatable).
    #[arg(long)]
    scope: Vec<String>,
    /// Audience to request (sent as `audience`; some issuers use --resource instead).
    #[arg(long)]
    audience: Option<String>,
    /// Resource indicator to request (RFC 8707).
    #[arg(long)]
    resource: Option<String>,
    /// Use the `pgid dev` session on this machine (its issuer, client and broker).
    #[arg(long, conflicts_with_all = ["token", "token_file", "issuer"])]
    dev: bool,
    /// With --dev: which development client (default: the first).
    #[arg(long, requires = "dev")]
    client: Option<String>,
    /// Ask for this database.
    #[arg(long)]
    database: Option<String>,
    /// Ask for this policy (needed when several match).
    #[arg(long)]
    policy: Option<String>,
    /// Lease length, e.g. 15m (at most the policy's max_ttl).
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long, value_enum, default_value = "dsn")]
    format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    /// The DSN alone.
    Dsn,
    /// `export PGHOST=…` lines for a shell.
    Env,
    /// The whole lease as JSON.
    Json,
}

pub async fn run(mut a: LoginArgs) -> anyhow::Result<u8> {
    if a.dev {
        let session = super::dev::Session::read()?;
        let client = match &a.client {
            Some(name) => session
                .clients
                .iter()
                .find(|c| &c.id == name)
                .with_context(|| {
                    format!(
                        "no development client {name:?}; try one of: {}",
                        session.client_names()
                    )
                })?,
            None => session
                .clients
                .first()
                .context("the dev session lists no clients")?,
        };
        a.issuer = Some(session.issuer.clone());
        a.client_id = Some(client.id.clone());
        a.client_secret = Some(client.secret.clone());
        a.broker = session.broker.clone();
        a.cacert = Some(session.ca.clone());
    }
    let token = token(&a).await?;
    let http = super::broker_client(a.cacert.as_deref())?;
    let mut body = serde_json::Map::new();
    for (k, v) in [
        ("database", &a.database),
        ("policy", &a.policy),
        ("ttl", &a.ttl),
    ] {
        if let Some(v) = v {
            body.insert(k.into(), Value::String(v.clone()));
        }
    }
    let url = format!("{}/v1/credentials", a.broker.trim_end_matches('/'));
    let resp = http
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            let hint = if a.dev {
                format!(
                    "; is `pgid dev` still running? (it wrote {}; if it is not running, remove \
                     that file and start it again)",
                    super::dev::Session::path().display()
                )
            } else {
                String::new()
            };
            anyhow::anyhow!(
                "calling the broker at {url}: {}{hint}",
                crate::errors::chain(&e.without_url())
            )
        })?;
    let status = resp.status();
    let lease: Value = resp
        .json()
        .await
        .context("the broker's answer is not JSON")?;
    if !status.is_success() {
        let msg = lease.get("message").and_then(Value::as_str).unwrap_or("");
        let code = lease
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        eprintln!("pgid: broker refused ({status}): {code}: {msg}");
        return Ok(1);
    }
    let field = |k: &str| {
        lease
            .get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    // Verified TLS to the proxy: the CA the broker gave (pgid's own), else the one trusted for
    // the broker (the same certificate serves both), else the system's.
    let verify = field("sslmode") == "verify-full";
    let root = match (verify, lease.get("ca_cert").and_then(Value::as_str)) {
        (false, _) => None,
        (true, Some(pem)) => Some(keep_ca(pem)?),
        (true, None) => a.cacert.clone(),
    };
    match a.format {
        Format::Dsn => println!("{}", with_root(&field("dsn"), root.as_deref())),
        Format::Json => println!("{}", serde_json::to_string_pretty(&lease)?),
        Format::Env => {
            let q = |s: String| format!("'{}'", s.replace('\'', "'\\''"));
            println!("export PGHOST={}", q(field("host")));
            println!("export PGPORT={}", q(field("port")));
            println!("export PGDATABASE={}", q(field("database")));
            println!("export PGUSER={}", q(field("username")));
            println!("export PGPASSWORD={}", q(field("password")));
            println!("export PGSSLMODE={}", q(field("sslmode")));
            if let Some(r) = &root {
                println!("export PGSSLROOTCERT={}", q(r.display().to_string()));
            }
            println!("export PGID_LEASE_ID={}", q(field("lease_id")));
            println!("export PGID_LEASE_EXPIRES_AT={}", q(field("expires_at")));
        }
    }
    Ok(0)
}

/// Keeps the proxy's CA in the user's cache directory (named by its digest, so a new CA gets a
/// new file) and returns its path.
fn keep_ca(pem: &str) -> anyhow::Result<PathBuf> {
    use sha2::Digest;
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("pgid");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let digest = hex::encode(&sha2::Sha256::digest(pem.as_bytes())[..8]);
    let path = dir.join(format!("proxy-ca-{digest}.crt"));
    if !path.exists() {
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// `dsn` with `sslrootcert=<root>` added (percent-encoded) when there is one.
fn with_root(dsn: &str, root: Option<&std::path::Path>) -> String {
    let Some(root) = root else {
        return dsn.to_string();
    };
    let mut encoded = String::new();
    for b in root.display().to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let sep = if dsn.contains('?') { '&' } else { '?' };
    format!("{dsn}{sep}sslrootcert={encoded}")
}

async fn token(a: &LoginArgs) -> anyhow::Result<String> {
    if let Some(t) = &a.token {
        return Ok(t.trim().to_string());
    }
    if let Some(path) = &a.token_file {
        let t =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(t.trim().to_string());
    }
    if let (Some(issuer), Some(id)) = (&a.issuer, &a.client_id) {
        let secret = a
            .client_secret
            .clone()
            .context("--client-secret (or PGID_CLIENT_SECRET) is required with --client-id")?;
        return client_credentials(
            issuer,
            id,
            &secret,
            &Extra {
                scopes: &a.scope,
                audience: a.audience.as_deref(),
                resource: a.resource.as_deref(),
            },
        )
        .await;
    }
    if let Ok(t) = std::env::var("PGID_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    bail!("no token: give --token-file, PGID_TOKEN, or --issuer with --client-id and --client-secret (or --dev)")
}

/// What a token request asks for besides the client: scopes, audience, resource indicator.
#[derive(Default)]
pub(super) struct Extra<'a> {
    pub scopes: &'a [String],
    pub audience: Option<&'a str>,
    pub resource: Option<&'a str>,
}

/// The OAuth 2.0 client-credentials grant against the issuer's discovered token endpoint.
pub(super) async fn client_credentials(
    issuer: &str,
    id: &str,
    secret: &str,
    a: &Extra<'_>,
) -> anyhow::Result<String> {
    crate::identity::check_fetch_url(issuer).map_err(|m| anyhow::anyhow!(m))?;
    let http = openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let meta = CoreProviderMetadata::discover_async(IssuerUrl::new(issuer.to_string())?, &http)
        .await
        .map_err(|e| anyhow::anyhow!("discovering {issuer}: {}", crate::errors::chain(&e)))?;
    let client = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(id.to_string()),
        Some(ClientSecret::new(secret.to_string())),
    );
    let mut req = client
        .exchange_client_credentials()
        .context("the issuer publishes no token endpoint")?;
    for s in a.scopes {
        req = req.add_scope(Scope::new(s.clone()));
    }
    if let Some(aud) = a.audience {
        req = req.add_extra_param("audience", aud.to_string());
    }
    if let Some(res) = a.resource {
        req = req.add_extra_param("resource", res.to_string());
    }
    let resp = req.request_async(&http).await.map_err(|e| {
        anyhow::anyhow!(
            "token request to {issuer} failed: {}",
            crate::errors::chain(&e)
        )
    })?;
    Ok(resp.access_token().secret().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_ca_goes_into_the_dsn() {
        let dsn = "postgresql://u:s@db.example.com:7432/app?sslmode=verify-full";
        assert_eq!(
            with_root(
                dsn,
                Some(std::path::Path::new("/home/a b/.cache/pgid/ca.crt"))
            ),
            "postgresql://u:s@db.example.com:7432/app?sslmode=verify-full\
             &sslrootcert=/home/a%20b/.cache/pgid/ca.crt"
        );
        assert_eq!(with_root(dsn, None), dsn);
    }
}
