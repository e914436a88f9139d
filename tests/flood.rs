//! An unauthenticated audit flood (issue 14, point 6): refused bearer tokens are recorded one by
//! one only within a budget per address and overall; the rest are counted for a summary record,
//! and the text a token chose is capped.

mod common;

use base64::Engine;
use common::{Harness, AGENT};
use futures::StreamExt;
use reqwest::Method;

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_bad_tokens_write_a_bounded_number_of_records() {
    let h = Harness::start(&[AGENT]).await;
    let before = h.audit_records().len();
    // A token naming an untrusted issuer of 200 characters (the refusal quotes it).
    let iss = format!("https://{}.example", "x".repeat(200));
    let token = format!(
        "{}.{}.c2ln",
        b64(&serde_json::json!({"alg": "RS256", "kid": "k"})),
        b64(&serde_json::json!({"iss": iss, "sub": "a", "aud": "pgid", "exp": 4_000_000_000u64}))
    );
    let h = &h;
    let token = &token;
    let refused = futures::stream::iter(0..10_000)
        .map(|i| async move {
            let bearer = if i % 2 == 0 {
                token.as_str()
            } else {
                "not-a-token"
            };
            h.call(Method::POST, "/v1/credentials", Some(bearer), None)
                .await
                .0
        })
        .buffer_unordered(32)
        .filter(|s| futures::future::ready(s.as_u16() == 401))
        .count()
        .await;
    assert_eq!(refused, 10_000);
    let records: Vec<serde_json::Value> = h.audit_records()[before..]
        .iter()
        .filter(|r| r["kind"] == "credential.denied")
        .cloned()
        .collect();
    assert!(
        records.len() <= pgid::audit::refusals::PER_SOURCE as usize,
        "{} records for one address",
        records.len()
    );
    assert!(!records.is_empty());
    for r in &records {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.chars().count() <= pgid::audit::refusals::TEXT_CHARS + 1,
            "{reason}"
        );
        assert!(r.to_string().len() < 600, "{r}");
    }
    let (_, metrics) = h.call(Method::GET, "/metrics", None, None).await;
    let text = metrics["raw"].as_str().unwrap_or_default().to_string();
    let suppressed = text
        .lines()
        .find_map(|l| l.strip_prefix("pgid_audit_refusals_suppressed_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no suppressed count in /metrics:\n{text}"));
    assert_eq!(suppressed as usize + records.len(), 10_000);
}
