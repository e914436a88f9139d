//! The approval page (`/approvals`): reviewers sign in with their own identity provider
//! (authorization code + PKCE), see the requests they may decide, and approve or deny them with
//! a comment. The list updates live (server-sent events fed by the approvals NOTIFY channel, so
//! a request made or decided through any instance shows up at once).
//!
//! State lives in signed cookies ([`seal`]), so any instance sharing the server key serves any
//! reviewer. Decisions go through the same checks and audit as the API
//! ([`super::approvals::decide_as`]); forms carry a per-session CSRF token, cookies are
//! `__Host-`, `HttpOnly`, `Secure`, `SameSite=Lax`, and every response forbids framing.

mod html;
mod login;
mod seal;

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::Utc;
use futures::Stream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use login::Login;
use login::{PendingLogin, Reviewer};
pub use seal::Sealer;

use super::BrokerState;
use crate::audit::{Event, Kind};
use crate::identity::VerifiedToken;
use crate::policy::IdentityMatch;
use crate::store::ApprovalRow;

const SESSION_COOKIE: &str = "__Host-pgid-review";
const LOGIN_COOKIE: &str = "__Host-pgid-login";
/// A sign-in must come back from the provider within this time.
const LOGIN_WINDOW_SECS: i64 = 600;
/// Decided requests shown under "Recently decided".
const RECENT: usize = 20;
/// Open pages are refreshed at least this often (expiry, missed notifications).
const REFRESH: Duration = Duration::from_secs(15);

/// What the broker needs to serve the page.
pub struct ReviewPage {
    pub login: Option<Login>,
    pub sealer: Sealer,
    pub changes: tokio::sync::watch::Receiver<u64>,
}

/// A signed-in reviewer, as kept in the session cookie.
#[derive(Serialize, Deserialize)]
struct Session {
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

fn now() -> i64 {
    Utc::now().timestamp()
}

fn random_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .expect("cookie values are base64url")
}

/// An HTML response with the page's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    secure_headers(r.headers_mut(), "text/html; charset=utf-8");
    r
}

fn secure_headers(h: &mut HeaderMap, content_type: &'static str) {
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

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut(), "text/plain; charset=utf-8");
    r
}

fn not_configured() -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        html::message(
            "The approval page is not configured",
            "pgid.toml has no [approvals.login] section naming the reviewers' identity provider. \
             Reviewers can decide requests with `pgid approvals` or the /v1/approvals API meanwhile.",
        ),
    )
}

fn session(s: &BrokerState, headers: &HeaderMap) -> Option<Session> {
    let text = cookie(headers, SESSION_COOKIE)?;
    s.review.sealer.open("review-session", now(), &text)
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
pub struct PageQuery {
    decided: Option<String>,
}

/// `GET /approvals`
pub async fn page(
    State(s): State<BrokerState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    if s.review.login.is_none() {
        return not_configured();
    }
    let Some(sess) = session(&s, &headers) else {
        return redirect("/approvals/login");
    };
    let flash = match q.decided.as_deref() {
        Some("approved") => Some(html::Flash::Done("Approved: the statement may run.".into())),
        Some("denied") => Some(html::Flash::Done("Denied: the agent has been told.".into())),
        _ => None,
    };
    render(&s, &sess, StatusCode::OK, flash).await
}

/// `GET /approvals/{id}`: where notices and notifications link. The page, saying what became of
/// that request if it no longer waits; after sign-in the reviewer comes back here.
pub async fn request(
    State(s): State<BrokerState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if s.review.login.is_none() {
        return not_configured();
    }
    let Ok(id) = id.parse::<Uuid>() else {
        return html(
            StatusCode::NOT_FOUND,
            html::message("Not found", "there is no such page or request"),
        );
    };
    let Some(sess) = session(&s, &headers) else {
        return redirect(&format!("/approvals/login?next={id}"));
    };
    let row = match s.approvals.get(id).await {
        Ok(row) => row.filter(|r| visible(&s, r, &sess.token())),
        Err(e) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                html::message(
                    "Approvals are unavailable",
                    &format!("the state database: {e}"),
                ),
            )
        }
    };
    let flash = match row {
        None => html::Flash::Problem(format!(
            "Request {id} does not exist or is not yours to review."
        )),
        Some(r) if r.state == "pending" && r.expires_at > Utc::now() => {
            html::Flash::Done(format!("Request {id} waits for review below."))
        }
        Some(r) => html::Flash::Done(match &r.reviewer {
            Some(who) if r.state == "approved" || r.state == "denied" => {
                format!("Request {id} was already {} by {who}.", r.state)
            }
            _ if r.state == "pending" => format!("Request {id} has expired."),
            _ => format!("Request {id} is {}.", r.state),
        }),
    };
    render(&s, &sess, StatusCode::OK, Some(flash)).await
}

