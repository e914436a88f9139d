//! This process's liveness, as other pgid instances see it: a session-level advisory lock held on
//! a dedicated connection for as long as the process lives. Lease intent rows carry the instance
//! id, so a reaper can tell a lease being created right now from one whose creator crashed.

use rand::Rng;
use tokio_postgres::NoTls;

use super::StoreError;

/// First key of pgid's instance advisory locks (the second is the instance id).
pub const INSTANCE_LOCK_SPACE: i32 = 0x7067_6964;

pub struct InstanceLock {
    pub id: i32,
    _client: tokio_postgres::Client,
}

impl InstanceLock {
    pub async fn acquire(config: &tokio_postgres::Config) -> Result<InstanceLock, StoreError> {
        let (client, conn) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "instance lock connection closed");
            }
        });
        loop {
            // Ids are positive so they map to an oid unchanged.
            let id: i32 = rand::thread_rng().gen_range(1..i32::MAX);
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&INSTANCE_LOCK_SPACE, &id],
                )
                .await?
                .get(0);
            if got {
                return Ok(InstanceLock {
                    id,
                    _client: client,
                });
            }
        }
    }
}
