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
//!
//! A key is a known pid (pg_stat_activity shows every backend) and a 32-bit secret, as with
//! Postgres itself; guessing is bounded: an address that sent [`GUESSES`] cancel requests for
//! keys nobody holds within a minute has its cancel requests ignored for the rest of that minute,
//! so a guess at a given key takes decades per address.
//!
//! Behind a load balancer a cancel may reach another instance than the session's: a key this
//! instance does not hold is announced to the others ([`super::cancel_relay`]), and a key
//! another instance announces is acted on here if it is one of ours.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::cancel_relay::{CancelEvent, CancelRelay};
use super::upstream::connect_socket;
use crate::database::Upstream as UpstreamAddr;

#[derive(Clone)]
pub struct CancelTarget {
    pub addr: UpstreamAddr,
    pub pid: i32,
    pub secret: i32,
}

/// A session's cancel key → its [`Entry`].
type Sessions = HashMap<(i32, i32), Entry>;

/// What a CancelRequest for one session's key acts on.
#[derive(Clone)]
struct Entry {
    /// Where its cancels go upstream.
    target: CancelTarget,
    /// The session's cancel signal.
    cancelled: Arc<Notify>,
    /// Whether a cancel was forwarded upstream.
    requested: Arc<AtomicBool>,
    /// Whether pgid holds the session's statement (waiting for approval): nothing of it runs
    /// upstream then, so a cancel only withdraws it and is not forwarded — forwarded, the
    /// server's signal could arrive late and hit the stand-in that carries the withdrawal, and
    /// the client would get the server's cancel error instead of pgid's refusal.
    holding: Arc<AtomicBool>,
}

impl Entry {
    /// Signals the session; returns where to forward the cancel, unless pgid holds the statement.
    /// Called under the map's lock, so `requested` is final once the key is gone.
    fn signal(&self) -> Option<CancelTarget> {
        self.cancelled.notify_one();
        if self.holding.load(Ordering::SeqCst) {
            return None;
        }
        self.requested.store(true, Ordering::SeqCst);
        Some(self.target.clone())
    }
}

/// Cancel requests for unknown keys an address may send per minute.
pub const GUESSES: u32 = 100;
const GUESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Default)]
pub struct CancelMap {
    map: Mutex<Sessions>,
    /// Per source address: when its window started, and its unknown keys in it.
    guesses: Mutex<HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
    /// Where keys held elsewhere are asked for (several instances share the state database).
    relay: std::sync::OnceLock<CancelRelay>,
    /// Cancels this instance announced to the others, and announced cancels it acted on.
    pub routed_out: AtomicU64,
    pub routed_in: AtomicU64,
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
    /// Set while pgid holds the session's statement for approval ([`CancelKey::hold`]).
    holding: Arc<AtomicBool>,
    map: Arc<CancelMap>,
}

