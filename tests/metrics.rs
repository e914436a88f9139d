//! `/metrics` as a Prometheus scraper reads it, through the real proxy: statements allowed, held,
//! refused and masked move their counters, sessions and the pool show up in their gauges, and
//! every histogram is cumulative (a bucket never exceeds the next, `+Inf` is the count) and
//! never falls between scrapes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Harness;
use serde_json::json;

const WATCHED: &str = r#"
name = "watched"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:watched"
[[grant]]
privileges = ["SELECT", "UPDATE", "DELETE"]
on = ["crm.customers", "crm.tickets"]
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.orders"]
[[mask]]
columns = ["crm.customers.email"]
method = "redact"
[[approval]]
statements = ["DELETE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "reviewers" } }
mode = "retry"
timeout = "5m"
"#;

/// Samples by series (`name{labels}`), and the exposition as text.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// Each series of histogram `name` (by its labels other than `le`: `outcome="approved"`,
    /// or empty): `(le, cumulative count)` in exposition order.
    fn buckets(&self, name: &str) -> BTreeMap<String, Vec<(String, f64)>> {
        let prefix = format!("{name}_bucket{{");
        let mut series: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for l in self.text.lines() {
            let Some(rest) = l.strip_prefix(&prefix) else {
                continue;
            };
            let (labels, n) = rest.split_once("} ").unwrap();
            let (le, others): (Vec<&str>, Vec<&str>) =
                labels.split(',').partition(|l| l.starts_with("le="));
            let le = le[0].trim_start_matches("le=").trim_matches('"');
            series
                .entry(others.join(","))
                .or_default()
                .push((le.to_string(), n.parse().unwrap()));
        }
        series
    }

    fn histograms(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
            .map(str::to_string)
            .collect()
    }
}

async fn scrape(h: &Harness) -> Scrape {
    let response = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect();
    Scrape { text, samples }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_statements_move_the_counters_and_histograms_are_cumulative() {
    let h = Harness::start(&[WATCHED]).await;
    let lease = h.lease("agent:watched", json!({})).await;
    let before = scrape(&h).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    for sql in [
        "SELECT email FROM crm.customers ORDER BY id",
        "SELECT count(*) FROM crm.tickets",
        "SELECT id FROM crm.tickets WHERE id = 1",
    ] {
        c.simple_query(sql).await.unwrap();
    }
    c.query("SELECT name FROM crm.customers WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    // The last is held for a reviewer and, in retry mode, refused until one approves it.
    for sql in [
        "DROP TABLE crm.customers",
        "DELETE FROM crm.tickets",
        "DELETE FROM crm.orders WHERE id = -1",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        let message = e.as_db_error().map(|d| d.message().to_string());
        assert!(
            message.as_deref().unwrap_or("").starts_with("pgid:"),
            "{e:?}"
        );
    }
    let during = scrape(&h).await;
    let moved = |series: &str| during.get(series) - before.get(series);

    assert_eq!(during.get("pgid_leases_issued_total"), 1.0);
    assert_eq!(during.get("pgid_leases{state=\"active\"}"), 1.0);
    assert_eq!(moved("pgid_proxy_sessions_total"), 1.0);
    assert_eq!(during.get("pgid_proxy_sessions_open"), 1.0);
    assert!(
        moved("pgid_proxy_statements_total{decision=\"allow\",class=\"SELECT\"}") >= 4.0,
        "{}",
        during.text
    );
    assert_eq!(
        moved("pgid_proxy_statements_total{decision=\"deny\",class=\"DROP\"}"),
        1.0
    );
    assert_eq!(
        moved("pgid_proxy_statements_total{decision=\"deny\",class=\"DELETE\"}"),
        2.0
    );
    assert_eq!(
        moved("pgid_proxy_statements_total{decision=\"held\",class=\"DELETE\"}"),
        1.0
    );
    assert!(moved("pgid_proxy_refusals_total{rule=\"deny\"}") >= 1.0);
    assert_eq!(moved("pgid_proxy_refusals_total{rule=\"approval\"}"), 1.0);
    assert_eq!(
        moved("pgid_proxy_refusals_total{rule=\"require_where\"}"),
        1.0
    );
    // Every customer's email went out masked.
    let customers = h.count("SELECT count(*) FROM crm.customers").await as f64;
    assert!(moved("pgid_proxy_masked_values_total") >= customers);
    assert!(moved("pgid_proxy_client_to_server_bytes_total") > 0.0);
    assert!(moved("pgid_proxy_server_to_client_bytes_total") > 0.0);
    assert!(moved("pgid_proxy_statement_seconds_count") >= 4.0);
    assert_eq!(during.get("pgid_proxy_approvals_pending"), 0.0);
    assert_eq!(during.get("pgid_audit_write_errors_total"), 0.0);

    assert!(moved("pgid_audit_write_seconds_count") >= 1.0);
    assert_cumulative(&during);

    // The client leaves: its session closes and its idle connection waits in the pool.
    drop(c);
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            let s = scrape(&h).await;
            s.get("pgid_proxy_sessions_open") == 0.0
                && s.get("pgid_proxy_pool_idle_connections") == 1.0
        })
        .await,
        "{}",
        scrape(&h).await.text
    );
    // Counters and histograms never fall between scrapes.
    assert_never_fell(&during, &scrape(&h).await);
}

