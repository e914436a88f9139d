//! Reviewer sign-in: pgid as an OpenID Connect client of the reviewers' identity provider,
//! authorization-code flow with PKCE, state and nonce (the `openidconnect` crate).
//!
//! The provider's metadata and keys are discovered on first use and kept (a
//! [`CachedDocument`]), so pgid starts even when the provider is down, and a slow provider costs
//! one fetch at a time: a kept copy answers at once while it is refreshed in the background, and
//! after a failed discovery sign-ins are told at once when to retry. The reviewer's claims are
//! the verified ID token's, completed by the userinfo endpoint (many providers put groups only
//! there).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::FutureExt;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ReviewLogin;
use crate::identity::{CachedDocument, Refusal, Timing};

/// Deadline of one request to the provider (code exchange, userinfo), and of one discovery
/// (metadata and keys together).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);
/// How discovered metadata (and the provider's keys) are kept: refreshed in the background after
/// ten minutes, not used after a day; after a failed discovery none for 5 s, doubling to a minute.
const METADATA_TIMING: Timing = Timing {
    refresh_after: Duration::from_secs(600),
    max_age: Duration::from_secs(24 * 3600),
    fetch_timeout: PROVIDER_TIMEOUT,
    backoff: Duration::from_secs(5),
    backoff_max: Duration::from_secs(60),
};
/// An ID token that does not verify against the kept keys fetches them again (the provider may
/// have rotated them), at most this often.
const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Claims about the token itself rather than the person: not kept in the reviewer's session.
const TOKEN_MECHANICS: &[&str] = &[
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "at_hash",
    "c_hash",
    "auth_time",
    "sid",
    "jti",
    "azp",
    "acr",
    "amr",
    "s_hash",
];

/// A sign-in in progress, kept (sealed) in the browser between the redirect and the callback.
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub redirect: String,
    /// The page path to return to.
    pub next: String,
}

/// Who signed in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reviewer {
    pub issuer: String,
    pub subject: String,
    /// What the page shows: name, preferred username or email, else the subject.
    pub name: String,
    pub claims: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the reviewers' identity provider is unavailable: {0}")]
    Provider(String),
    #[error("sign-in failed: {0}")]
    Rejected(String),
}

pub struct Login {
    cfg: ReviewLogin,
    http: reqwest::Client,
    metadata: CachedDocument<CoreProviderMetadata>,
    last_forced: Mutex<Option<Instant>>,
}

impl Login {
    pub fn new(cfg: ReviewLogin) -> Result<Login, String> {
        Login::with_timing(cfg, METADATA_TIMING)
    }