/// Whether `who` may see request `r`: an approver of its rule, or a broker admin.
fn visible(s: &BrokerState, r: &ApprovalRow, who: &VerifiedToken) -> bool {
    s.admins
        .iter()
        .any(|m| m.matches(&who.issuer, &who.subject, &who.claims))
        || serde_json::from_value::<IdentityMatch>(r.approvers.clone())
            .is_ok_and(|m| m.matches(&who.issuer, &who.subject, &who.claims))
}

async fn render(
    s: &BrokerState,
    sess: &Session,
    status: StatusCode,
    flash: Option<html::Flash>,
) -> Response {
    match parts(s, sess).await {
        Ok((pending, recent)) => {
            let flash = flash.or_else(|| {
                (!super::approvals::is_reviewer(s, &sess.token())).then(|| {
                    html::Flash::Problem(format!(
                        "You are signed in as {} ({}), but no approval rule names you as an \
                         approver.",
                        sess.reviewer.name, sess.reviewer.subject
                    ))
                })
            });
            html(
                status,
                html::page(
                    &sess.reviewer.name,
                    &sess.csrf,
                    flash.as_ref(),
                    &pending,
                    &recent,
                ),
            )
        }
        Err(e) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            html::message("Approvals are unavailable", &e),
        ),
    }
}

/// The pending and recently decided requests this reviewer may see, rendered.
async fn parts(s: &BrokerState, sess: &Session) -> Result<(String, String), String> {
    let rows = s
        .approvals
        .list(None)
        .await
        .map_err(|e| format!("the state database: {e}"))?;
    let who = sess.token();
    let visible = |r: &&ApprovalRow| visible(s, r, &who);
    let now = Utc::now();
    let cards: Vec<html::Card<'_>> = rows
        .iter()
        .filter(|r| r.state == "pending" && r.expires_at > now)
        .filter(visible)
        .map(|r| html::Card {
            row: r,
            blocked: blocked(r, &who),
        })
        .collect();
    let recent: Vec<&ApprovalRow> = rows
        .iter()
        .filter(|r| r.state != "pending")
        .filter(visible)
        .take(RECENT)
        .collect();
    Ok((
        html::pending(&cards, &sess.csrf, now),
        html::recent(&recent),
    ))
}

