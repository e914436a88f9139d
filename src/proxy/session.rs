//! The relay: messages pass between client and upstream untouched, in whole frames, while pgid
//! tracks what it must know — transaction status and outstanding requests (to reuse an idle
//! upstream), reported parameters — and ends the session when the lease does.

use bytes::BytesMut;
use chrono::Utc;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::cancel::CancelTarget;
use std::collections::HashMap;
use std::sync::Arc;

use super::approver::{Approver, Io};
use super::enforce::{Enforcer, EnforcerSetup, Reconfigure};
use super::handshake::Established;
use super::limits::{Action, ExportLimit, LIMIT_SQLSTATE};
use super::upstream::Upstream;
use super::wire::backend::{self, Severity};
use super::wire::framing::{frame_at, MAX_MESSAGE_BYTES};
use super::Proxy;
use crate::audit::statement::SessionRecords;
use crate::audit::{AuditLog, Event, Kind};
use crate::roles::{EndReason, LeaseStatus};
use crate::sql::Dialect;

enum End {
    /// The client left (Terminate or closed socket).
    ClientGone,
    /// pgid ends the session and tells the client why.
    Fatal(&'static str, String),
    /// The upstream closed or broke.
    UpstreamGone,
}

/// Resolves when the lease ends: revoked, or expired (renewals move the deadline).
pub(super) async fn lease_end(mut watch: tokio::sync::watch::Receiver<LeaseStatus>) -> EndReason {
    loop {
        let status = *watch.borrow_and_update();
        let deadline = match status {
            LeaseStatus::Ended(reason) => return reason,
            LeaseStatus::Active { expires_at } => {
                let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
                if left.is_zero() {
                    return EndReason::Expired;
                }
                Instant::now() + left
            }
        };
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    return EndReason::Revoked;
                }
            }
            _ = sleep_until(deadline) => {}
        }
    }
}

