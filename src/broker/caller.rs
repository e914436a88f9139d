//! The `Caller` extractor: a handler that takes a `Caller` only runs for a verified bearer token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use super::BrokerState;
use crate::audit::{Event, Kind};
use crate::identity::{TokenError, VerifiedToken, MAX_TOKEN_BYTES};

pub struct Caller(pub VerifiedToken);

impl FromRequestParts<BrokerState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &BrokerState,
    ) -> Result<Caller, ApiError> {
        let result = match bearer(parts) {
            Ok(token) => state.verifier.verify(token).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(who) => Ok(Caller(who)),
            Err(e) => {
                state.leases.metrics().deny(e.code());
                tracing::info!(reason = %e, code = e.code(), path = %parts.uri.path(), "credential request refused");
                let mut event =
                    Event::new(Kind::CredentialDenied).reason(format!("invalid_token: {e}"));
                event.client_addr = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.to_string());
                super::record_denial(state, event).await;
                Err(ApiError::from(e))
            }
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, TokenError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    if value.len() > MAX_TOKEN_BYTES + 16 {
        return Err(TokenError::TooLarge);
    }
    let text = value
        .to_str()
        .map_err(|_| TokenError::Malformed("authorization header is not ASCII"))?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token)
}
