//! Discovery and JWKS fetching, and the per-issuer key cache.
//!
//! The HTTP client follows no redirects, caps response bodies and times out: an issuer's
//! endpoints are configuration, not something a token may steer (`jku`, `x5u` and `jwk` headers
//! are never read). The key set is a [`CachedDocument`]: a token whose `kid` is cached never waits
//! on the network (a stale set is refreshed in the background), one fetch serves every check
//! that needs it, and after a failure checks that need the network are answered at once until the
//! back-off has passed. An unknown `kid` starts a refetch only under a small token bucket, so a
//! stream of made-up key ids cannot turn pgid into a load generator against the issuer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::document::{CachedDocument, Refusal, Timing};
use crate::config::IssuerConfig;

const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Cached keys are not used past this age: a key the issuer removed stops being trusted within a
/// day even while the issuer cannot be reached.
pub const MAX_STALE_KEYS: Duration = Duration::from_secs(24 * 3600);
/// The longest pause between fetch attempts while the issuer keeps failing.
pub const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(60);
/// Unknown-kid refetches allowed in a burst before the cooldown applies.
const REFETCH_BURST: f64 = 3.0;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {url}: {message}")]
    Http {
        url: String,
        message: String,
        /// The server answered (with a status pgid does not take): another URL may still work.
        answered: bool,
    },
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

type KeySet = HashMap<String, PublishedKey>;

/// Token bucket for unknown-kid refetches: `REFETCH_BURST` at once, then one per cooldown.
#[derive(Debug)]
struct RefetchBudget {
    tokens: f64,
    at: Option<Instant>,
}

impl RefetchBudget {
    fn new() -> RefetchBudget {
        RefetchBudget {
            tokens: REFETCH_BURST,
            at: None,
        }
    }

    fn take(&mut self, now: Instant, cooldown: Duration) -> bool {
        if let Some(at) = self.at {
            let refill =
                now.saturating_duration_since(at).as_secs_f64() / cooldown.as_secs_f64().max(0.001);
            self.tokens = (self.tokens + refill).min(REFETCH_BURST);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Keys of one trusted issuer.
pub struct KeySource {
    cooldown: Duration,
    keys: CachedDocument<KeySet>,
    budget: Mutex<RefetchBudget>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

pub enum Lookup {
    Found(PublishedKey),
    /// The issuer's current key set (fetched now or recently) has no such key.
    Unknown,
    /// The key is not cached and the issuer's keys cannot be fetched now (a fetch failed now or
    /// recently); a new attempt may start after `retry_in`.
    Unavailable {
        retry_in: Duration,
    },
}

/// Where one fetch goes: everything it needs, owned, so it can run in a task of its own.
#[derive(Clone)]
struct Endpoints {
    issuer: String,
    jwks_url: Option<String>,
    http: reqwest::Client,
}

impl KeySource {
    pub fn new(cfg: &IssuerConfig) -> Result<KeySource, FetchError> {
        let http =
            http_client(cfg.ca_file.as_deref(), cfg.jwks_fetch_timeout).map_err(|message| {
                FetchError::Http {
                    url: cfg.issuer.clone(),
                    message,
                    answered: false,
                }
            })?;
        let endpoints = Endpoints {
            issuer: cfg.issuer.clone(),
            jwks_url: cfg.jwks_url.clone(),
            http,
        };
        let timing = Timing {
            refresh_after: cfg.jwks_refresh_interval,
            max_age: MAX_STALE_KEYS.max(cfg.jwks_refresh_interval),
            fetch_timeout: cfg.jwks_fetch_timeout,
            backoff: cfg.jwks_refetch_cooldown,
            backoff_max: MAX_FETCH_BACKOFF,
        };
        let keys = CachedDocument::new(format!("JWKS of {}", cfg.issuer), timing, move || {
            let e = endpoints.clone();
            async move { e.fetch().await.map_err(|e| e.to_string()) }.boxed()
        });
        Ok(KeySource {
            cooldown: cfg.jwks_refetch_cooldown,
            keys,
            budget: Mutex::new(RefetchBudget::new()),
        })
    }

    /// Finds the key for `kid` (or the only key when the token names none). A cached key answers
    /// at once, however old the set (up to [`MAX_STALE_KEYS`]); otherwise the check waits for the
    /// fetch in flight, or starts one — when nothing is cached, or when the refetch budget allows
    /// — unless a recent failure's back-off is running.
    pub async fn lookup(&self, kid: Option<&str>) -> Lookup {
        let cached = self.keys.current();
        if let Some(k) = cached.as_deref().and_then(|keys| pick(keys, kid)) {
            return Lookup::Found(k);
        }
        let may_start = || {
            cached.is_none()
                || self
                    .budget
                    .lock()
                    .unwrap()
                    .take(Instant::now(), self.cooldown)
        };
        match self.keys.refresh(may_start).await {
            Ok(keys) => pick(&keys, kid).map_or(Lookup::Unknown, Lookup::Found),
            Err(Refusal::Declined) => Lookup::Unknown,
            Err(Refusal::Unavailable(u)) => Lookup::Unavailable {
                retry_in: u.retry_in,
            },
        }
    }
}

impl Endpoints {
    async fn fetch(&self) -> Result<KeySet, FetchError> {
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
            // RFC 8414 metadata only when the issuer answered without OIDC discovery: after a
            // timeout or a refused connection a second URL on the same host would fail alike.
            Err(first @ FetchError::Http { answered: true, .. }) => {
                let oauth = oauth_metadata_url(&self.issuer).ok_or(first)?;
                get_limited(&self.http, &oauth).await?
            }
            Err(e) => return Err(e),
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

fn http_client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
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
        answered: false,
    };
    let mut resp = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| err(crate::errors::chain(&e.without_url())))?;
    if !resp.status().is_success() {
        return Err(FetchError::Http {
            url: url.to_string(),
            message: format!("HTTP {}", resp.status()),
            answered: true,
        });
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
    fn unknown_kid_refetches_come_in_a_burst_then_one_per_cooldown() {
        let cooldown = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut b = RefetchBudget::new();
        let taken = (0..5).filter(|_| b.take(t0, cooldown)).count();
        assert_eq!(taken, 3);
        assert!(!b.take(t0 + Duration::from_secs(9), cooldown));
        assert!(b.take(t0 + Duration::from_secs(11), cooldown));
        assert!(!b.take(t0 + Duration::from_secs(12), cooldown));
        // A long quiet spell refills the burst, never more.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..5).filter(|_| b.take(later, cooldown)).count(), 3);
    }

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
