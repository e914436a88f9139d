//! A client's way in: TLS negotiation, the startup packet, authentication (SCRAM against the
//! lease's client verifier, or a JWT as the password over TLS), and the upstream session. Every
//! refusal is a FATAL ErrorResponse with a `pgid:` message and the SQLSTATE Postgres would use.

use std::net::SocketAddr;

use bytes::BytesMut;
use chrono::Utc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::cancel::{CancelKey, CancelTarget};
use super::scram::{self, ServerExchange, StoredVerifier};
use super::stream::ClientStream;
use super::upstream::{self, Login, PoolKey, Upstream, UpstreamError};
use super::wire::framing::{read_startup, Frames, Startup, MAX_AUTH_MESSAGE_BYTES};
use super::wire::{backend, frontend, WireError};
use super::Proxy;
use crate::audit::{Event, Kind};
use crate::policy::{self, Selection};
use crate::roles::{database_password, EndReason, LeaseStatus};
use crate::store::{LeaseRow, LeaseState};

/// A client that passed the handshake, bound to an upstream session.
pub struct Established {
    pub client: ClientStream,
    pub frames: Frames,
    pub upstream: Upstream,
    pub lease: LeaseRow,
    pub cancel: CancelKey,
    pub watch: watch::Receiver<LeaseStatus>,
    pub session_id: uuid::Uuid,
    pub peer: SocketAddr,
}

/// Why a handshake ended without a session (already reported to the client where possible).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("refused: {0}")]
    Refused(String),
}

/// Startup parameters the client may not set: pgid decides who and where.
const RESERVED_PARAMS: &[&str] = &["user", "database", "options", "replication"];
/// Settings that would change the session's identity.
const FORBIDDEN_OPTIONS: &[&str] = &["role", "session_authorization"];

pub enum Outcome {
    Session(Box<Established>),
    /// A cancel request, or a refused client: nothing more to do.
    Done,
}

async fn refuse(client: &mut ClientStream, code: &str, message: &str) -> HandshakeError {
    let _ = client.write_all(&backend::fatal(code, message)).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    HandshakeError::Refused(message.to_string())
}

