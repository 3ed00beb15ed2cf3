//! The placement decision as plain Rust.

use serde::Serialize;

use crate::exports::orchd::policy::placement::{
    Assignment, Decision, Job, Mode, Pool, Replica, Snapshot, Stage,
};

#[derive(Serialize, Default)]
struct Log {
    stage: &'static str,
    candidates: Vec<String>,
    filtered: Vec<(String, &'static str)>,
    tie_breakers: Vec<&'static str>,
    pinned: bool,
    fallback: bool,
    chosen: Option<(String, String)>,
}

fn feasible_pool(job: &Job, pool: &Pool) -> Result<(), &'static str> {
    if !pool.ready {
        return Err("not ready");
    }
    if pool.draining {
        return Err("draining");
    }
    if job.ctx > pool.ctx_max {
        return Err("ctx above ctx_max");
    }
    Ok(())
}

/// Every device the job requires is in the replica's mask (comma-separated ids).
fn has_devices(required: Option<&str>, replica: &Replica) -> bool {
    let Some(required) = required else {
        return true;
    };
    let have: Vec<&str> = replica
        .device_mask
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    required
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .all(|d| have.contains(&d))
}

fn feasible_replica(job: &Job, r: &Replica) -> bool {
    r.ready && has_devices(job.require_device_mask.as_deref(), r)
}

/// Work per slot: queued plus running over capacity (lower is better).
fn pool_load(pool: &Pool, job: &Job) -> f64 {
    let slots: u32 = pool
        .replicas
        .iter()
        .filter(|r| feasible_replica(job, r))
        .map(|r| r.slots_total)
        .sum();
    let busy: u32 = pool.replicas.iter().map(|r| r.active_leases).sum();
    f64::from(pool.queue_depth + busy) / f64::from(slots.max(1))
}

fn replica_load(r: &Replica) -> f64 {
    f64::from(r.active_leases) / f64::from(r.slots_total.max(1))
}

/// Chooses among `pools` (already filtered) by load, affinity, then id.
fn best<'a>(
    job: &Job,
    pools: &[&'a Pool],
    log: &mut Log,
    stage: Stage,
) -> Option<(&'a Pool, &'a Replica)> {
    log.tie_breakers = vec!["least_loaded", "session_affinity", "lexicographic_id"];
    let mut options: Vec<(&Pool, &Replica)> = pools
        .iter()
        .flat_map(|p| p.replicas.iter().map(move |r| (*p, r)))
        .filter(|(_, r)| feasible_replica(job, r))
        .filter(|(_, r)| stage == Stage::Admission || r.slots_free > 0)
        .collect();
    options.sort_by(|(pa, ra), (pb, rb)| {
        let load = |p: &Pool, r: &Replica| match stage {
            Stage::Admission => pool_load(p, job),
            Stage::Dispatch => replica_load(r),
        };
        load(pa, ra)
            .total_cmp(&load(pb, rb))
            .then(rb.session_affinity.cmp(&ra.session_affinity))
            .then(pa.pool_id.cmp(&pb.pool_id))
            .then(ra.replica_id.cmp(&rb.replica_id))
    });
    options.into_iter().next()
}

