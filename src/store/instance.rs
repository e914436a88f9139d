//! This process's liveness, as other pgid instances see it: a session-level advisory lock held on
//! a dedicated connection for as long as the process lives. Lease intent rows carry the instance
//! id, so a reaper can tell a lease being created right now from one whose creator crashed.
//!
//! The same connection LISTENs for the other instances' events. When it drops (the state
//! database restarted, a network failure, a silent peer caught by the heartbeat) it is made
//! again with backoff: LISTEN first, then the lock under the *same* id (the lease rows this
//! instance wrote name it), then `on_reconnect` so the caller re-reads what it may have missed.
//! [`InstanceStatus`] says meanwhile that this instance cannot serve correctly (`/readyz`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::StoreError;

/// First key of pgid's instance advisory locks (the second is the instance id).
pub const INSTANCE_LOCK_SPACE: i32 = 0x7067_6964;
/// LISTEN/NOTIFY channel carrying lease changes between instances.
pub const LEASE_EVENTS_CHANNEL: &str = "pgid_lease_events";
/// Channel announcing that an instance reloaded its policies (the others reload their own files).
pub const POLICY_EVENTS_CHANNEL: &str = "pgid_policy_events";
/// Channel carrying cancel requests to the instance that owns the session, and its answers.
pub const CANCEL_EVENTS_CHANNEL: &str = "pgid_cancel_events";

/// How often the lock connection proves it is alive (a peer that vanished without a FIN).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest a heartbeat may take before the connection counts as lost.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait between reconnection attempts (doubling in between).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Handles a notification: (channel, payload).
pub type OnEvent = Arc<dyn Fn(&str, &str) + Send + Sync>;
/// Called after each reconnection, once the lock and the LISTENs are back.
pub type OnReconnect = Arc<dyn Fn() + Send + Sync>;

/// Whether the lock and the listener are up, and why not.
#[derive(Default)]
pub struct InstanceStatus {
    up: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl InstanceStatus {
    /// `None` while the lock is held and events arrive; the reason otherwise.
    pub fn problem(&self) -> Option<String> {
        if self.up.load(Ordering::SeqCst) {
            return None;
        }
        Some(
            self.problem
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| "instance lock and event listener are down".into()),
        )
    }

    fn set_up(&self) {
        *self.problem.lock().unwrap() = None;
        self.up.store(true, Ordering::SeqCst);
    }

    fn set_down(&self, why: String) {
        self.up.store(false, Ordering::SeqCst);
        *self.problem.lock().unwrap() = Some(why);
    }
}

pub struct InstanceLock {
    pub id: i32,
    pub status: Arc<InstanceStatus>,
    /// Stops the connection's supervisor (and so releases the lock) when the instance goes.
    _stop: DropGuard,
}

struct Connector {
    config: tokio_postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    on_event: OnEvent,
}

impl Connector {
    /// A new connection that LISTENs on every channel; resolves `ended` when it closes.
    async fn listening(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::oneshot::Receiver<String>,
        ),
        StoreError,
    > {
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let on_event = self.on_event.clone();
        let client = match &self.tls {
            Some(cfg) => {
                let mut config = self.config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, conn) = config
                    .connect(crate::postgres_tls::RustlsConnect(cfg.clone()))
                    .await?;
                tokio::spawn(listen(conn, on_event, ended_tx));
                client
            }
            None => {
                let (client, conn) = self.config.connect(NoTls).await?;
                tokio::spawn(listen(conn, on_event, ended_tx));
                client
            }
        };
        client
            .batch_execute(&format!(
                "LISTEN {LEASE_EVENTS_CHANNEL}; LISTEN {}; LISTEN {POLICY_EVENTS_CHANNEL}; \
                 LISTEN {CANCEL_EVENTS_CHANNEL}",
                super::APPROVAL_EVENTS_CHANNEL
            ))
            .await?;
        Ok((client, ended))
    }
}

