//! Discovery and JWKS fetching, and the per-issuer key cache.
//!
//! The HTTP client follows no redirects, caps response bodies and times out: an issuer's
//! endpoints are configuration, not something a token may steer (`jku`, `x5u` and `jwk` headers
//! are never read). An unknown `kid` triggers a refetch, limited by a small token bucket so a
//! stream of made-up key ids cannot turn pgid into a load generator against the issuer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::config::IssuerConfig;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Keys are refreshed in the background of a verify after this long, so removed keys go away.
const MAX_KEY_AGE: Duration = Duration::from_secs(300);
/// Unknown-kid refetches allowed in a burst before the cooldown applies.
const REFETCH_BURST: f64 = 3.0;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: {message}")]
    Document { url: String, message: String },
}

/// One verification key from the issuer's JWKS.
#[derive(Clone)]
pub struct PublishedKey {
    pub key: DecodingKey,
    /// The `alg` the JWK pins, if any: a token must then use exactly it.
    pub alg: Option<Algorithm>,
    pub family: jsonwebtoken::AlgorithmFamily,
}

#[derive(Default)]
struct Cache {
    keys: Arc<HashMap<String, PublishedKey>>,
    fetched_at: Option<Instant>,
    tokens: f64,
    tokens_at: Option<Instant>,
}