pub fn place(snapshot: &Snapshot) -> Decision {
    let job = &snapshot.job;
    let mut log = Log {
        stage: match snapshot.stage {
            Stage::Admission => "admission",
            Stage::Dispatch => "dispatch",
        },
        candidates: snapshot
            .candidates
            .iter()
            .map(|p| p.pool_id.clone())
            .collect(),
        ..Log::default()
    };
    let mut usable: Vec<&Pool> = Vec::new();
    for pool in &snapshot.candidates {
        if job.avoid_pools.contains(&pool.pool_id) {
            log.filtered.push((pool.pool_id.clone(), "avoided"));
        } else if let Err(why) = feasible_pool(job, pool) {
            log.filtered.push((pool.pool_id.clone(), why));
        } else {
            usable.push(pool);
        }
    }
    let pinned: Vec<&Pool> = match (job.mode, &job.pin_pool_id) {
        (Mode::Pin, Some(pin)) => usable
            .iter()
            .copied()
            .filter(|p| &p.pool_id == pin)
            .collect(),
        _ => Vec::new(),
    };
    let preferred: Vec<&Pool> = usable
        .iter()
        .copied()
        .filter(|p| job.prefer_pools.contains(&p.pool_id))
        .collect();
    let choice = match job.mode {
        Mode::Pin => {
            log.pinned = true;
            best(job, &pinned, &mut log, snapshot.stage).or_else(|| {
                if job.allow_fallback {
                    log.fallback = true;
                    best(job, &usable, &mut log, snapshot.stage)
                } else {
                    None
                }
            })
        }
        Mode::Prefer => best(job, &preferred, &mut log, snapshot.stage).or_else(|| {
            log.fallback = !preferred.is_empty() || !job.prefer_pools.is_empty();
            best(job, &usable, &mut log, snapshot.stage)
        }),
        Mode::Auto => best(job, &usable, &mut log, snapshot.stage),
    };
    match choice {
        Some((pool, replica)) => {
            log.chosen = Some((pool.pool_id.clone(), replica.replica_id.clone()));
            Decision::Assign(Assignment {
                pool_id: pool.pool_id.clone(),
                replica_id: replica.replica_id.clone(),
                decision_log: serde_json::to_string(&log).unwrap_or_default(),
            })
        }
        None if snapshot.stage == Stage::Dispatch && !usable.is_empty() => Decision::Wait,
        None => Decision::NoCapacity(format!(
            "no feasible pool: {}",
            serde_json::to_string(&log).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchd::policy::types::Priority;

    fn replica(id: &str, free: u32, leases: u32, affinity: bool) -> Replica {
        Replica {
            replica_id: id.into(),
            ready: true,
            slots_total: 2,
            slots_free: free,
            active_leases: leases,
            tokens_per_s: 100.0,
            first_token_ms: 50,
            vram_free_bytes: None,
            device_mask: Some("0,1".into()),
            session_affinity: affinity,
        }
    }

    fn pool(id: &str, depth: u32, replicas: Vec<Replica>) -> Pool {
        Pool {
            pool_id: id.into(),
            engine: "mock".into(),
            model_ref: "m".into(),
            ready: true,
            draining: false,
            ctx_max: 1000,
            queue_depth: depth,
            replicas,
        }
    }

    fn job(mode: Mode) -> Job {
        Job {
            task_id: "t".into(),
            session_id: "s".into(),
            engine: "mock".into(),
            model_ref: "m".into(),
            ctx: 100,
            priority: Priority::Interactive,
            mode,
            pin_pool_id: None,
            prefer_pools: vec![],
            avoid_pools: vec![],
            require_device_mask: None,
            allow_fallback: true,
        }
    }

    fn check(stage: Stage, job: Job, pools: Vec<Pool>, expected: &str) {
        let got = match place(&Snapshot {
            now_ms: 0,
            stage,
            job,
            candidates: pools,
        }) {
            Decision::Assign(a) => format!("{}/{}", a.pool_id, a.replica_id),
            Decision::Wait => "wait".into(),
            Decision::NoCapacity(_) => "none".into(),
        };
        assert_eq!(got, expected);
    }

    fn two() -> Vec<Pool> {
        vec![
            pool("b", 3, vec![replica("b0", 0, 2, false)]),
            pool("a", 0, vec![replica("a0", 2, 0, false)]),
        ]
    }

    #[test]
    fn auto_picks_least_loaded_then_affinity_then_id() {
        check(Stage::Admission, job(Mode::Auto), two(), "a/a0");
        let tie = vec![
            pool("b", 0, vec![replica("b0", 2, 0, true)]),
            pool("a", 0, vec![replica("a0", 2, 0, false)]),
        ];
        check(Stage::Admission, job(Mode::Auto), tie, "b/b0");
        let plain_tie = vec![
            pool("b", 0, vec![replica("b0", 2, 0, false)]),
            pool("a", 0, vec![replica("a0", 2, 0, false)]),
        ];
        check(Stage::Admission, job(Mode::Auto), plain_tie, "a/a0");
    }

    #[test]
    fn pin_prefer_avoid_and_fallback() {
        let mut pin = job(Mode::Pin);
        pin.pin_pool_id = Some("b".into());
        check(Stage::Admission, pin.clone(), two(), "b/b0");
        let mut not_ready = two();
        not_ready[0].ready = false;
        check(Stage::Admission, pin.clone(), not_ready.clone(), "a/a0");
        pin.allow_fallback = false;
        check(Stage::Admission, pin, not_ready, "none");
        let mut prefer = job(Mode::Prefer);
        prefer.prefer_pools = vec!["b".into()];
        check(Stage::Admission, prefer, two(), "b/b0");
        let mut avoid = job(Mode::Auto);
        avoid.avoid_pools = vec!["a".into()];
        check(Stage::Admission, avoid, two(), "b/b0");
    }

    #[test]
    fn feasibility_filters() {
        let mut big = job(Mode::Auto);
        big.ctx = 5000;
        check(Stage::Admission, big, two(), "none");
        let mut draining = two();
        draining[1].draining = true;
        check(Stage::Admission, job(Mode::Auto), draining, "b/b0");
        let mut gpu = job(Mode::Auto);
        gpu.require_device_mask = Some("2".into());
        check(Stage::Admission, gpu, two(), "none");
    }

    #[test]
    fn dispatch_needs_a_free_slot_or_waits() {
        let busy = vec![pool(
            "b",
            0,
            vec![replica("b0", 0, 2, false), replica("b1", 1, 1, false)],
        )];
        check(Stage::Dispatch, job(Mode::Auto), busy, "b/b1");
        let full = vec![pool("b", 0, vec![replica("b0", 0, 2, false)])];
        check(Stage::Dispatch, job(Mode::Auto), full, "wait");
    }
}
