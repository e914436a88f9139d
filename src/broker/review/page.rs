//! The page itself: the requests a reviewer may see (`/approvals`, `/approvals/{id}`) and their
//! decisions (a form per request). The live feed that keeps an open page current is
//! [`super::feed`].

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use super::feed::{blocked, fragments, Fragments, RECENT, SHOWN_PENDING};
use super::{html, not_configured, redirect, seal, secure_headers, session, Session};
use crate::broker::BrokerState;
use crate::identity::VerifiedToken;
use crate::policy::IdentityMatch;
use crate::store::{ApprovalRow, Scope};

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
    let sess = match session(&s, &headers).await {
        Ok(Some(sess)) => sess,
        Ok(None) => return redirect("/approvals/login"),
        Err(r) => return r,
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
    let sess = match session(&s, &headers).await {
        Ok(Some(sess)) => sess,
        Ok(None) => return redirect(&format!("/approvals/login?next={id}")),
        Err(r) => return r,
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
        Ok(Fragments { pending, recent }) => {
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

/// The pending and recently decided requests this reviewer may see, rendered: filtered by the
/// rules they may decide before anything is cut, so others' requests never crowd theirs out.
async fn parts(s: &BrokerState, sess: &Session) -> Result<Fragments, String> {
    let who = sess.token();
    let unavailable = |e: crate::store::StoreError| format!("the state database: {e}");
    let keys = crate::broker::approvals::scope(s, &who)
        .await
        .map_err(unavailable)?;
    let scope = keys.as_deref().map_or(Scope::All, Scope::Rules);
    let pending = s
        .approvals
        .list(scope, Some("pending"), None, SHOWN_PENDING as i64 + 1)
        .await
        .map_err(unavailable)?;
    let recent = s
        .approvals
        .recently_decided(scope, RECENT as i64)
        .await
        .map_err(unavailable)?;
    let pending: Vec<&ApprovalRow> = pending.iter().collect();
    let recent: Vec<&ApprovalRow> = recent.iter().collect();
    Ok(fragments(
        &pending,
        &recent,
        |r| blocked(r, &who),
        Some(&sess.csrf),
        Utc::now(),
    ))
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
    let sess = match session(&s, &headers).await {
        Ok(Some(sess)) => sess,
        Ok(None) => {
            return html(
                StatusCode::UNAUTHORIZED,
                html::message(
                    "Signed out",
                    "your sign-in has ended; sign in again and repeat the decision",
                ),
            )
        }
        Err(r) => return r,
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