pub async fn run(p: &Proxy, est: Established, shutdown: CancellationToken) {
    let Established {
        mut client,
        mut frames,
        mut upstream,
        lease,
        cancel,
        watch,
        session_id,
        peer,
    } = est;
    frames.set_max(MAX_MESSAGE_BYTES);
    // Read before the set: a reload in between is noticed at the first statement.
    let mut policy_generation = p
        .policy_generation
        .load(std::sync::atomic::Ordering::Acquire);
    let policy_set = p.policies.read().unwrap().clone();
    let refuse = |code: &'static str, message: &'static str| {
        let mut out = BytesMut::new();
        backend::error_response(&mut out, Severity::Fatal, code, message);
        out
    };
    // A lease whose policy is gone (removed by a reload) gets no session: its rules are unknown.
    let Some(policy) = policy_set.get(&lease.policy).cloned() else {
        let _ = client
            .write_all(&refuse(
                "57P01",
                "pgid: the lease's policy no longer exists",
            ))
            .await;
        let _ = client.shutdown().await;
        super::pool::close(upstream);
        return;
    };
    let (rules, audit_rules) = (policy.guardrails.clone(), policy.audit);
    let approval_rules = policy.approvals.clone();
    // Masked columns as the database knows them; no session if they cannot be looked up.
    let masks = if p.settings.inspect {
        match session_masks(p, &policy, &lease).await {
            Ok(m) => m,
            Err(()) => {
                let _ = client.write_all(&refuse("58000", MASKS_UNRESOLVED)).await;
                let _ = client.shutdown().await;
                super::pool::close(upstream);
                return;
            }
        }
    } else {
        None
    };
    let mut limit = ExportLimit::new(rules.max_rows, rules.max_bytes);
    let mut enforcer = p.settings.inspect.then(|| {
        Enforcer::new(EnforcerSetup {
            rules,
            audit: audit_rules,
            analyzer: p.analyzer.clone(),
            records: SessionRecords::new(&lease, session_id, &peer.to_string()),
            masks,
            approvals: approval_rules,
        })
    });
    let audit = p.leases.audit().clone();
    let cancel_target = p
        .leases
        .databases()
        .get(&lease.database)
        .map(|db| CancelTarget {
            addr: db.upstream.clone(),
            pid: upstream.pid,
            secret: upstream.secret,
        });
    // Requests (Query, Sync, FunctionCall) that have not yet been answered by ReadyForQuery.
    let mut pending: i64 = 0;
    let mut status = b'I';
    // Created once: re-creating timers and waiters per message would cost on every round trip.
    let lease_watch = watch.clone();
    let lease_end = lease_end(watch);
    tokio::pin!(lease_end);
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    let drain = sleep_until(Instant::now() + std::time::Duration::from_secs(86_400 * 365));
    tokio::pin!(drain);
    let mut draining = false;
    let mut ended: Option<EndReason> = None;

    let end = loop {
        tokio::select! {
            biased;
            r = more_from_client(&mut frames, &mut client) => {
                if r.is_err() {
                    break End::ClientGone;
                }
                // A reloaded policy applies from the next statement on.
                if let Some(e) = enforcer.as_mut() {
                    let now = p.policy_generation.load(std::sync::atomic::Ordering::Acquire);
                    if now != policy_generation {
                        policy_generation = now;
                        let current = p.policies.read().unwrap().clone();
                        if let Err(m) = reconfigure(p, &lease, &current, e, &mut limit, dialect(&upstream.params)).await {
                            break End::Fatal("57P01", m.into());
                        }
                    }
                }
                let approver = Approver { proxy: p, lease: &lease, session_id, cancelled: &cancel.cancelled, lease_watch: &lease_watch };
                match client_to_server(&mut frames.buf, &mut upstream, &mut client, &mut pending, status, enforcer.as_mut(), &audit, &approver).await {
                    Ok(true) => {}
                    Ok(false) => break End::ClientGone,
                    Err(Flow::Upstream) => break End::UpstreamGone,
                    Err(Flow::Protocol(m)) => break End::Fatal("08P01", format!("pgid: invalid message from client: {m}")),
                    Err(Flow::ClientGone) => break End::ClientGone,
                }
            }
            r = upstream.frames.fill(&mut upstream.stream) => {
                if r.is_err() {
                    break End::UpstreamGone;
                }
                let Some(target) = cancel_target.as_ref() else { break End::UpstreamGone };
                let relay = Relay { pending: &mut pending, status: &mut status, enforcer: enforcer.as_mut(), limit: &mut limit, cancel: target, audit: &audit };
                match server_to_client(&mut upstream, &mut client, relay).await {
                    Ok(()) => {}
                    Err(Flow::Upstream) => break End::UpstreamGone,
                    Err(Flow::Protocol(_) | Flow::ClientGone) => break End::ClientGone,
                }
            }
            reason = &mut lease_end => {
                ended = Some(reason);
                break End::Fatal("57P01", reason.message().into());
            }
            _ = &mut shutting_down, if !draining => {
                draining = true;
                drain.as_mut().reset(Instant::now() + p.settings.drain_timeout);
            }
            _ = &mut drain, if draining => break End::Fatal("57P01", "pgid: server shutting down".into()),
        }
    };
    drop(cancel);
    let why = match &end {
        End::ClientGone => "client disconnected".to_string(),
        End::UpstreamGone => "database closed the connection".to_string(),
        End::Fatal(_, m) => m.clone(),
    };
    let mut event = Event::new(Kind::SessionEnd).lease(&lease).reason(why);
    event.session_id = Some(session_id);
    event.client_addr = Some(peer.to_string());
    if let Err(e) = p.leases.audit().record(&event).await {
        tracing::error!(error = %e, "cannot audit a session end");
    }
    match end {
        End::ClientGone if pending == 0 && status == b'I' && upstream.frames.buf.is_empty() => {
            p.pool.give_back(upstream).await;
        }
        End::ClientGone | End::UpstreamGone => {
            super::pool::close(upstream);
            let _ = client.shutdown().await;
        }
        End::Fatal(code, message) => {
            tracing::info!(lease = %lease.id, reason = %message, "closing session");
            let mut out = BytesMut::new();
            backend::error_response(&mut out, Severity::Fatal, code, &message);
            let _ = client.write_all(&out).await;
            let _ = client.flush().await;
            let _ = client.shutdown().await;
            super::pool::close(upstream);
            if ended.is_some() {
                p.pool.forget_lease(lease.id);
                p.salts.forget(lease.id);
            }
        }
    }
}

const MASKS_UNRESOLVED: &str =
    "pgid: masked columns cannot be resolved in the database; try again later";

