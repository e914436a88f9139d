//! Reviewer sign-in: pgid as an OpenID Connect client of the reviewers' identity provider,
//! authorization-code flow with PKCE, state and nonce (the `openidconnect` crate).
//!
//! The provider's metadata and keys are discovered on first use and kept for a while, so pgid
//! starts even when the provider is down. The reviewer's claims are the verified ID token's,
//! completed by the userinfo endpoint (many providers put groups only there).

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::config::ReviewLogin;

/// How long discovered metadata (and the provider's keys) are used before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(600);
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
    metadata: Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

impl Login {
    pub fn new(cfg: ReviewLogin) -> Result<Login, String> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        Ok(Login {
            http: b.build().map_err(|e| e.to_string())?,
            cfg,
            metadata: Mutex::new(None),
        })
    }

    pub fn configured_redirect(&self) -> Option<&str> {
        self.cfg.redirect_url.as_deref()
    }

    pub fn session_ttl(&self) -> Duration {
        self.cfg.session_ttl
    }

    async fn metadata(&self, fresh: bool) -> Result<CoreProviderMetadata, LoginError> {
        let mut slot = self.metadata.lock().await;
        if let Some((at, m)) = slot.as_ref() {
            if !fresh && at.elapsed() < METADATA_TTL {
                return Ok(m.clone());
            }
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| LoginError::Provider(e.to_string()))?;
        let m = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| LoginError::Provider(crate::net::error_chain(&e)))?;
        *slot = Some((Instant::now(), m.clone()));
        Ok(m)
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
                LoginError::Rejected(format!("code exchange: {}", crate::net::error_chain(&e)))
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
                    tracing::warn!(error = %e, "reviewer sign-in: using the ID token's claims only")
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
            .map_err(|e| {
                LoginError::Provider(format!("userinfo: {}", crate::net::error_chain(&e)))
            })?;
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
