//! What `/metrics` exports, in the OpenMetrics text format, through the `prometheus-client`
//! crate. One `Metrics` is built at start and handed to the services that count (no globals);
//! each handle is an atomic, so counting never takes a lock. The proxy's share
//! ([`ProxyMetrics`]) is counted on the statement path: its labelled counters are created up
//! front and picked by index, and its latency histogram is a set of atomic buckets.
//!
//! Every histogram is cumulative since the start: counts and buckets only grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::policy::StatementClass;

/// One label: `[(name, value)]`.
type Label = [(&'static str, &'static str); 1];

/// The media type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets (seconds) of the lease issue latency histogram.
const ISSUE_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Buckets (seconds) of the statement latency histogram: from a cached point lookup to a report.
const STATEMENT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Buckets (seconds) of the audit write latency histogram: a write to the OS, a group fsync, a
/// table insert.
pub const AUDIT_WRITE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Buckets (seconds) of the approval wait histogram: a reviewer at hand to a rule's timeout.
const APPROVAL_WAIT_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Lease states reported by `pgid_leases` (zero when none is in that state).
const LEASE_STATES: [&str; 3] = ["creating", "active", "revoking"];

pub struct Metrics {
    pub leases_issued: Counter,
    pub leases_renewed: Counter,
    pub leases_revoked: Counter,
    pub leases_expired: Counter,
    pub lease_removal_failures: Counter,
    pub orphan_roles_removed: Counter,
    /// Connections with a token as the password that got the token's existing lease.
    pub token_leases_reused: Counter,
    /// Leases whose removal keeps failing: reported until it succeeds.
    pub leases_stuck: Gauge,
    denials: Family<Label, Counter>,
    issue_latency: Histogram,
    /// Time until appended audit records were durable (per `[audit] sync`, and in the table).
    pub audit_write_seconds: LatencyHistogram,
    /// Broker connections open now, and how often the cap made new ones wait.
    pub broker_connections: Gauge,
    pub broker_connections_capped: Counter,
    /// The approval page's live-update streams open now; refused ones by reason.
    pub approval_streams: Gauge,
    approval_streams_refused: Family<Label, Counter>,
    /// Leases refused by the per-identity rate limit and by the live-lease quota.
    pub leases_rate_limited: Counter,
    pub leases_quota_refused: Counter,
    /// Broker requests cut because their body did not arrive within `[broker] body_timeout`.
    pub broker_body_timeouts: Counter,
    /// Proxy connections open now, and those refused at `[proxy] max_connections`.
    pub proxy_connections: Gauge,
    pub proxy_connections_refused: Counter,
    /// Times the live feed re-read the approvals (once per change for all streams).
    pub approval_feed_refreshes: Counter,
    /// Approval requests refused by a limit on pending requests, by limit.
    approval_requests_refused: Family<Label, Counter>,
    lease_states: Family<Label, Gauge>,
    pub proxy: ProxyMetrics,
    registry: Registry,
}