/// The lease's masks as the database knows them (`None`: the policy masks nothing).
async fn session_masks(
    p: &Proxy,
    policy: &crate::policy::Policy,
    lease: &crate::store::LeaseRow,
) -> Result<Option<Arc<super::catalog::MaskSetup>>, ()> {
    let Some(db) = p.leases.databases().get(&lease.database) else {
        return Ok(None);
    };
    let key = p.leases.key().derive(b"pgid mask hash");
    p.mask_catalog
        .resolve(policy, &db.pool, &p.analyzer, key)
        .await
        .map_err(
            |e| tracing::error!(error = %e, "cannot resolve masked columns; closing the session"),
        )
}

/// Applies the reloaded policy set to a live session; `Err` ends the session with that message.
async fn reconfigure(
    p: &Proxy,
    lease: &crate::store::LeaseRow,
    set: &crate::policy::PolicySet,
    enforcer: &mut Enforcer,
    limit: &mut ExportLimit,
    dialect: Dialect,
) -> Result<(), &'static str> {
    let policy = set
        .get(&lease.policy)
        .ok_or("pgid: the lease's policy was removed")?;
    let masks = session_masks(p, policy, lease)
        .await
        .map_err(|()| MASKS_UNRESOLVED)?;
    limit.set_limits(policy.guardrails.max_rows, policy.guardrails.max_bytes);
    enforcer
        .reconfigure(
            Reconfigure {
                rules: policy.guardrails.clone(),
                audit: policy.audit,
                masks,
                approvals: policy.approvals.clone(),
            },
            dialect,
        )
        .await;
    tracing::info!(lease = %lease.id, policy = %policy.name, "session follows the reloaded policy");
    Ok(())
}

pub(super) enum Flow {
    Upstream,
    Protocol(String),
    /// The client went away (writing to it failed, or it closed while a statement waited).
    ClientGone,
}

/// Writes to the client and flushes.
pub(super) async fn send(
    client: &mut super::stream::ClientStream,
    bytes: &[u8],
) -> Result<(), Flow> {
    client
        .write_all(bytes)
        .await
        .map_err(|_| Flow::ClientGone)?;
    client.flush().await.map_err(|_| Flow::ClientGone)
}

/// Reads more from the client, unless whole messages are buffered already (a client may send
/// its next messages while a statement waits for approval).
async fn more_from_client(
    frames: &mut super::wire::framing::Frames,
    client: &mut super::stream::ClientStream,
) -> Result<(), super::wire::WireError> {
    if matches!(frame_at(&frames.buf, 0, MAX_MESSAGE_BYTES), Ok(Some(_))) {
        return Ok(());
    }
    frames.fill(client).await
}

/// Whether the server reads string literals with backslash escapes.
fn dialect(params: &[(String, String)]) -> Dialect {
    let off = params
        .iter()
        .any(|(k, v)| k == "standard_conforming_strings" && v == "off");
    Dialect {
        backslash_escapes: off,
    }
}

/// Judges and forwards the client's complete messages, their decision records durable first.
/// `Ok(false)` on Terminate.
#[allow(clippy::too_many_arguments)]
async fn client_to_server(
    buf: &mut BytesMut,
    upstream: &mut Upstream,
    client: &mut super::stream::ClientStream,
    pending: &mut i64,
    status: u8,
    enforcer: Option<&mut Enforcer>,
    audit: &AuditLog,
    approver: &Approver<'_>,
) -> Result<bool, Flow> {
    // Nothing in flight and no transaction open: pgid may use the connection in between.
    let idle = *pending == 0 && status == b'I' && upstream.frames.buf.is_empty();
    let mut end = 0;
    let mut terminate = false;
    loop {
        match frame_at(buf, end, MAX_MESSAGE_BYTES) {
            Ok(Some((tag, total))) => {
                match tag {
                    b'X' => {
                        terminate = true;
                        break;
                    }
                    b'Q' | b'S' | b'F' => *pending += 1,
                    _ => {}
                }
                end += total;
            }
            Ok(None) => break,
            Err(e) => return Err(Flow::Protocol(e.to_string())),
        }
    }
    if end > 0 {
        let chunk = buf.split_to(end);
        let replaced = match enforcer {
            None => None,
            Some(enforcer) => {
                let d = dialect(&upstream.params);
                let mut decided = HashMap::new();
                let mut judged = enforcer
                    .client_frames(&chunk, d, false, &decided)
                    .await
                    .map_err(Flow::Protocol)?;
                if !judged.holds.is_empty() {
                    // Nothing of this batch goes on until its held statements are decided;
                    // then it is judged again with those decisions.
                    let _ = enforcer.rewind(&judged);
                    for hold in &judged.holds {
                        let mut io = Io {
                            client: &mut *client,
                            incoming: &mut *buf,
                            audit,
                            idle: idle.then_some(&mut *upstream),
                        };
                        let verdict = approver.resolve(hold, &mut io).await?;
                        decided.insert(hold.message, verdict);
                    }
                    judged = enforcer
                        .client_frames(&chunk, d, false, &decided)
                        .await
                        .map_err(Flow::Protocol)?;
                }
                let records = std::mem::take(&mut judged.records);
                if let Err(e) = audit.record_lines(records).await {
                    tracing::error!(error = %e, "cannot record statements; refusing them");
                    for record in enforcer.rewind(&judged) {
                        audit.submit(record);
                    }
                    judged = enforcer
                        .client_frames(&chunk, d, true, &decided)
                        .await
                        .map_err(Flow::Protocol)?;
                }
                enforcer.forwarding(&judged);
                judged.frames
            }
        };
        let bytes: &[u8] = replaced.as_deref().unwrap_or(&chunk);
        upstream
            .stream
            .write_all(bytes)
            .await
            .map_err(|_| Flow::Upstream)?;
        upstream.stream.flush().await.map_err(|_| Flow::Upstream)?;
    }
    if terminate {
        buf.clear();
        return Ok(false);
    }
    Ok(true)
}

