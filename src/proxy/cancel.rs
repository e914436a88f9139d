//! CancelRequest: clients get the real pid of the backend their session is bound to (so
//! NotificationResponse pids, `pg_backend_pid()` and `pg_terminate_backend` agree with what a direct
//! connection shows) with a secret of pgid's own, drawn afresh for every client session; a cancel
//! for that key is forwarded to the backend with the backend's real key. An upstream connection
//! reused by a later session keeps its pid but gets a new secret, and the key of the session that
//! ended is gone, so a late cancel from an earlier client never reaches a later client's statement.
//! Keys are unique per instance even where two upstream servers reuse one pid. A cancel request
//! can still be on its way to the server when its session ends (the server may be slow to take
//! it): an upstream connection whose session asked for a cancel — the client, or pgid for an
//! export limit — is therefore closed at the session's end, never pooled for the next client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::upstream::connect_socket;
use crate::database::Upstream as UpstreamAddr;

#[derive(Clone)]
pub struct CancelTarget {
    pub addr: UpstreamAddr,
    pub pid: i32,
    pub secret: i32,
}

/// A session's cancel key → where its cancels go, its cancel signal, and whether one was asked.
type Sessions = HashMap<(i32, i32), (CancelTarget, Arc<Notify>, Arc<AtomicBool>)>;

#[derive(Default)]
pub struct CancelMap {
    map: Mutex<Sessions>,
}

/// Removes the session's key when the session ends.
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
    /// Signalled by every CancelRequest for this session (a statement pgid holds — waiting for
    /// approval — is withdrawn by it).
    pub cancelled: Arc<Notify>,
    /// Set (under the map's lock) by every CancelRequest for this session that pgid forwards.
    requested: Arc<AtomicBool>,
    map: Arc<CancelMap>,
}

impl CancelKey {
    /// Whether a cancel was sent upstream for this session: it may reach the backend late, so the
    /// connection must not serve another client. Read after the key is dropped, it is final: a
    /// CancelRequest either found the key (and set this first) or finds nothing.
    pub fn requested(&self) -> Arc<AtomicBool> {
        self.requested.clone()
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.map
            .map
            .lock()
            .unwrap()
            .remove(&(self.pid, self.secret));
    }
}

impl CancelMap {
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelKey {
        let mut rng = rand::thread_rng();
        let mut map = self.map.lock().unwrap();
        loop {
            let key = (target.pid, rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key) {
                let cancelled = Arc::new(Notify::new());
                let requested = Arc::new(AtomicBool::new(false));
                e.insert((target, cancelled.clone(), requested.clone()));
                return CancelKey {
                    pid: key.0,
                    secret: key.1,
                    cancelled,
                    requested,
                    map: self.clone(),
                };
            }
        }
    }

    /// Forwards a cancel; unknown keys are ignored silently, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = self
            .map
            .lock()
            .unwrap()
            .get(&(pid, secret))
            .map(|(t, c, r)| {
                r.store(true, Ordering::SeqCst);
                (t.clone(), c.clone())
            });
        if let Some((t, cancelled)) = target {
            cancelled.notify_one();
            send(&t).await;
        }
    }
}

/// Asks the upstream backend to cancel what it is running (a CancelRequest with its own key),
/// and returns once the server has closed the request's connection: it signals the backend
/// before it closes, so a statement sent after this returns is not the one cancelled (a
/// backend that is between statements when the signal arrives ignores it).
pub async fn send(t: &CancelTarget) {
    let request = async {
        let mut s = connect_socket(&t.addr).await?;
        s.write_all(&super::wire::frontend::cancel_request(t.pid, t.secret))
            .await?;
        s.flush().await?;
        let mut rest = [0u8; 64];
        while s.read(&mut rest).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(CANCEL_TIMEOUT, request).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot send a cancel request upstream"),
        Err(_) => tracing::warn!("the server did not close a cancel request's connection in time"),
    }
}

/// Longest pgid waits for the server to take a cancel request.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: i32) -> CancelTarget {
        CancelTarget {
            addr: UpstreamAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            pid,
            secret: 7,
        }
    }

    #[test]
    fn clients_get_the_backends_pid_and_a_secret_of_each_sessions_own() {
        let map = Arc::new(CancelMap::default());
        let first = map.register(target(4242));
        assert_eq!(first.pid, 4242, "the real backend pid");
        drop(first);
        assert!(
            map.map.lock().unwrap().is_empty(),
            "an ended session's key is gone"
        );
        // The same backend, reused by the next session: same pid, another secret.
        let keys: Vec<CancelKey> = (0..64).map(|_| map.register(target(4242))).collect();
        assert!(keys.iter().all(|k| k.pid == 4242));
        let secrets: std::collections::HashSet<i32> = keys.iter().map(|k| k.secret).collect();
        assert_eq!(secrets.len(), keys.len(), "keys never collide");
    }
}