async fn try_lock(client: &tokio_postgres::Client, id: i32) -> Result<bool, StoreError> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&INSTANCE_LOCK_SPACE, &id],
        )
        .await?
        .get(0))
}

/// Drives the lock's connection, handing each notification to `on_event`; says why it ended.
async fn listen<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    on_event: OnEvent,
    ended: tokio::sync::oneshot::Sender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    let why = loop {
        match messages.next().await {
            Some(Ok(AsyncMessage::Notification(n))) => on_event(n.channel(), n.payload()),
            Some(Ok(_)) => {}
            Some(Err(e)) => break crate::database::pg_message(&e),
            None => break "closed by the server".to_string(),
        }
    };
    let _ = ended.send(why);
}

impl InstanceLock {
    /// Takes the lock under a fresh id and listens for the other instances' events; keeps both
    /// up for as long as the returned value lives.
    pub async fn acquire(
        config: &tokio_postgres::Config,
        tls: Option<Arc<rustls::ClientConfig>>,
        on_event: OnEvent,
        on_reconnect: OnReconnect,
    ) -> Result<InstanceLock, StoreError> {
        let connector = Connector {
            config: config.clone(),
            tls,
            on_event,
        };
        let (client, ended) = connector.listening().await?;
        let id = loop {
            // Ids are positive so they map to an oid unchanged.
            let id: i32 = rand::thread_rng().gen_range(1..i32::MAX);
            if try_lock(&client, id).await? {
                break id;
            }
        };
        let status = Arc::new(InstanceStatus::default());
        status.set_up();
        let stop = CancellationToken::new();
        tokio::spawn(supervise(
            connector,
            id,
            (client, ended),
            status.clone(),
            on_reconnect,
            stop.clone(),
        ));
        Ok(InstanceLock {
            id,
            status,
            _stop: stop.drop_guard(),
        })
    }
}

/// Keeps the connection up: watches it, and makes it again with backoff when it is lost.
async fn supervise(
    connector: Connector,
    id: i32,
    first: (
        tokio_postgres::Client,
        tokio::sync::oneshot::Receiver<String>,
    ),
    status: Arc<InstanceStatus>,
    on_reconnect: OnReconnect,
    stop: CancellationToken,
) {
    let mut current = Some(first);
    let mut backoff = BACKOFF_FIRST;
    loop {
        if let Some((client, ended)) = current.take() {
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                why = watch(&client, ended) => why,
            };
            drop(client);
            tracing::error!(instance = id, reason = %why, "instance lock connection lost; events from other instances stop until it is back");
            status.set_down(format!("instance lock connection lost: {why}"));
            backoff = BACKOFF_FIRST;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        let (client, ended) = match connector.listening().await {
            Ok(c) => c,
            Err(e) => {
                status.set_down(format!("state database unreachable: {e}"));
                tracing::debug!(error = %crate::errors::Chain(&e), "instance lock: reconnecting failed");
                continue;
            }
        };
        match try_lock(&client, id).await {
            Ok(true) => {}
            Ok(false) => {
                // The old session may linger at the server until it notices the loss; a
                // stranger that took this id meanwhile keeps it, and this instance stays unready.
                status.set_down(format!(
                    "instance id {id} is still locked by another session; waiting for it"
                ));
                tracing::warn!(
                    instance = id,
                    "instance id still locked elsewhere; retrying"
                );
                continue;
            }
            Err(e) => {
                status.set_down(format!("state database: {e}"));
                continue;
            }
        }
        tracing::info!(instance = id, "instance lock and event listener are back");
        status.set_up();
        on_reconnect();
        current = Some((client, ended));
    }
}

/// Resolves with the reason once the connection is lost: closed, or a heartbeat failed.
async fn watch(
    client: &tokio_postgres::Client,
    mut ended: tokio::sync::oneshot::Receiver<String>,
) -> String {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            why = &mut ended => return why.unwrap_or_else(|_| "closed".into()),
            _ = beat.tick() => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return crate::database::pg_message(&e),
                    Err(_) => return "heartbeat timed out".into(),
                }
            }
        }
    }
}