/// What is read at scrape time from the services that keep it themselves.
#[derive(Default)]
pub struct Scrape<'a> {
    /// Live leases by state, from the state database.
    pub lease_states: &'a [(String, i64)],
    pub audit_refusals_suppressed: u64,
    pub audit_write_errors: u64,
    /// Statement analysis cache (hits, misses), when the proxy runs.
    pub sql_cache: Option<(u64, u64)>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            leases_issued: Counter::default(),
            leases_renewed: Counter::default(),
            leases_revoked: Counter::default(),
            leases_expired: Counter::default(),
            lease_removal_failures: Counter::default(),
            orphan_roles_removed: Counter::default(),
            token_leases_reused: Counter::default(),
            leases_stuck: Gauge::default(),
            denials: Family::default(),
            issue_latency: Histogram::new(ISSUE_BUCKETS),
            audit_write_seconds: LatencyHistogram::new(&AUDIT_WRITE_BUCKETS),
            broker_connections: Gauge::default(),
            broker_connections_capped: Counter::default(),
            approval_streams: Gauge::default(),
            approval_streams_refused: Family::default(),
            leases_rate_limited: Counter::default(),
            leases_quota_refused: Counter::default(),
            broker_body_timeouts: Counter::default(),
            proxy_connections: Gauge::default(),
            proxy_connections_refused: Counter::default(),
            approval_feed_refreshes: Counter::default(),
            approval_requests_refused: Family::default(),
            lease_states: Family::default(),
            proxy: ProxyMetrics::new(),
            registry: Registry::default(),
        };
        for state in LEASE_STATES {
            m.lease_states.get_or_create(&[("state", state)]).set(0);
        }
        m.registry = m.registry();
        m
    }

    /// Every metric kept here, registered once (a registry holds handles to the same atomics).
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        // Counters are registered without `_total`: the encoder appends it.
        let counters = [
            ("pgid_leases_issued", "Leases issued.", &self.leases_issued),
            ("pgid_leases_renewed", "Leases renewed.", &self.leases_renewed),
            ("pgid_leases_revoked", "Leases revoked before expiry.", &self.leases_revoked),
            ("pgid_leases_expired", "Leases removed at expiry.", &self.leases_expired),
            (
                "pgid_lease_removal_failures",
                "Failed attempts to remove a lease role.",
                &self.lease_removal_failures,
            ),
            (
                "pgid_orphan_roles_removed",
                "Marked lease roles without a live lease, removed.",
                &self.orphan_roles_removed,
            ),
            (
                "pgid_token_leases_reused",
                "Connections with a token as the password served by the token's existing lease.",
                &self.token_leases_reused,
            ),
            (
                "pgid_broker_connections_capped",
                "Times new broker connections waited because [broker] max_connections were open.",
                &self.broker_connections_capped,
            ),
            (
                "pgid_approval_feed_refreshes",
                "Times the approval page's live feed re-read the approvals (shared by all streams).",
                &self.approval_feed_refreshes,
            ),
            (
                "pgid_leases_rate_limited",
                "Lease requests refused by [leases] issue_rate (per identity).",
                &self.leases_rate_limited,
            ),
            (
                "pgid_leases_quota_refused",
                "Lease requests refused by [leases] max_active_per_identity.",
                &self.leases_quota_refused,
            ),
            (
                "pgid_broker_body_timeouts",
                "Broker requests cut because their body did not arrive within [broker] body_timeout.",
                &self.broker_body_timeouts,
            ),
            (
                "pgid_proxy_connections_refused",
                "Proxy connections refused at [proxy] max_connections.",
                &self.proxy_connections_refused,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        let gauges = [
            (
                "pgid_leases_stuck",
                "Leases whose role could not be removed after repeated attempts.",
                &self.leases_stuck,
            ),
            (
                "pgid_broker_connections",
                "Broker connections open.",
                &self.broker_connections,
            ),
            (
                "pgid_approval_streams",
                "Live-update streams of the approval page open.",
                &self.approval_streams,
            ),
            (
                "pgid_proxy_connections",
                "Proxy connections open (handshakes included).",
                &self.proxy_connections,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        let families = [
            (
                "pgid_credential_denials",
                "Credential requests refused, by reason.",
                &self.denials,
            ),
            (
                "pgid_approval_streams_refused",
                "Live-update streams refused, by reason.",
                &self.approval_streams_refused,
            ),
            (
                "pgid_approval_requests_refused",
                "Approval requests refused because too many were pending, by limit.",
                &self.approval_requests_refused,
            ),
        ];
        for (name, help, f) in families {
            r.register(name, help, f.clone());
        }
        r.register(
            "pgid_leases",
            "Live leases by state.",
            self.lease_states.clone(),
        );
        r.register(
            "pgid_lease_issue_seconds",
            "Time to issue a lease.",
            self.issue_latency.clone(),
        );
        r.register(
            "pgid_audit_write_seconds",
            "Time until appended audit records were durable (written, fsynced per [audit] sync, and in the table when that sink is on).",
            self.audit_write_seconds.clone(),
        );
        self.proxy.register(&mut r);
        r
    }

    pub fn deny(&self, reason: &'static str) {
        self.denials.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn approval_request_refused(&self, limit: &'static str) {
        self.approval_requests_refused
            .get_or_create(&[("limit", limit)])
            .inc();
    }

    pub fn approval_stream_refused(&self, reason: &'static str) {
        self.approval_streams_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn observe_issue(&self, seconds: f64) {
        self.issue_latency.observe(seconds);
    }

    /// The whole exposition: what is kept here, then what `scrape` read just now.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        for state in LEASE_STATES {
            let n = scrape
                .lease_states
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.lease_states.get_or_create(&[("state", state)]).set(n);
        }
        let mut now = Registry::default();
        now.register(
            "pgid_audit_refusals_suppressed",
            "Refusals of unauthenticated requests counted in a summary record instead of recorded one by one.",
            ConstCounter::new(scrape.audit_refusals_suppressed),
        );
        now.register(
            "pgid_audit_write_errors",
            "Audit records that could not be written (the audit log then refuses audited actions).",
            ConstCounter::new(scrape.audit_write_errors),
        );
        if let Some((hits, misses)) = scrape.sql_cache {
            now.register(
                "pgid_sql_cache_hits",
                "Statements whose analysis came from the cache.",
                ConstCounter::new(hits),
            );
            now.register(
                "pgid_sql_cache_misses",
                "Statements parsed and analysed.",
                ConstCounter::new(misses),
            );
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &now);
        let _ = encode_eof(&mut out);
        out
    }
}

/// One in a gauge for as long as it lives (an open session, a statement waiting), however that
/// ends.
pub struct Open(Gauge);

impl Open {
    pub fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A statement's decision as counted by `pgid_proxy_statements_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementDecision {
    Allow,
    Deny,
    /// Held by an `[[approval]]` rule (its later allow or deny is counted too).
    Held,
}

impl StatementDecision {
    const ALL: [StatementDecision; 3] = [
        StatementDecision::Allow,
        StatementDecision::Deny,
        StatementDecision::Held,
    ];

    fn name(self) -> &'static str {
        match self {
            StatementDecision::Allow => "allow",
            StatementDecision::Deny => "deny",
            StatementDecision::Held => "held",
        }
    }
}

/// Rules a statement is refused under, counted without a lookup in a shared map; any other
/// rule name is counted too, through the family (a rare path).
const KNOWN_RULES: [&str; 14] = [
    "analysis",
    "approval",
    "approval_limit",
    "audit",
    "deny",
    "deny_functions",
    "encoding",
    "lexing",
    "mask",
    "max_message_bytes",
    "prepared",
    "require_where",
    "sql_text",
    "syntax",
];

/// The proxy's metrics: sessions, statements, refusals, masking, approvals, pool and traffic.
pub struct ProxyMetrics {
    pub sessions_open: Gauge,
    pub sessions: Counter,
    statements: Family<[(&'static str, &'static str); 2], Counter>,
    /// `statements` by `[decision][class]`; the last class slot is "none" (refused unparsed).
    by_decision_class: Vec<Vec<Counter>>,
    refusals: Family<Label, Counter>,
    known_refusals: Vec<Counter>,
    pub masked_values: Counter,
    pub approvals_pending: Gauge,
    pub pool_idle: Gauge,
    pub bytes_to_server: Counter,
    pub bytes_to_client: Counter,
    statement_seconds: LatencyHistogram,
    approval_wait: Family<Label, LatencyHistogram, fn() -> LatencyHistogram>,
    /// `approval_wait` by [`ApprovalOutcome`].
    approval_waits: Vec<LatencyHistogram>,
}

/// How the wait for a held statement's approval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// Approved: the statement ran.
    Approved,
    /// Denied, expired or withdrawn (the client cancelled, the lease ended).
    Refused,
    /// The client went away while it waited.
    Abandoned,
}