    fn with_timing(cfg: ReviewLogin, timing: Timing) -> Result<Login, String> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|e| e.to_string())?;
        let issuer = IssuerUrl::new(cfg.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = CachedDocument::new(format!("OIDC discovery of {}", cfg.issuer), timing, {
            let http = http.clone();
            move || {
                let (http, issuer) = (http.clone(), issuer.clone());
                async move {
                    CoreProviderMetadata::discover_async(issuer, &http)
                        .await
                        .map_err(|e| crate::errors::chain(&e))
                }
                .boxed()
            }
        });
        Ok(Login {
            http,
            cfg,
            metadata,
            last_forced: Mutex::new(None),
        })
    }

    pub fn configured_redirect(&self) -> Option<&str> {
        self.cfg.redirect_url.as_deref()
    }

    pub fn session_ttl(&self) -> Duration {
        self.cfg.session_ttl
    }

    /// The provider's metadata: the kept copy at once, else the fetch in flight (or a new one);
    /// `fresh` asks for a new fetch, at most once per [`FORCED_REFRESH_INTERVAL`] (otherwise the
    /// kept copy). Why a discovery failed is logged once per attempt, not shown to the browser.
    async fn metadata(&self, fresh: bool) -> Result<CoreProviderMetadata, LoginError> {
        let kept = self.metadata.current();
        if let (Some(m), false) = (&kept, fresh) {
            return Ok((**m).clone());
        }
        let may_start = || {
            let mut last = self.last_forced.lock().unwrap();
            let now = Instant::now();
            let allowed = kept.is_none()
                || last.is_none_or(|t| now.duration_since(t) >= FORCED_REFRESH_INTERVAL);
            if allowed && kept.is_some() {
                *last = Some(now);
            }
            allowed
        };
        match self.metadata.refresh(may_start).await {
            Ok(m) => Ok((*m).clone()),
            // Declined only when a copy is kept.
            Err(Refusal::Declined) => kept
                .map(|m| (*m).clone())
                .ok_or_else(|| LoginError::Provider("no metadata".into())),
            Err(Refusal::Unavailable(u)) => Err(LoginError::Provider(format!(
                "its discovery document cannot be fetched right now; retry in {} s",
                u.retry_in.as_secs_f64().ceil().max(1.0) as u64
            ))),
        }
    }

    fn client(
        &self,
        meta: CoreProviderMetadata,
        redirect: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        LoginError,
    > {
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|e| LoginError::Rejected(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.cfg.client_id.clone()),
            self.cfg
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// Where to send the browser, and what to remember until it comes back.
    pub async fn start(
        &self,
        redirect: &str,
        next: String,
    ) -> Result<(String, PendingLogin), LoginError> {
        let client = self.client(self.metadata(false).await?, redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        Ok((
            url.to_string(),
            PendingLogin {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
                redirect: redirect.to_string(),
                next,
            },
        ))
    }

    /// Exchanges the code, verifies the ID token (signature, issuer, audience, expiry, nonce) and
    /// reads the reviewer's claims.
    pub async fn finish(
        &self,
        pending: PendingLogin,
        code: String,
    ) -> Result<Reviewer, LoginError> {
        let meta = self.metadata(false).await?;
        let userinfo = meta.userinfo_endpoint().map(|u| u.url().to_string());
        let client = self.client(meta, &pending.redirect)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| LoginError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                LoginError::Rejected(format!("code exchange: {}", crate::errors::chain(&e)))
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| LoginError::Rejected("the provider returned no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce);
        let verify = |client: &CoreClient<_, _, _, _, _, _>| {
            let verifier = client.id_token_verifier().set_allowed_algs(asymmetric());
            id_token
                .claims(&verifier, &nonce)
                .map(|c| c.subject().to_string())
        };
        let subject = match verify(&client) {
            Ok(s) => s,
            // The provider may have rotated its keys since discovery: fetch them once more.
            Err(_) => {
                let fresh = self.client(self.metadata(true).await?, &pending.redirect)?;
                verify(&fresh).map_err(|e| LoginError::Rejected(format!("ID token: {e}")))?
            }
        };
        // The signature is verified: the payload's claims are the provider's word.
        let mut claims = payload(&id_token.to_string())
            .ok_or_else(|| LoginError::Rejected("ID token payload unreadable".into()))?;
        if let Some(url) = userinfo {
            // Many providers put groups only here. Claims only ever widen what a reviewer may
            // decide, so when userinfo cannot be read the ID token's claims stand alone.
            match self.userinfo(&url, token.access_token().secret()).await {
                Ok(extra) => {
                    if extra.get("sub").and_then(Value::as_str) != Some(subject.as_str()) {
                        return Err(LoginError::Rejected(
                            "userinfo is about a different subject than the ID token".into(),
                        ));
                    }
                    for (k, v) in extra {
                        claims.entry(k).or_insert(v);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::errors::Chain(&e), "reviewer sign-in: using the ID token's claims only")
                }
            }
        }
        for k in TOKEN_MECHANICS {
            claims.remove(*k);
        }
        let name = ["name", "preferred_username", "email"]
            .iter()
            .find_map(|k| claims.get(*k).and_then(Value::as_str))
            .unwrap_or(&subject)
            .to_string();
        Ok(Reviewer {
            issuer: self.cfg.issuer.clone(),
            subject,
            name,
            claims,
        })
    }

    async fn userinfo(
        &self,
        url: &str,
        access_token: &str,
    ) -> Result<Map<String, Value>, LoginError> {
        let resp = self
            .http
            .get(url)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| LoginError::Provider(format!("userinfo: {}", crate::errors::chain(&e))))?;
        if !resp.status().is_success() {
            return Err(LoginError::Provider(format!(
                "userinfo: HTTP {}",
                resp.status()
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| LoginError::Provider(format!("userinfo: {e}")))?;
        if body.len() > 64 * 1024 {
            return Err(LoginError::Provider("userinfo: response too large".into()));
        }
        serde_json::from_slice(&body)
            .map_err(|_| LoginError::Provider("userinfo is not a JSON object".into()))
    }
}

fn asymmetric() -> Vec<CoreJwsSigningAlgorithm> {
    use CoreJwsSigningAlgorithm::*;
    vec![
        RsaSsaPkcs1V15Sha256,
        RsaSsaPkcs1V15Sha384,
        RsaSsaPkcs1V15Sha512,
        RsaSsaPssSha256,
        RsaSsaPssSha384,
        RsaSsaPssSha512,
        EcdsaP256Sha256,
        EcdsaP384Sha384,
        EdDsa,
    ]
}

/// The claims of a compact JWS.
fn payload(jwt: &str) -> Option<Map<String, Value>> {
    let part = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::dev::DevIssuer;

    /// The provider's metadata under a stalled provider: one discovery per burst, its failure
    /// shared; fail-fast during the back-off; a kept copy answering at once while stale.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_in_under_a_stalled_provider() {
        let issuer = DevIssuer::start(0, "pgid", vec![]).await.unwrap();
        let login = Arc::new(
            Login::with_timing(
                ReviewLogin {
                    issuer: issuer.url().to_string(),
                    client_id: "pgid-approvals".into(),
                    client_secret: None,
                    redirect_url: None,
                    scopes: vec!["openid".into()],
                    session_ttl: Duration::from_secs(3600),
                    ca_file: None,
                },
                Timing {
                    refresh_after: Duration::from_millis(300),
                    max_age: Duration::from_secs(3600),
                    fetch_timeout: Duration::from_secs(1),
                    backoff: Duration::from_secs(2),
                    backoff_max: Duration::from_secs(60),
                },
            )
            .unwrap(),
        );
        let starts = |n: usize| {
            let login = login.clone();
            async move {
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        let login = login.clone();
                        tokio::spawn(async move {
                            let t = Instant::now();
                            let r = login
                                .start(
                                    "https://pgid.example/approvals/callback",
                                    "/approvals".into(),
                                )
                                .await
                                .map(|_| ());
                            (r, t.elapsed())
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                out
            }
        };

        issuer.stall(true);
        let burst = starts(10).await;
        let slowest = burst.iter().map(|r| r.1).max().unwrap();
        assert!(
            burst
                .iter()
                .all(|r| matches!(&r.0, Err(LoginError::Provider(m)) if m.contains("retry in"))),
            "{:?}",
            burst
                .iter()
                .map(|r| r.0.as_ref().err().map(|e| e.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(slowest < Duration::from_millis(2_500), "{slowest:?}");
        assert_eq!(issuer.key_requests(), 1, "one discovery for the burst");
        let burst = starts(10).await;
        assert!(burst
            .iter()
            .all(|r| r.0.is_err() && r.1 < Duration::from_millis(200)));
        assert_eq!(issuer.key_requests(), 1, "none during the back-off");

        issuer.stall(false);
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert!(starts(1).await[0].0.is_ok());
        assert_eq!(issuer.key_requests(), 3, "discovery and keys");

        tokio::time::sleep(Duration::from_millis(400)).await;
        issuer.stall(true);
        let burst = starts(20).await;
        assert!(burst
            .iter()
            .all(|r| r.0.is_ok() && r.1 < Duration::from_millis(200)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(issuer.key_requests(), 4, "one background refresh");
        issuer.stall(false);
    }
}
