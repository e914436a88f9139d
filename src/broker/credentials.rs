//! `/v1/credentials`: issue, show, renew, revoke.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::caller::Caller;
use super::error::ApiError;
use super::BrokerState;
use crate::audit::{Event, Kind};
use crate::identity::VerifiedToken;
use crate::policy::{self, Selection};
use crate::store::{LeaseRow, LeaseState};
use crate::units::Span;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    database: Option<String>,
    policy: Option<String>,
    ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    ttl: Option<String>,
}

/// The one response that carries the client secret.
#[derive(Serialize)]
pub struct Issued {
    lease_id: Uuid,
    username: String,
    password: String,
    dsn: String,
    host: String,
    port: u16,
    database: String,
    expires_at: DateTime<Utc>,
    policy: String,
    /// How clients must connect: `verify-full` unless the proxy is on loopback (`prefer`).
    sslmode: &'static str,
    /// The CA that signed the proxy's certificate, when pgid generated it (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_cert: Option<String>,
}

#[derive(Serialize)]
pub struct LeaseView {
    lease_id: Uuid,
    state: &'static str,
    username: String,
    policy: String,
    database: String,
    issuer: String,
    subject: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    max_expires_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
}

impl From<LeaseRow> for LeaseView {
    fn from(r: LeaseRow) -> LeaseView {
        LeaseView {
            lease_id: r.id,
            state: r.state.as_str(),
            username: r.role_name,
            policy: r.policy,
            database: r.database,
            issuer: r.issuer,
            subject: r.subject,
            created_at: r.created_at,
            expires_at: r.expires_at,
            max_expires_at: r.max_expires_at,
            ended_at: r.ended_at,
            end_reason: r.end_reason,
        }
    }
}

fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn ttl(text: Option<&str>) -> Result<Option<std::time::Duration>, ApiError> {
    text.map(|t| {
        Span::parse(t)
            .map(Span::as_std)
            .map_err(ApiError::bad_request)
    })
    .transpose()
}

pub async fn issue(
    State(s): State<BrokerState>,
    Caller(who): Caller,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    let req: IssueBody = body(&bytes)?;
    let policies = s.policies();
    let request = policy::Request {
        database: req.database.as_deref(),
        policy: req.policy.as_deref(),
    };
    let chosen = match policy::select(&policies, &who.issuer, &who.subject, &who.claims, &request) {
        Selection::One(p) => p,
        Selection::None => {
            s.leases.metrics().deny("no_policy");
            audit_denial(&s, &who, "no_policy").await;
            tracing::info!(issuer = %who.issuer, subject = %crate::roles::ddl::printable_subject(&who.subject), "no policy matches");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "no_policy",
                "no policy matches this identity and request",
            ));
        }
        Selection::Ambiguous(names) => {
            s.leases.metrics().deny("ambiguous_policy");
            audit_denial(&s, &who, &format!("ambiguous_policy: {}", names.join(", "))).await;
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous_policy",
                format!(
                    "several policies match ({}); name one with \"policy\"",
                    names.join(", ")
                ),
            );
            e.extra = Some(("policies", serde_json::json!(names)));
            return Err(e);
        }
    };
    let ttl = chosen
        .lease_ttl(ttl(req.ttl.as_deref())?)
        .map_err(ApiError::bad_request)?;
    let lease = s.leases.issue(&chosen, &who, ttl, "broker").await?;
    let secret = lease.secret.0.expose().clone();
    let row = lease.row;
    let dsn = dsn(
        &row.role_name,
        &secret,
        &s.proxy.host,
        s.proxy.port,
        &row.database,
    );
    Ok((
        StatusCode::CREATED,
        Json(Issued {
            lease_id: row.id,
            username: row.role_name,
            password: secret,
            dsn,
            host: s.proxy.host.clone(),
            port: s.proxy.port,
            database: row.database,
            expires_at: row.expires_at,
            policy: row.policy,
            sslmode: if is_local(&s.proxy.host) {
                "prefer"
            } else {
                "verify-full"
            },
            ca_cert: s.proxy.ca_cert.clone(),
        }),
    ))
}

/// Records a refusal of a verified identity (best effort: the request is refused either way).
async fn audit_denial(s: &BrokerState, who: &VerifiedToken, reason: &str) {
    let mut e = Event::new(Kind::CredentialDenied).reason(reason);
    e.subject = Some(who.subject.clone());
    e.issuer = Some(who.issuer.clone());
    super::record_denial(s, e).await;
}

fn is_local(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `postgresql://user:secret@host:port/database`; unless the proxy is on loopback, TLS with the
/// proxy's certificate verified (`sslmode=verify-full`: the client needs the CA — `ca_cert` in
/// the answer, which `pgid login` adds as `sslrootcert`, or a public CA it trusts).
pub fn dsn(user: &str, secret: &str, host: &str, port: u16, database: &str) -> String {
    let host_part = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let ssl = if is_local(host) {
        ""
    } else {
        "?sslmode=verify-full"
    };
    format!("postgresql://{user}:{secret}@{host_part}:{port}/{database}{ssl}")
}

async fn owned_lease(
    s: &BrokerState,
    who: &VerifiedToken,
    id: &str,
    admin_ok: bool,
) -> Result<LeaseRow, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found())?;
    let row = s.leases.get(id).await?;
    let owner = row.issuer == who.issuer && row.subject == who.subject;
    let admin = admin_ok
        && s.admins
            .iter()
            .any(|a| a.matches(&who.issuer, &who.subject, &who.claims));
    if !owner && !admin {
        return Err(ApiError::forbidden(
            "this lease belongs to another identity",
        ));
    }
    Ok(row)
}

pub async fn show(
    State(s): State<BrokerState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<LeaseView>, ApiError> {
    Ok(Json(owned_lease(&s, &who, &id, true).await?.into()))
}

pub async fn renew(
    State(s): State<BrokerState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<LeaseView>, ApiError> {
    let req: RenewBody = body(&bytes)?;
    let row = owned_lease(&s, &who, &id, false).await?;
    let policies = s.policies();
    let policy = policies.get(&row.policy).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the lease's policy no longer exists",
        )
    })?;
    let ttl = policy
        .lease_ttl(ttl(req.ttl.as_deref())?)
        .map_err(ApiError::bad_request)?;
    Ok(Json(s.leases.renew(&row, ttl).await?.into()))
}

pub async fn revoke(
    State(s): State<BrokerState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<LeaseView>), ApiError> {
    let row = owned_lease(&s, &who, &id, true).await?;
    match s
        .leases
        .revoke(row.id, LeaseState::Revoked, "revoked by request")
        .await
    {
        Ok(row) => Ok((StatusCode::OK, Json(row.into()))),
        // The lease is marked revoking and can no longer be used through pgid; the reaper
        // finishes removing the role.
        Err(crate::roles::LeaseError::Database { .. }) => {
            let row = s.leases.get(row.id).await?;
            Ok((StatusCode::ACCEPTED, Json(row.into())))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsns() {
        assert_eq!(
            dsn("u", "s", "127.0.0.1", 7432, "app"),
            "postgresql://u:s@127.0.0.1:7432/app"
        );
        assert_eq!(
            dsn("u", "s", "db.example.com", 5432, "app"),
            "postgresql://u:s@db.example.com:5432/app?sslmode=verify-full"
        );
        assert_eq!(
            dsn("u", "s", "::1", 7432, "app"),
            "postgresql://u:s@[::1]:7432/app"
        );
    }
}
