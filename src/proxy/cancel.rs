//! CancelRequest: clients get pgid's own (pid, secret) pair; a cancel for it is forwarded to the
//! upstream backend the session is bound to, with that backend's real key.

use std::collections::HashMap;
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

/// A session's cancel key → where its cancels go, and its cancel signal.
type Sessions = HashMap<(i32, i32), (CancelTarget, Arc<Notify>)>;

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
    map: Arc<CancelMap>,
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
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key) {
                let cancelled = Arc::new(Notify::new());
                e.insert((target, cancelled.clone()));
                return CancelKey {
                    pid: key.0,
                    secret: key.1,
                    cancelled,
                    map: self.clone(),
                };
            }
        }
    }

    /// Forwards a cancel; unknown keys are ignored silently, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = self.map.lock().unwrap().get(&(pid, secret)).cloned();
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
