//! Per-identity limits on issuing leases, the broker's request deadlines and the proxy's
//! connection cap, each seen as a client sees it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wire::RawClient;
use common::{eventually, Harness, NIGHTLY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One line of `/metrics`, as a number.
async fn metric(h: &Harness, name: &str) -> u64 {
    let text = h.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

/// Stops pgid, replaces `from` with `to` in its configuration, starts it again.
async fn reconfigure(h: &mut Harness, from: &str, to: &str) {
    h.stop_pgid().await;
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    assert!(config.contains(from), "{config}");
    std::fs::write(&h.config_path, config.replacen(from, to, 1)).unwrap();
    h.start_pgid().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_issuing_in_a_loop_hits_the_rate_limit() {
    let h = Harness::start_with(&[NIGHTLY], "issue_rate = 6\nissue_burst = 3\n").await;
    let token = h.token("svc:nightly-report");
    let mut created = 0;
    let refused = loop {
        let resp = h
            .http
            .post(format!("{}/v1/credentials", h.base))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        if resp.status() != StatusCode::CREATED {
            break resp;
        }
        created += 1;
        assert!(created <= 3, "more than the burst went through");
    };
    assert_eq!(created, 3);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // 6 per minute: one every 10 s.
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("issue_rate is 6 per minute") && message.contains("burst of 3"),
        "{message}"
    );
    assert_eq!(metric(&h, "pgid_leases_rate_limited_total").await, 1);
    assert_eq!(h.lease_count().await, 3);
    // Another identity has its own bucket.
    let (status, _) = h.issue(&h.token("svc:other"), json!({})).await;
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quota_refuses_one_lease_too_many_until_one_is_revoked() {
    let h = Harness::start_with(&[NIGHTLY], "max_active_per_identity = 2\n").await;
    let token = h.token("svc:nightly-report");
    // Concurrent requests cannot both slip under the cap.
    let results = futures::future::join_all((0..5).map(|_| h.issue(&token, json!({})))).await;
    let leases: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, l)| l)
        .collect();
    assert_eq!(leases.len(), 2, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"], "lease_quota");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("max_active_per_identity is 2"),
            "{message}"
        );
    }
    assert_eq!(metric(&h, "pgid_leases_quota_refused_total").await, 3);

    let id = leases[0]["lease_id"].as_str().unwrap();
    let (status, _) = h
        .call(
            Method::DELETE,
            &format!("/v1/credentials/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let (status, lease) = h.issue(&token, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{lease}");
    let (status, _) = h.issue(&token, json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_request_body_is_cut_at_the_deadline() {
    let mut h = Harness::start(&[NIGHTLY]).await;
    reconfigure(
        &mut h,
        "[broker]\n",
        "[broker]\nbody_timeout = \"1s\"\nheader_timeout = \"1s\"\n",
    )
    .await;
    let port: u16 = h.base.rsplit(':').next().unwrap().parse().unwrap();
    let tls = Arc::new(pgid::tls::client_config(Some(&h.ca_path())).unwrap());
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap()
    };

    // A body announced as 1,000 bytes, sent one byte every 200 ms.
    let mut s = connect().await;
    let token = h.token("svc:nightly-report");
    s.write_all(
        format!(
            "POST /v1/credentials HTTP/1.1\r\nhost: pgid\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b" ").await.is_err() || s.flush().await.is_err() {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
            let mut buf = [0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
        String::from_utf8_lossy(&rest).into_owned()
    };
    let answer = trickle.await;
    let elapsed = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(metric(&h, "pgid_broker_body_timeouts_total").await, 1);

    // Headers that never finish: the connection is closed at the header deadline.
    let mut s = connect().await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: pgid\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(4));

    // A request that arrives in time is served.
    let (status, lease) = h.issue(&token, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{lease}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_refuses_connections_past_its_cap_with_53300() {
    let mut h = Harness::start(&[NIGHTLY]).await;
    reconfigure(&mut h, "[proxy]\n", "[proxy]\nmax_connections = 2\n").await;
    let lease = h.lease("svc:nightly-report", json!({})).await;
    let (user, password) = (
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
    );
    let port = h.proxy_port();
    let first = RawClient::login(port, user, password, &[]).await.unwrap();
    let _second = RawClient::login(port, user, password, &[]).await.unwrap();
    let Err((code, message)) = RawClient::login(port, user, password, &[]).await else {
        panic!("a third connection was accepted");
    };
    assert_eq!(code, "53300");
    assert_eq!(message, "pgid: too many connections");
    assert_eq!(metric(&h, "pgid_proxy_connections_refused_total").await, 1);
    assert_eq!(metric(&h, "pgid_proxy_connections").await, 2);

    drop(first);
    assert!(
        eventually(Duration::from_secs(5), || async {
            RawClient::login(port, user, password, &[]).await.is_ok()
        })
        .await,
        "a slot did not come back"
    );
}
