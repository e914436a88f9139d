//! A client's session after login: the I/O loop. Client messages are read under size limits,
//! judged by the session's state machine ([`super::inspect`]), their decision records made
//! durable, then forwarded; server messages are matched, masked and limited by it, then relayed.
//! The session ends when the client leaves, the lease ends, or pgid shuts down.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::approver::{Approver, Io};
use super::cancel::CancelTarget;
use super::handshake::Established;
use super::inspect::{Fatal, Inspector, Judged, Rules};
use super::limits::Action;
use super::stream::{send, Flow};
use super::upstream::Upstream;
use super::wire::backend::{self, Backend, TransactionStatus};
use super::wire::framing::{frame_at, Batch, ClientFrames, Frame, Limits, MAX_MESSAGE_BYTES};
use super::wire::sqlstate;
use super::Proxy;
use crate::audit::statement::SessionRecords;
use crate::audit::{AuditLog, Event, Kind};
use crate::guard::Verdict;
use crate::roles::EndReason;

enum End {
    /// The client left (Terminate or closed socket).
    ClientGone,
    /// pgid ends the session and tells the client why.
    Fatal(&'static str, String),
    /// The upstream closed or broke.
    UpstreamGone,
}

/// A relay that checks nothing (`[proxy] inspect = false`): it only knows when the connection is
/// idle, to reuse it.
#[derive(Default)]
struct Plain {
    /// Requests (Query, Sync, FunctionCall) not yet answered by ReadyForQuery.
    pending: i64,
    status: Option<TransactionStatus>,
}

/// What judges a session's messages: the state machine, or nothing.
enum Judge {
    Inspect(Box<Inspector>),
    Plain(Plain),
}

impl Judge {
    fn idle(&self) -> bool {
        match self {
            Judge::Inspect(i) => i.idle(),
            Judge::Plain(p) => {
                p.pending == 0
                    && p.status.unwrap_or(TransactionStatus::Idle) == TransactionStatus::Idle
            }
        }
    }
}

fn limits(p: &Proxy, max_statement_bytes: usize) -> Limits {
    Limits {
        statement: max_statement_bytes,
        bind: p.settings.max_bind_bytes,
        copy_data: p.settings.max_copy_data_bytes,
    }
}

pub async fn run(p: &Proxy, est: Established, shutdown: CancellationToken) {
    let Established {
        mut client,
        frames,
        mut upstream,
        lease,
        cancel,
        watch,
        session_id,
        peer,
    } = est;
    // Read before the set: a reload in between is noticed at the first statement.
    let mut policy_generation = p.policy_generation.load(Ordering::Acquire);
    let policy_set = p.policies.read().unwrap().clone();
    // A lease whose policy is gone (removed by a reload) gets no session: its rules are unknown.
    let Some(policy) = policy_set.get(&lease.policy).cloned() else {
        refuse(
            &mut client,
            upstream,
            sqlstate::ADMIN_SHUTDOWN,
            "pgid: the lease's policy no longer exists",
        )
        .await;
        return;
    };
    let mut judge = if p.settings.inspect {
        let masks = match session_masks(p, &policy, &lease).await {
            Ok(m) => m,
            Err(()) => {
                refuse(&mut client, upstream, "58000", MASKS_UNRESOLVED).await;
                return;
            }
        };
        let rules = Rules {
            guardrails: policy.guardrails.clone(),
            audit: policy.audit,
            approvals: policy.approvals.clone(),
            masks,
            relations: session_relations(p, &policy, &lease).await,
        };
        let records = SessionRecords::new(&lease, session_id, &peer.to_string());
        match Inspector::new(
            rules,
            p.leases.metrics().clone(),
            p.analyzer.clone(),
            records,
            &upstream.params,
            &lease.role_name,
        ) {
            Ok(i) => Judge::Inspect(Box::new(i)),
            Err(Fatal(m)) => {
                refuse(&mut client, upstream, sqlstate::FEATURE_NOT_SUPPORTED, &m).await;
                return;
            }
        }
    } else {
        Judge::Plain(Plain::default())
    };
    let caps = match &judge {
        Judge::Inspect(i) => limits(p, i.max_statement_bytes()),
        // A relay that reads nothing refuses nothing: only the protocol's own cap.
        Judge::Plain(_) => Limits {
            statement: MAX_MESSAGE_BYTES,
            bind: MAX_MESSAGE_BYTES,
            copy_data: MAX_MESSAGE_BYTES,
        },
    };
    let mut frames = ClientFrames::new(frames.into_buffer(), caps);
    let metrics = &p.leases.metrics().proxy;
    metrics.sessions.inc();
    let _open = crate::metrics::Open::new(&metrics.sessions_open);
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
    // Set when pgid cancels a statement of the session itself (an export limit).
    let cancel_requested = cancel.requested();
    // Client messages read and not yet judged (the rest of a batch that waits for an answer).
    let mut batch = Batch::default();
    let mut from = 0usize;
    // The queue entry whose answer the rest of the batch waits for.
    let mut waiting: Option<u64> = None;
    // Created once: re-creating timers and waiters per message would cost on every round trip.
    let lease_watch = watch.clone();
    let lease_end = crate::roles::lease_ended(watch);
    tokio::pin!(lease_end);
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    let drain = sleep_until(Instant::now() + std::time::Duration::from_secs(86_400 * 365));
    tokio::pin!(drain);
    let mut draining = false;
    let mut ended: Option<EndReason> = None;

    let end = loop {
        // Messages are at hand to judge (and nothing waits for the server): judge them now,
        // after whatever the server has sent and the lease's end.
        let can_judge = waiting.is_none() && (from < batch.len() || frames.ready());
        tokio::select! {
            biased;
            reason = &mut lease_end => {
                ended = Some(reason);
                break End::Fatal(sqlstate::ADMIN_SHUTDOWN, reason.message().into());
            }
            _ = &mut shutting_down, if !draining => {
                draining = true;
                drain.as_mut().reset(Instant::now() + p.settings.drain_timeout);
                // An idle session has nothing to finish: it ends now.
                if judge.idle() && from >= batch.len() && !frames.ready() {
                    break End::Fatal(sqlstate::ADMIN_SHUTDOWN, "pgid: server shutting down".into());
                }
                continue;
            }
            _ = &mut drain, if draining => break End::Fatal(sqlstate::ADMIN_SHUTDOWN, "pgid: server shutting down".into()),
            r = upstream.frames.fill(&mut upstream.stream) => {
                if r.is_err() {
                    break End::UpstreamGone;
                }
                // A reloaded policy reaches an idle session before what the server sends it
                // unasked (notifications from other sessions), not only at its next statement.
                if let Judge::Inspect(i) = &mut judge {
                    let now = p.policy_generation.load(Ordering::Acquire);
                    if now != policy_generation && i.idle() {
                        policy_generation = now;
                        let current = p.policies.read().unwrap().clone();
                        match reconfigure(p, &lease, &current, i).await {
                            Ok(()) => frames.set_limits(limits(p, i.max_statement_bytes())),
                            Err(m) => break End::Fatal(sqlstate::ADMIN_SHUTDOWN, m.into()),
                        }
                    }
                }
                let Some(target) = cancel_target.as_ref() else { break End::UpstreamGone };
                let sent = &*cancel_requested;
                match server_to_client(&mut upstream, &mut client, &mut judge, (target, sent), &audit, &metrics.bytes_to_client).await {
                    Ok(()) => {}
                    Err(Flow::Upstream) => break End::UpstreamGone,
                    Err(Flow::Fatal(m)) => break End::Fatal(sqlstate::ADMIN_SHUTDOWN, m),
                    Err(Flow::Protocol(_) | Flow::ClientGone) => break End::ClientGone,
                }
                if let (Some(id), Judge::Inspect(i)) = (waiting, &judge) {
                    if i.answered(id) {
                        waiting = None;
                    }
                }
                // Draining: a session ends as soon as what it was running has finished.
                if draining && judge.idle() && from >= batch.len() && !frames.ready() {
                    break End::Fatal(sqlstate::ADMIN_SHUTDOWN, "pgid: server shutting down".into());
                }
                continue;
            }
            r = frames.fill(&mut client), if !can_judge && waiting.is_none() => {
                if r.is_err() {
                    break End::ClientGone;
                }
                continue;
            }
            _ = std::future::ready(()), if can_judge => {}
        }
        if waiting.is_some() {
            continue;
        }
        if from >= batch.len() {
            batch = match frames.batch() {
                Ok(b) => b,
                Err(e) => {
                    break End::Fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("pgid: invalid message from client: {e}"),
                    )
                }
            };
            from = 0;
            if batch.is_empty() {
                continue;
            }
        }
        // A reloaded policy applies from the next statement on.
        if let Judge::Inspect(i) = &mut judge {
            let now = p.policy_generation.load(Ordering::Acquire);
            if now != policy_generation {
                policy_generation = now;
                let current = p.policies.read().unwrap().clone();
                match reconfigure(p, &lease, &current, i).await {
                    Ok(()) => frames.set_limits(limits(p, i.max_statement_bytes())),
                    Err(m) => break End::Fatal(sqlstate::ADMIN_SHUTDOWN, m.into()),
                }
            }
        }
        let approver = Approver {
            proxy: p,
            lease: &lease,
            session_id,
            cancel: &cancel,
            lease_watch: &lease_watch,
            shutdown: &shutdown,
        };
        let step = Forward {
            batch: &batch,
            from,
            upstream: &mut upstream,
            client: &mut client,
            frames: &mut frames,
            audit: &audit,
            approver: &approver,
        };
        match client_to_server(step, &mut judge).await {
            Ok(Progress {
                consumed,
                wait_for,
                terminate,
            }) => {
                from += consumed;
                waiting = wait_for;
                if terminate {
                    break End::ClientGone;
                }
            }
            Err(Flow::Upstream) => break End::UpstreamGone,
            Err(Flow::Protocol(m)) => {
                break End::Fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("pgid: invalid message from client: {m}"),
                )
            }
            Err(Flow::Fatal(m)) => break End::Fatal(sqlstate::ADMIN_SHUTDOWN, m),
            Err(Flow::ClientGone) => break End::ClientGone,
        }
    };
    // A cancel sent for this session may still reach its backend: never pooled then.
    let cancel_sent = cancel.requested();
    drop(cancel);
    let cancel_sent = cancel_sent.load(Ordering::SeqCst);
    let why = match &end {
        End::ClientGone => "client disconnected".to_string(),
        End::UpstreamGone => "database closed the connection".to_string(),
        End::Fatal(_, m) => m.clone(),
    };
    let mut event = Event::new(Kind::SessionEnd).lease(&lease).reason(why);
    event.session_id = Some(session_id);
    event.client_addr = Some(peer.to_string());
    if let Err(e) = p.leases.audit().record(&event).await {
        tracing::error!(error = %crate::errors::Chain(&e), "cannot audit a session end");
    }
    match end {
        End::ClientGone if judge.idle() && upstream.frames.buf.is_empty() && !cancel_sent => {
            p.pool.give_back(upstream).await;
        }
        End::ClientGone | End::UpstreamGone => {
            super::pool::close(upstream);
            let _ = client.shutdown().await;
        }
        End::Fatal(code, message) => {
            tracing::info!(lease = %lease.id, reason = %message, "closing session");
            let out = match &judge {
                Judge::Inspect(i) => i.fatal(code, &message),
                Judge::Plain(_) => backend::fatal(code, &message),
            };
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

/// Ends a session before it starts, with a FATAL error.
async fn refuse(
    client: &mut super::stream::ClientStream,
    upstream: Upstream,
    code: &str,
    message: &str,
) {
    let _ = client.write_all(&backend::fatal(code, message)).await;
    let _ = client.shutdown().await;
    super::pool::close(upstream);
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

/// What reaches the tables of the policy's approval rules (`None`: no rule names tables).
async fn session_relations(
    p: &Proxy,
    policy: &crate::policy::Policy,
    lease: &crate::store::LeaseRow,
) -> Option<Arc<crate::approval::Relations>> {
    let db = p.leases.databases().get(&lease.database)?;
    super::relations::resolve(policy, &db.pool).await
}

/// Applies the reloaded policy set to a live session; `Err` ends the session with that message.
async fn reconfigure(
    p: &Proxy,
    lease: &crate::store::LeaseRow,
    set: &crate::policy::PolicySet,
    inspector: &mut Inspector,
) -> Result<(), &'static str> {
    let policy = set
        .get(&lease.policy)
        .ok_or("pgid: the lease's policy was removed")?;
    let masks = session_masks(p, policy, lease)
        .await
        .map_err(|()| MASKS_UNRESOLVED)?;
    inspector
        .reconfigure(Rules {
            guardrails: policy.guardrails.clone(),
            audit: policy.audit,
            approvals: policy.approvals.clone(),
            masks,
            relations: session_relations(p, policy, lease).await,
        })
        .await;
    tracing::info!(lease = %lease.id, policy = %policy.name, "session follows the reloaded policy");
    Ok(())
}

/// The part of a batch to judge and forward now, and what it needs.
struct Forward<'a, 'p> {
    batch: &'a Batch,
    from: usize,
    upstream: &'a mut Upstream,
    client: &'a mut super::stream::ClientStream,
    frames: &'a mut ClientFrames,
    audit: &'a AuditLog,
    approver: &'a Approver<'p>,
}

/// How far a batch got.
struct Progress {
    consumed: usize,
    wait_for: Option<u64>,
    terminate: bool,
}

/// Judges and forwards the client's messages `batch[from..]`, their decision records durable
/// first; stops where a message must wait for the server's answers.
async fn client_to_server(f: Forward<'_, '_>, judge: &mut Judge) -> Result<Progress, Flow> {
    let frames = &f.batch.frames[f.from..];
    let inspector = match judge {
        Judge::Plain(plain) => {
            let mut consumed = 0;
            let mut terminate = false;
            for frame in frames {
                if let Frame::Oversized { len, .. } = frame {
                    return Err(Flow::Protocol(format!(
                        "a message of {len} bytes is too large"
                    )));
                }
                if frame.is_terminate() {
                    terminate = true;
                    break;
                }
                if frame.answered_by_ready() {
                    plain.pending += 1;
                }
                consumed += 1;
            }
            write_upstream(
                f.upstream,
                &f.batch.span(f.from, f.from + consumed),
                &f.approver.proxy.leases.metrics().proxy.bytes_to_server,
            )
            .await?;
            return Ok(Progress {
                consumed,
                wait_for: None,
                terminate,
            });
        }
        Judge::Inspect(i) => i,
    };
    let idle = inspector.idle() && f.upstream.frames.buf.is_empty();
    let mut decided = HashMap::new();
    let mut judged = inspector.judge(frames, &decided, false).await;
    if !judged.holds.is_empty() {
        // Nothing of this batch goes on until its held statements are decided; then it is
        // judged again with those decisions.
        let holds = std::mem::take(&mut judged.holds);
        for hold in &holds {
            let mut io = Io {
                client: &mut *f.client,
                incoming: &mut *f.frames,
                audit: f.audit,
                idle: idle.then_some(&mut *f.upstream),
            };
            let verdict: Verdict = f.approver.resolve(hold, &mut io).await?;
            decided.insert(hold.message, verdict);
        }
        // pgid's own estimate may have seen settings reported on the session's connection.
        inspector.settings_reported(&f.upstream.params);
        judged = inspector.judge(frames, &decided, false).await;
    }
    let records = std::mem::take(&mut judged.records);
    if let Err(e) = f.audit.record_lines(records).await {
        tracing::error!(error = %crate::errors::Chain(&e), "cannot record statements; refusing them");
        for record in inspector.not_run(&judged) {
            f.audit.submit(record);
        }
        let failed = judged;
        judged = inspector.judge(frames, &decided, true).await;
        judged.replaces(&failed);
    }
    let progress = Progress {
        consumed: judged.consumed,
        wait_for: judged.wait_for,
        terminate: judged.terminate,
    };
    let protocol_error = judged.protocol_error.take();
    let bytes = forwarded(&judged, f.batch, f.from);
    inspector.commit(judged);
    // Messages the server skips (after an error, until a Sync) are done as soon as they go.
    for record in inspector.outcomes() {
        f.audit.submit(record);
    }
    if !bytes.is_empty() {
        let relayed = &f.approver.proxy.leases.metrics().proxy.bytes_to_server;
        write_upstream(f.upstream, &bytes, relayed).await?;
    }
    if let Some(m) = protocol_error {
        return Err(Flow::Protocol(m));
    }
    // What the rest waits for may be answered already: skipped by the server, nothing comes.
    let wait_for = progress.wait_for.filter(|id| !inspector.answered(*id));
    Ok(Progress {
        wait_for,
        ..progress
    })
}

/// What a judged batch sends upstream.
fn forwarded(judged: &Judged, batch: &Batch, from: usize) -> bytes::Bytes {
    match &judged.out {
        Some(out) => out.clone().freeze(),
        None => batch.span(from, from + judged.consumed),
    }
}

async fn write_upstream(
    upstream: &mut Upstream,
    bytes: &[u8],
    relayed: &Counter,
) -> Result<(), Flow> {
    if bytes.is_empty() {
        return Ok(());
    }
    relayed.inc_by(bytes.len() as u64);
    upstream
        .stream
        .write_all(bytes)
        .await
        .map_err(|_| Flow::Upstream)?;
    upstream.stream.flush().await.map_err(|_| Flow::Upstream)
}

/// Relays the server's complete messages through the session's judge: refusals in place of
/// stand-in errors, export limits, masking; records of completed statements.
async fn server_to_client(
    upstream: &mut Upstream,
    client: &mut super::stream::ClientStream,
    judge: &mut Judge,
    (cancel, sent): (&CancelTarget, &std::sync::atomic::AtomicBool),
    audit: &AuditLog,
    relayed: &Counter,
) -> Result<(), Flow> {
    let mut end = 0;
    // Built only once a message is dropped or replaced; until then the bytes go out as they came.
    let mut out: Option<BytesMut> = None;
    let mut fatal = None;
    loop {
        let (tag, total) = match frame_at(&upstream.frames.buf, end, MAX_MESSAGE_BYTES) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return Err(Flow::Upstream),
        };
        let frame = &upstream.frames.buf[end..end + total];
        let msg = Backend::decode(tag, &frame[5..]).map_err(|_| Flow::Upstream)?;
        if let Backend::ParameterStatus { name, value } = &msg {
            upstream_param(&mut upstream.params, name, value);
        }
        let action = match judge {
            Judge::Plain(plain) => {
                if let Backend::ReadyForQuery(status) = msg {
                    plain.pending = (plain.pending - 1).max(0);
                    plain.status = Some(status);
                }
                Action::Pass
            }
            Judge::Inspect(i) => {
                let answer = i.backend(&msg, total);
                // Sent before anything else goes upstream: a cancel still on its way when the
                // client's next statement arrives would cancel that one instead.
                if answer.cancel {
                    sent.store(true, Ordering::SeqCst);
                    super::cancel::send(cancel).await;
                }
                if let Some(Fatal(m)) = answer.fatal {
                    fatal = Some(m);
                }
                for record in i.outcomes() {
                    audit.submit(record);
                }
                answer.action
            }
        };
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
        if fatal.is_some() {
            break;
        }
    }
    if end > 0 {
        let chunk = upstream.frames.buf.split_to(end);
        let bytes: &[u8] = out.as_deref().unwrap_or(&chunk);
        if !bytes.is_empty() {
            relayed.inc_by(bytes.len() as u64);
            send(client, bytes).await?;
        }
    }
    match fatal {
        Some(m) => Err(Flow::Fatal(m)),
        None => Ok(()),
    }
}

/// Keeps the upstream's reported settings (the pool and pgid's own estimates read them).
fn upstream_param(params: &mut Vec<(String, String)>, name: &[u8], value: &[u8]) {
    let (name, value) = (
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    );
    match params.iter_mut().find(|(k, _)| *k == name) {
        Some(p) => p.1 = value,
        None => params.push((name, value)),
    }
}