pub async fn handshake(
    p: &Proxy,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Outcome, HandshakeError> {
    let _ = tcp.set_nodelay(true);
    let mut client = ClientStream::Plain(tcp);
    let mut negotiated = (false, false);
    let params = loop {
        match read_startup(&mut client).await? {
            Startup::Ssl if !negotiated.0 && !client.is_tls() => {
                negotiated.0 = true;
                match (&p.tls, client) {
                    (Some(tls), ClientStream::Plain(mut tcp)) => {
                        tcp.write_all(b"S").await.map_err(WireError::from)?;
                        let s = tokio_rustls::TlsAcceptor::from(tls.clone())
                            .accept(tcp)
                            .await
                            .map_err(WireError::from)?;
                        client = ClientStream::Tls(Box::new(s));
                    }
                    (_, mut c) => {
                        c.write_all(b"N").await.map_err(WireError::from)?;
                        client = c;
                    }
                }
            }
            Startup::GssEnc if !negotiated.1 && !client.is_tls() => {
                negotiated.1 = true;
                client.write_all(b"N").await.map_err(WireError::from)?;
            }
            Startup::Cancel { pid, secret } => {
                p.cancels.cancel(pid, secret).await;
                return Ok(Outcome::Done);
            }
            Startup::Params(params) => break params,
            _ => {
                return Err(
                    refuse(&mut client, "08P01", "pgid: unexpected negotiation request").await,
                )
            }
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());

    if !client.is_tls() && !peer.ip().is_loopback() && !p.settings.allow_plaintext {
        return Err(refuse(
            &mut client,
            "28000",
            "pgid: an encrypted connection is required (use sslmode=require or stronger)",
        )
        .await);
    }
    let Some(user) = get("user").map(str::to_string) else {
        return Err(refuse(
            &mut client,
            "28000",
            "pgid: no user name in the startup packet",
        )
        .await);
    };
    let database = get("database").unwrap_or(&user).to_string();
    if get("replication").is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0")) {
        return Err(refuse(
            &mut client,
            "28000",
            "pgid: replication connections are not allowed",
        )
        .await);
    }
    let options = match parse_options(get("options").unwrap_or("")) {
        Ok(o) => o,
        Err(m) => return Err(refuse(&mut client, "42501", &m).await),
    };
    let mut forwarded: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !RESERVED_PARAMS.contains(&k.as_str()))
        .cloned()
        .collect();
    if !options.forwarded.is_empty() {
        forwarded.push(("options".into(), options.forwarded.join(" ")));
    }
    forwarded.sort();

    let mut frames = Frames::new(MAX_AUTH_MESSAGE_BYTES);
    let row = match p.leases.store().get_by_role(&user).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "looking up a lease failed");
            return Err(refuse(&mut client, "08006", "pgid: lease store unavailable").await);
        }
    };
    let row = match row {
        Some(row) => {
            let verifier = StoredVerifier::parse(&row.client_verifier)
                .unwrap_or_else(|| mock_verifier(p, &user));
            if !scram_auth(
                &mut client,
                &mut frames,
                verifier,
                p.tls_end_point.as_deref(),
            )
            .await?
            {
                return Err(refuse(
                    &mut client,
                    "28P01",
                    &format!("pgid: password authentication failed for user \"{user}\""),
                )
                .await);
            }
            row
        }
        None if client.is_tls() => match token_auth(
            p,
            &mut client,
            &mut frames,
            &user,
            &database,
            options.policy.as_deref(),
        )
        .await?
        {
            Ok(row) => row,
            Err((code, message)) => return Err(refuse(&mut client, code, &message).await),
        },
        None => {
            // Same exchange as for a real lease, so a client cannot tell unknown from wrong.
            scram_auth(
                &mut client,
                &mut frames,
                mock_verifier(p, &user),
                p.tls_end_point.as_deref(),
            )
            .await?;
            return Err(refuse(
                &mut client,
                "28P01",
                &format!("pgid: password authentication failed for user \"{user}\""),
            )
            .await);
        }
    };

    if row.state != LeaseState::Active || row.expires_at <= Utc::now() {
        let expired = match row.state {
            LeaseState::Active | LeaseState::Expired => true,
            LeaseState::Revoking => row.final_state == Some(LeaseState::Expired),
            _ => false,
        };
        let reason = if expired {
            EndReason::Expired
        } else {
            EndReason::Revoked
        };
        return Err(refuse(&mut client, "28000", reason.message()).await);
    }
    let Some(db) = p.leases.databases().get(&row.database) else {
        return Err(refuse(
            &mut client,
            "3D000",
            "pgid: the lease's database is not configured",
        )
        .await);
    };
    if database != row.database && database != db.dbname {
        return Err(refuse(
            &mut client,
            "28000",
            &format!("pgid: this credential is for database \"{}\"", row.database),
        )
        .await);
    }
    let watch = p.leases.watch().subscribe(
        row.id,
        LeaseStatus::Active {
            expires_at: row.expires_at,
        },
    );
    let current = *watch.borrow();
    if let LeaseStatus::Ended(reason) = current {
        return Err(refuse(&mut client, "28000", reason.message()).await);
    }

    let key = PoolKey {
        lease: row.id,
        params: forwarded,
    };
    let upstream = match open_upstream(p, db, &row, key).await {
        Ok(u) => u,
        Err(UpstreamError::Server { code, message }) => {
            return Err(refuse(
                &mut client,
                &code,
                &format!("pgid: the database refused the session: {message}"),
            )
            .await)
        }
        Err(e) => {
            tracing::warn!(lease = %row.id, error = %e, "upstream connection failed");
            return Err(refuse(&mut client, "08006", &format!("pgid: {e}")).await);
        }
    };
    let cancel = p.cancels.register(CancelTarget {
        addr: db.upstream.clone(),
        pid: upstream.pid,
        secret: upstream.secret,
    });

    // The session is on record before the client may send its first statement.
    let session_id = uuid::Uuid::new_v4();
    let mut event = Event::new(Kind::SessionStart).lease(&row);
    event.session_id = Some(session_id);
    event.client_addr = Some(peer.to_string());
    if let Err(e) = p.leases.audit().record(&event).await {
        tracing::error!(error = %e, "cannot audit a session start");
        super::pool::close(upstream);
        return Err(refuse(&mut client, "58000", "pgid: the audit log is unavailable").await);
    }

    let mut out = BytesMut::new();
    backend::authentication(&mut out, backend::AUTH_OK, &[]);
    for (k, v) in &upstream.params {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, cancel.pid, cancel.secret);
    backend::ready_for_query(&mut out, backend::TransactionStatus::Idle);
    client.write_all(&out).await.map_err(WireError::from)?;
    client.flush().await.map_err(WireError::from)?;
    Ok(Outcome::Session(Box::new(Established {
        client,
        frames,
        upstream,
        lease: row,
        cancel,
        watch,
        session_id,
        peer,
    })))
}