/// Every histogram's series is cumulative: a bucket never exceeds the next, `+Inf` is the count.
fn assert_cumulative(s: &Scrape) {
    for name in s.histograms() {
        let series = s.buckets(&name);
        assert!(!series.is_empty(), "{name} has no buckets");
        for (labels, b) in series {
            assert!(
                b.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name}{{{labels}}} is not cumulative: {b:?}"
            );
            assert_eq!(b.last().unwrap().0, "+Inf");
            let count = match labels.as_str() {
                "" => format!("{name}_count"),
                l => format!("{name}_count{{{l}}}"),
            };
            assert_eq!(b.last().unwrap().1, s.get(&count), "{count}");
        }
    }
}

/// Counters and histograms of `before` are no higher than in `after`.
fn assert_never_fell(before: &Scrape, after: &Scrape) {
    for (series, v) in &before.samples {
        let monotonic = series.contains("_total")
            || series.contains("_bucket")
            || series.contains("_count")
            || series.contains("_sum");
        if monotonic {
            assert!(after.get(series) >= *v, "{series} fell");
        }
    }
}

/// A held statement's wait is timed by how it ended; audit appends are timed.
#[tokio::test(flavor = "multi_thread")]
async fn approval_waits_and_audit_writes_are_timed() {
    let h = Harness::start(&[common::GUARDED]).await;
    let mut claims = h.issuer.claims("alice");
    claims.insert("groups".into(), json!(["dba"]));
    let alice = h.issuer.mint(&claims);
    let before = scrape(&h).await;
    let lease = h.lease("agent:x", json!({})).await;
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());
    for (order, verb) in [(1, "approve"), (2, "deny")] {
        let sql = format!("DELETE FROM crm.orders WHERE id = {order}");
        let run = tokio::spawn({
            let c = c.clone();
            async move { c.simple_query(&sql).await.map(|_| ()) }
        });
        let id = loop {
            let (_, list) = h
                .call(
                    reqwest::Method::GET,
                    "/v1/approvals?state=pending",
                    Some(&alice),
                    None,
                )
                .await;
            if let Some(id) = list["approvals"][0]["id"].as_str() {
                break id.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (status, body) = h
            .call(
                reqwest::Method::POST,
                &format!("/v1/approvals/{id}/{verb}"),
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let ran = run.await.unwrap();
        assert_eq!(ran.is_ok(), verb == "approve", "{ran:?}");
    }
    let after = scrape(&h).await;
    let moved = |series: &str| after.get(series) - before.get(series);
    let waited = "pgid_proxy_approval_wait_seconds";
    assert_eq!(
        moved(&format!("{waited}_count{{outcome=\"approved\"}}")),
        1.0
    );
    assert_eq!(
        moved(&format!("{waited}_count{{outcome=\"refused\"}}")),
        1.0
    );
    assert_eq!(
        moved(&format!("{waited}_count{{outcome=\"abandoned\"}}")),
        0.0
    );
    assert!(moved(&format!("{waited}_sum{{outcome=\"approved\"}}")) > 0.0);
    // The lease, the session start and the requests were each made durable before going on.
    assert!(
        moved("pgid_audit_write_seconds_count") >= 4.0,
        "{}",
        after.text
    );
    assert!(moved("pgid_audit_write_seconds_sum") > 0.0);
    assert_cumulative(&after);
    assert_never_fell(&before, &after);
}
