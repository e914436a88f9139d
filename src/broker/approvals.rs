//! `GET /v1/approvals`, `POST /v1/approvals/{id}/approve|deny` (DESIGN §6): reviewers, with their
//! own bearer token, list requests and decide them. A reviewer lists the requests of the rules
//! whose approvers they match (admins: all), in pages; a reviewer must match the approvers of
//! the rule that made the request and may not be its requester; refusals are 403 and audited.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::caller::Caller;
use super::error::ApiError;
use super::BrokerState;
use crate::approval::may_decide;
use crate::audit::{Event, Kind};
use crate::identity::VerifiedToken;
use crate::policy::IdentityMatch;
use crate::store::{ApprovalRow, Cursor, Decided, Scope};

/// Longest reviewer comment kept.
const MAX_COMMENT_CHARS: usize = 2000;
/// Requests per page of `GET /v1/approvals`: the default and the most a `limit` may ask for.
const PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
    /// The `next` of the previous page.
    before: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    comment: Option<String>,
}

/// Whether `who` may review anything: a broker admin, or an approver of some rule.
pub(crate) fn is_reviewer(s: &BrokerState, who: &VerifiedToken) -> bool {
    let m = |i: &IdentityMatch| i.matches(&who.issuer, &who.subject, &who.claims);
    s.admins.iter().any(m)
        || s.policies()
            .iter()
            .flat_map(|p| p.approvals.iter())
            .any(|a| m(&a.approvers))
}

/// The approvers keys of the rules `who` may decide (`None`: a broker admin, who sees every
/// request). Matched against the approvers each request was made with, as deciding is.
pub(crate) async fn scope(
    s: &BrokerState,
    who: &VerifiedToken,
) -> Result<Option<Vec<String>>, crate::store::StoreError> {
    let m = |i: &IdentityMatch| i.matches(&who.issuer, &who.subject, &who.claims);
    if s.admins.iter().any(m) {
        return Ok(None);
    }
    Ok(Some(
        s.approvals
            .rules()
            .await?
            .into_iter()
            .filter(|(_, a)| {
                serde_json::from_value::<IdentityMatch>(a.clone()).is_ok_and(|a| m(&a))
            })
            .map(|(k, _)| k)
            .collect(),
    ))
}

/// `GET /v1/approvals?state=…&limit=…&before=…`: newest first; `next` (when more follow) is the
/// `before` of the next page.
pub async fn list(
    State(s): State<BrokerState>,
    Caller(who): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !is_reviewer(&s, &who) {
        return Err(ApiError::forbidden(
            "only approvers may list approval requests",
        ));
    }
    let state = q.state.as_deref().filter(|s| *s != "all");
    if let Some(st) = state {
        if !["pending", "approved", "denied", "expired", "withdrawn"].contains(&st) {
            return Err(ApiError::bad_request(format!("unknown state {st:?}")));
        }
    }
    let limit = q.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let before = match q.before.as_deref() {
        None => None,
        Some(b) => Some(
            Cursor::parse(b)
                .ok_or_else(|| ApiError::bad_request("before: not a page cursor from `next`"))?,
        ),
    };
    let unavailable = |e: crate::store::StoreError| ApiError::unavailable(e.to_string());
    s.approvals.expire().await.map_err(unavailable)?;
    let keys = scope(&s, &who).await.map_err(unavailable)?;
    let scope = keys.as_deref().map_or(Scope::All, Scope::Rules);
    let mut rows = s
        .approvals
        .list(scope, state, before, limit + 1)
        .await
        .map_err(unavailable)?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| Cursor::after(r).encode())
    } else {
        None
    };
    Ok(Json(serde_json::json!({ "approvals": rows, "next": next })))
}

pub async fn approve(
    s: State<BrokerState>,
    who: Caller,
    id: Path<String>,
    body: Option<Json<DecideBody>>,
) -> Result<Json<ApprovalRow>, ApiError> {
    decide(s, who, id, body, true).await
}

pub async fn deny(
    s: State<BrokerState>,
    who: Caller,
    id: Path<String>,
    body: Option<Json<DecideBody>>,
) -> Result<Json<ApprovalRow>, ApiError> {
    decide(s, who, id, body, false).await
}

async fn decide(
    State(s): State<BrokerState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Option<Json<DecideBody>>,
    approve: bool,
) -> Result<Json<ApprovalRow>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found())?;
    let comment = body.and_then(|b| b.0.comment);
    decide_as(&s, &who, id, approve, comment, "broker")
        .await
        .map(Json)
}

/// Decides request `id` as `who` (the API's bearer, or the page's signed-in reviewer): checks
/// the rule's approvers and self-approval, records the decision, then makes it, once.
pub(crate) async fn decide_as(
    s: &BrokerState,
    who: &VerifiedToken,
    id: Uuid,
    approve: bool,
    comment: Option<String>,
    via: &'static str,
) -> Result<ApprovalRow, ApiError> {
    let comment = comment
        .map(|c| c.trim().chars().take(MAX_COMMENT_CHARS).collect::<String>())
        .filter(|c| !c.is_empty());
    let unavailable = |e: crate::store::StoreError| ApiError::unavailable(e.to_string());
    let row = s
        .approvals
        .get(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(ApiError::not_found)?;
    let approvers: IdentityMatch = serde_json::from_value(row.approvers.clone())
        .map_err(|_| ApiError::unavailable("the request's approvers cannot be read"))?;
    let decision = if approve { "approve" } else { "deny" };
    let mut event = Event::new(Kind::ApprovalDecided);
    event.lease_id = Some(row.lease_id);
    event.subject = Some(row.subject.clone());
    event.issuer = Some(row.issuer.clone());
    event.policy = Some(row.policy.clone());
    event.database = Some(row.database.clone());
    event.approval_id = Some(id);
    event.reviewer_issuer = Some(who.issuer.clone());
    event.reviewer = Some(who.subject.clone());
    event.decision = Some(decision);
    event.comment = comment.clone();
    event.via = Some(via);
    if let Err(why) = may_decide(
        &approvers,
        (&row.issuer, &row.subject),
        &who.issuer,
        &who.subject,
        &who.claims,
    ) {
        event.kind = Kind::ApprovalRefused;
        event.reason = Some(why.to_string());
        super::record_denial(s, event).await;
        return Err(ApiError::forbidden(why));
    }
    let conflict = |state: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("the request is already {state}"),
        )
    };
    if row.state != "pending" || row.expires_at <= chrono::Utc::now() {
        let state = if row.state == "pending" {
            "expired"
        } else {
            row.state.as_str()
        };
        event.kind = Kind::ApprovalRefused;
        event.reason = Some(format!("the request is already {state}"));
        super::record_denial(s, event).await;
        return Err(conflict(state));
    }
    // The decision is recorded before it takes effect, and only by the decider whose UPDATE
    // changed the row; no record, no decision.
    match s
        .approvals
        .decide(
            id,
            approve,
            (&who.issuer, &who.subject),
            comment.as_deref(),
            s.leases.audit(),
            &event,
        )
        .await
        .map_err(unavailable)?
    {
        Decided::Now(row) => Ok(row),
        Decided::Unrecorded(e) => Err(ApiError::unavailable(format!("audit log: {e}"))),
        Decided::Already(row) => {
            // Another reviewer decided between the check and the update: say so in the log.
            event.kind = Kind::ApprovalRefused;
            event.reason = Some(format!(
                "the request was {} by another reviewer first",
                row.state
            ));
            super::record_denial(s, event).await;
            Err(conflict(&row.state))
        }
        Decided::Missing => Err(ApiError::not_found()),
    }
}
