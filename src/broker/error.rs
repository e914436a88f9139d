//! Errors as the broker's callers see them: `{"error": code, "message": text}` with a status.
//! Internal details go to the log, never into the response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::identity::TokenError;
use crate::roles::LeaseError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<(&'static str, serde_json::Value)>,
    /// Seconds for a `Retry-After` header (a 503 the caller should retry).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such lease")
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            // Not a verdict on the token: the issuer's keys cannot be had now.
            TokenError::KeysUnavailable { retry_after, .. } => {
                let mut a = ApiError::unavailable(e.to_string());
                a.retry_after = Some(retry_after);
                a.extra = Some(("retry_after", json!(retry_after)));
                a
            }
            _ => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string()),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> ApiError {
        match e {
            LeaseError::NotFound => ApiError::not_found(),
            LeaseError::NotActive(state) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("lease is {state}"),
            ),
            LeaseError::RateLimited {
                per_minute,
                burst,
                retry_after,
            } => {
                let mut a = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "lease rate limit reached: [leases] issue_rate is {per_minute} per minute \
                         per identity after a burst of {burst} (issue_burst); retry in {retry_after} s"
                    ),
                );
                a.retry_after = Some(retry_after);
                a.extra = Some(("retry_after", json!(retry_after)));
                a
            }
            LeaseError::QuotaReached(max) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "lease_quota",
                format!(
                    "lease quota reached: [leases] max_active_per_identity is {max} live leases \
                     per identity; revoke one or wait for one to expire"
                ),
            ),
            other => {
                tracing::error!(error = %other, "lease operation failed");
                ApiError::unavailable("the database is not available; try again")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "message": self.message });
        if let Some((k, v)) = self.extra {
            body[k] = v;
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3; the description is our own text, never the token.
            let desc: String = self
                .message
                .chars()
                .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
                .collect();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{desc}\""
            )) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}
