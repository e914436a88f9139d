//! The development issuer's sign-in for people: the OIDC authorization-code flow (with PKCE)
//! for one registered client, pgid's approval page. Its form lets whoever opens it say who they
//! are and which groups they are in — **development only**, like the rest of the issuer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::issuer::{oauth_error, Inner};
use crate::html::escape;

/// How long an authorization code may wait to be exchanged.
const CODE_LIFETIME_SECS: i64 = 60;
const ID_TOKEN_LIFETIME_SECS: i64 = 600;

/// The approval page as the issuer's one authorization-code client.
#[derive(Debug, Clone)]
pub struct ReviewClient {
    pub id: String,
    pub secret: String,
    pub redirect_uris: Vec<String>,
}

/// A code handed out and not yet exchanged.
pub(super) struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
    subject: String,
    name: String,
    groups: Vec<String>,
    expires: i64,
}

#[derive(Deserialize)]
pub(super) struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    /// The form's answers (POST only).
    subject: Option<String>,
    name: Option<String>,
    groups: Option<String>,
}

fn page(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Checks the request against the registered client; a bad client or redirect URL is never
/// redirected to.
fn check(s: &Inner, p: &AuthorizeParams) -> Result<(), &'static str> {
    let client = s.reviewer.lock().unwrap().clone();
    let Some(client) = client else {
        return Err("no sign-in client is registered");
    };
    if p.client_id.as_deref() != Some(client.id.as_str()) {
        return Err("unknown client_id");
    }
    if !p
        .redirect_uri
        .as_ref()
        .is_some_and(|u| client.redirect_uris.contains(u))
    {
        return Err("redirect_uri is not registered for this client");
    }
    if p.response_type.as_deref() != Some("code") {
        return Err("only response_type=code");
    }
    if p.code_challenge_method.as_deref() != Some("S256") || p.code_challenge.is_none() {
        return Err("PKCE with S256 is required");
    }
    Ok(())
}

fn refused(why: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        format!("<p>development issuer: {}</p>", escape(why)),
    )
}

/// `GET /authorize`: the sign-in form.
pub(super) async fn form(
    State(s): State<Arc<Inner>>,
    Query(p): Query<AuthorizeParams>,
) -> Response {
    if let Err(why) = check(&s, &p) {
        return refused(why);
    }
    let hidden: String = [
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("state", &p.state),
        ("nonce", &p.nonce),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
        ("scope", &p.scope),
    ]
    .iter()
    .filter_map(|(k, v)| {
        v.as_ref().map(|v| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(v)
            )
        })
    })
    .collect();
    page(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Development sign-in</title></head>\
             <body><h1>pgid development issuer</h1><p>Development only: say who you are.</p>\
             <form method=\"post\" action=\"/authorize\">{hidden}\
             <p><label>Subject <input name=\"subject\" value=\"reviewer@example.com\" required></label></p>\
             <p><label>Name <input name=\"name\" value=\"Dev Reviewer\"></label></p>\
             <p><label>Groups (comma-separated) <input name=\"groups\" value=\"dba\"></label></p>\
             <p><button type=\"submit\">Sign in</button></p></form></body></html>"
        ),
    )
}

/// `POST /authorize`: hands out a code and sends the browser back.
pub(super) async fn submit(
    State(s): State<Arc<Inner>>,
    Form(p): Form<AuthorizeParams>,
) -> Response {
    if let Err(why) = check(&s, &p) {
        return refused(why);
    }
    let subject = p.subject.clone().unwrap_or_default();
    if subject.trim().is_empty() {
        return page(
            StatusCode::BAD_REQUEST,
            "<p>a subject is required</p>".into(),
        );
    }
    let code = hex::encode(rand::random::<[u8; 32]>());
    let redirect_uri = p.redirect_uri.clone().unwrap_or_default();
    s.codes.lock().unwrap().insert(
        code.clone(),
        Grant {
            client_id: p.client_id.clone().unwrap_or_default(),
            redirect_uri: redirect_uri.clone(),
            nonce: p.nonce.clone(),
            challenge: p.code_challenge.clone().unwrap_or_default(),
            name: p
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| subject.clone()),
            groups: p
                .groups
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect(),
            subject,
            expires: chrono::Utc::now().timestamp() + CODE_LIFETIME_SECS,
        },
    );
    let Ok(mut to) = url::Url::parse(&redirect_uri) else {
        return refused("bad redirect_uri");
    };
    to.query_pairs_mut().append_pair("code", &code);
    if let Some(st) = &p.state {
        to.query_pairs_mut().append_pair("state", st);
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `POST /token` with `grant_type=authorization_code`: the ID token for a code.
pub(super) fn exchange(
    s: &Inner,
    client: (String, String),
    form: &HashMap<String, String>,
) -> Response {
    let registered = s.reviewer.lock().unwrap().clone();
    let Some(registered) = registered.filter(|c| c.id == client.0 && c.secret == client.1) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    let invalid = |m: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", m);
    let grant = form
        .get("code")
        .and_then(|c| s.codes.lock().unwrap().remove(c));
    let Some(g) = grant else {
        return invalid("unknown or used code");
    };
    let now = chrono::Utc::now().timestamp();
    if g.expires < now || g.client_id != registered.id {
        return invalid("expired code");
    }
    if form.get("redirect_uri") != Some(&g.redirect_uri) {
        return invalid("redirect_uri differs from the authorization request");
    }
    let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    if computed != g.challenge {
        return invalid("PKCE verification failed");
    }
    let mut claims = json!({
        "iss": s.url, "sub": g.subject, "aud": g.client_id, "iat": now,
        "exp": now + ID_TOKEN_LIFETIME_SECS, "name": g.name, "groups": g.groups,
    });
    if let Some(n) = g.nonce {
        claims["nonce"] = Value::String(n);
    }
    match s.sign(&claims, Some("JWT")) {
        Ok(id_token) => Json(json!({
            "access_token": hex::encode(rand::random::<[u8; 24]>()),
            "token_type": "Bearer",
            "expires_in": ID_TOKEN_LIFETIME_SECS,
            "id_token": id_token,
        }))
        .into_response(),
        Err(why) => super::issuer::signing_error(why),
    }
}

/// Client credentials from Basic auth or the form.
pub(super) fn client_auth(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(a, b)| (pct_decode(a), pct_decode(b)))
        });
    basic.or_else(
        || match (form.get("client_id"), form.get("client_secret")) {
            (Some(i), Some(s)) => Some((i.clone(), s.clone())),
            _ => None,
        },
    )
}

/// RFC 6749 §2.3.1: client id and secret are form-urlencoded inside Basic auth.
fn pct_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
