//! A document pgid fetches from an identity provider and keeps (a key set, provider metadata).
//!
//! Built for a provider that is slow or down: at most one fetch is in flight, and everyone who
//! needs a fetch waits on that one and gets its result, success or failure; after a failure no
//! new fetch starts until a back-off has passed (doubling per consecutive failure), and whoever
//! asks meanwhile is told at once when to retry; a stale copy answers at once while a refresh runs
//! in the background, up to a hard age after which it is no longer used (fail closed: a key the
//! provider removed must not stay trusted for as long as the provider is unreachable). Each fetch
//! runs in a task of its own under one deadline, so a caller that gives up does not cancel it for
//! the others.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;

/// When a kept copy is refreshed, dropped, and how failures are spaced.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A copy older than this is refreshed in the background when it is used.
    pub refresh_after: Duration,
    /// A copy older than this is not used any more: callers wait for a fetch instead.
    pub max_age: Duration,
    /// Deadline of one whole fetch (every request it makes).
    pub fetch_timeout: Duration,
    /// No new fetch for this long after a failure; doubled per consecutive failure.
    pub backoff: Duration,
    /// The longest back-off.
    pub backoff_max: Duration,
}

/// The shortest back-off whatever the configuration says: a failing provider is never retried
/// in a loop.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

impl Timing {
    /// The pause after the `failures`-th consecutive failure.
    pub fn backoff_after(&self, failures: u32) -> Duration {
        let base = self.backoff.max(MIN_BACKOFF);
        let doubled = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.backoff_max.max(base))
    }
}

/// Why no copy could be had: the provider failed (now or recently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// When a new fetch may start.
    pub retry_in: Duration,
}

/// Why [`CachedDocument::refresh`] gave no fresh copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unavailable(Unavailable),
    /// No fetch was in flight and the caller's `may_start` said no.
    Declined,
}

type Outcome<T> = Result<Arc<T>, Unavailable>;
type Fetcher<T> = Arc<dyn Fn() -> BoxFuture<'static, Result<T, String>> + Send + Sync>;

struct State<T> {
    copy: Option<(Arc<T>, Instant)>,
    failures: u32,
    failed_at: Option<Instant>,
    flight: Option<watch::Receiver<Option<Outcome<T>>>>,
}

impl<T> State<T> {
    /// The copy if it may still be used at `now`.
    fn usable(&self, now: Instant, t: &Timing) -> Option<Arc<T>> {
        self.copy
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < t.max_age)
            .map(|(v, _)| v.clone())
    }

    fn stale(&self, now: Instant, t: &Timing) -> bool {
        self.copy
            .as_ref()
            .is_none_or(|(_, at)| now.saturating_duration_since(*at) >= t.refresh_after)
    }

    /// How long until a new fetch may start, if a recent failure says wait.
    fn backing_off(&self, now: Instant, t: &Timing) -> Option<Duration> {
        let at = self.failed_at?;
        let until = at + t.backoff_after(self.failures);
        (now < until).then(|| until - now)
    }
}

/// One document, fetched by `fetcher`, kept and refreshed as the module doc says.
pub struct CachedDocument<T> {
    /// What is fetched, for logs (e.g. `JWKS of https://idp.example.com`).
    what: Arc<str>,
    timing: Timing,
    fetcher: Fetcher<T>,
    state: Arc<Mutex<State<T>>>,
}

