//! Reviewers' sign-in and sign-out: off to the identity provider with PKCE, state and nonce
//! (kept in a sealed cookie), back with a code, the verified reviewer kept in the session cookie
//! naming a session in the state database. Sign-out ends that session there, so the cookie —
//! kept or copied — opens nothing any more, on any instance, and open live feeds close.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use super::login::{self, Login, PendingLogin};
use super::{
    cookie, html, not_configured, now, redirect, seal, session, set_cookie, Session, LOGIN_COOKIE,
    SESSION_COOKIE,
};
use crate::audit::{Event, Kind};
use crate::broker::BrokerState;

/// A sign-in must come back from the provider within this time.
const LOGIN_WINDOW_SECS: i64 = 600;

fn random_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// `https://<Host>/approvals/callback`, unless configured. The provider only sends codes to
/// redirect URLs registered for pgid's client, so a forged Host header leads nowhere.
fn redirect_url(login: &Login, headers: &HeaderMap) -> Option<String> {
    if let Some(u) = login.configured_redirect() {
        return Some(u.to_string());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    ok.then(|| format!("https://{host}/approvals/callback"))
}

#[derive(Deserialize)]
pub struct LoginQuery {
    /// A request id to come back to after sign-in.
    next: Option<String>,
}

/// Where to go after sign-in: the request page named by `next`, else the list. Only ever a
/// path on this page, never a URL from the query.
fn after_login(next: Option<&str>) -> String {
    match next.and_then(|n| n.parse::<Uuid>().ok()) {
        Some(id) => format!("/approvals/{id}"),
        None => "/approvals".into(),
    }
}

/// `GET /approvals/login`: off to the provider.
pub async fn login(
    State(s): State<BrokerState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let Some(login) = &s.review.login else {
        return not_configured();
    };
    let next = after_login(q.next.as_deref());
    match session(&s, &headers).await {
        Ok(Some(_)) => return redirect(&next),
        Ok(None) => {}
        Err(r) => return r,
    }
    let Some(redirect_to) = redirect_url(login, &headers) else {
        return html(
            StatusCode::BAD_REQUEST,
            html::message("Bad request", "the request has no usable Host header"),
        );
    };
    match login.start(&redirect_to, next).await {
        Ok((url, pending)) => {
            let exp = now() + LOGIN_WINDOW_SECS;
            let Some(sealed) = s.review.sealer.seal("review-login", exp, &pending) else {
                return html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    html::message("Sign-in failed", "the sign-in state does not fit a cookie"),
                );
            };
            let mut r = redirect(&url);
            r.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, &sealed, LOGIN_WINDOW_SECS),
            );
            r
        }
        Err(e) => {
            tracing::warn!(error = %crate::errors::Chain(&e), "approval page sign-in cannot start");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                html::message("Sign-in is unavailable", &e.to_string()),
            )
        }
    }
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /approvals/callback`: the provider sends the reviewer back with a code.
pub async fn callback(
    State(s): State<BrokerState>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let Some(login) = &s.review.login else {
        return not_configured();
    };
    let fail = |status: StatusCode, text: String| {
        let mut r = html(status, html::message("Sign-in failed", &text));
        r.headers_mut()
            .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
        r
    };
    let pending: Option<PendingLogin> = cookie(&headers, LOGIN_COOKIE)
        .and_then(|c| s.review.sealer.open("review-login", now(), &c));
    let Some(pending) = pending else {
        return fail(
            StatusCode::BAD_REQUEST,
            "this sign-in has expired or was started in another browser; start again".into(),
        );
    };
    if let Some(err) = q.error {
        let detail = q.error_description.unwrap_or_default();
        return fail(
            StatusCode::UNAUTHORIZED,
            format!("the identity provider said {err}: {detail}"),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return fail(StatusCode::BAD_REQUEST, "the callback has no code".into());
    };
    if !seal::same(&state, &pending.state) {
        return fail(
            StatusCode::BAD_REQUEST,
            "the sign-in state does not match; start again".into(),
        );
    }
    // Made by `after_login` and signed in the cookie: a path on this page.
    let next = pending.next.clone();
    let reviewer = match login.finish(pending, code).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %crate::errors::Chain(&e), "approval page sign-in failed");
            let status = match e {
                login::LoginError::Provider(_) => StatusCode::SERVICE_UNAVAILABLE,
                login::LoginError::Rejected(_) => StatusCode::UNAUTHORIZED,
            };
            return fail(status, e.to_string());
        }
    };
    let exp = now() + login.session_ttl().as_secs() as i64;
    let mut event = Event::new(Kind::ReviewerSignin);
    event.reviewer_issuer = Some(reviewer.issuer.clone());
    event.reviewer = Some(reviewer.subject.clone());
    event.via = Some("page");
    let sess = Session {
        sid: Uuid::new_v4(),
        reviewer,
        csrf: random_token(),
        exp,
    };
    let Some(sealed) = s.review.sealer.seal("review-session", exp, &sess) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "your identity token carries too many claims to keep in a cookie".into(),
        );
    };
    if let Err(e) = s.leases.audit().record(&event).await {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the audit log is unavailable: {e}"),
        );
    }
    let expires = chrono::DateTime::from_timestamp(exp, 0).unwrap_or_else(chrono::Utc::now);
    if let Err(e) = s
        .review
        .sessions
        .start(
            sess.sid,
            &sess.reviewer.issuer,
            &sess.reviewer.subject,
            expires,
        )
        .await
    {
        tracing::warn!(error = %crate::errors::Chain(&e), "approval page: cannot record a sign-in");
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "pgid cannot reach its state database to record your sign-in; try again shortly".into(),
        );
    }
    tracing::info!(reviewer = %sess.reviewer.subject, "reviewer signed in to the approval page");
    let mut r = redirect(&next);
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &sealed, exp - now()),
    );
    r
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// `POST /approvals/logout`: ends the session in the state database (every instance refuses
/// its cookie from now on, and closes its live feeds), then removes the cookie.
pub async fn logout(
    State(s): State<BrokerState>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    let sess = match session(&s, &headers).await {
        Ok(sess) => sess,
        Err(r) => return r,
    };
    let signed_out = |status: StatusCode, text: &str| {
        let mut r = html(status, html::message("Signed out", text));
        r.headers_mut()
            .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
        r
    };
    let Some(sess) = sess else {
        return signed_out(StatusCode::OK, "You are signed out of the approval page.");
    };
    if !seal::same(&f.csrf, &sess.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            html::message("Refused", "the form did not come from this page"),
        );
    }
    if let Err(e) = s.review.sessions.end(sess.sid).await {
        tracing::warn!(error = %crate::errors::Chain(&e), "approval page: cannot end a session");
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            html::message(
                "Not signed out",
                "pgid cannot reach its state database to end your sign-in; try again shortly",
            ),
        );
    }
    s.review.feed.streams.end(sess.sid);
    let mut event = Event::new(Kind::ReviewerSignout);
    event.reviewer_issuer = Some(sess.reviewer.issuer.clone());
    event.reviewer = Some(sess.reviewer.subject.clone());
    event.via = Some("page");
    if let Err(e) = s.leases.audit().record(&event).await {
        tracing::error!(error = %crate::errors::Chain(&e), "cannot audit a reviewer's sign-out");
    }
    tracing::info!(reviewer = %sess.reviewer.subject, "reviewer signed out of the approval page");
    signed_out(
        StatusCode::OK,
        "You have signed out of the approval page. Your sign-in has ended on every pgid instance.",
    )
}
