//! Policy call costs: warm call per policy, instantiation, and the whole chain one request
//! goes through (reserve → place at admission → decide → place at dispatch → settle).
//!
//! Run: `cargo xtask dist && cargo bench -p orchd-host --bench policies`
//! (set `ORCHD_DIST` to use another dist tree). Prints p50/p90/p99 per measurement.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orchd_host::config::{OnError, PolicyLimits, PolicySettings, PolicySettingsSet};
use orchd_host::policy::bindings::{
    BudgetLeft, ClassSnapshot, QueueSnapshot, WitPriority, admission, budget, error_mapping,
    placement,
};
use orchd_host::policy::{PolicyRuntime, PolicySet};

fn dist() -> PathBuf {
    std::env::var_os("ORCHD_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dist"))
}

fn settings(file: &str, config: &str) -> PolicySettings {
    PolicySettings {
        component: dist().join("policies").join(file),
        config_json: config.to_owned(),
        on_error: OnError::Fail,
    }
}

fn unlimited() -> BudgetLeft {
    BudgetLeft {
        tokens: None,
        time_ms: None,
        cost: None,
    }
}

/// Every measurement so far, written as JSON to `ORCHD_BENCH_JSON` at the end when set
/// (`cargo xtask bench` puts them in its tables).
static ROWS: std::sync::Mutex<Vec<serde_json::Value>> = std::sync::Mutex::new(Vec::new());

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_nanos() as f64 / 1000.0;
    println!(
        "{name:<38} n={:<7} p50={:>8.2} µs  p90={:>8.2} µs  p99={:>8.2} µs",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99)
    );
    ROWS.lock().unwrap().push(serde_json::json!({
        "name": name.trim(), "n": samples.len(),
        "p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99),
    }));
}

fn write_json() {
    if let Some(path) = std::env::var_os("ORCHD_BENCH_JSON") {
        let rows = serde_json::Value::Array(ROWS.lock().unwrap().clone());
        std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap())
            .expect("write ORCHD_BENCH_JSON");
    }
}

fn measure(name: &str, n: usize, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f(); // warm up
    }
    let samples = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    report(name, samples);
}

