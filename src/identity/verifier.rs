//! Token → [`VerifiedToken`], or a [`TokenError`] that says exactly why not.

use std::collections::HashMap;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{FetchError, KeySource, Lookup};
use crate::config::IssuerConfig;

/// Larger bearer tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Subjects longer than this are refused: they end up in audit records and role comments.
const MAX_SUBJECT_BYTES: usize = 8 * 1024;

/// A token whose signature, issuer, audience and times all checked out.
#[derive(Clone)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    pub claims: Map<String, Value>,
    pub expires_at: i64,
}

impl std::fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused. The text is safe to return to the caller: it never contains the
/// token or any key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsigned tokens (alg \"none\") are not accepted")]
    Unsigned,
    #[error("algorithm {0} is not accepted for this issuer")]
    AlgorithmNotAllowed(String),
    #[error("critical header extensions are not supported")]
    CriticalHeader,
    #[error("issuer {0:?} is not trusted")]
    UntrustedIssuer(String),
    #[error("token has no {0} claim")]
    MissingClaim(String),
    #[error("claim {0} is invalid: {1}")]
    InvalidClaim(&'static str, &'static str),
    #[error("signing key {0:?} is not published by the issuer")]
    UnknownKey(String),
    #[error("token names no key id and the issuer publishes several keys")]
    NoKeyId,
    #[error("key {0:?} does not allow algorithm {1}")]
    KeyAlgorithmMismatch(String, String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("audience not accepted")]
    WrongAudience,
    #[error("issuer claim does not match")]
    WrongIssuer,
    /// The key is not cached and the issuer's keys cannot be fetched now; `retry_after` is in
    /// whole seconds (at least 1).
    #[error("{}", keys_unavailable(.kid.as_deref(), *.retry_after))]
    KeysUnavailable {
        kid: Option<String>,
        retry_after: u64,
    },
}

fn keys_unavailable(kid: Option<&str>, retry_after: u64) -> String {
    let key = kid.map_or(String::new(), |k| {
        format!("signing key {k:?} is not cached and ")
    });
    format!("{key}the issuer's signing keys cannot be fetched right now; retry in {retry_after} s")
}

impl TokenError {
    /// Short, stable code for metrics and audit.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::Unsigned => "unsigned",
            TokenError::AlgorithmNotAllowed(_) => "algorithm",
            TokenError::CriticalHeader => "crit",
            TokenError::UntrustedIssuer(_) => "untrusted_issuer",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(..) => "invalid_claim",
            TokenError::UnknownKey(_) | TokenError::NoKeyId => "unknown_key",
            TokenError::KeyAlgorithmMismatch(..) => "key_algorithm",
            TokenError::BadSignature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongAudience => "audience",
            TokenError::WrongIssuer => "issuer",
            TokenError::KeysUnavailable { .. } => "keys_unavailable",
        }
    }
}

struct TrustedIssuer {
    config: IssuerConfig,
    keys: KeySource,
}

/// Verifies tokens from the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, TrustedIssuer>,
}

impl Verifier {
    pub fn new(issuers: &[IssuerConfig]) -> Result<Verifier, FetchError> {
        let mut map = HashMap::new();
        for cfg in issuers {
            let keys = KeySource::new(cfg)?;
            map.insert(
                normalise(&cfg.issuer),
                TrustedIssuer {
                    config: cfg.clone(),
                    keys,
                },
            );
        }
        Ok(Verifier { issuers: map })
    }

    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 || parts[0].is_empty() || parts[1].is_empty() {
            return Err(TokenError::Malformed("expected three base64url parts"));
        }
        let header =
            json_part(parts[0]).ok_or(TokenError::Malformed("header is not base64url JSON"))?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(TokenError::Malformed("header has no alg"))?;
        // Named before anything else: an unsigned token typically has an empty signature part.
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(TokenError::Unsigned);
        }
        if parts[2].is_empty() {
            return Err(TokenError::Malformed("empty signature"));
        }
        let payload =
            json_part(parts[1]).ok_or(TokenError::Malformed("payload is not base64url JSON"))?;
        if header.contains_key("crit") {
            return Err(TokenError::CriticalHeader);
        }
        let iss = match payload.get("iss") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(TokenError::InvalidClaim("iss", "not a string")),
            None => return Err(TokenError::MissingClaim("iss".into())),
        };
        let trusted = self
            .issuers
            .get(&normalise(&iss))
            .ok_or_else(|| TokenError::UntrustedIssuer(truncate(&iss, 200)))?;
        let alg: Algorithm = alg_name
            .parse()
            .map_err(|_| TokenError::AlgorithmNotAllowed(truncate(alg_name, 20)))?;
        if !trusted.config.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed(alg_name.to_string()));
        }
        let kid = match header.get("kid") {
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(TokenError::Malformed("kid is not a string")),
            None => None,
        };
        // Why a fetch failed is logged once per fetch (`document`), not once per token.
        let key = match trusted.keys.lookup(kid).await {
            Lookup::Found(k) => k,
            Lookup::Unknown => {
                return Err(match kid {
                    Some(k) => TokenError::UnknownKey(truncate(k, 100)),
                    None => TokenError::NoKeyId,
                })
            }
            Lookup::Unavailable { retry_in } => {
                return Err(TokenError::KeysUnavailable {
                    kid: kid.map(|k| truncate(k, 100)),
                    retry_after: retry_in.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        };
        if key.alg.is_some_and(|a| a != alg) || !key.family.algorithms().contains(&alg) {
            return Err(TokenError::KeyAlgorithmMismatch(
                truncate(kid.unwrap_or(""), 100),
                alg_name.to_string(),
            ));
        }

        let mut v = Validation::new(alg);
        v.set_audience(&trusted.config.audiences);
        v.set_issuer(&[&iss]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = trusted.config.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;

        let now = chrono::Utc::now().timestamp();
        let leeway = trusted.config.leeway.as_secs() as i64;
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_i64()
                .ok_or(TokenError::InvalidClaim("iat", "not a number"))?;
            if iat > now + leeway {
                return Err(TokenError::NotYetValid);
            }
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(TokenError::InvalidClaim("sub", "not a string")),
        };
        if subject.is_empty() {
            return Err(TokenError::InvalidClaim("sub", "empty"));
        }
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(TokenError::InvalidClaim("sub", "longer than 8 KiB"));
        }
        // Postgres text cannot hold NUL, and control characters have no business in a subject.
        if subject.chars().any(|c| c == '\0') {
            return Err(TokenError::InvalidClaim("sub", "contains a NUL character"));
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenError::InvalidClaim("exp", "not an integer"))?;
        Ok(VerifiedToken {
            issuer: trusted.config.issuer.clone(),
            subject,
            claims,
            expires_at,
        })
    }
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(truncate(c, 20)),
        ErrorKind::InvalidClaimFormat(_) => TokenError::InvalidClaim("claims", "wrong type"),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => TokenError::AlgorithmNotAllowed("(header)".into()),
        ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => TokenError::Malformed("cannot decode"),
        _ => TokenError::BadSignature,
    }
}

fn json_part(part: &str) -> Option<Map<String, Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn normalise(issuer: &str) -> String {
    issuer.trim_end_matches('/').to_string()
}

/// Cuts attacker-supplied text before it goes into an error message.
fn truncate(s: &str, max: usize) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        format!("{clean}…")
    } else {
        clean
    }
}