/// While alive, a CancelRequest for the session withdraws its held statement and is not
/// forwarded upstream (where nothing of the session runs).
pub struct Holding(Arc<AtomicBool>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl CancelKey {
    /// Whether a cancel was sent upstream for this session: it may reach the backend late, so the
    /// connection must not serve another client. Read after the key is dropped, it is final: a
    /// CancelRequest either found the key (and set this first) or finds nothing.
    pub fn requested(&self) -> Arc<AtomicBool> {
        self.requested.clone()
    }

    /// Marks the session's statement as held by pgid until the guard drops.
    pub fn hold(&self) -> Holding {
        self.holding.store(true, Ordering::SeqCst);
        Holding(self.holding.clone())
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
                let entry = Entry {
                    target,
                    cancelled: Arc::new(Notify::new()),
                    requested: Arc::new(AtomicBool::new(false)),
                    holding: Arc::new(AtomicBool::new(false)),
                };
                e.insert(entry.clone());
                return CancelKey {
                    pid: key.0,
                    secret: key.1,
                    cancelled: entry.cancelled,
                    requested: entry.requested,
                    holding: entry.holding,
                    map: self.clone(),
                };
            }
        }
    }

    /// Routes cancels for keys this instance does not hold through `relay` (set once).
    pub fn route_through(&self, relay: CancelRelay) {
        let _ = self.relay.set(relay);
    }

    /// Whether a session of this instance has a key with this pid (tests: who owns a session).
    pub fn holds_pid(&self, pid: i32) -> bool {
        self.map.lock().unwrap().keys().any(|(p, _)| *p == pid)
    }

    /// Forwards a cancel; unknown keys are ignored silently, as Postgres does (announced to the
    /// other instances first, when there are any).
    pub async fn cancel(&self, pid: i32, secret: i32, from: std::net::IpAddr) {
        if !self.may_try(from) {
            tracing::warn!(%from, "cancel requests ignored: too many for unknown keys");
            return;
        }
        let entry = self
            .map
            .lock()
            .unwrap()
            .get(&(pid, secret))
            .map(|e| e.signal());
        match entry {
            Some(Some(t)) => send(&t).await,
            Some(None) => {}
            None => {
                // Charged now, refunded when an owner answers.
                self.guessed(from);
                if let Some(relay) = self.relay.get() {
                    self.routed_out.fetch_add(1, Ordering::Relaxed);
                    relay.publish(&relay.ask(pid, secret, from)).await;
                }
            }
        }
    }

    /// An event on the cancel channel, its seal checked: a request for one of this instance's
    /// keys is acted on and answered; an answer to this instance's request refunds the guess.
    pub fn on_event(self: &Arc<Self>, body: &str) {
        let Some(relay) = self.relay.get() else {
            return;
        };
        match CancelEvent::decode(body) {
            Some(CancelEvent::Ask {
                origin,
                nonce,
                sent,
                pid,
                tag,
            }) => {
                let map = self.map.lock().unwrap();
                let Some(entry) = map
                    .iter()
                    .filter(|((p, _), _)| *p == pid)
                    .find(|((_, secret), _)| relay.matches(origin, nonce, pid, *secret, &tag))
                    .map(|(_, e)| e)
                else {
                    return;
                };
                // Checked after the match, so a stranger's replay cannot fill the nonce memory.
                if !relay.admit(origin, nonce, sent) {
                    return;
                }
                let forward = entry.signal();
                drop(map);
                self.routed_in.fetch_add(1, Ordering::Relaxed);
                let map = self.clone();
                tokio::spawn(async move {
                    if let Some(target) = forward {
                        send(&target).await;
                    }
                    if let Some(relay) = map.relay.get() {
                        relay
                            .publish(&CancelEvent::Done { origin, nonce }.encode())
                            .await;
                    }
                });
            }
            Some(CancelEvent::Done { origin, nonce }) if origin == relay.instance => {
                if let Some(from) = relay.answered(nonce) {
                    self.refund(from);
                }
            }
            _ => {}
        }
    }

    /// An announced key turned out to be held by another instance: not a guess.
    fn refund(&self, from: std::net::IpAddr) {
        if let Some((_, n)) = self.guesses.lock().unwrap().get_mut(&from) {
            *n = n.saturating_sub(1);
        }
    }

    /// Whether `from` is within its budget of unknown keys.
    fn may_try(&self, from: std::net::IpAddr) -> bool {
        let g = self.guesses.lock().unwrap();
        match g.get(&from) {
            Some((since, n)) if since.elapsed() < GUESS_WINDOW => *n < GUESSES,
            _ => true,
        }
    }

    fn guessed(&self, from: std::net::IpAddr) {
        let mut g = self.guesses.lock().unwrap();
        if g.len() > 100_000 {
            g.retain(|_, (since, _)| since.elapsed() < GUESS_WINDOW);
        }
        let e = g.entry(from).or_insert((std::time::Instant::now(), 0));
        if e.0.elapsed() >= GUESS_WINDOW {
            *e = (std::time::Instant::now(), 0);
        }
        e.1 += 1;
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
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::errors::Chain(&e), "cannot send a cancel request upstream")
        }
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

    #[tokio::test]
    async fn a_cancel_for_a_held_statement_withdraws_it_and_is_not_forwarded() {
        let map = Arc::new(CancelMap::default());
        let mut t = target(78);
        // Nothing listens there: a forwarded cancel fails at once.
        t.addr = UpstreamAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let key = map.register(t);
        let client: std::net::IpAddr = "192.0.2.11".parse().unwrap();
        let signalled = key.cancelled.notified();
        tokio::pin!(signalled);
        let held = key.hold();
        map.cancel(key.pid, key.secret, client).await;
        assert!(
            futures::poll!(signalled.as_mut()).is_ready(),
            "the wait is signalled"
        );
        assert!(!key.requested().load(Ordering::SeqCst), "not forwarded");
        // Once the statement is no longer held, a cancel goes upstream again.
        drop(held);
        map.cancel(key.pid, key.secret, client).await;
        assert!(key.requested().load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn guessing_keys_is_bounded_per_address() {
        let map = Arc::new(CancelMap::default());
        let mut t = target(77);
        // Nothing listens there: a forwarded cancel fails at once.
        t.addr = UpstreamAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let key = map.register(t);
        let requested = |map: &CancelMap| {
            map.map.lock().unwrap()[&(key.pid, key.secret)]
                .requested
                .load(Ordering::SeqCst)
        };
        let guesser: std::net::IpAddr = "192.0.2.9".parse().unwrap();
        for n in 0..GUESSES {
            let wrong = key.secret.wrapping_add(1 + n as i32);
            map.cancel(key.pid, wrong, guesser).await;
        }
        // Out of guesses: even the right key is not tried from there this minute.
        map.cancel(key.pid, key.secret, guesser).await;
        assert!(!requested(&map));
        // Another address is unaffected.
        map.cancel(key.pid, key.secret, "192.0.2.10".parse().unwrap())
            .await;
        assert!(requested(&map));
    }
}