impl ApprovalOutcome {
    const ALL: [ApprovalOutcome; 3] = [
        ApprovalOutcome::Approved,
        ApprovalOutcome::Refused,
        ApprovalOutcome::Abandoned,
    ];

    fn name(self) -> &'static str {
        match self {
            ApprovalOutcome::Approved => "approved",
            ApprovalOutcome::Refused => "refused",
            ApprovalOutcome::Abandoned => "abandoned",
        }
    }
}

fn approval_wait_histogram() -> LatencyHistogram {
    LatencyHistogram::new(&APPROVAL_WAIT_BUCKETS)
}

impl ProxyMetrics {
    fn new() -> ProxyMetrics {
        let statements = Family::<[(&'static str, &'static str); 2], Counter>::default();
        let by_decision_class = StatementDecision::ALL
            .iter()
            .map(|d| {
                StatementClass::ALL
                    .iter()
                    .map(|c| c.name())
                    .chain(["none"])
                    .map(|class| {
                        statements
                            .get_or_create(&[("decision", d.name()), ("class", class)])
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let refusals = Family::<Label, Counter>::default();
        let known_refusals = KNOWN_RULES
            .iter()
            .map(|rule| refusals.get_or_create(&[("rule", rule)]).clone())
            .collect();
        let approval_wait: Family<Label, LatencyHistogram, fn() -> LatencyHistogram> =
            Family::new_with_constructor(approval_wait_histogram);
        let approval_waits = ApprovalOutcome::ALL
            .iter()
            .map(|o| {
                approval_wait
                    .get_or_create(&[("outcome", o.name())])
                    .clone()
            })
            .collect();
        ProxyMetrics {
            sessions_open: Gauge::default(),
            sessions: Counter::default(),
            statements,
            by_decision_class,
            refusals,
            known_refusals,
            masked_values: Counter::default(),
            approvals_pending: Gauge::default(),
            pool_idle: Gauge::default(),
            bytes_to_server: Counter::default(),
            bytes_to_client: Counter::default(),
            statement_seconds: LatencyHistogram::new(&STATEMENT_BUCKETS),
            approval_wait,
            approval_waits,
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "pgid_proxy_sessions_open",
            "Proxy sessions open (logged in, relaying).",
            self.sessions_open.clone(),
        );
        r.register(
            "pgid_proxy_sessions",
            "Proxy sessions started.",
            self.sessions.clone(),
        );
        r.register(
            "pgid_proxy_statements",
            "Statements judged, by decision (allow, deny, held) and statement class (the most consequential of a statement's classes; none: refused before analysis).",
            self.statements.clone(),
        );
        r.register(
            "pgid_proxy_refusals",
            "Statements and messages refused, by the rule that refused them.",
            self.refusals.clone(),
        );
        r.register(
            "pgid_proxy_masked_values",
            "Column values masked in rows sent to clients.",
            self.masked_values.clone(),
        );
        r.register(
            "pgid_proxy_approvals_pending",
            "Statements this instance holds waiting for an approval decision.",
            self.approvals_pending.clone(),
        );
        r.register(
            "pgid_proxy_pool_idle_connections",
            "Upstream connections idle in the pool.",
            self.pool_idle.clone(),
        );
        r.register(
            "pgid_proxy_client_to_server_bytes",
            "Bytes sent to Postgres on behalf of clients (after inspection).",
            self.bytes_to_server.clone(),
        );
        r.register(
            "pgid_proxy_server_to_client_bytes",
            "Bytes sent to clients from Postgres (after masking).",
            self.bytes_to_client.clone(),
        );
        r.register(
            "pgid_proxy_statement_seconds",
            "Time from sending a statement upstream to its completion.",
            self.statement_seconds.clone(),
        );
        r.register(
            "pgid_proxy_approval_wait_seconds",
            "Time held statements waited for a decision, by outcome (approved; refused: denied, expired or withdrawn; abandoned: the client went away).",
            self.approval_wait.clone(),
        );
    }

    /// Counts a statement's decision under its most consequential class.
    pub fn statement(&self, decision: StatementDecision, class: Option<StatementClass>) {
        let d = StatementDecision::ALL
            .iter()
            .position(|x| *x == decision)
            .unwrap_or(0);
        let c = class.map_or(StatementClass::ALL.len(), |c| c as usize);
        self.by_decision_class[d][c].inc();
    }

    pub fn refused(&self, rule: &'static str) {
        match KNOWN_RULES.iter().position(|r| *r == rule) {
            Some(i) => {
                self.known_refusals[i].inc();
            }
            None => {
                self.refusals.get_or_create(&[("rule", rule)]).inc();
            }
        }
    }

    pub fn observe_approval_wait(&self, outcome: ApprovalOutcome, waited: Duration) {
        self.approval_waits[outcome as usize].observe(waited);
    }

    pub fn observe_statement(&self, took: Duration) {
        self.statement_seconds.observe(took);
    }
}

/// A histogram of durations kept in atomics (no lock per observation): per-bucket counts, the
/// count and the sum in nanoseconds. Encoded cumulatively.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: Vec<f64>,
    /// One per bound, then +Inf.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: &[f64]) -> LatencyHistogram {
        LatencyHistogram(Arc::new(HistogramInner {
            bounds: bounds.to_vec(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, took: Duration) {
        let h = &*self.0;
        let secs = took.as_secs_f64();
        let i = h
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(h.bounds.len());
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        h.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl prometheus_client::metrics::TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &*self.0;
        // Per-bucket counts (the encoder accumulates them); the count is their sum, so a scrape
        // racing an observation stays consistent with its buckets.
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(bucket bound, cumulative count)` of `name` in `text`.
    fn buckets(text: &str, name: &str) -> Vec<(String, u64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, n) = rest.split_once("\"} ")?;
                Some((le.to_string(), n.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn histograms_are_cumulative_and_never_fall() {
        let m = Metrics::new();
        for ms in [0, 2, 7, 40, 2_000, 60_000] {
            m.proxy.observe_statement(Duration::from_millis(ms));
        }
        for s in [0.001, 0.2, 3.0] {
            m.observe_issue(s);
        }
        let first = m.render(&Scrape::default());
        for name in ["pgid_proxy_statement_seconds", "pgid_lease_issue_seconds"] {
            let b = buckets(&first, name);
            assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: {b:?}");
            assert_eq!(b.last().unwrap().0, "+Inf");
        }
        assert_eq!(
            buckets(&first, "pgid_proxy_statement_seconds")
                .last()
                .unwrap()
                .1,
            6
        );
        assert!(
            first.contains("pgid_proxy_statement_seconds_count 6"),
            "{first}"
        );
        m.proxy.observe_statement(Duration::from_millis(1));
        let second = m.render(&Scrape::default());
        let (a, b) = (
            buckets(&first, "pgid_proxy_statement_seconds"),
            buckets(&second, "pgid_proxy_statement_seconds"),
        );
        assert!(a.iter().zip(&b).all(|(x, y)| x.1 <= y.1));
        assert!(second.ends_with("# EOF\n"));
    }

    #[test]
    fn class_table_matches_the_enum() {
        for (i, c) in StatementClass::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
        }
    }

    #[test]
    fn statements_and_refusals_are_counted_by_label() {
        let m = Metrics::new();
        m.proxy
            .statement(StatementDecision::Allow, Some(StatementClass::Select));
        m.proxy.statement(StatementDecision::Deny, None);
        m.proxy.refused("deny");
        m.proxy.refused("a_new_rule");
        m.deny("no_policy");
        let text = m.render(&Scrape {
            lease_states: &[("active".into(), 2)],
            ..Scrape::default()
        });
        for line in [
            "pgid_proxy_statements_total{decision=\"allow\",class=\"SELECT\"} 1",
            "pgid_proxy_statements_total{decision=\"deny\",class=\"none\"} 1",
            "pgid_proxy_refusals_total{rule=\"deny\"} 1",
            "pgid_proxy_refusals_total{rule=\"a_new_rule\"} 1",
            "pgid_credential_denials_total{reason=\"no_policy\"} 1",
            "pgid_leases{state=\"active\"} 2",
            "pgid_leases{state=\"creating\"} 0",
            "pgid_leases_issued_total 0",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
