//! The credential broker (DESIGN §6): HTTPS JSON API where a verified token buys a lease.
//!
//! `router` builds the axum `Router` (tests drive it directly or over TLS); `caller` verifies
//! bearer tokens; `credentials` holds the lease endpoints; `server` runs the router over rustls.

pub(crate) mod approvals;
mod caller;
mod credentials;
mod error;
pub mod review;
mod server;

use std::sync::{Arc, RwLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

pub use error::ApiError;
pub use server::{serve_tls, ConnectionCap};

use crate::identity::Verifier;
use crate::policy::{IdentityMatch, PolicySet};
use crate::roles::Leases;

/// Request bodies are tiny JSON objects.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where DSNs point: the proxy's public address.
#[derive(Debug, Clone)]
pub struct ProxyAddress {
    pub host: String,
    pub port: u16,
    /// The CA (PEM) that signed the proxy's certificate, when pgid generated it: given with each
    /// lease so clients can verify the proxy (`sslmode=verify-full`).
    pub ca_cert: Option<String>,
}

/// Shared state of the broker's handlers. Cheap to clone.
#[derive(Clone)]
pub struct BrokerState {
    pub leases: Arc<Leases>,
    pub policies: Arc<RwLock<Arc<PolicySet>>>,
    pub verifier: Arc<Verifier>,
    pub admins: Arc<Vec<IdentityMatch>>,
    pub proxy: ProxyAddress,
    pub analyzer: Option<Arc<crate::sql::Analyzer>>,
    pub approvals: Arc<crate::store::Approvals>,
    /// The `/approvals` page (sign-in, sealed cookies, live updates).
    pub review: Arc<review::ReviewPage>,
    /// Cancelled when pgid stops: long-lived responses (the page's live updates) end.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The instance lock and event listener (`/readyz`).
    pub instance: Arc<crate::store::InstanceStatus>,
}

impl BrokerState {
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.read().unwrap().clone()
    }
}

pub fn router(state: BrokerState) -> Router {
    Router::new()
        .route("/v1/credentials", post(credentials::issue))
        .route(
            "/v1/credentials/{id}",
            get(credentials::show).delete(credentials::revoke),
        )
        .route("/v1/credentials/{id}/renew", post(credentials::renew))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/deny", post(approvals::deny))
        .route("/approvals", get(review::page))
        .route("/approvals/login", get(review::login))
        .route("/approvals/callback", get(review::callback))
        .route("/approvals/decide", post(review::decide))
        .route("/approvals/logout", post(review::logout))
        .route("/approvals/events", get(review::events))
        .route("/approvals/page.js", get(review::script))
        .route("/approvals/page.css", get(review::style))
        .route("/approvals/{id}", get(review::request))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Records a refused credential request (best effort: the request is refused either way).
pub(crate) async fn record_denial(s: &BrokerState, mut event: crate::audit::Event) {
    event.via.get_or_insert("broker");
    if let Err(err) = s.leases.audit().record_refusal(event).await {
        tracing::error!(error = %crate::errors::Chain(&err), "cannot audit a refused credential request");
    }
}

/// Liveness: the process answers. A state database outage does not make it dead (restarting
/// pgid would not help); `/readyz` says whether it can serve.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Longest `/readyz` waits for the state database.
const READY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: 503 with the reasons while pgid cannot serve correctly — the state database is
/// unreachable, the instance lock and event listener are down (revocations and approvals from
/// other instances would not arrive), or the audit log failed (audited actions are refused). The
/// reasons are fixed texts: the details are in pgid's log, not on an unauthenticated endpoint.
async fn readyz(State(s): State<BrokerState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    let database = tokio::time::timeout(READY_CHECK_TIMEOUT, async {
        match s.leases.store().pool().get().await {
            Ok(c) => c.query_one("SELECT 1", &[]).await.is_ok(),
            Err(_) => false,
        }
    })
    .await
    .unwrap_or(false);
    if !database {
        reasons.push("state database unreachable");
    }
    if let Some(why) = s.instance.problem() {
        tracing::debug!(reason = %why, "not ready");
        reasons.push("instance lock and event listener down");
    }
    if s.leases.audit().failure().is_some() {
        reasons.push("audit log failed");
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unavailable",
                "reason": reasons.join("; "),
                "reasons": reasons,
            })),
        )
    }
}

async fn metrics(State(s): State<BrokerState>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let counts = s.leases.store().counts().await.unwrap_or_default();
    let audit = s.leases.audit();
    let text = s.leases.metrics().render(&crate::metrics::Scrape {
        lease_states: &counts,
        audit_refusals_suppressed: audit.refusals_suppressed(),
        audit_write_errors: audit.write_errors(),
        sql_cache: s
            .analyzer
            .as_ref()
            .map(|a| (a.hits.load(Relaxed), a.misses.load(Relaxed))),
    });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}
