//! A development OIDC issuer on loopback: discovery, JWKS and a client-credentials token
//! endpoint, plus direct minting with chosen claims and keys for tests; and a sign-in form with
//! the authorization-code flow for the approval page (`signin`). Development only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

pub use super::signin::ReviewClient;
use tokio_util::sync::CancellationToken;

const TOKEN_LIFETIME_SECS: i64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    Es256,
    EdDsa,
}

pub(super) struct Key {
    pub(super) kid: String,
    pub(super) alg: Algorithm,
    pub(super) encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
    pub(super) published: bool,
}

/// A client allowed to use the token endpoint.
#[derive(Debug, Clone)]
pub struct DevClient {
    pub id: String,
    pub secret: String,
    pub subject: String,
    pub claims: Map<String, Value>,
}

pub(super) struct Inner {
    pub(super) url: String,
    audience: String,
    pub(super) keys: Mutex<Vec<Key>>,
    clients: Vec<DevClient>,
    /// The approval page's sign-in client, once registered.
    pub(super) reviewer: Mutex<Option<ReviewClient>>,
    pub(super) codes: Mutex<std::collections::HashMap<String, super::signin::Grant>>,
    /// While true, discovery and JWKS requests are accepted and never answered.
    stalled: tokio::sync::watch::Sender<bool>,
    /// Discovery and JWKS requests received.
    key_requests: AtomicUsize,
}