/// Why `who` cannot decide `r`, if they cannot.
fn blocked(r: &ApprovalRow, who: &VerifiedToken) -> Option<&'static str> {
    let approvers = serde_json::from_value::<IdentityMatch>(r.approvers.clone()).ok()?;
    crate::approval::may_decide(
        &approvers,
        (&r.issuer, &r.subject),
        &who.issuer,
        &who.subject,
        &who.claims,
    )
    .err()
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
    if session(&s, &headers).is_some() {
        return redirect(&next);
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
            tracing::warn!(error = %e, "approval page sign-in cannot start");
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
            tracing::warn!(error = %e, "approval page sign-in failed");
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
pub struct DecideForm {
    csrf: String,
    id: String,
    action: String,
    comment: Option<String>,
}

/// `POST /approvals/decide`: a form's Approve or Deny.
pub async fn decide(
    State(s): State<BrokerState>,
    headers: HeaderMap,
    Form(f): Form<DecideForm>,
) -> Response {
    let Some(sess) = session(&s, &headers) else {
        return html(
            StatusCode::UNAUTHORIZED,
            html::message(
                "Signed out",
                "your sign-in has ended; sign in again and repeat the decision",
            ),
        );
    };
    if !seal::same(&f.csrf, &sess.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            html::message("Refused", "the form did not come from this page"),
        );
    }
    let approve = match f.action.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return render(
                &s,
                &sess,
                StatusCode::BAD_REQUEST,
                Some(html::Flash::Problem("unknown action".into())),
            )
            .await
        }
    };
    let Ok(id) = f.id.parse::<Uuid>() else {
        return render(
            &s,
            &sess,
            StatusCode::NOT_FOUND,
            Some(html::Flash::Problem("no such request".into())),
        )
        .await;
    };
    match super::approvals::decide_as(&s, &sess.token(), id, approve, f.comment, "page").await {
        Ok(row) => redirect(&format!("/approvals?decided={}", row.state)),
        Err(e) => {
            render(
                &s,
                &sess,
                e.status,
                Some(html::Flash::Problem(format!("Not decided: {}.", e.message))),
            )
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// `POST /approvals/logout`
pub async fn logout(
    State(s): State<BrokerState>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let Some(sess) = session(&s, &headers) {
        if !seal::same(&f.csrf, &sess.csrf) {
            return html(
                StatusCode::FORBIDDEN,
                html::message("Refused", "the form did not come from this page"),
            );
        }
    }
    let mut r = html(
        StatusCode::OK,
        html::message("Signed out", "You have signed out of the approval page."),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    r
}

/// `GET /approvals/events`: the page's live updates, one `update` event (pending and recent
/// HTML) whenever what this reviewer sees changes, and `signedout` when the session ends.
pub async fn events(State(s): State<BrokerState>, headers: HeaderMap) -> Response {
    let Some(sess) = session(&s, &headers) else {
        return (StatusCode::UNAUTHORIZED, "signed out").into_response();
    };
    let mut r = Sse::new(updates(s, sess))
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

struct Feed {
    s: BrokerState,
    sess: Session,
    changes: tokio::sync::watch::Receiver<u64>,
    last: Option<(String, String)>,
    first: bool,
    done: bool,
}

fn updates(
    s: BrokerState,
    sess: Session,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let changes = s.review.changes.clone();
    let feed = Feed {
        s,
        sess,
        changes,
        last: None,
        first: true,
        done: false,
    };
    futures::stream::unfold(feed, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            if !f.first {
                let left = Duration::from_secs((f.sess.exp - now()).max(0) as u64);
                tokio::select! {
                    r = f.changes.changed() => if r.is_err() { return None },
                    _ = tokio::time::sleep(REFRESH) => {}
                    _ = tokio::time::sleep(left) => {}
                    _ = f.s.shutdown.cancelled() => return None,
                }
            }
            f.first = false;
            if now() >= f.sess.exp {
                f.done = true;
                return Some((Ok(SseEvent::default().event("signedout").data("")), f));
            }
            let Ok(parts) = parts(&f.s, &f.sess).await else {
                continue;
            };
            if f.last.as_ref() == Some(&parts) {
                continue;
            }
            let data = serde_json::json!({ "pending": parts.0, "recent": parts.1 }).to_string();
            f.last = Some(parts);
            return Some((Ok(SseEvent::default().event("update").data(data)), f));
        }
    })
}

/// `GET /approvals/page.js` and `/approvals/page.css`
pub async fn script() -> Response {
    asset(
        include_str!("static/page.js"),
        "text/javascript; charset=utf-8",
    )
}

pub async fn style() -> Response {
    asset(include_str!("static/page.css"), "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    secure_headers(r.headers_mut(), content_type);
    r
}