impl<T: Send + Sync + 'static> CachedDocument<T> {
    pub fn new<F>(what: impl Into<String>, timing: Timing, fetcher: F) -> CachedDocument<T>
    where
        F: Fn() -> BoxFuture<'static, Result<T, String>> + Send + Sync + 'static,
    {
        CachedDocument {
            what: what.into().into(),
            timing,
            fetcher: Arc::new(fetcher),
            state: Arc::new(Mutex::new(State {
                copy: None,
                failures: 0,
                failed_at: None,
                flight: None,
            })),
        }
    }

    /// The kept copy, at once, without touching the network; a stale one starts a background
    /// refresh (unless one is running or a failure's back-off is not over). `None` when there is
    /// no copy or it is older than `max_age`.
    pub fn current(&self) -> Option<Arc<T>> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        if s.stale(now, &self.timing)
            && s.flight.is_none()
            && s.backing_off(now, &self.timing).is_none()
        {
            self.start(&mut s);
        }
        s.usable(now, &self.timing)
    }

    /// A freshly fetched copy: joins the fetch in flight, or starts one if no failure's back-off
    /// is running and `may_start` agrees (it is asked only then, so a rate limit it keeps counts
    /// real fetches only). During a back-off it answers at once.
    pub async fn refresh(&self, may_start: impl FnOnce() -> bool) -> Result<Arc<T>, Refusal> {
        let mut rx = {
            let now = Instant::now();
            let mut s = self.state.lock().unwrap();
            match &s.flight {
                Some(rx) => rx.clone(),
                None => {
                    if let Some(retry_in) = s.backing_off(now, &self.timing) {
                        return Err(Refusal::Unavailable(Unavailable { retry_in }));
                    }
                    if !may_start() {
                        return Err(Refusal::Declined);
                    }
                    self.start(&mut s)
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for a value"),
            // The fetch task is gone without an answer (the runtime is shutting down).
            Err(_) => Err(Unavailable {
                retry_in: self.timing.backoff_after(1),
            }),
        };
        outcome.map_err(Refusal::Unavailable)
    }

    /// Starts a fetch in a task of its own; its outcome updates the state, then reaches every
    /// waiter.
    fn start(&self, s: &mut State<T>) -> watch::Receiver<Option<Outcome<T>>> {
        let (tx, rx) = watch::channel(None);
        s.flight = Some(rx.clone());
        let fetch = (self.fetcher)();
        let state = self.state.clone();
        let timing = self.timing;
        let what = self.what.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(
                timing.fetch_timeout,
                AssertUnwindSafe(fetch).catch_unwind(),
            )
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the fetch panicked".to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    timing.fetch_timeout.as_millis()
                )),
            };
            let outcome = {
                let mut s = state.lock().unwrap();
                s.flight = None;
                match result {
                    Ok(v) => {
                        let v = Arc::new(v);
                        s.copy = Some((v.clone(), Instant::now()));
                        s.failures = 0;
                        s.failed_at = None;
                        Ok(v)
                    }
                    Err(e) => {
                        s.failures = s.failures.saturating_add(1);
                        s.failed_at = Some(Instant::now());
                        let retry_in = timing.backoff_after(s.failures);
                        tracing::warn!(
                            what = %what,
                            error = %e,
                            failures = s.failures,
                            retry_in_ms = retry_in.as_millis() as u64,
                            kept_copy = s.copy.is_some(),
                            "fetch failed; no new fetch until the back-off has passed"
                        );
                        Err(Unavailable { retry_in })
                    }
                }
            };
            let _ = tx.send(Some(outcome));
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn timing() -> Timing {
        Timing {
            refresh_after: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
            fetch_timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(10),
            backoff_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let t = timing();
        let secs: Vec<u64> = (1..=6).map(|n| t.backoff_after(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60, 60]);
        assert_eq!(t.backoff_after(u32::MAX).as_secs(), 60);
        let zero = Timing {
            backoff: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..t
        };
        assert_eq!(zero.backoff_after(1), MIN_BACKOFF);
    }

    #[test]
    fn a_copy_is_stale_then_unusable() {
        let t = timing();
        let at = Instant::now();
        let s = State {
            copy: Some((Arc::new(1), at)),
            failures: 0,
            failed_at: None,
            flight: None,
        };
        assert!(!s.stale(at + Duration::from_secs(299), &t));
        assert!(s.stale(at + Duration::from_secs(300), &t));
        assert!(s.usable(at + Duration::from_secs(86_399), &t).is_some());
        assert!(s.usable(at + Duration::from_secs(86_400), &t).is_none());
    }

    #[test]
    fn a_failure_holds_fetches_back_for_its_backoff() {
        let t = timing();
        let at = Instant::now();
        let mut s: State<u8> = State {
            copy: None,
            failures: 2,
            failed_at: Some(at),
            flight: None,
        };
        assert_eq!(
            s.backing_off(at + Duration::from_secs(5), &t),
            Some(Duration::from_secs(15))
        );
        assert_eq!(s.backing_off(at + Duration::from_secs(20), &t), None);
        s.failed_at = None;
        assert_eq!(s.backing_off(at, &t), None);
    }

    /// A fetcher that counts its calls and answers what `answer` holds once `open` is set (a
    /// stalled provider until then).
    struct Provider {
        calls: AtomicUsize,
        open: watch::Sender<bool>,
        answer: Mutex<Result<u32, String>>,
    }

    fn provider(t: Timing) -> (Arc<Provider>, CachedDocument<u32>) {
        let p = Arc::new(Provider {
            calls: AtomicUsize::new(0),
            open: watch::channel(true).0,
            answer: Mutex::new(Ok(1)),
        });
        let q = p.clone();
        let doc = CachedDocument::new("test document", t, move || {
            let q = q.clone();
            async move {
                q.calls.fetch_add(1, Ordering::SeqCst);
                let mut open = q.open.subscribe();
                let _ = open.wait_for(|o| *o).await;
                q.answer.lock().unwrap().clone()
            }
            .boxed()
        });
        (p, doc)
    }

    fn quick() -> Timing {
        Timing {
            refresh_after: Duration::from_millis(50),
            max_age: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(1),
            backoff: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_its_failure() {
        let (p, doc) = provider(quick());
        let doc = Arc::new(doc);
        p.open.send_replace(false);
        let started = Instant::now();
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let doc = doc.clone();
                tokio::spawn(async move { doc.refresh(|| true).await })
            })
            .collect();
        for w in waiters {
            let r = w.await.unwrap();
            assert!(matches!(r, Err(Refusal::Unavailable(_))), "{r:?}");
        }
        // Together, after the one fetch's deadline: not one deadline after another.
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2_500), "{took:?}");
        assert_eq!(p.calls.load(Ordering::SeqCst), 1, "one fetch for the burst");

        // During the back-off: refused at once, no fetch, `may_start` not even asked.
        let t = Instant::now();
        let r = doc.refresh(|| panic!("not asked during a back-off")).await;
        match r {
            Err(Refusal::Unavailable(u)) => assert!(u.retry_in > Duration::from_secs(29)),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(50));
        assert!(doc.current().is_none());
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_copy_answers_at_once_while_one_refresh_runs() {
        let (p, doc) = provider(quick());
        assert_eq!(*doc.refresh(|| true).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        p.open.send_replace(false);
        *p.answer.lock().unwrap() = Ok(2);
        for _ in 0..50 {
            let t = Instant::now();
            assert_eq!(doc.current().as_deref(), Some(&1));
            assert!(t.elapsed() < Duration::from_millis(10));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.calls.load(Ordering::SeqCst), 2, "one background refresh");
        p.open.send_replace(true);
        // A caller that needs fresh data joins the refresh in flight.
        assert_eq!(*doc.refresh(|| false).await.unwrap(), 2);
        assert_eq!(doc.current().as_deref(), Some(&2));
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_copy_and_declines_when_asked() {
        let (p, doc) = provider(quick());
        doc.refresh(|| true).await.unwrap();
        assert_eq!(
            doc.refresh(|| false).await.unwrap_err(),
            Refusal::Declined,
            "no fetch without leave"
        );
        *p.answer.lock().unwrap() = Err("HTTP 500".into());
        assert!(matches!(
            doc.refresh(|| true).await,
            Err(Refusal::Unavailable(_))
        ));
        assert_eq!(doc.current().as_deref(), Some(&1), "the copy stays");
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_fetch_outlives_a_caller_that_gives_up() {
        let (p, doc) = provider(quick());
        p.open.send_replace(false);
        let gave_up = tokio::time::timeout(Duration::from_millis(20), doc.refresh(|| true)).await;
        assert!(gave_up.is_err());
        p.open.send_replace(true);
        let mut copy = None;
        for _ in 0..100 {
            copy = doc.current();
            if copy.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(copy.as_deref(), Some(&1));
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    }
}