/// Keys of one trusted issuer.
pub struct KeySource {
    issuer: String,
    jwks_url: Option<String>,
    cooldown: Duration,
    http: reqwest::Client,
    cache: Mutex<Cache>,
    /// Serialises fetches so a burst of verifies triggers one request.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

pub enum Lookup {
    Found(PublishedKey),
    Unknown,
}

impl KeySource {
    pub fn new(cfg: &IssuerConfig) -> Result<KeySource, FetchError> {
        Ok(KeySource {
            issuer: cfg.issuer.clone(),
            jwks_url: cfg.jwks_url.clone(),
            cooldown: cfg.jwks_refetch_cooldown,
            http: http_client(cfg.ca_file.as_deref()).map_err(|message| FetchError::Http {
                url: cfg.issuer.clone(),
                message,
            })?,
            cache: Mutex::new(Cache {
                tokens: REFETCH_BURST,
                ..Default::default()
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Finds the key for `kid` (or the only key when the token names none), fetching the key set
    /// when it was never fetched, is stale, or lacks the kid and the refetch budget allows.
    pub async fn lookup(&self, kid: Option<&str>) -> Result<Lookup, FetchError> {
        let (keys, fresh) = self.snapshot();
        if fresh {
            if let Some(k) = pick(&keys, kid) {
                return Ok(Lookup::Found(k));
            }
            if !self.take_refetch_token() {
                return Ok(Lookup::Unknown);
            }
        }
        let _guard = self.fetching.lock().await;
        // Another task may have fetched while we waited.
        let (keys_now, fresh_now) = self.snapshot();
        if fresh_now && !Arc::ptr_eq(&keys, &keys_now) {
            if let Some(k) = pick(&keys_now, kid) {
                return Ok(Lookup::Found(k));
            }
        }
        match self.fetch().await {
            Ok(fetched) => {
                let fetched = Arc::new(fetched);
                {
                    let mut c = self.cache.lock().unwrap();
                    c.keys = fetched.clone();
                    c.fetched_at = Some(Instant::now());
                }
                Ok(pick(&fetched, kid)
                    .map(Lookup::Found)
                    .unwrap_or(Lookup::Unknown))
            }
            // A stale cache still answers while the issuer is unreachable; a cache that never
            // loaded cannot, and the error says why.
            Err(e) if !keys_now.is_empty() => {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; using cached keys");
                Ok(pick(&keys_now, kid)
                    .map(Lookup::Found)
                    .unwrap_or(Lookup::Unknown))
            }
            Err(e) => Err(e),
        }
    }

    fn snapshot(&self) -> (Arc<HashMap<String, PublishedKey>>, bool) {
        let c = self.cache.lock().unwrap();
        let fresh = c.fetched_at.is_some_and(|t| t.elapsed() < MAX_KEY_AGE);
        (c.keys.clone(), fresh)
    }

    fn take_refetch_token(&self) -> bool {
        let mut c = self.cache.lock().unwrap();
        let now = Instant::now();
        if let Some(at) = c.tokens_at {
            let refill =
                now.duration_since(at).as_secs_f64() / self.cooldown.as_secs_f64().max(0.001);
            c.tokens = (c.tokens + refill).min(REFETCH_BURST);
        }
        c.tokens_at = Some(now);
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, PublishedKey>, FetchError> {
        let jwks_url = match &self.jwks_url {
            Some(u) => u.clone(),
            None => self.discover().await?,
        };
        let body = get_limited(&self.http, &jwks_url).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            url: jwks_url.clone(),
            message: format!("not a JWK set: {e}"),
        })?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            match published_key(jwk) {
                Some(k) => {
                    let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
                    keys.insert(kid, k);
                }
                None => tracing::debug!(issuer = %self.issuer, index = i, "skipping unusable JWK"),
            }
        }
        tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched JWKS");
        Ok(keys)
    }

    async fn discover(&self) -> Result<String, FetchError> {
        let base = self.issuer.trim_end_matches('/');
        let oidc = format!("{base}/.well-known/openid-configuration");
        let doc = match get_limited(&self.http, &oidc).await {
            Ok(body) => body,
            Err(first) => {
                let oauth = oauth_metadata_url(&self.issuer).ok_or(first)?;
                get_limited(&self.http, &oauth).await?
            }
        };
        let d: Discovery = serde_json::from_slice(&doc).map_err(|e| FetchError::Document {
            url: oidc.clone(),
            message: format!("not a discovery document: {e}"),
        })?;
        if d.issuer.trim_end_matches('/') != base {
            return Err(FetchError::Document {
                url: oidc,
                message: format!(
                    "discovery names issuer {:?}, expected {:?}",
                    d.issuer, self.issuer
                ),
            });
        }
        super::check_fetch_url(&d.jwks_uri)
            .map_err(|message| FetchError::Document { url: oidc, message })?;
        Ok(d.jwks_uri)
    }
}

/// RFC 8414: the well-known segment goes between host and path.
fn oauth_metadata_url(issuer: &str) -> Option<String> {
    let u = reqwest::Url::parse(issuer).ok()?;
    let path = u.path().trim_end_matches('/');
    let mut out = u.clone();
    out.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    Some(out.to_string())
}

fn pick(keys: &HashMap<String, PublishedKey>, kid: Option<&str>) -> Option<PublishedKey> {
    match kid {
        Some(k) => keys.get(k).cloned(),
        None if keys.len() == 1 => keys.values().next().cloned(),
        None => None,
    }
}

fn published_key(jwk: &Jwk) -> Option<PublishedKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(a.to_string().parse::<Algorithm>().ok()?),
        None => None,
    };
    let family = match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa,
        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
            jsonwebtoken::AlgorithmFamily::Ec
        }
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
            jsonwebtoken::AlgorithmFamily::Ed
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PublishedKey { key, alg, family })
}

pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .user_agent(concat!("pgid/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let cert =
            reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| e.to_string())
}

async fn get_limited(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    let err = |message: String| FetchError::Http {
        url: url.to_string(),
        message,
    };
    let mut resp = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| err(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| err(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(err(format!(
                "response larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_metadata_inserts_the_well_known_segment() {
        assert_eq!(
            oauth_metadata_url("https://idp.example.com/tenant/a").unwrap(),
            "https://idp.example.com/.well-known/oauth-authorization-server/tenant/a"
        );
        assert_eq!(
            oauth_metadata_url("https://idp.example.com").unwrap(),
            "https://idp.example.com/.well-known/oauth-authorization-server"
        );
    }
}
