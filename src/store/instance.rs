//! This process's liveness, as other pgid instances see it: a session-level advisory lock held on
//! a dedicated connection for as long as the process lives. Lease intent rows carry the instance
//! id, so a reaper can tell a lease being created right now from one whose creator crashed.

use futures::StreamExt;
use rand::Rng;
use tokio_postgres::{AsyncMessage, NoTls};

use super::StoreError;

/// First key of pgid's instance advisory locks (the second is the instance id).
pub const INSTANCE_LOCK_SPACE: i32 = 0x7067_6964;
/// LISTEN/NOTIFY channel carrying lease changes between instances.
pub const LEASE_EVENTS_CHANNEL: &str = "pgid_lease_events";

pub struct InstanceLock {
    pub id: i32,
    _client: tokio_postgres::Client,
}

/// Drives the lock's connection, handing each notification's payload to `on_event`.
async fn listen<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    on_event: impl Fn(&str, &str) + Send + 'static,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => on_event(n.channel(), n.payload()),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %crate::database::pg_message(&e), "instance lock connection closed; lease events from other instances stop");
                break;
            }
        }
    }
}

impl InstanceLock {
    /// Takes the lock and listens for lease events from other instances on the same connection.
    pub async fn acquire(
        config: &tokio_postgres::Config,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        on_event: impl Fn(&str, &str) + Send + 'static,
    ) -> Result<InstanceLock, StoreError> {
        let client = match tls {
            Some(cfg) => {
                let mut config = config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, conn) = config
                    .connect(crate::postgres_tls::RustlsConnect(cfg))
                    .await?;
                tokio::spawn(listen(conn, on_event));
                client
            }
            None => {
                let (client, conn) = config.connect(NoTls).await?;
                tokio::spawn(listen(conn, on_event));
                client
            }
        };
        client
            .batch_execute(&format!(
                "LISTEN {LEASE_EVENTS_CHANNEL}; LISTEN {}",
                super::APPROVAL_EVENTS_CHANNEL
            ))
            .await?;
        loop {
            // Ids are positive so they map to an oid unchanged.
            let id: i32 = rand::thread_rng().gen_range(1..i32::MAX);
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&INSTANCE_LOCK_SPACE, &id],
                )
                .await?
                .get(0);
            if got {
                return Ok(InstanceLock {
                    id,
                    _client: client,
                });
            }
        }
    }
}
