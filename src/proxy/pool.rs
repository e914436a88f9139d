//! Upstream connections kept after their client leaves, for the same lease's next client with the
//! same startup parameters. Session state is reset with `DISCARD ALL` before reuse; a connection
//! that cannot be reset is closed. Pools never mix leases. A connection is handed out only if
//! its server has been quiet while it was idle: an idle backend sends nothing, so anything it did
//! send (the FATAL of `pg_terminate_backend`, a shutdown or failover) or a closed socket means it
//! is gone, and it is closed instead of reaching a client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::upstream::{PoolKey, Upstream};
use super::wire::backend::{Backend, TransactionStatus};
use super::wire::frontend;

const MAX_IDLE_PER_KEY: usize = 64;
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

type Idle = HashMap<PoolKey, Vec<(Upstream, Instant)>>;

pub struct Pool {
    idle: Mutex<Idle>,
    idle_timeout: Duration,
    /// `pgid_proxy_pool_idle_connections`, set after each change under the lock.
    gauge: Gauge,
}

impl Pool {
    pub fn new(idle_timeout: Duration, gauge: Gauge) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
            gauge,
        }
    }

    fn publish(&self, idle: &Idle) {
        self.gauge
            .set(idle.values().map(Vec::len).sum::<usize>() as i64);
    }

    pub fn take(&self, key: &PoolKey) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some((up, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && up.stream.is_quiet() {
                found = Some(up);
                break;
            }
            close(up);
        }
        self.publish(&idle);
        found
    }

    /// Resets and keeps `up`, or closes it if it cannot be reset.
    pub async fn give_back(&self, mut up: Upstream) {
        match tokio::time::timeout(RESET_TIMEOUT, reset(&mut up)).await {
            Ok(Ok(())) => {
                let mut idle = self.idle.lock().unwrap();
                let list = idle.entry(up.key.clone()).or_default();
                if list.len() < MAX_IDLE_PER_KEY {
                    list.push((up, Instant::now()));
                    self.publish(&idle);
                    return;
                }
                drop(idle);
                close(up);
            }
            _ => close(up),
        }
    }

    /// Closes one idle connection of `lease` (to free a slot under its connection limit).
    pub fn evict_one(&self, lease: Uuid) -> bool {
        let mut idle = self.idle.lock().unwrap();
        for (key, list) in idle.iter_mut() {
            if key.lease == lease {
                if let Some((up, _)) = list.pop() {
                    close(up);
                    self.publish(&idle);
                    return true;
                }
            }
        }
        false
    }

    pub fn forget_lease(&self, lease: Uuid) {
        let mut idle = self.idle.lock().unwrap();
        idle.retain(|k, list| {
            if k.lease == lease {
                list.drain(..).for_each(|(up, _)| close(up));
                false
            } else {
                true
            }
        });
        self.publish(&idle);
    }

    /// Closes connections idle for longer than the timeout.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap();
        for list in idle.values_mut() {
            let (keep, old): (Vec<_>, Vec<_>) = list.drain(..).partition(|(up, since)| {
                since.elapsed() < self.idle_timeout && up.stream.is_quiet()
            });
            *list = keep;
            old.into_iter().for_each(|(up, _)| close(up));
        }
        idle.retain(|_, l| !l.is_empty());
        self.publish(&idle);
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().values().map(Vec::len).sum()
    }
}

async fn reset(up: &mut Upstream) -> Result<(), ()> {
    let mut out = BytesMut::new();
    frontend::query(&mut out, b"DISCARD ALL");
    up.stream.write_all(&out).await.map_err(|_| ())?;
    loop {
        let m = up.frames.read(&mut up.stream).await.map_err(|_| ())?;
        match Backend::decode(m.tag, &m.body).map_err(|_| ())? {
            Backend::ParameterStatus { name, value } => up.set_param(
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ),
            Backend::ErrorResponse(_) => return Err(()),
            Backend::ReadyForQuery(status) => {
                return if status == TransactionStatus::Idle && up.frames.buf.is_empty() {
                    Ok(())
                } else {
                    Err(())
                }
            }
            _ => {}
        }
    }
}

/// Sends Terminate and closes, in the background.
pub fn close(mut up: Upstream) {
    tokio::spawn(async move {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = up.stream.write_all(&out).await;
        let _ = up.stream.shutdown().await;
    });
}
