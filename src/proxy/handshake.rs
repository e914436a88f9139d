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
use super::token_leases;
use super::upstream::{self, Login, PoolKey, Upstream, UpstreamError};
use super::wire::framing::{read_startup, Frames, Startup, MAX_AUTH_MESSAGE_BYTES};
use super::wire::{backend, frontend, sqlstate, WireError};
use super::Proxy;
use crate::audit::{Event, Kind};
use crate::policy::{self, Selection};
use crate::roles::{database_password, EndReason, LeaseStatus};
use crate::store::LeaseRow;

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
const FORBIDDEN_SETTINGS: &[&str] = &["role", "session_authorization"];

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
                p.cancels.cancel(pid, secret, peer.ip()).await;
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
        Err(m) => return Err(refuse(&mut client, sqlstate::INSUFFICIENT_PRIVILEGE, &m).await),
    };
    // Every other startup parameter is a setting, checked like those in `options`.
    let mut forwarded: Vec<(String, String)> = Vec::new();
    for (k, v) in params
        .iter()
        .filter(|(k, _)| !RESERVED_PARAMS.contains(&k.as_str()))
    {
        if let Err(m) = check_setting(k, v) {
            return Err(refuse(&mut client, sqlstate::INSUFFICIENT_PRIVILEGE, &m).await);
        }
        forwarded.push((k.clone(), v.clone()));
    }
    if !options.forwarded.is_empty() {
        forwarded.push(("options".into(), options.forwarded.join(" ")));
    }
    forwarded.sort();

    let mut frames = Frames::new(MAX_AUTH_MESSAGE_BYTES);
    let row = match p.leases.store().get_by_role(&user).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %crate::errors::Chain(&e), "looking up a lease failed");
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

    match LeaseStatus::of(&row, Utc::now()) {
        Some(LeaseStatus::Active { .. }) => {}
        Some(LeaseStatus::Ended(reason)) => {
            return Err(refuse(&mut client, "28000", reason.message()).await)
        }
        // Still being created: not a credential anyone may use yet.
        None => return Err(refuse(&mut client, "28000", EndReason::Revoked.message()).await),
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
            tracing::warn!(lease = %row.id, error = %crate::errors::Chain(&e), "upstream connection failed");
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
        tracing::error!(error = %crate::errors::Chain(&e), "cannot audit a session start");
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
    let Some(body) = frontend::password_message(m.tag, &m.body) else {
        return Err(refuse(client, "08P01", "pgid: expected a SASL response").await);
    };
    let (mechanism, data) = frontend::parse_sasl_initial(body)?;
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
    let Some(body) = frontend::password_message(m.tag, &m.body) else {
        return Err(refuse(client, "08P01", "pgid: expected a SASL response").await);
    };
    match exchange.finish(body) {
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

/// A JWT as the password (TLS only): verify, pick the policy, and reuse the lease the same
/// token got for an earlier connection (`token_leases`) or issue one inline.
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
    let Some(body) = frontend::password_message(m.tag, &m.body) else {
        return Err(refuse(client, "08P01", "pgid: expected a password message").await);
    };
    let token = frontend::parse_password(body)?;
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
            // Not a verdict on the token: the client should try again later.
            let code = match e {
                crate::identity::TokenError::KeysUnavailable { .. } => sqlstate::CANNOT_CONNECT_NOW,
                _ => sqlstate::INVALID_PASSWORD,
            };
            return Ok(Err((code, format!("pgid: token refused: {e}"))));
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
    // Connections with the same token take turns here, so a burst of them issues one lease.
    let slot = p
        .token_leases
        .slot(p.token_leases.key(&token, &chosen.name, database));
    let mut turn = match &slot {
        Some(s) => Some(s.lease.lock().await),
        None => None,
    };
    if let Some(entry) = turn.as_deref().copied().flatten() {
        match p.leases.store().get(entry.lease).await {
            Ok(Some(row))
                if token_leases::reusable(
                    &row,
                    &entry,
                    &chosen.name,
                    &who.issuer,
                    &who.subject,
                    Utc::now(),
                ) =>
            {
                p.leases.metrics().token_leases_reused.inc();
                tracing::debug!(lease = %row.id, policy = %chosen.name, "lease reused for a token presented as password");
                return Ok(Ok(row));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %crate::errors::Chain(&e), "looking up a token's lease failed; issuing a new one")
            }
        }
    }
    match p.leases.issue(&chosen, &who, chosen.ttl, "proxy").await {
        Ok(lease) => {
            tracing::info!(lease = %lease.row.id, policy = %chosen.name, "lease issued for a token presented as password");
            if let Some(entry) = turn.as_deref_mut() {
                let token_end = chrono::DateTime::from_timestamp(who.expires_at, 0)
                    .unwrap_or(lease.row.expires_at);
                *entry = Some(token_leases::Entry {
                    lease: lease.row.id,
                    until: lease.row.expires_at.min(token_end),
                });
            }
            Ok(Ok(lease.row))
        }
        Err(
            e @ (crate::roles::LeaseError::RateLimited { .. }
            | crate::roles::LeaseError::QuotaReached(_)),
        ) => {
            tracing::info!(error = %crate::errors::Chain(&e), "inline lease refused by a limit");
            Ok(Err((
                super::wire::sqlstate::TOO_MANY_CONNECTIONS,
                format!("pgid: {e}"),
            )))
        }
        Err(e) => {
            tracing::error!(error = %crate::errors::Chain(&e), "inline lease issue failed");
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
    /// Every other setting, written out again for the upstream startup packet.
    pub forwarded: Vec<String>,
}

/// White space as the server's `pg_split_opts` sees it (C `isspace`).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits `options` into words exactly as the server does: at C white space, a backslash
/// taking the next character literally.
fn split_options(text: &str) -> Vec<Vec<u8>> {
    let b = text.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let mut word = Vec::new();
        let mut escaped = false;
        while i < b.len() {
            if is_space(b[i]) && !escaped {
                break;
            }
            if !escaped && b[i] == b'\\' {
                escaped = true;
            } else {
                escaped = false;
                word.push(b[i]);
            }
            i += 1;
        }
        words.push(word);
    }
    words
}

/// A setting name the server could read: letters, digits, `_` and `.` (custom settings).
fn setting_name(name: &str) -> Result<String, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
    {
        return Err(format!("pgid: {name:?} is not a setting name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// Whether the client may choose this setting at startup. Identity is pgid's to decide, and a
/// client encoding must be one pgid reads exactly as the server does.
pub fn check_setting(name: &str, value: &str) -> Result<(), String> {
    let name = setting_name(name)?;
    if FORBIDDEN_SETTINGS.contains(&name.as_str()) {
        return Err(format!("pgid: setting {name} at startup is not allowed"));
    }
    if name == "client_encoding" {
        match crate::encoding::Encoding::from_name(value) {
            Some(e) if e.is_ascii_safe() => {}
            Some(e) => return Err(super::inspect::context::unsupported_encoding(e.name())),
            None => return Err(format!("pgid: client_encoding {value:?} is not known")),
        }
    }
    Ok(())
}

/// A value written so that the server's `pg_split_opts` reads it back exactly: every byte that
/// is not a letter or digit is escaped.
fn escaped(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 2);
    for c in value {
        if !c.is_ascii_alphanumeric() {
            out.push(b'\\');
        }
        out.push(*c);
    }
    out
}

pub fn parse_options(text: &str) -> Result<StartupOptions, String> {
    let mut out = StartupOptions::default();
    let mut it = split_options(text).into_iter();
    while let Some(w) = it.next() {
        let setting = if w == b"-c" {
            it.next().ok_or("pgid: -c without a setting in options")?
        } else if let Some(s) = w.strip_prefix(b"-c").or_else(|| w.strip_prefix(b"--")) {
            s.to_vec()
        } else {
            return Err(format!(
                "pgid: unsupported startup option {:?} (only -c name=value)",
                String::from_utf8_lossy(&w)
            ));
        };
        let setting = String::from_utf8(setting)
            .map_err(|_| "pgid: a startup option is not valid UTF-8".to_string())?;
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("pgid: startup option {setting:?} has no value"))?;
        // As the server reads `-c`/`--` names: dashes are underscores.
        let name = setting_name(&name.replace('-', "_"))?;
        if name == "pgid.policy" {
            out.policy = Some(value.to_string());
            continue;
        }
        check_setting(&name, value)?;
        let mut word = b"-c ".to_vec();
        word.extend_from_slice(name.as_bytes());
        word.push(b'=');
        word.extend(escaped(value.as_bytes()));
        out.forwarded
            .push(String::from_utf8(word).unwrap_or_else(|_| unreachable!("escaped UTF-8")));
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
            [r"-c search_path=crm\,public", "-c statement_timeout=5s"]
        );
        let o = parse_options(r"-c application_name=my\ app").unwrap();
        assert_eq!(o.forwarded, [r"-c application_name=my\ app"]);
        assert!(parse_options("-c role=pgid_admin").is_err());
        assert!(parse_options("-c session-authorization=postgres").is_err());
        assert!(parse_options("-c ROLE=pgid_admin").is_err());
        assert!(parse_options("-D /tmp").is_err());
        assert_eq!(parse_options("").unwrap(), StartupOptions::default());
    }

    #[test]
    fn options_split_where_the_server_splits_them() {
        // Vertical tab and form feed are white space to the server (C isspace).
        for ws in ["\u{b}", "\u{c}", "\r", "\n", "\t"] {
            let text = format!("-c{ws}role=postgres");
            assert!(parse_options(&text).is_err(), "{text:?}");
            let text = format!("-c application_name=x{ws}-c{ws}role=postgres");
            assert!(parse_options(&text).is_err(), "{text:?}");
        }
        assert!(parse_options("-c \u{b}role=postgres").is_err());
        assert_eq!(
            split_options("a\\ b\u{b}c\\"),
            vec![b"a b".to_vec(), b"c".to_vec()]
        );
        // What pgid forwards reads back as exactly one setting, whatever the value holds.
        let o = parse_options("-c application_name=a\\\u{b}-c\\ role=x").unwrap();
        assert_eq!(o.forwarded.len(), 1);
        let words = split_options(&o.forwarded[0]);
        assert_eq!(words.len(), 2);
        assert_eq!(words[1], "application_name=a\u{b}-c role=x".as_bytes());
    }

    #[test]
    fn settings_at_startup() {
        assert!(check_setting("role", "x").is_err());
        assert!(check_setting("Session_Authorization", "x").is_err());
        assert!(
            check_setting("role\u{b}", "x").is_err(),
            "not a setting name"
        );
        assert!(check_setting("client_encoding", "SJIS").is_err());
        assert!(check_setting("client_encoding", "big5").is_err());
        assert!(check_setting("client_encoding", "LATIN1").is_ok());
        assert!(check_setting("application_name", "x y").is_ok());
    }
}
