//! The page itself: the requests a reviewer may see (`/approvals`, `/approvals/{id}`), their
//! decisions (a form per request), and the live feed that keeps an open page current.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::Utc;
use futures::Stream;
use serde::Deserialize;
use uuid::Uuid;

use super::{html, not_configured, now, redirect, seal, secure_headers, session, Session};
use crate::broker::BrokerState;
use crate::identity::VerifiedToken;
use crate::policy::IdentityMatch;
use crate::store::ApprovalRow;

/// Decided requests shown under "Recently decided".
const RECENT: usize = 20;
/// Open pages are refreshed at least this often (expiry, missed notifications).
const REFRESH: Duration = Duration::from_secs(15);

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
                (!crate::broker::approvals::is_reviewer(s, &sess.token())).then(|| {
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
    match crate::broker::approvals::decide_as(&s, &sess.token(), id, approve, f.comment, "page")
        .await
    {
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
