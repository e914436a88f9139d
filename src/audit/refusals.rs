//! Refusals of requests nobody has authenticated yet — a bearer token the broker refused, a
//! login the proxy refused — are recorded one by one only up to a budget per window: per source
//! address and overall. Past it they are counted, and when the window closes one summary record
//! per kind says how many were not recorded one by one and from how many addresses. Whoever can
//! reach the broker can otherwise write as fast as they can send into a log that fails closed.
//! Text an attacker chooses (the reason quotes a token's claims) is capped in every refusal.
//! Pure: the caller supplies the clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::event::{Event, Kind};

/// The window budgets are counted over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refusals recorded one by one per source address and kind per window.
pub const PER_SOURCE: u32 = 20;
/// Refusals recorded one by one over all sources per window.
pub const OVERALL: u32 = 200;
/// Characters kept of text an unauthenticated request chose (reason, subject, issuer).
pub const TEXT_CHARS: usize = 160;
/// Distinct source addresses counted per window for a summary.
const SOURCES_COUNTED: usize = 10_000;

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    per_source: HashMap<(Kind, String), u32>,
    recorded: u32,
    suppressed: BTreeMap<&'static str, (Kind, u64, HashSet<String>)>,
}

pub struct RefusalGate {
    window: Mutex<Window>,
    suppressed_total: AtomicU64,
}

impl Default for RefusalGate {
    fn default() -> Self {
        RefusalGate {
            window: Mutex::new(Window::default()),
            suppressed_total: AtomicU64::new(0),
        }
    }
}

/// What to record for a refusal: the refusal itself (capped), if within budget, and the
/// summaries of a window that has just closed.
pub struct Admitted {
    pub event: Option<Event>,
    pub summaries: Vec<Event>,
}

fn cap(text: &mut Option<String>) {
    if let Some(t) = text {
        if t.chars().count() > TEXT_CHARS {
            *t = t.chars().take(TEXT_CHARS).collect::<String>() + "…";
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::CredentialDenied => "credential.denied",
        Kind::SessionRefused => "session.refused",
        _ => "refusal",
    }
}

/// The address part of `ip:port` (a client changes ports at will).
fn source_of(event: &Event) -> String {
    let addr = event.client_addr.as_deref().unwrap_or("unknown");
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.to_string())
}

impl RefusalGate {
    /// Refusals not recorded one by one since the start.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }

    pub fn admit(&self, mut event: Event, now: Instant) -> Admitted {
        cap(&mut event.reason);
        cap(&mut event.subject);
        cap(&mut event.issuer);
        let mut w = self.window.lock().unwrap();
        let summaries = close_if_due(&mut w, now);
        w.started.get_or_insert(now);
        let source = source_of(&event);
        let seen = w
            .per_source
            .entry((event.kind, source.clone()))
            .or_default();
        *seen += 1;
        let within = *seen <= PER_SOURCE && w.recorded < OVERALL;
        if within {
            w.recorded += 1;
            return Admitted {
                event: Some(event),
                summaries,
            };
        }
        self.suppressed_total.fetch_add(1, Ordering::Relaxed);
        let entry = w
            .suppressed
            .entry(kind_name(event.kind))
            .or_insert_with(|| (event.kind, 0, HashSet::new()));
        entry.1 += 1;
        if entry.2.len() < SOURCES_COUNTED {
            entry.2.insert(source);
        }
        Admitted {
            event: None,
            summaries,
        }
    }

    /// The summaries of a window that has closed by `now` (for a periodic flush).
    pub fn due(&self, now: Instant) -> Vec<Event> {
        close_if_due(&mut self.window.lock().unwrap(), now)
    }
}

fn close_if_due(w: &mut Window, now: Instant) -> Vec<Event> {
    match w.started {
        Some(started) if now.duration_since(started) >= WINDOW => {}
        _ => return Vec::new(),
    }
    let closed = std::mem::take(w);
    closed
        .suppressed
        .into_values()
        .map(|(kind, count, sources)| {
            let mut e = Event::new(kind).reason(format!(
                "{count} more refusals in {} s from {} address(es) were not recorded one by one \
                 (budget: {PER_SOURCE} per address, {OVERALL} in all, per {} s)",
                WINDOW.as_secs(),
                sources.len(),
                WINDOW.as_secs()
            ));
            e.count = Some(count);
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(addr: &str, reason: &str) -> Event {
        let mut e = Event::new(Kind::CredentialDenied).reason(reason);
        e.client_addr = Some(addr.to_string());
        e
    }

    #[test]
    fn a_flood_is_recorded_within_budget_then_summarised() {
        let gate = RefusalGate::default();
        let t0 = Instant::now();
        let mut recorded = 0;
        // 10,000 refusals from one address, its ports changing.
        for i in 0..10_000u32 {
            let a = gate.admit(
                refusal(&format!("192.0.2.7:{}", 1024 + i % 60_000), "bad"),
                t0 + Duration::from_millis(u64::from(i) / 1000),
            );
            recorded += usize::from(a.event.is_some());
            assert!(a.summaries.is_empty());
        }
        assert_eq!(recorded, PER_SOURCE as usize);
        // Many addresses: the overall budget holds.
        for i in 0..5_000u32 {
            let a = gate.admit(refusal(&format!("198.51.100.{}:1", i % 250), "bad"), t0);
            recorded += usize::from(a.event.is_some());
        }
        assert_eq!(recorded, OVERALL as usize);
        assert_eq!(gate.suppressed_total(), 15_000 - u64::from(OVERALL));
        // The window closes: one summary for the kind, saying how many and from where.
        let summaries = gate.due(t0 + WINDOW);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, Some(15_000 - u64::from(OVERALL)));
        assert!(summaries[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("from 251 address(es)"));
        assert!(gate.due(t0 + WINDOW * 2).is_empty(), "said once");
        // A new window has its budget again.
        assert!(gate
            .admit(refusal("192.0.2.7:1", "bad"), t0 + WINDOW * 2)
            .event
            .is_some());
    }

    #[test]
    fn text_an_attacker_chose_is_capped() {
        let gate = RefusalGate::default();
        let mut e = refusal("192.0.2.1:5", &"i".repeat(5_000));
        e.subject = Some("s".repeat(300));
        let kept = gate.admit(e, Instant::now()).event.unwrap();
        assert_eq!(kept.reason.unwrap().chars().count(), TEXT_CHARS + 1);
        assert_eq!(kept.subject.unwrap().chars().count(), TEXT_CHARS + 1);
    }
}
