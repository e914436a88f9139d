//! HTTPS for the broker: rustls in front of the axum router, one task per connection, a
//! handshake deadline, a cap on connections open at once, and graceful shutdown on
//! cancellation.
//!
//! The cap keeps the broker's clients from taking the descriptors the proxy needs: at the cap,
//! pgid stops accepting, and new connections wait in the kernel's listen backlog (no descriptor
//! of pgid's) until one closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections the broker serves at once, and where it counts them.
pub struct ConnectionCap {
    pub max: usize,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    cap: ConnectionCap,
) {
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(cap.max));
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                let n = cap.metrics.broker_connections_capped.inc();
                // Once per thousand, so a flood does not flood the log as well.
                if n % 1000 == 0 {
                    tracing::warn!(
                        max = cap.max,
                        times = n + 1,
                        "broker connections at [broker] max_connections; new ones wait"
                    );
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => s.expect("never closed"),
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let Some((tcp, peer)) = crate::net::accept(&listener, &shutdown, "broker").await else {
            break;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let open = Open::new(slot, cap.metrics.clone());
        tracker.spawn(async move {
            let _open = open;
            let _ = tcp.set_nodelay(true);
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            serve_connection(stream, peer, router, shutdown).await;
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
}

/// One open connection: its slot under the cap, counted in the gauge until it closes.
struct Open {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, metrics: Arc<crate::metrics::Metrics>) -> Open {
        metrics.broker_connections.inc();
        Open {
            _slot: slot,
            metrics,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.broker_connections.dec();
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(TLS_HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(%peer, error = %e, "broker connection ended"); } }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}
