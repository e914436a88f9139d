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

use tokio::net::TcpListener;
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

/// Accepts connections until `shutdown`; then stops accepting and lets sessions drain (each closes
/// itself at the drain deadline).
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
    while let Some((tcp, peer)) = crate::net::accept(&listener, &shutdown, "proxy").await {
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move { connection(proxy, tcp, peer, shutdown).await });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    let _ = reaper.await;
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
                tracing::error!(error = %e, "cannot audit a refused connection");
            }
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "handshake ended"),
        Err(_) => tracing::debug!(%peer, "handshake timed out"),
    }
}