pub struct DevIssuer {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn generate_key(alg: KeyAlg, kid: &str) -> Key {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (sig, jalg) = match alg {
        KeyAlg::Es256 => (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
        KeyAlg::EdDsa => (&rcgen::PKCS_ED25519, Algorithm::EdDSA),
    };
    let pair = rcgen::KeyPair::generate_for(sig).expect("key generation");
    let pem = pair.serialize_pem();
    let raw = pair.public_key_raw();
    let (encoding, jwk) = match alg {
        KeyAlg::Es256 => (
            EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC key"),
            json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": kid, "use": "sig", "alg": "ES256"}),
        ),
        KeyAlg::EdDsa => (
            EncodingKey::from_ed_pem(pem.as_bytes()).expect("Ed key"),
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": kid, "use": "sig", "alg": "EdDSA"}),
        ),
    };
    Key {
        kid: kid.to_string(),
        alg: jalg,
        encoding,
        jwk,
        public_pem: pair.public_key_pem(),
        published: true,
    }
}

impl DevIssuer {
    /// Starts on `127.0.0.1:port` (0 = any free port) with one published ES256 key.
    pub async fn start(
        port: u16,
        audience: &str,
        clients: Vec<DevClient>,
    ) -> std::io::Result<DevIssuer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://127.0.0.1:{}", addr.port());
        let inner = Arc::new(Inner {
            url,
            audience: audience.to_string(),
            keys: Mutex::new(vec![generate_key(KeyAlg::Es256, "dev-1")]),
            clients,
            reviewer: Mutex::new(None),
            codes: Mutex::new(Default::default()),
            stalled: tokio::sync::watch::channel(false).0,
            key_requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route(
                "/authorize",
                get(super::signin::form).post(super::signin::submit),
            )
            .with_state(inner.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(DevIssuer {
            inner,
            addr,
            cancel,
        })
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// Lets `client` (the approval page) sign people in by the authorization-code flow.
    pub fn register_reviewer_client(&self, client: ReviewClient) {
        *self.inner.reviewer.lock().unwrap() = Some(client);
    }

    /// A stalled issuer accepts discovery and JWKS requests and answers none of them (as an
    /// issuer behind a black hole would) until `stall(false)`; the token endpoint still works.
    pub fn stall(&self, stalled: bool) {
        self.inner.stalled.send_replace(stalled);
    }

    /// Discovery and JWKS requests received so far (answered or not).
    pub fn key_requests(&self) -> usize {
        self.inner.key_requests.load(Ordering::SeqCst)
    }

    /// Generates a key under `kid`; `publish` decides whether the JWKS shows it.
    pub fn add_key(&self, kid: &str, alg: KeyAlg, publish: bool) {
        let mut k = generate_key(alg, kid);
        k.published = publish;
        self.inner.keys.lock().unwrap().push(k);
    }

    pub fn set_published(&self, kid: &str, published: bool) {
        for k in self
            .inner
            .keys
            .lock()
            .unwrap()
            .iter_mut()
            .filter(|k| k.kid == kid)
        {
            k.published = published;
        }
    }

    /// The public key of `kid` as PEM (for tests that abuse it as an HMAC secret).
    pub fn public_pem(&self, kid: &str) -> String {
        self.inner
            .keys
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.public_pem.clone())
            .unwrap_or_default()
    }

    /// Standard claims for `subject`: iss, aud, sub, iat, nbf, exp (+10 min).
    pub fn claims(&self, subject: &str) -> Map<String, Value> {
        let now = chrono::Utc::now().timestamp();
        let v = json!({
            "iss": self.inner.url, "aud": self.inner.audience, "sub": subject,
            "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME_SECS,
        });
        v.as_object().cloned().unwrap_or_default()
    }

    /// Signs `claims` with the key `kid` (its own algorithm), the header naming that kid.
    pub fn mint_with(&self, kid: &str, claims: &Map<String, Value>) -> String {
        let keys = self.inner.keys.lock().unwrap();
        let key = keys.iter().find(|k| k.kid == kid).expect("unknown kid");
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &key.encoding).expect("signing")
    }

    /// Signs `claims` with the default key.
    pub fn mint(&self, claims: &Map<String, Value>) -> String {
        self.mint_with("dev-1", claims)
    }

    /// Signs with a key and a header of the caller's making (kid, jku, jwk … as given).
    pub fn mint_header(
        &self,
        key_kid: &str,
        header: &Header,
        claims: &Map<String, Value>,
    ) -> String {
        let keys = self.inner.keys.lock().unwrap();
        let key = keys.iter().find(|k| k.kid == key_kid).expect("unknown kid");
        jsonwebtoken::encode(header, claims, &key.encoding).expect("signing")
    }
}

impl Inner {
    /// Counts a discovery or JWKS request and holds it while the issuer is stalled.
    async fn key_request(&self) {
        self.key_requests.fetch_add(1, Ordering::SeqCst);
        let mut stalled = self.stalled.subscribe();
        let _ = stalled.wait_for(|s| !*s).await;
    }
}

async fn discovery(State(s): State<Arc<Inner>>) -> Json<Value> {
    s.key_request().await;
    Json(json!({
        "issuer": s.url,
        "jwks_uri": format!("{}/jwks", s.url),
        "token_endpoint": format!("{}/token", s.url),
        "authorization_endpoint": format!("{}/authorize", s.url),
        "grant_types_supported": ["client_credentials", "authorization_code"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "groups"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
}

async fn jwks(State(s): State<Arc<Inner>>) -> Json<Value> {
    s.key_request().await;
    let keys: Vec<Value> = s
        .keys
        .lock()
        .unwrap()
        .iter()
        .filter(|k| k.published)
        .map(|k| k.jwk.clone())
        .collect();
    Json(json!({ "keys": keys }))
}

impl Inner {
    /// Signs `claims` with the first published key (its kid in the header).
    pub(super) fn sign(
        &self,
        claims: &impl serde::Serialize,
        typ: Option<&str>,
    ) -> Result<String, &'static str> {
        let keys = self.keys.lock().unwrap();
        let key = keys.iter().find(|k| k.published).ok_or("no signing key")?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = typ.map(String::from);
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|_| "signing failed")
    }
}

/// The token endpoint's answer when it cannot sign.
pub(super) fn signing_error(why: &str) -> Response {
    oauth_error(StatusCode::SERVICE_UNAVAILABLE, "server_error", why)
}

pub(super) fn oauth_error(status: StatusCode, code: &str, text: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": text})),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some((id, secret)) = super::signin::client_auth(&headers, &form) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication required",
        );
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some("authorization_code") => return super::signin::exchange(&s, (id, secret), &form),
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "client_credentials or authorization_code",
            )
        }
    }
    let Some(client) = s.clients.iter().find(|c| c.id == id && c.secret == secret) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    let now = chrono::Utc::now().timestamp();
    let mut claims = client.claims.clone();
    claims.insert("iss".into(), json!(s.url));
    claims.insert("sub".into(), json!(client.subject));
    claims.insert(
        "aud".into(),
        json!(form
            .get("audience")
            .or(form.get("resource"))
            .unwrap_or(&s.audience)),
    );
    claims.insert("azp".into(), json!(client.id));
    claims.insert("client_id".into(), json!(client.id));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + TOKEN_LIFETIME_SECS));
    if let Some(scope) = form.get("scope") {
        claims.insert("scope".into(), json!(scope));
    }
    match s.sign(&claims, Some("at+jwt")) {
        Ok(t) => Json(
            json!({"access_token": t, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_SECS}),
        )
        .into_response(),
        Err(why) => signing_error(why),
    }
}