fn main() {
    let runtime = PolicyRuntime::new(
        PolicyLimits {
            timeout: Duration::from_millis(5),
            memory_bytes: 64 << 20,
        },
        std::env::temp_dir().join("orchd-bench-cache"),
    )
    .expect("runtime");
    let set = PolicySettingsSet {
        admission: settings("admission-default.wasm", r#"{"mode":"drop-lru"}"#),
        budget: settings("budget-default.wasm", "{}"),
        placement: settings("placement-default.wasm", "{}"),
        error_mapping: settings("error-mapping-default.wasm", "{}"),
    };
    let started = Instant::now();
    let policies = PolicySet::load(runtime.clone(), &set).expect("load the default policies");
    println!(
        "load all four (compile or cache, instantiate, init, self-test): {:?}",
        started.elapsed()
    );

    let queue = QueueSnapshot {
        pool_id: "gpu0".into(),
        capacity: 256,
        depth: 12,
        classes: [WitPriority::Interactive, WitPriority::Batch]
            .into_iter()
            .map(|priority| ClassSnapshot {
                priority,
                depth: 6,
                oldest: Vec::new(),
            })
            .collect(),
        slots_total: 8,
        slots_free: 0,
        service_ms: 900,
    };
    let decide = admission::Snapshot {
        now_ms: 0,
        request: admission::Request {
            task_id: "3f2a9d1e-6c1b-4a43-9d0e-2b7d8f1c5a60".into(),
            session_id: "session-42".into(),
            tenant: "a1b2c3".into(),
            group: None,
            priority: WitPriority::Interactive,
            engine: "llamacpp".into(),
            model_ref: "hf:org/repo/model.gguf".into(),
            ctx: 4096,
            max_tokens: 256,
            expected_tokens: Some(200),
            deadline_ms: 30_000,
            expected_service_ms: 2_200,
        },
        queue,
        session: admission::SessionInfo {
            turns: 2,
            budget: unlimited(),
        },
    };
    let reserve = budget::ReserveRequest {
        now_ms: 0,
        task_id: "t".into(),
        tenant: "a1b2c3".into(),
        group: None,
        session_id: "session-42".into(),
        priority: WitPriority::Interactive,
        engine: "llamacpp".into(),
        model_ref: "hf:org/repo/model.gguf".into(),
        prompt_tokens_estimate: 300,
        max_tokens: 256,
        deadline_ms: 30_000,
        expected_service_ms: 2_200,
        key_left: BudgetLeft {
            tokens: Some(1_000_000),
            time_ms: None,
            cost: Some(100.0),
        },
        session_left: unlimited(),
    };
    let settle = budget::SettleRequest {
        task_id: "t".into(),
        engine: "llamacpp".into(),
        model_ref: "hf:org/repo/model.gguf".into(),
        reserved: budget::Charge {
            usage: budget::Usage {
                tokens: 556,
                time_ms: 2_200,
                cost: 0.001,
            },
            rate_tokens: 556,
        },
        tokens_in: 300,
        tokens_out: 180,
        time_ms: 2400,
    };
    let pool = |id: &str, free: u32| placement::Pool {
        pool_id: id.into(),
        engine: "llamacpp".into(),
        model_ref: "hf:org/repo/model.gguf".into(),
        ready: true,
        draining: false,
        ctx_max: 8192,
        queue_depth: 3,
        replicas: (0..2)
            .map(|r| placement::Replica {
                replica_id: format!("{id}-{r}"),
                ready: true,
                slots_total: 4,
                slots_free: free,
                active_leases: 4 - free,
                tokens_per_s: 120.0,
                first_token_ms: 80,
                vram_free_bytes: Some(8 << 30),
                device_mask: Some("0".into()),
                session_affinity: r == 1,
                prefix_blocks: if r == 0 { 6 } else { 0 },
                ejected: false,
            })
            .collect(),
    };
    let job = placement::Job {
        task_id: "t".into(),
        session_id: "session-42".into(),
        engine: "llamacpp".into(),
        model_ref: "hf:org/repo/model.gguf".into(),
        ctx: 4096,
        priority: WitPriority::Interactive,
        mode: placement::Mode::Auto,
        pin_pool_id: None,
        prefer_pools: Vec::new(),
        avoid_pools: Vec::new(),
        require_device_mask: None,
        allow_fallback: true,
        prompt_blocks: 8,
    };
    let place_admission = placement::Snapshot {
        now_ms: 0,
        stage: placement::Stage::Admission,
        job: job.clone(),
        candidates: vec![pool("gpu0", 1), pool("gpu1", 2)],
    };
    let place_dispatch = placement::Snapshot {
        now_ms: 0,
        stage: placement::Stage::Dispatch,
        job,
        candidates: vec![pool("gpu0", 1)],
    };
    let failure = error_mapping::Failure {
        kind: "transport".into(),
        upstream_status: None,
        message: "connection reset by peer".into(),
        engine: "llamacpp".into(),
        pool_id: "gpu0".into(),
        replica_id: "gpu0-0".into(),
        phase: error_mapping::Phase::BeforeFirstToken,
        attempt: 1,
        attempts_left: 2,
    };

    const N: usize = 20_000;
    let a = policies.admission.get();
    let b = policies.budget.get();
    let p = policies.placement.get();
    let e = policies.error_mapping.get();
    measure("admission.decide (warm)", N, || {
        a.decide(&decide, Ok::<_, String>).unwrap();
    });
    measure("budget.reserve (warm)", N, || {
        b.reserve(&reserve).unwrap();
    });
    measure("budget.settle (warm)", N, || {
        b.settle(&settle).unwrap();
    });
    measure("placement.place admission, 2 pools", N, || {
        p.place(&place_admission, Ok::<_, String>).unwrap();
    });
    measure("placement.place dispatch, 1 pool", N, || {
        p.place(&place_dispatch, Ok::<_, String>).unwrap();
    });
    measure("error_mapping.map_failure (warm)", N, || {
        e.map(&failure).unwrap();
    });
    measure("chain per request (5 calls)", N, || {
        b.reserve(&reserve).unwrap();
        p.place(&place_admission, Ok::<_, String>).unwrap();
        a.decide(&decide, Ok::<_, String>).unwrap();
        p.place(&place_dispatch, Ok::<_, String>).unwrap();
        b.settle(&settle).unwrap();
    });
    // A fresh instance (instantiate from InstancePre + init) as after a trap.
    measure("admission: instantiate + init + decide", 2_000, || {
        a.clear_warm();
        a.decide(&decide, Ok::<_, String>).unwrap();
    });
    write_json();
}
