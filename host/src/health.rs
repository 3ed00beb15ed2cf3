//! Replica health: a probe (the adapter's `health` and `props`) at start and on an interval
//! per pool. A replica is placed only while its last probe said ready; a panicking adapter or
//! a dead engine takes it out at once (`Replica::mark_unhealthy`), and the next successful
//! probe brings it back.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::adapters::EngineClient;
use crate::pool::Pool;

/// What one probe learned.
#[derive(Debug, Default)]
pub struct Probe {
    /// The engine answered at all.
    pub live: bool,
    pub ready: bool,
    pub engine_version: Option<String>,
    pub slots: Option<u32>,
    pub ctx_max: Option<u32>,
    /// Why the replica is not ready.
    pub why: Option<String>,
}

/// Asks the replica's engine how it is (blocking: adapter calls are FFI calls).
pub fn probe(client: &dyn EngineClient) -> Probe {
    let health = match client.health() {
        Ok(h) => h,
        Err(e) => {
            return Probe {
                why: Some(format!("health check failed: {e}")),
                ..Probe::default()
            };
        }
    };
    if !health.ready {
        return Probe {
            live: health.live,
            why: Some(format!(
                "not ready ({}): {}",
                if health.live { "live" } else { "not live" },
                health.message
            )),
            ..Probe::default()
        };
    }
    match client.props() {
        Ok(p) => Probe {
            live: true,
            ready: p.slots_total > 0,
            why: (p.slots_total == 0).then(|| "the engine reports no slots".to_owned()),
            engine_version: Some(p.engine_version),
            slots: Some(p.slots_total),
            ctx_max: (p.ctx_max > 0).then_some(p.ctx_max),
        },
        Err(e) => Probe {
            live: true,
            why: Some(format!("props failed: {e}")),
            ..Probe::default()
        },
    }
}

/// Polls every replica of the pool every `interval` until the pool is gone.
pub fn spawn_health_poller(pool: Weak<Pool>, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is now; startup has just probed
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            poll_once(&pool).await;
        }
    });
}

async fn poll_once(pool: &Arc<Pool>) {
    let mut changed = false;
    for idx in 0..pool.replicas.len() {
        let client = pool.replicas[idx].client();
        let Ok(p) = tokio::task::spawn_blocking(move || probe(client.as_ref())).await else {
            continue;
        };
        let replica = &pool.replicas[idx];
        let why = p.why.clone();
        replica.set_live(p.live);
        if replica.observe(p.ready, p.engine_version, p.slots, p.why) {
            changed = true;
            if replica.is_healthy() {
                tracing::info!(pool_id = %pool.id, replica_id = %replica.id, "replica ready");
            } else {
                tracing::warn!(
                    pool_id = %pool.id, replica_id = %replica.id,
                    reason = why.as_deref().unwrap_or(""), "replica not ready"
                );
            }
        }
    }
    if changed {
        pool.publish();
        pool.wake.notify_one();
    }
}

/// Takes a replica out of placement after its adapter panicked or its engine vanished
/// mid-task; the health poller brings it back once a probe says it is ready.
pub fn take_out(pool: &Pool, replica: &crate::pool::Replica, why: &str) {
    if replica.mark_unhealthy(why) {
        tracing::warn!(
            pool_id = %pool.id, replica_id = %replica.id, reason = why,
            "replica marked unhealthy until a health probe says it is ready"
        );
        pool.publish();
    }
}
