//! Example placement policy ("cost-aware" in time): send each task where it is expected to
//! finish first, from the measured rates the host puts in the snapshot: the wait for a slot
//! (queue depth ahead per slot × expected service time) plus the task's own service time
//! (first-token time + expected tokens at the replica's tokens/s). Pins and avoids are
//! honoured; no decision log beyond the estimate.
//!
//! Load it with `[policies.placement] component = "placement-fastest.wasm"`.

wit_bindgen::generate!({
    world: "placement-policy",
    path: "../../../wit/0.2.0",
});

use exports::orchd::policy::lifecycle::Guest as LifecycleGuest;
use exports::orchd::policy::placement::{
    Assignment, Decision, Guest as PlacementGuest, Mode, Pool, Replica, Snapshot, Stage,
};
use orchd::policy::types::PolicyInfo;

/// Tokens assumed per task when estimating service time.
const TOKENS: f64 = 256.0;

/// Expected ms until a task placed on `replica` of `pool` finishes.
pub fn finish_ms(pool: &Pool, replica: &Replica, stage: Stage) -> f64 {
    let service = replica.first_token_ms as f64 + TOKENS * 1000.0 / replica.tokens_per_s.max(0.001);
    let waiting = match stage {
        Stage::Dispatch => 0.0,
        Stage::Admission => {
            let slots: u32 = pool.replicas.iter().map(|r| r.slots_total).sum();
            let busy =
                pool.queue_depth + pool.replicas.iter().map(|r| r.active_leases).sum::<u32>();
            let free: u32 = pool.replicas.iter().map(|r| r.slots_free).sum();
            if free > 0 {
                0.0
            } else {
                f64::from(busy) / f64::from(slots.max(1)) * service
            }
        }
    };
    waiting + service
}

pub fn place(s: &Snapshot) -> Decision {
    let job = &s.job;
    let best = s
        .candidates
        .iter()
        .filter(|p| p.ready && !p.draining && job.ctx <= p.ctx_max)
        .filter(|p| !job.avoid_pools.contains(&p.pool_id))
        .filter(|p| job.mode != Mode::Pin || job.pin_pool_id.as_ref() == Some(&p.pool_id))
        .flat_map(|p| p.replicas.iter().map(move |r| (p, r)))
        .filter(|(_, r)| r.ready && (s.stage == Stage::Admission || r.slots_free > 0))
        .map(|(p, r)| (finish_ms(p, r, s.stage), p, r))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.pool_id.cmp(&b.1.pool_id)));
    match (best, s.stage) {
        (Some((ms, pool, replica)), _) => Decision::Assign(Assignment {
            pool_id: pool.pool_id.clone(),
            replica_id: replica.replica_id.clone(),
            decision_log: format!("{{\"expected_finish_ms\":{ms:.0}}}"),
        }),
        (None, Stage::Dispatch) => Decision::Wait,
        (None, Stage::Admission) => Decision::NoCapacity("no feasible replica".to_owned()),
    }
}

struct Policy;

impl LifecycleGuest for Policy {
    fn info() -> PolicyInfo {
        PolicyInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        report_panics();
        match config.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("placement-fastest takes no options, got {other}")),
        }
    }
}

impl PlacementGuest for Policy {
    fn place(snapshot: Snapshot) -> Decision {
        place(&snapshot)
    }
}

/// Reports a panic through the host's log before the trap, so the host can say why the
/// call failed (in `last_error` and its own log) instead of showing a bare wasm trap.
fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        orchd::policy::host::log(orchd::policy::host::Level::Error, &info.to_string());
    }));
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::orchd::policy::placement::Job;
    use crate::orchd::policy::types::Priority;

    fn pool(id: &str, tps: f64, free: u32, depth: u32) -> Pool {
        Pool {
            pool_id: id.into(),
            engine: "e".into(),
            model_ref: "m".into(),
            ready: true,
            draining: false,
            ctx_max: 1000,
            queue_depth: depth,
            replicas: vec![Replica {
                replica_id: format!("{id}-0"),
                ready: true,
                slots_total: 2,
                slots_free: free,
                active_leases: 2 - free,
                tokens_per_s: tps,
                first_token_ms: 50,
                vram_free_bytes: None,
                device_mask: None,
                session_affinity: false,
                prefix_blocks: 0,
                ejected: false,
            }],
        }
    }

    fn snapshot(stage: Stage, candidates: Vec<Pool>) -> Snapshot {
        Snapshot {
            now_ms: 0,
            stage,
            job: Job {
                task_id: "t".into(),
                session_id: "s".into(),
                engine: "e".into(),
                model_ref: "m".into(),
                ctx: 10,
                priority: Priority::Interactive,
                mode: Mode::Auto,
                pin_pool_id: None,
                prefer_pools: vec![],
                avoid_pools: vec![],
                require_device_mask: None,
                allow_fallback: true,
                prompt_blocks: 0,
            },
            candidates,
        }
    }

    fn chosen(d: Decision) -> String {
        match d {
            Decision::Assign(a) => a.pool_id,
            Decision::Wait => "wait".into(),
            Decision::NoCapacity(_) => "none".into(),
        }
    }

    #[test]
    fn the_faster_replica_wins_unless_its_queue_costs_more() {
        let fast_idle = vec![pool("slow", 50.0, 2, 0), pool("fast", 200.0, 1, 0)];
        assert_eq!(
            chosen(place(&snapshot(Stage::Admission, fast_idle))),
            "fast"
        );
        let fast_busy = vec![pool("slow", 50.0, 2, 0), pool("fast", 200.0, 0, 20)];
        assert_eq!(
            chosen(place(&snapshot(Stage::Admission, fast_busy))),
            "slow"
        );
        let all_busy = vec![pool("fast", 200.0, 0, 0)];
        assert_eq!(chosen(place(&snapshot(Stage::Dispatch, all_busy))), "wait");
    }
}
