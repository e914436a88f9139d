//! The approval page (`/approvals`): reviewers sign in with their own identity provider
//! (authorization code + PKCE), see the requests they may decide, and approve or deny them with
//! a comment. The list updates live (server-sent events fed by the approvals NOTIFY channel, so
//! a request made or decided through any instance shows up at once).
//!
//! State lives in signed cookies ([`seal`]), so any instance sharing the server key serves any
//! reviewer. Decisions go through the same checks and audit as the API
//! ([`super::approvals::decide_as`]); forms carry a per-session CSRF token, cookies are
//! `__Host-`, `HttpOnly`, `Secure`, `SameSite=Lax`, and every response forbids framing.
//!
//! `signin` (provider round trip, sign-out) and `page` (list, decisions, live feed) are the
//! handlers; `login` is the OIDC client, `seal` the cookie signing, `html` the rendering. This
//! file holds what they share: the session and the response helpers.

mod html;
mod login;
mod page;
mod seal;
mod signin;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};

pub use login::Login;
use login::Reviewer;
pub use page::{decide, events, page, request, script, style};
pub use seal::Sealer;
pub use signin::{callback, login, logout};

use super::BrokerState;
use crate::identity::VerifiedToken;

pub(super) const SESSION_COOKIE: &str = "__Host-pgid-review";
pub(super) const LOGIN_COOKIE: &str = "__Host-pgid-login";

/// What the broker needs to serve the page.
pub struct ReviewPage {
    pub login: Option<Login>,
    pub sealer: Sealer,
    pub changes: tokio::sync::watch::Receiver<u64>,
}

/// A signed-in reviewer, as kept in the session cookie.
#[derive(Serialize, Deserialize)]
pub(super) struct Session {
    reviewer: Reviewer,
    csrf: String,
    exp: i64,
}

impl Session {
    fn token(&self) -> VerifiedToken {
        VerifiedToken {
            issuer: self.reviewer.issuer.clone(),
            subject: self.reviewer.subject.clone(),
            claims: self.reviewer.claims.clone(),
            expires_at: self.exp,
        }
    }
}

pub(super) fn now() -> i64 {
    Utc::now().timestamp()
}

pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(super) fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .expect("cookie values are base64url")
}

/// An HTML response with the page's security headers.
pub(super) fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    secure_headers(r.headers_mut(), "text/html; charset=utf-8");
    r
}

pub(super) fn secure_headers(h: &mut HeaderMap, content_type: &'static str) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

pub(super) fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut(), "text/plain; charset=utf-8");
    r
}

pub(super) fn not_configured() -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        html::message(
            "The approval page is not configured",
            "pgid.toml has no [approvals.login] section naming the reviewers' identity provider. \
             Reviewers can decide requests with `pgid approvals` or the /v1/approvals API meanwhile.",
        ),
    )
}

pub(super) fn session(s: &BrokerState, headers: &HeaderMap) -> Option<Session> {
    let text = cookie(headers, SESSION_COOKIE)?;
    s.review.sealer.open("review-session", now(), &text)
}
