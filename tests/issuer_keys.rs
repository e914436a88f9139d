//! Token checks while the issuer is slow or down (issue 14, point 2), through the real broker:
//! the development issuer stalled (it accepts discovery and JWKS requests and never answers),
//! and its requests counted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgid::dev::KeyAlg;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Checks one token against the broker: (status, body, Retry-After, latency).
async fn check(h: &Harness, path: &str, token: &str) -> (StatusCode, Value, Option<u64>, Duration) {
    let started = Instant::now();
    let resp = h
        .http
        .get(format!("{}{path}", h.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, retry_after, started.elapsed())
}

/// `n` concurrent checks of `token`; their answers and latencies.
async fn burst(
    h: &Harness,
    n: usize,
    path: &str,
    token: &str,
) -> Vec<(StatusCode, Value, Option<u64>, Duration)> {
    futures::future::join_all((0..n).map(|_| check(h, path, token))).await
}

fn slowest(answers: &[(StatusCode, Value, Option<u64>, Duration)]) -> Duration {
    answers.iter().map(|a| a.3).max().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_issuer_costs_one_fetch_per_burst_and_cached_keys_answer_at_once() {
    // One fetch may take 1 s; keys are refreshed when older than 1 s; back-off 3 s, then 6 s.
    let h = Harness::start_with_issuer(
        &[NIGHTLY],
        "",
        "jwks_fetch_timeout = \"1s\"\njwks_refresh_interval = \"1s\"\njwks_refetch_cooldown = \"3s\"\n",
    )
    .await;
    let token = h.token("svc:nightly-report");
    let nowhere = "/v1/credentials/00000000-0000-0000-0000-000000000000";

    // 1. Nothing cached, issuer stalled: the burst shares one fetch and its failure — answered
    //    together after the one fetch's deadline, not one deadline after another.
    h.issuer.stall(true);
    let answers = burst(&h, 20, nowhere, &token).await;
    for (status, body, retry_after, _) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "unavailable", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("signing keys cannot be fetched right now; retry in"),
            "{message}"
        );
        assert!(!message.contains(&token[..20]), "the token is not echoed");
        assert!(
            retry_after.is_some_and(|s| (1..=3).contains(&s)),
            "{retry_after:?}"
        );
    }
    let (fastest, slow) = (
        answers.iter().map(|a| a.3).min().unwrap(),
        slowest(&answers),
    );
    println!("empty cache, issuer stalled: 20 checks answered in {fastest:?} … {slow:?}");
    assert!(slow < Duration::from_millis(2_500), "{slow:?}");
    assert!(
        slow - fastest < Duration::from_millis(1_000),
        "{fastest:?} … {slow:?}"
    );
    assert_eq!(h.issuer.key_requests(), 1, "one fetch for the burst");

    // 2. During the back-off: answered at once, no fetch.
    let answers = burst(&h, 10, nowhere, &token).await;
    assert!(answers
        .iter()
        .all(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE));
    let slow = slowest(&answers);
    println!("back-off: 10 checks answered within {slow:?}");
    assert!(slow < Duration::from_millis(500), "{slow:?}");
    assert_eq!(h.issuer.key_requests(), 1);

    // 3. The issuer is back: after the back-off the keys load (discovery + JWKS).
    h.issuer.stall(false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            check(&h, nowhere, &token).await.0 == StatusCode::NOT_FOUND
        })
        .await
    );
    assert_eq!(h.issuer.key_requests(), 3);
    let lease = h.lease("svc:nightly-report", json!({})).await;
    let mine = format!("/v1/credentials/{}", lease["lease_id"].as_str().unwrap());
    // Warm the broker connections, and measure with the issuer up.
    let answers = burst(&h, 50, &mine, &token).await;
    assert!(answers.iter().all(|a| a.0 == StatusCode::OK));
    println!("issuer up: 50 checks, slowest {:?}", slowest(&answers));
    // A refresh the burst may have started ends before the issuer stalls again.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 4. Stalled again with the cached keys stale: 50 concurrent checks answer from the cache at
    //    once, and one background refresh goes out.
    h.issuer.stall(true);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let before = h.issuer.key_requests();
    let answers = burst(&h, 50, &mine, &token).await;
    for (status, body, _, _) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    let slow = slowest(&answers);
    println!("issuer stalled, keys cached (stale): 50 checks, slowest {slow:?}");
    assert!(slow < Duration::from_secs(1), "{slow:?}");
    assert!(
        eventually(Duration::from_secs(2), || async {
            h.issuer.key_requests() == before + 1
        })
        .await,
        "one background refresh"
    );

    // 5. A token signed with a key pgid has not seen: it waits for the refresh in flight (at
    //    most its 1 s deadline) and fails with a clear error; during the back-off that follows
    //    such tokens fail at once, with no fetch, while cached keys go on answering.
    h.issuer.add_key("dev-2", KeyAlg::EdDsa, true);
    let rotated = h
        .issuer
        .mint_with("dev-2", &h.issuer.claims("svc:nightly-report"));
    let (status, body, retry_after, took) = check(&h, &mine, &rotated).await;
    println!("unknown kid, first check: {status} after {took:?}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["message"],
        format!(
            "signing key \"dev-2\" is not cached and the issuer's signing keys cannot be fetched right now; retry in {} s",
            retry_after.unwrap()
        )
    );
    assert_eq!(body["retry_after"], json!(retry_after.unwrap()));
    assert!(took < Duration::from_millis(2_000), "{took:?}");
    let answers = burst(&h, 10, &mine, &rotated).await;
    assert!(answers
        .iter()
        .all(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE));
    let slow = slowest(&answers);
    println!("unknown kid during the back-off: 10 checks, slowest {slow:?}");
    assert!(slow < Duration::from_millis(500), "{slow:?}");
    let answers = burst(&h, 10, &mine, &token).await;
    assert!(answers.iter().all(|a| a.0 == StatusCode::OK));
    assert!(slowest(&answers) < Duration::from_secs(1));
    assert_eq!(
        h.issuer.key_requests(),
        before + 1,
        "no fetch during the back-off"
    );

    // 6. The issuer is back: the new key is fetched once the back-off is over.
    h.issuer.stall(false);
    assert!(
        eventually(Duration::from_secs(15), || async {
            check(&h, &mine, &rotated).await.0 == StatusCode::OK
        })
        .await
    );
    assert_eq!(h.issuer.key_requests(), before + 3);
}
