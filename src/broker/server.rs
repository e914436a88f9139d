//! HTTPS for the broker: rustls in front of the axum router, one task per connection, a
//! handshake deadline, deadlines for a request's headers and body, a cap on connections open at
//! once, and graceful shutdown on cancellation.
//!
//! Bodies are read whole (they are small JSON objects) before the router sees the request, so a
//! client that trickles one is answered 408 and its connection closed at the deadline.
//!
//! The cap keeps the broker's clients from taking the descriptors the proxy needs: at the cap,
//! pgid stops accepting, and new connections wait in the kernel's listen backlog (no descriptor
//! of pgid's) until one closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::ApiError;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections the broker serves at once, how long a request may take to arrive, and
/// where it counts them.
pub struct ConnectionCap {
    pub max: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
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
        let deadlines = Deadlines {
            header: cap.header_timeout,
            body: cap.body_timeout,
            metrics: cap.metrics.clone(),
        };
        tracker.spawn(async move {
            let _open = open;
            let _ = tcp.set_nodelay(true);
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %crate::errors::Chain(&e), "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            serve_connection(stream, peer, router, shutdown, deadlines).await;
        });
    }
    // Closed before the drain: new connections (a balancer's health check) are refused at once
    // instead of waiting unanswered in the backlog.
    drop(listener);
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

/// How long a request's headers and body may take to arrive.
#[derive(Clone)]
struct Deadlines {
    header: Duration,
    body: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The request with its body read whole, or the answer for a body that came too slowly or too
/// large (the connection closes after it: the rest of that body is never read).
async fn buffer_body(
    req: hyper::Request<hyper::body::Incoming>,
    deadlines: &Deadlines,
) -> Result<Request<Body>, Response> {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, super::MAX_BODY_BYTES);
    match tokio::time::timeout(deadlines.body, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are at most {} bytes", super::MAX_BODY_BYTES),
        ))),
        Ok(Err(e)) => Err(closing(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        )))),
        Err(_) => {
            deadlines.metrics.broker_body_timeouts.inc();
            Err(closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within [broker] body_timeout ({} s)",
                    deadlines.body.as_secs_f64()
                ),
            )))
        }
    }
}

fn closing(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    deadlines: Deadlines,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = deadlines.header;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            let deadlines = deadlines.clone();
            async move {
                match buffer_body(req, &deadlines).await {
                    Ok(req) => router.oneshot(req).await,
                    Err(resp) => Ok(resp),
                }
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(%peer, error = %crate::errors::Chain(&e), "broker connection ended"); } }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}