async fn open_upstream(
    p: &Proxy,
    db: &crate::database::Database,
    row: &LeaseRow,
    key: PoolKey,
) -> Result<Upstream, UpstreamError> {
    if let Some(up) = p.pool.take(&key) {
        return Ok(up);
    }
    let password = database_password(p.leases.key(), row.id);
    let tls = db.tls.as_ref();
    let mut evicted = false;
    loop {
        let login = Login {
            db,
            role: &row.role_name,
            password: &password,
            lease: row.id,
            params: &key.params,
            salts: &p.salts,
            tls,
        };
        match upstream::connect(login).await {
            // The role's connection limit is taken by idle pooled connections: free one, retry once.
            Err(UpstreamError::Server { code, .. })
                if code == "53300" && !evicted && p.pool.evict_one(row.id) =>
            {
                evicted = true;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// SCRAM-SHA-256 server exchange. `Ok(false)`: wrong secret (not yet reported to the client).
async fn scram_auth(
    client: &mut ClientStream,
    frames: &mut Frames,
    verifier: StoredVerifier,
    binding: Option<&[u8]>,
) -> Result<bool, HandshakeError> {
    // Over TLS, channel binding to pgid's certificate is offered too.
    let end_point = binding.filter(|_| client.is_tls());
    let mut out = BytesMut::new();
    if end_point.is_some() {
        backend::auth_sasl(&mut out, &[scram::MECHANISM_PLUS, scram::MECHANISM]);
    } else {
        backend::auth_sasl(&mut out, &[scram::MECHANISM]);
    }
    client.write_all(&out).await.map_err(WireError::from)?;
    client.flush().await.map_err(WireError::from)?;
    let m = frames.read(client).await?;
    if m.tag != b'p' {
        return Err(refuse(client, "08P01", "pgid: expected a SASL response").await);
    }
    let (mechanism, data) = frontend::parse_sasl_initial(&m.body)?;
    let binding = match (mechanism.as_str(), end_point) {
        (scram::MECHANISM, None) => scram::Binding::None,
        (scram::MECHANISM, Some(data)) => scram::Binding::Offered { data, plus: false },
        (scram::MECHANISM_PLUS, Some(data)) => scram::Binding::Offered { data, plus: true },
        _ => {
            return Err(refuse(
                client,
                "28000",
                "pgid: only SCRAM-SHA-256 (and over TLS SCRAM-SHA-256-PLUS) is supported",
            )
            .await)
        }
    };
    let exchange = match ServerExchange::start(verifier, &data, &scram::nonce(), binding) {
        Ok(e) => e,
        Err(e) => return Err(refuse(client, "08P01", &format!("pgid: {e}")).await),
    };
    let mut out = BytesMut::new();
    backend::authentication(
        &mut out,
        backend::AUTH_SASL_CONTINUE,
        exchange.server_first.as_bytes(),
    );
    client.write_all(&out).await.map_err(WireError::from)?;
    client.flush().await.map_err(WireError::from)?;
    let m = frames.read(client).await?;
    if m.tag != b'p' {
        return Err(refuse(client, "08P01", "pgid: expected a SASL response").await);
    }
    match exchange.finish(&m.body) {
        Ok(server_final) => {
            let mut out = BytesMut::new();
            backend::authentication(&mut out, backend::AUTH_SASL_FINAL, server_final.as_bytes());
            client.write_all(&out).await.map_err(WireError::from)?;
            Ok(true)
        }
        Err(scram::ScramError::BadProof) => Ok(false),
        Err(e) => Err(refuse(client, "08P01", &format!("pgid: {e}")).await),
    }
}

/// A JWT as the password (TLS only): verify, pick the policy, issue a lease inline.
async fn token_auth(
    p: &Proxy,
    client: &mut ClientStream,
    frames: &mut Frames,
    user: &str,
    database: &str,
    policy_name: Option<&str>,
) -> Result<Result<LeaseRow, (&'static str, String)>, HandshakeError> {
    let mut out = BytesMut::new();
    backend::authentication(&mut out, backend::AUTH_CLEARTEXT, &[]);
    client.write_all(&out).await.map_err(WireError::from)?;
    client.flush().await.map_err(WireError::from)?;
    let m = frames.read(client).await?;
    if m.tag != b'p' {
        return Err(refuse(client, "08P01", "pgid: expected a password message").await);
    }
    let token = frontend::parse_password(&m.body)?;
    if token.split('.').count() != 3 {
        return Ok(Err((
            "28P01",
            format!("pgid: password authentication failed for user \"{user}\""),
        )));
    }
    let who = match p.verifier.verify(&token).await {
        Ok(w) => w,
        Err(e) => {
            p.leases.metrics().deny(e.code());
            tracing::info!(reason = %e, "token as password refused");
            return Ok(Err(("28P01", format!("pgid: token refused: {e}"))));
        }
    };
    let policies = p.policies.read().unwrap().clone();
    let request = policy::Request {
        database: Some(database),
        policy: policy_name,
    };
    let chosen = match policy::select(&policies, &who.issuer, &who.subject, &who.claims, &request) {
        Selection::One(pol) => pol,
        Selection::None => {
            p.leases.metrics().deny("no_policy");
            return Ok(Err((
                "28000",
                format!("pgid: no policy matches this identity for database \"{database}\""),
            )));
        }
        Selection::Ambiguous(names) => {
            return Ok(Err((
                "28000",
                format!(
                "pgid: several policies match ({}); choose one with options=-c pgid.policy=<name>",
                names.join(", ")
            ),
            )))
        }
    };
    match p.leases.issue(&chosen, &who, chosen.ttl, "proxy").await {
        Ok(lease) => {
            tracing::info!(lease = %lease.row.id, policy = %chosen.name, "lease issued for a token presented as password");
            Ok(Ok(lease.row))
        }
        Err(e) => {
            tracing::error!(error = %e, "inline lease issue failed");
            Ok(Err((
                "08006",
                "pgid: cannot issue a credential right now".into(),
            )))
        }
    }
}

/// A verifier no password matches, stable per user name, for unknown users.
fn mock_verifier(p: &Proxy, user: &str) -> StoredVerifier {
    let mut label = b"pgid mock scram\0".to_vec();
    label.extend_from_slice(user.as_bytes());
    let d = p.leases.key().derive(&label);
    StoredVerifier {
        iterations: 4096,
        salt: d[..16].to_vec(),
        stored_key: p.leases.key().derive(&d),
        server_key: d,
    }
}

/// The `options` startup parameter, read as Postgres does (`-c name=value`, `--name=value`).
#[derive(Debug, Default, PartialEq)]
pub struct StartupOptions {
    /// `pgid.policy`, for a token presented as the password.
    pub policy: Option<String>,
    /// Everything else, re-quoted for the upstream startup packet.
    pub forwarded: Vec<String>,
}

pub fn parse_options(text: &str) -> Result<StartupOptions, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().unwrap_or('\\')),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = StartupOptions::default();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("pgid: -c without a setting in options")?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_string()
        } else {
            return Err(format!(
                "pgid: unsupported startup option {w:?} (only -c name=value)"
            ));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("pgid: startup option {setting:?} has no value"))?;
        let name = name.to_ascii_lowercase().replace('-', "_");
        if name == "pgid.policy" {
            out.policy = Some(value.to_string());
        } else if FORBIDDEN_OPTIONS.contains(&name.as_str()) {
            return Err(format!("pgid: setting {name} at startup is not allowed"));
        } else {
            let escaped: String = value
                .chars()
                .flat_map(|c| {
                    if c == '\\' || c.is_ascii_whitespace() {
                        vec!['\\', c]
                    } else {
                        vec![c]
                    }
                })
                .collect();
            out.forwarded.push(format!("-c {name}={escaped}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options() {
        let o = parse_options(
            "-c pgid.policy=reporting -c search_path=crm,public --statement-timeout=5s",
        )
        .unwrap();
        assert_eq!(o.policy.as_deref(), Some("reporting"));
        assert_eq!(
            o.forwarded,
            ["-c search_path=crm,public", "-c statement_timeout=5s"]
        );
        let o = parse_options(r"-c application_name=my\ app").unwrap();
        assert_eq!(o.forwarded, [r"-c application_name=my\ app"]);
        assert!(parse_options("-c role=pgid_admin").is_err());
        assert!(parse_options("-c session-authorization=postgres").is_err());
        assert!(parse_options("-D /tmp").is_err());
        assert_eq!(parse_options("").unwrap(), StartupOptions::default());
    }
}
