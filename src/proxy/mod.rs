//! The wire proxy (DESIGN §7): clients connect here with a lease's client secret (or a JWT over
//! TLS); pgid logs in upstream as the lease's role with the derived database password and relays
//! the session, ending it when the lease expires or is revoked.
//!
//! `wire` is the protocol without I/O; `scram` both SCRAM sides; `handshake` a client's way in;
//! `upstream` pgid's login to Postgres; `pool` idle upstream reuse; `session` the I/O loop;
//! `inspect` the session state machine that judges what goes through it; `token_leases` the
//! leases of tokens presented as the password, reused per token; `cancel` CancelRequest
//! forwarding; `stream` the socket types; `estimate` and `statistics` the planner's estimate for
//! `min_rows` and whether it can be trusted.

mod approver;
pub mod cancel;
pub mod cancel_relay;
pub mod catalog;
pub mod estimate;
pub mod handshake;
pub mod inspect;
pub mod limits;
pub mod masking;
pub mod pool;
pub mod relations;
pub mod scram;
pub mod session;
pub mod statistics;
pub mod stream;
pub mod token_leases;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ProxyConfig;
use crate::identity::Verifier;
use crate::policy::PolicySet;
use crate::roles::Leases;

/// Everything a connection needs. Shared behind an `Arc`.
pub struct Proxy {
    pub leases: Arc<Leases>,
    pub verifier: Arc<Verifier>,
    pub policies: Arc<RwLock<Arc<PolicySet>>>,
    /// Bumped by each reload: a session compares it per batch (one load, no shared write).
    pub policy_generation: Arc<std::sync::atomic::AtomicU64>,
    /// Server TLS for clients; `None` answers SSLRequest with `N`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `tls-server-end-point` of that certificate: SCRAM-SHA-256-PLUS is offered over TLS.
    pub tls_end_point: Option<Vec<u8>>,
    pub settings: ProxyConfig,
    pub cancels: Arc<cancel::CancelMap>,
    pub pool: pool::Pool,
    pub salts: upstream::SaltCache,
    /// Leases of tokens presented as the password, for the same token's next connections.
    pub token_leases: token_leases::TokenLeases,
    /// Statement analysis off the async threads, cached by text.
    pub analyzer: Arc<crate::sql::Analyzer>,
    /// Policies' masked columns resolved in their databases.
    pub mask_catalog: catalog::MaskCatalog,
    /// Approval requests (statements held for a reviewer).
    pub approvals: Arc<crate::store::Approvals>,
    pub approval_waits: Arc<crate::store::ApprovalWaits>,
    /// Webhooks told of each new request.
    pub approval_notifier: crate::approval::notify::Notifier,
    /// This instance's id (recorded with the requests it makes).
    pub instance_id: i32,
}

const POOL_REAP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a connection refused at `[proxy] max_connections` gets to read its error.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// The text of that error (SQLSTATE 53300, as Postgres's own "too many clients").
const TOO_MANY_CONNECTIONS: &str = "pgid: too many connections";

/// Accepts connections until `shutdown`; then stops accepting and lets sessions drain (each closes
/// itself at the drain deadline). With `[proxy] max_connections` open, a new connection gets a
/// FATAL 53300 and is closed: unlike the broker's clients, database clients expect an answer,
/// and retry or fail over on this one.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let reaper = {
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(POOL_REAP_INTERVAL) => proxy.pool.reap(),
                }
            }
        })
    };
    let slots = Arc::new(Semaphore::new(proxy.settings.max_connections));
    let metrics = proxy.leases.metrics().clone();
    while let Some((tcp, peer)) = crate::net::accept(&listener, &shutdown, "proxy").await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let n = metrics.proxy_connections_refused.inc();
            // Once per thousand, so a flood does not flood the log as well.
            if n % 1000 == 0 {
                tracing::warn!(
                    max = proxy.settings.max_connections,
                    times = n + 1,
                    %peer,
                    "proxy connections at [proxy] max_connections; new ones are refused"
                );
            }
            tracker.spawn(refuse(tcp));
            continue;
        };
        let open = Open::new(slot, metrics.clone());
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _open = open;
            connection(proxy, tcp, peer, shutdown).await
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    let _ = reaper.await;
}

/// Sends the FATAL, then reads whatever the client sent until it closes (or briefly): closing
/// with its startup packet unread would reset the connection and could lose the error.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    let fatal = wire::backend::fatal(wire::sqlstate::TOO_MANY_CONNECTIONS, TOO_MANY_CONNECTIONS);
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        tcp.write_all(&fatal).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One connection under the cap, counted in the gauge until it closes.
struct Open {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, metrics: Arc<crate::metrics::Metrics>) -> Open {
        metrics.proxy_connections.inc();
        Open {
            _slot: slot,
            metrics,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.proxy_connections.dec();
    }
}

async fn connection(
    proxy: Arc<Proxy>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let outcome = tokio::time::timeout(
        proxy.settings.handshake_timeout,
        handshake::handshake(&proxy, tcp, peer),
    )
    .await;
    match outcome {
        Ok(Ok(handshake::Outcome::Session(est))) => session::run(&proxy, *est, shutdown).await,
        Ok(Ok(handshake::Outcome::Done)) => {}
        Ok(Err(handshake::HandshakeError::Refused(reason))) => {
            tracing::info!(%peer, %reason, "connection refused");
            let mut event =
                crate::audit::Event::new(crate::audit::Kind::SessionRefused).reason(reason);
            event.client_addr = Some(peer.to_string());
            if let Err(e) = proxy.leases.audit().record_refusal(event).await {
                tracing::error!(error = %crate::errors::Chain(&e), "cannot audit a refused connection");
            }
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %crate::errors::Chain(&e), "handshake ended"),
        Err(_) => tracing::debug!(%peer, "handshake timed out"),
    }
}
