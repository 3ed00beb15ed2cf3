//! The placement decision as plain Rust.

use serde::{Deserialize, Serialize};

use crate::exports::orchd::policy::placement::{
    Assignment, Decision, Job, Mode, Pool, Replica, Snapshot, Stage,
};

/// The operator's options (`[policies.placement] config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Prefer replicas that hold the prompt's prefix at all.
    pub prefix_aware: bool,
    /// A replica holding the prefix is preferred only while its load (busy slots over
    /// slots; at admission, the pool's queued and running tasks over its slots) is below
    /// this.
    pub prefix_load_cap: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix_aware: true,
            prefix_load_cap: 0.75,
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let c: Config = if text.is_empty() {
            Config::default()
        } else {
            serde_json::from_str(text).map_err(|e| format!("placement-default config: {e}"))?
        };
        if !(c.prefix_load_cap.is_finite() && c.prefix_load_cap >= 0.0) {
            return Err("placement-default config: prefix_load_cap must be a number >= 0".into());
        }
        Ok(c)
    }
}

#[derive(Serialize, Default)]
struct Log {
    stage: &'static str,
    candidates: Vec<String>,
    filtered: Vec<(String, &'static str)>,
    tie_breakers: Vec<&'static str>,
    pinned: bool,
    fallback: bool,
    chosen: Option<(String, String)>,
    /// Prompt blocks the chosen replica holds, when prefix affinity chose it.
    prefix_blocks: Option<u32>,
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

/// Chooses among `pools` (already filtered): a replica holding the prompt's prefix below
/// the load cap (longest match first), else by load, affinity, then id.
fn best<'a>(
    config: &Config,
    job: &Job,
    pools: &[&'a Pool],
    log: &mut Log,
    stage: Stage,
) -> Option<(&'a Pool, &'a Replica)> {
    log.tie_breakers = vec![
        "prefix_under_load_cap",
        "least_loaded",
        "session_affinity",
        "lexicographic_id",
    ];
    let load = |p: &Pool, r: &Replica| match stage {
        Stage::Admission => pool_load(p, job),
        Stage::Dispatch => replica_load(r),
    };
    // The matched prefix, counted only below the load cap.
    let warm = |p: &Pool, r: &Replica| {
        if config.prefix_aware && r.prefix_blocks > 0 && load(p, r) < config.prefix_load_cap {
            r.prefix_blocks
        } else {
            0
        }
    };
    let mut options: Vec<(&Pool, &Replica)> = pools
        .iter()
        .flat_map(|p| p.replicas.iter().map(move |r| (*p, r)))
        .filter(|(_, r)| feasible_replica(job, r))
        .filter(|(_, r)| stage == Stage::Admission || r.slots_free > 0)
        .collect();
    options.sort_by(|(pa, ra), (pb, rb)| {
        warm(pb, rb)
            .cmp(&warm(pa, ra))
            .then(load(pa, ra).total_cmp(&load(pb, rb)))
            .then(rb.session_affinity.cmp(&ra.session_affinity))
            .then(pa.pool_id.cmp(&pb.pool_id))
            .then(ra.replica_id.cmp(&rb.replica_id))
    });
    let chosen = options.into_iter().next();
    if let Some((p, r)) = chosen {
        log.prefix_blocks = Some(warm(p, r)).filter(|&b| b > 0);
    }
    chosen
}

pub fn place(config: &Config, snapshot: &Snapshot) -> Decision {
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
            best(config, job, &pinned, &mut log, snapshot.stage).or_else(|| {
                if job.allow_fallback {
                    log.fallback = true;
                    best(config, job, &usable, &mut log, snapshot.stage)
                } else {
                    None
                }
            })
        }
        Mode::Prefer => best(config, job, &preferred, &mut log, snapshot.stage).or_else(|| {
            log.fallback = !preferred.is_empty() || !job.prefer_pools.is_empty();
            best(config, job, &usable, &mut log, snapshot.stage)
        }),
        Mode::Auto => best(config, job, &usable, &mut log, snapshot.stage),
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
            prefix_blocks: 0,
            ejected: false,
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
            prompt_blocks: 0,
        }
    }

    fn check(stage: Stage, job: Job, pools: Vec<Pool>, expected: &str) {
        check_with(&Config::default(), stage, job, pools, expected);
    }

    fn check_with(config: &Config, stage: Stage, job: Job, pools: Vec<Pool>, expected: &str) {
        let got = match place(
            config,
            &Snapshot {
                now_ms: 0,
                stage,
                job,
                candidates: pools,
            },
        ) {
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

    /// Two replicas of 4 slots; r0 holds `prefix` blocks of the prompt and runs `busy`
    /// tasks, r1 runs `other` and holds nothing.
    fn warm_pool(busy: u32, other: u32, prefix: u32) -> Vec<Pool> {
        let mut r0 = replica("r0", 4 - busy, busy, false);
        r0.slots_total = 4;
        r0.prefix_blocks = prefix;
        let mut r1 = replica("r1", 4 - other, other, false);
        r1.slots_total = 4;
        vec![pool("p", 0, vec![r0, r1])]
    }

    fn prompt(blocks: u32) -> Job {
        let mut j = job(Mode::Auto);
        j.prompt_blocks = blocks;
        j
    }

    #[test]
    fn shared_prefixes_stay_on_the_warm_replica_until_its_load_cap_then_spread() {
        // Below the cap (0.75 of 4 slots: up to 3 running), the warm replica wins even
        // when the other is idle.
        check(Stage::Dispatch, prompt(8), warm_pool(0, 0, 8), "p/r0");
        check(Stage::Dispatch, prompt(8), warm_pool(2, 0, 8), "p/r0");
        // At the cap, requests spread by load.
        check(Stage::Dispatch, prompt(8), warm_pool(3, 0, 8), "p/r1");
        check(Stage::Dispatch, prompt(8), warm_pool(3, 2, 8), "p/r1");
        // With no prefix held anywhere, least loaded as before.
        check(Stage::Dispatch, prompt(8), warm_pool(1, 0, 0), "p/r1");
        // The longer match wins among warm replicas.
        let mut both = warm_pool(1, 1, 3);
        both[0].replicas[1].prefix_blocks = 6;
        check(Stage::Dispatch, prompt(8), both, "p/r1");
        // Switched off, or with a cap of 0, it is least loaded.
        let off = Config {
            prefix_aware: false,
            ..Config::default()
        };
        check_with(&off, Stage::Dispatch, prompt(8), warm_pool(1, 0, 8), "p/r1");
        let cap0 = Config {
            prefix_load_cap: 0.0,
            ..Config::default()
        };
        check_with(
            &cap0,
            Stage::Dispatch,
            prompt(8),
            warm_pool(0, 0, 8),
            "p/r0",
        );
        check_with(
            &cap0,
            Stage::Dispatch,
            prompt(8),
            warm_pool(1, 0, 8),
            "p/r1",
        );
    }

    #[test]
    fn at_admission_the_pool_holding_the_prefix_wins_below_its_cap() {
        let mut cold = replica("c0", 4, 0, false);
        cold.slots_total = 4;
        let mut hot = replica("h0", 3, 1, false);
        hot.slots_total = 4;
        hot.prefix_blocks = 5;
        let pools = vec![pool("cold", 0, vec![cold]), pool("hot", 0, vec![hot])];
        check(Stage::Admission, prompt(5), pools.clone(), "hot/h0");
        // The hot pool's queue puts it over the cap: least loaded.
        let mut busy = pools;
        busy[1].queue_depth = 3;
        check(Stage::Admission, prompt(5), busy, "cold/c0");
    }

    #[test]
    fn config_is_checked() {
        assert!(Config::parse("").is_ok());
        assert!(Config::parse("{}").is_ok());
        assert_eq!(
            Config::parse(r#"{"prefix_load_cap": 0.5}"#)
                .unwrap()
                .prefix_load_cap,
            0.5
        );
        assert!(Config::parse(r#"{"prefix_load_cap": -1}"#).is_err());
        assert!(Config::parse(r#"{"typo": 1}"#).is_err());
    }
}
