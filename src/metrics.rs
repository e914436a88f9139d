//! Counters exported at `/metrics` in the Prometheus text format. A plain struct of atomics
//! handed to the services that count: no registry, no globals.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub leases_issued: AtomicU64,
    pub leases_renewed: AtomicU64,
    pub leases_revoked: AtomicU64,
    pub leases_expired: AtomicU64,
    pub lease_removal_failures: AtomicU64,
    pub orphan_roles_removed: AtomicU64,
    /// Connections with a token as the password that got the token's existing lease.
    pub token_leases_reused: AtomicU64,
    /// Leases whose removal keeps failing: reported until it succeeds.
    pub leases_stuck: AtomicU64,
    denials: Mutex<BTreeMap<&'static str, u64>>,
    issue_latency: Mutex<std::collections::VecDeque<f64>>,
    /// Broker connections open now (gauge), and how often the cap made new ones wait.
    pub broker_connections: AtomicU64,
    pub broker_connections_capped: AtomicU64,
    /// Leases refused by the per-identity rate limit and by the live-lease quota.
    pub leases_rate_limited: AtomicU64,
    pub leases_quota_refused: AtomicU64,
    /// Broker requests cut because their body did not arrive within `[broker] body_timeout`.
    pub broker_body_timeouts: AtomicU64,
    /// Proxy connections open now (gauge), and those refused at `[proxy] max_connections`.
    pub proxy_connections: AtomicU64,
    pub proxy_connections_refused: AtomicU64,
    /// The approval page's live-update streams open now (gauge); refused ones by reason.
    pub approval_streams: AtomicU64,
    approval_streams_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Times the live feed re-read the approvals (once per change for all streams).
    pub approval_feed_refreshes: AtomicU64,
    /// Approval requests refused by a limit on pending requests, by limit.
    approval_requests_refused: Mutex<BTreeMap<&'static str, u64>>,
}

/// Buckets (seconds) for the lease issue latency histogram.
const LATENCY_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const LATENCY_SAMPLES: usize = 10_000;

impl Metrics {
    pub fn deny(&self, reason: &'static str) {
        *self.denials.lock().unwrap().entry(reason).or_default() += 1;
    }

    pub fn approval_request_refused(&self, limit: &'static str) {
        *self
            .approval_requests_refused
            .lock()
            .unwrap()
            .entry(limit)
            .or_default() += 1;
    }

    pub fn approval_stream_refused(&self, reason: &'static str) {
        *self
            .approval_streams_refused
            .lock()
            .unwrap()
            .entry(reason)
            .or_default() += 1;
    }

    pub fn observe_issue(&self, seconds: f64) {
        let mut v = self.issue_latency.lock().unwrap();
        if v.len() >= LATENCY_SAMPLES {
            v.pop_front();
        }
        v.push_back(seconds);
    }

    pub fn render(&self, lease_states: &[(String, i64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "pgid_leases_issued_total",
            "Leases issued.",
            &self.leases_issued,
        );
        counter(
            &mut out,
            "pgid_leases_renewed_total",
            "Leases renewed.",
            &self.leases_renewed,
        );
        counter(
            &mut out,
            "pgid_leases_revoked_total",
            "Leases revoked before expiry.",
            &self.leases_revoked,
        );
        counter(
            &mut out,
            "pgid_leases_expired_total",
            "Leases removed at expiry.",
            &self.leases_expired,
        );
        counter(
            &mut out,
            "pgid_lease_removal_failures_total",
            "Failed attempts to remove a lease role.",
            &self.lease_removal_failures,
        );
        counter(
            &mut out,
            "pgid_orphan_roles_removed_total",
            "Marked lease roles without a live lease, removed.",
            &self.orphan_roles_removed,
        );
        counter(
            &mut out,
            "pgid_token_leases_reused_total",
            "Connections with a token as the password served by the token's existing lease.",
            &self.token_leases_reused,
        );
        let _ = writeln!(
            out,
            "# HELP pgid_leases_stuck Leases whose role could not be removed after repeated attempts.\n# TYPE pgid_leases_stuck gauge\npgid_leases_stuck {}",
            self.leases_stuck.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP pgid_credential_denials_total Credential requests refused, by reason.\n# TYPE pgid_credential_denials_total counter");
        for (reason, n) in self.denials.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "pgid_credential_denials_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP pgid_leases Live leases by state.\n# TYPE pgid_leases gauge"
        );
        for state in ["creating", "active", "revoking"] {
            let n = lease_states
                .iter()
                .find(|(s, _)| s == state)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "pgid_leases{{state=\"{state}\"}} {n}");
        }
        self.render_limits(&mut out);
        let samples = self.issue_latency.lock().unwrap().clone();
        let _ = writeln!(out, "# HELP pgid_lease_issue_seconds Time to issue a lease (recent samples).\n# TYPE pgid_lease_issue_seconds histogram");
        for b in LATENCY_BUCKETS {
            let n = samples.iter().filter(|s| **s <= b).count();
            let _ = writeln!(out, "pgid_lease_issue_seconds_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "pgid_lease_issue_seconds_bucket{{le=\"+Inf\"}} {}",
            samples.len()
        );
        let _ = writeln!(
            out,
            "pgid_lease_issue_seconds_sum {}",
            samples.iter().sum::<f64>()
        );
        let _ = writeln!(out, "pgid_lease_issue_seconds_count {}", samples.len());
        out
    }

    /// The limits that keep the broker and the approval page from taking what the proxy needs.
    fn render_limits(&self, out: &mut String) {
        let one = |out: &mut String, name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        v: &Mutex<BTreeMap<&'static str, u64>>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, n) in v.lock().unwrap().iter() {
                let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {n}");
            }
        };
        one(
            out,
            "pgid_broker_connections",
            "gauge",
            "Broker connections open.",
            &self.broker_connections,
        );
        one(
            out,
            "pgid_broker_connections_capped_total",
            "counter",
            "Times new broker connections waited because [broker] max_connections were open.",
            &self.broker_connections_capped,
        );
        one(
            out,
            "pgid_broker_body_timeouts_total",
            "counter",
            "Broker requests cut because their body did not arrive within [broker] body_timeout.",
            &self.broker_body_timeouts,
        );
        one(
            out,
            "pgid_leases_rate_limited_total",
            "counter",
            "Lease requests refused by the per-identity rate ([leases] issue_rate, issue_burst).",
            &self.leases_rate_limited,
        );
        one(
            out,
            "pgid_leases_quota_refused_total",
            "counter",
            "Lease requests refused because the identity held [leases] max_active_per_identity.",
            &self.leases_quota_refused,
        );
        one(
            out,
            "pgid_proxy_connections",
            "gauge",
            "Proxy connections open.",
            &self.proxy_connections,
        );
        one(
            out,
            "pgid_proxy_connections_refused_total",
            "counter",
            "Proxy connections refused because [proxy] max_connections were open.",
            &self.proxy_connections_refused,
        );
        one(
            out,
            "pgid_approval_streams",
            "gauge",
            "Live-update streams of the approval page open.",
            &self.approval_streams,
        );
        labelled(
            out,
            "pgid_approval_streams_refused_total",
            "Live-update streams refused, by reason.",
            "reason",
            &self.approval_streams_refused,
        );
        one(
            out,
            "pgid_approval_feed_refreshes_total",
            "counter",
            "Times the approval page's live feed re-read the approvals (shared by all streams).",
            &self.approval_feed_refreshes,
        );
        labelled(
            out,
            "pgid_approval_requests_refused_total",
            "Approval requests refused because too many were pending, by limit.",
            "limit",
            &self.approval_requests_refused,
        );
    }
}
