//! The approval page (`/approvals`): reviewers sign in with their own identity provider
//! (authorization code + PKCE), see the requests they may decide, and approve or deny them with
//! a comment. The list updates live (server-sent events fed by the approvals NOTIFY channel, so
//! a request made or decided through any instance shows up at once).
//!
//! State lives in signed cookies ([`seal`]), so any instance sharing the server key serves any
//! reviewer; the cookie names a session in the state database, checked on every request, so a
//! sign-out ends it everywhere at once. Decisions go through the same checks and audit as the
//! API ([`super::approvals::decide_as`]); forms carry a per-session CSRF token, cookies are
//! `__Host-`, `HttpOnly`, `Secure`, `SameSite=Lax`, and every response forbids framing.
//!
//! `signin` (provider round trip, sign-out), `page` (list, decisions) and `feed` (live
//! updates, limited by `streams`) are the handlers; `login` is the OIDC client, `seal` the
//! cookie signing, `html` the rendering. This file holds what they share: the session and the
//! response helpers.

mod feed;
mod html;
mod login;
mod page;
mod seal;
mod signin;
mod streams;

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use feed::{events, Feed, FeedSetup};
pub use login::Login;
use login::Reviewer;
pub use page::{decide, page, request, script, style};
pub use seal::Sealer;
pub use signin::{callback, login, logout};

use super::BrokerState;
use crate::identity::VerifiedToken;
use crate::store::ReviewSessions;

pub(super) const SESSION_COOKIE: &str = "__Host-pgid-review";
pub(super) const LOGIN_COOKIE: &str = "__Host-pgid-login";

/// What the broker needs to serve the page.
pub struct ReviewPage {
    pub login: Option<Login>,
    pub sealer: Sealer,
    /// Sign-ins, so that a sign-out ends them on every instance.
    pub sessions: Arc<ReviewSessions>,
    /// Live updates for the open pages.
    pub feed: Arc<Feed>,
}

/// A signed-in reviewer, as kept in the session cookie.
#[derive(Serialize, Deserialize)]
pub(super) struct Session {
    /// The session in `pgid.review_sessions`: live until it expires or is signed out.
    sid: Uuid,
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

/// The signed-in reviewer: a cookie pgid signed, naming a session that has neither expired nor
/// been signed out. `Err`: the state database cannot say (a 503 page; nobody is let in).
pub(super) async fn session(
    s: &BrokerState,
    headers: &HeaderMap,
) -> Result<Option<Session>, Response> {
    let Some(text) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(sess) = s
        .review
        .sealer
        .open::<Session>("review-session", now(), &text)
    else {
        return Ok(None);
    };
    match s.review.sessions.is_live(sess.sid).await {
        Ok(true) => Ok(Some(sess)),
        Ok(false) => Ok(None),
        Err(e) => {
            tracing::warn!(error = %crate::errors::Chain(&e), "approval page: cannot check a session");
            Err(html(
                StatusCode::SERVICE_UNAVAILABLE,
                html::message(
                    "Approvals are unavailable",
                    "pgid cannot reach its state database to check your sign-in; try again shortly",
                ),
            ))
        }
    }
}