/// Forwards the server's complete messages, noting ReadyForQuery and ParameterStatus, turning
/// stand-in errors into pgid's refusals, and enforcing the export limits.
struct Relay<'a> {
    pending: &'a mut i64,
    status: &'a mut u8,
    enforcer: Option<&'a mut Enforcer>,
    limit: &'a mut ExportLimit,
    cancel: &'a CancelTarget,
    audit: &'a AuditLog,
}

async fn server_to_client(
    upstream: &mut Upstream,
    client: &mut super::stream::ClientStream,
    relay: Relay<'_>,
) -> Result<(), Flow> {
    let Relay {
        pending,
        status,
        mut enforcer,
        limit,
        cancel,
        audit,
    } = relay;
    let mut end = 0;
    // Built only once a message is dropped or replaced; until then the bytes go out as they came.
    let mut out: Option<BytesMut> = None;
    loop {
        let (tag, total) = match frame_at(&upstream.frames.buf, end, MAX_MESSAGE_BYTES) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return Err(Flow::Upstream),
        };
        match tag {
            b'Z' if total == 6 => {
                *pending = (*pending - 1).max(0);
                *status = upstream.frames.buf[end + 5];
                if let Some(e) = enforcer.as_mut() {
                    e.ready_for_query();
                }
            }
            b'S' => {
                if let Ok((k, v)) =
                    backend::parse_parameter_status(&upstream.frames.buf[end + 5..end + total])
                {
                    upstream.set_param(k, v);
                }
            }
            _ => {}
        }
        let frame = &upstream.frames.buf[end..end + total];
        let (mut action, cancel_now) = limit.on_message(tag, total);
        if cancel_now {
            let t = cancel.clone();
            tokio::spawn(async move { super::cancel::send(&t).await });
        }
        if let Some(enforcer) = enforcer.as_mut() {
            let limited = matches!(action, Action::Replace(_)).then_some(LIMIT_SQLSTATE);
            if tag == b'E' && action == Action::Pass {
                if let Some(err) = enforcer.refusal_for(&frame[5..]) {
                    action = Action::Replace(err);
                }
            }
            if action == Action::Pass {
                action = enforcer.mask_message(tag, &frame[5..]);
            }
            for record in enforcer.server_message(tag, &frame[5..], limited) {
                audit.submit(record);
            }
        }
        match action {
            Action::Pass => {
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(frame);
                }
            }
            Action::Drop => {
                out.get_or_insert_with(|| BytesMut::from(&upstream.frames.buf[..end]));
            }
            Action::Replace(bytes) => {
                out.get_or_insert_with(|| BytesMut::from(&upstream.frames.buf[..end]))
                    .extend_from_slice(&bytes);
            }
        }
        end += total;
    }
    if end > 0 {
        let chunk = upstream.frames.buf.split_to(end);
        let bytes: &[u8] = out.as_deref().unwrap_or(&chunk);
        if !bytes.is_empty() {
            send(client, bytes).await?;
        }
    }
    Ok(())
}
