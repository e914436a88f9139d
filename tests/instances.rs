//! Several pgid instances behind a real TCP load balancer (HAProxy, round robin, health-checked
//! on `/readyz`), with the state database restarted in the middle: readiness follows the outage,
//! and afterwards revocations, cancels and policy reloads still cross instances.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgid::app::Running;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// HAProxy in the foreground, killed when dropped.
struct LoadBalancer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LoadBalancer {
    /// Round robin over the proxies; a server counts as up while its broker's `/readyz` says so.
    fn start(servers: &[(u16, u16)]) -> LoadBalancer {
        let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy missing: run scripts/setup --test (apt-get install -y haproxy)");
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = format!(
            "global\n  maxconn 512\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
             timeout client 60s\n  timeout server 60s\nfrontend pg\n  bind 127.0.0.1:{port}\n  \
             default_backend pgid\nbackend pgid\n  balance roundrobin\n  \
             option httpchk GET /readyz\n  http-check expect status 200\n  \
             default-server inter 200ms fall 1 rise 1 check-ssl verify none\n"
        );
        for (i, (proxy, broker)) in servers.iter().enumerate() {
            cfg.push_str(&format!(
                "  server pgid{i} 127.0.0.1:{proxy} check port {broker}\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = std::process::Command::new(haproxy)
            .args(["-db", "-q", "-f"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy");
        LoadBalancer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(h: &Harness, broker: u16, path: &str) -> (StatusCode, Value) {
    let resp = h
        .http
        .get(format!("https://127.0.0.1:{broker}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn all_ready(h: &Harness, brokers: &[u16], want: bool) -> bool {
    for b in brokers {
        if (get(h, *b, "/readyz").await.0 == StatusCode::OK) != want {
            return false;
        }
    }
    true
}

/// A lease's DSN, pointed at the load balancer.
fn through(lease: &Value, port: u16) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{port}/app",
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap()
    )
}

/// Which instance holds the session whose backend pid is `pid`.
fn owner(instances: &[&Running], pid: i32) -> Option<usize> {
    instances
        .iter()
        .position(|r| r.proxy.cancels.holds_pid(pid))
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_behind_a_load_balancer_survive_a_state_database_restart() {
    let started = Instant::now();
    let mut h = Harness::start(&[AGENT]).await;
    let second = h.start_second().await;
    let third = h.start_second().await;
    let ports = |r: &Running| (r.proxy_addr.port(), r.broker_addr.port());
    let servers = [
        ports(h.pgid.as_ref().unwrap()),
        ports(&second),
        ports(&third),
    ];
    let brokers: Vec<u16> = servers.iter().map(|s| s.1).collect();
    let lb = LoadBalancer::start(&servers);
    let wait = Duration::from_secs(20);
    assert!(eventually(wait, || all_ready(&h, &brokers, true)).await);

    // The state database goes away: every instance is alive but not ready, and says why.
    tokio::task::block_in_place(|| h.pg.stop_server());
    assert!(
        eventually(wait, || all_ready(&h, &brokers, false)).await,
        "/readyz turned false during the outage"
    );
    for b in &brokers {
        let (status, body) = get(&h, *b, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains("state database unreachable"), "{body}");
        assert!(reason.contains("instance lock"), "{body}");
        assert_eq!(get(&h, *b, "/healthz").await.0, StatusCode::OK, "alive");
    }
    tokio::task::block_in_place(|| h.pg.start_server()).expect("restart postgres");
    assert!(
        eventually(wait, || all_ready(&h, &brokers, true)).await,
        "/readyz turned true again after the restart"
    );

    // Revocation on one instance ends the lease's sessions on every instance.
    let instances = [h.pgid.as_ref().unwrap(), &second, &third];
    let lease = h.lease("agent:app", json!({})).await;
    let mut sessions = Vec::new();
    let mut owners = std::collections::HashSet::new();
    // HAProxy's own checks bring the servers back a moment after /readyz does (until then it
    // closes connections): connect until each instance has a session.
    let deadline = Instant::now() + wait;
    while owners.len() < instances.len() {
        assert!(Instant::now() < deadline, "sessions reached {owners:?}");
        let Ok(c) = connect(&through(&lease, lb.port)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let pid = backend_pid(&c).await;
        owners.insert(owner(&instances, pid).expect("some instance owns the session"));
        sessions.push(c);
    }
    let path = format!("/v1/credentials/{}", lease["lease_id"].as_str().unwrap());
    let (status, body) = h
        .call(Method::DELETE, &path, Some(&h.token("agent:app")), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (i, s) in sessions.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), || async { s.is_closed() }).await,
            "session {i} ended after the revocation on another instance"
        );
    }

    // A cancel through the load balancer lands on the next instance (round robin) and is routed
    // to the one that holds the session.
    let lease = h.lease("agent:app", json!({})).await;
    let client = connect(&through(&lease, lb.port)).await.unwrap();
    let pid = backend_pid(&client).await;
    let holder = owner(&instances, pid).unwrap();
    let routed = |instances: &[&Running]| -> Vec<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        instances
            .iter()
            .map(|r| {
                let c = &r.proxy.cancels;
                (c.routed_out.load(Relaxed), c.routed_in.load(Relaxed))
            })
            .collect()
    };
    let before = routed(&instances);
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await;
        (client, r)
    });
    let su = h.superuser().await;
    assert!(
        eventually(wait, || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%' \
                 AND state = 'active'",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await
    );
    let cancelled_at = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (_client, result) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the statement was cancelled")
        .unwrap();
    let err = result.expect_err("cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err:?}"
    );
    let after = routed(&instances);
    assert_eq!(
        after[holder].1 - before[holder].1,
        1,
        "the owner acted on a routed cancel: {before:?} → {after:?}"
    );
    let announced: u64 = (0..3).map(|i| after[i].0 - before[i].0).sum();
    assert_eq!(announced, 1, "one other instance announced it");
    assert_eq!(after[holder].0, before[holder].0);
    eprintln!("cancel routed in {:?}", cancelled_at.elapsed());

    // A policy reload on one instance reaches the others, which read their own files.
    let (status, _) = h
        .call(
            Method::POST,
            "/v1/credentials",
            Some(&h.token("agent:reader")),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    std::fs::write(h.state.path().join("policies/reader.toml"), READER).unwrap();
    h.pgid.as_ref().unwrap().reload().await.unwrap();
    for r in [&second, &third] {
        let issued = eventually(Duration::from_secs(10), || async {
            let resp = h
                .http
                .post(format!(
                    "https://127.0.0.1:{}/v1/credentials",
                    r.broker_addr.port()
                ))
                .bearer_auth(h.token("agent:reader"))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            resp.status() == StatusCode::CREATED
        })
        .await;
        assert!(
            issued,
            "the reload reached the instance on {}",
            r.broker_addr
        );
    }
    let reloads = h
        .audit_records()
        .iter()
        .filter(|r| r["kind"] == "policy.reloaded")
        .count();
    assert_eq!(reloads, 3, "each instance reloaded once");

    drop(lb);
    second.shutdown().await;
    third.shutdown().await;
    h.stop_pgid().await;
    eprintln!("took {:?}", started.elapsed());
}
