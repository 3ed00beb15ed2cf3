//! Prefix-aware placement against least-loaded, on real llama-server (issue 17's measured
//! win). Run by `cargo xtask bench-prefix [--quick]`; results go to
//! `target/bench/prefix.{json,md}` and docs/BENCHMARKS.md quotes them.
//!
//! Two llama-server replicas, each with a few slots and its prompt cache on (the llamacpp
//! adapter sends `cache_prompt`), behind one pool of the real daemon. The workload: many
//! requests sharing a few long system prompts (more of them than one replica has slots),
//! each with its own short question, from a few closed-loop clients. Each mode runs on
//! fresh engines and a fresh daemon; the only difference is the default placement
//! policy's `prefix_aware`. Reported: first-token p50/p99 (client side, submit to first
//! token frame) and the prompt tokens the engines evaluated (`llamacpp:prompt_tokens_total`,
//! which leaves out tokens served from the prompt cache).
//!
//! Two engine setups: llama-server as it comes, whose prompt cache also keeps evicted
//! prompts in host RAM (`--cache-ram`, 8 GiB) and restores them into a slot; and
//! `--cache-ram 0`, where only what the slots hold is cached (as with engines whose
//! prefix cache lives in GPU memory alone).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orchd_e2e::{ALIAS, LlamaServer};
use orchd_testkit::{Daemon, DaemonBuilder, default_admission};
use serde_json::{Value, json};

/// Replicas, slots per replica, context per slot.
const REPLICAS: usize = 2;
const SLOTS: u32 = 3;
const CTX_PER_SLOT: u32 = 2048;
/// Distinct system prompts: twice one replica's slots, so least-loaded placement, which
/// sends every prompt to both replicas, keeps evicting them.
const SYSTEM_PROMPTS: usize = 6;
/// Words per system prompt (about 1 200 tokens).
const WORDS: usize = 900;
/// Closed-loop clients: half the slots, so placement has a choice (a saturated pool has
/// one free slot at a time, and any policy must take it).
const CLIENTS: usize = 3;

struct Mode {
    name: &'static str,
    prefix_aware: bool,
}

/// Each engine setup: its name, llama-server flags, and the pool's `prefix_cache_tokens`
/// (what the engine caches; by default the host assumes its slots' KV cache).
const ENGINES: [(&str, &[&str], &str); 2] = [
    (
        "RAM prompt cache (default)",
        &[],
        "prefix_cache_tokens = 1000000\n",
    ),
    ("slot cache only (--cache-ram 0)", &["--cache-ram", "0"], ""),
];

#[derive(Default)]
struct Outcome {
    first_token_ms: Vec<f64>,
    evaluated: f64,
    per_replica: std::collections::BTreeMap<String, usize>,
    wall_s: f64,
    failed: usize,
}

/// A deterministic generator (xorshift), so both modes see the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn system_prompts() -> Vec<String> {
    const VOCAB: &[&str] = &[
        "order", "shipping", "policy", "refund", "customer", "account", "address", "payment",
        "invoice", "warranty", "return", "window", "carrier", "tracking", "label", "parcel",
        "damage", "claim", "store", "credit", "exchange", "receipt", "delivery", "courier",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..SYSTEM_PROMPTS)
        .map(|i| {
            let words: Vec<&str> = (0..WORDS)
                .map(|_| VOCAB[(rng.next() % VOCAB.len() as u64) as usize])
                .collect();
            format!("System rules of desk {i}: {}\n", words.join(" "))
        })
        .collect()
}

/// The requests in order: (system prompt, question).
fn workload(requests: usize) -> Vec<(usize, String)> {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    (0..requests)
        .map(|j| {
            let p = (rng.next() % SYSTEM_PROMPTS as u64) as usize;
            (
                p,
                format!("Customer {j} asks about parcel {}.", rng.next() % 10_000),
            )
        })
        .collect()
}

fn config(mode: &Mode, engines: &[LlamaServer], pool_extra: &str) -> String {
    let replicas: String = engines
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "\n[[pools.replicas]]\nid = \"duo-{i}\"\nconfig = {{ url = \"{}\" }}\n",
                e.url()
            )
        })
        .collect();
    format!(
        "[queue]\ncapacity = 256\n\n[policies]\ntimeout_ms = 200\n\n[policies.admission]\n{}\n\
         [policies.placement]\ncomponent = \"placement-default.wasm\"\nconfig = {{ prefix_aware = {} }}\n\n\
         [[pools]]\nid = \"duo\"\nadapter = \"llamacpp\"\nmodel_ref = \"{ALIAS}\"\nctx_max = {CTX_PER_SLOT}\n\
         health_interval_ms = 1000\nnominal_tokens_per_s = 100.0\nnominal_first_token_ms = 100\n{pool_extra}{replicas}",
        default_admission("reject"),
        mode.prefix_aware,
    )
}

static SESSION: AtomicU64 = AtomicU64::new(0);

/// Submits one request and reads its stream: (first-token ms, replica) or `None` if it
/// did not end well.
async fn one(d: &Daemon, prompt: String) -> Option<(f64, String)> {
    let began = Instant::now();
    let resp = d
        .submit(&json!({
            "workload": "completion",
            "engine": "llamacpp",
            "model_ref": ALIAS,
            "ctx": CTX_PER_SLOT,
            "priority": "interactive",
            "prompt": prompt,
            "max_tokens": 4,
            "deadline_ms": 120_000,
            "session_id": format!("bench-{}", SESSION.fetch_add(1, Ordering::Relaxed)),
        }))
        .await;
    if resp.status().as_u16() != 202 {
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    let id = body["task_id"].as_str()?.to_owned();
    let mut reader = d.open_stream(&id).await;
    let mut first = None;
    let mut replica = String::new();
    while let Some(f) = reader.next_frame().await {
        match f.event.as_str() {
            "started" => replica = f.data["replica_id"].as_str().unwrap_or("").to_owned(),
            "token" if first.is_none() => first = Some(began.elapsed().as_secs_f64() * 1000.0),
            "end" => return first.map(|ms| (ms, replica)),
            "error" => return None,
            _ => {}
        }
    }
    None
}

async fn run(
    mode: &Mode,
    (flags, pool_extra): (&[&str], &str),
    model: &std::path::Path,
    requests: usize,
) -> Outcome {
    let engines: Vec<LlamaServer> = (0..REPLICAS)
        .map(|_| LlamaServer::start_bench(model, SLOTS, CTX_PER_SLOT, flags))
        .collect();
    let d = Arc::new(DaemonBuilder::new(config(mode, &engines, pool_extra)).start());
    // The pool is ready once its replicas answered a probe.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, pools) = d.get_json("/v1/pools").await;
        if pools.to_string().contains("\"ready\":true") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool never got ready: {pools}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prompts = Arc::new(system_prompts());
    let queue = Arc::new(std::sync::Mutex::new(workload(requests).into_iter()));
    let began = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (d, prompts, queue) = (Arc::clone(&d), Arc::clone(&prompts), Arc::clone(&queue));
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let next = queue.lock().expect("workload").next();
                    let Some((p, question)) = next else { break };
                    got.push(one(&d, format!("{}{question}", prompts[p])).await);
                }
                got
            })
        })
        .collect();
    let mut out = Outcome::default();
    for c in clients {
        for r in c.await.expect("client") {
            match r {
                Some((ms, replica)) => {
                    out.first_token_ms.push(ms);
                    *out.per_replica.entry(replica).or_default() += 1;
                }
                None => out.failed += 1,
            }
        }
    }
    out.wall_s = began.elapsed().as_secs_f64();
    for e in &engines {
        out.evaluated += e.prompt_tokens_evaluated().await;
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let requests = if quick { 48 } else { 180 };
    let model = std::path::PathBuf::from(
        std::env::var_os("ORCHD_BENCH_MODEL")
            .expect("ORCHD_BENCH_MODEL: run through `cargo xtask bench-prefix`"),
    );
    let out_dir = std::path::PathBuf::from(
        std::env::var_os("ORCHD_BENCH_OUT").unwrap_or_else(|| "target/bench".into()),
    );
    std::fs::create_dir_all(&out_dir).expect("output directory");
    let modes = [
        Mode {
            name: "least-loaded",
            prefix_aware: false,
        },
        Mode {
            name: "prefix-aware",
            prefix_aware: true,
        },
    ];
    let mut rows = Vec::new();
    let mut md = String::from(
        "| engines | placement | requests | failed | first token p50 (ms) | p99 (ms) | prompt tokens evaluated | wall (s) | per replica |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (engines, flags, pool_extra) in ENGINES {
        for mode in &modes {
            eprintln!(
                "prefix-bench: {engines}, {} ({requests} requests)",
                mode.name
            );
            let mut o = run(mode, (flags, pool_extra), &model, requests).await;
            o.first_token_ms.sort_by(f64::total_cmp);
            let (p50, p99) = (
                percentile(&o.first_token_ms, 0.5),
                percentile(&o.first_token_ms, 0.99),
            );
            md.push_str(&format!(
            "| {engines} | {} | {requests} | {} | {p50:.1} | {p99:.1} | {:.0} | {:.1} | {:?} |\n",
            mode.name, o.failed, o.evaluated, o.wall_s, o.per_replica
        ));
            rows.push(json!({
                "engines": engines,
                "placement": mode.name,
                "requests": requests,
                "failed": o.failed,
                "first_token_p50_ms": p50,
                "first_token_p99_ms": p99,
                "prompt_tokens_evaluated": o.evaluated,
                "wall_s": o.wall_s,
                "per_replica": o.per_replica,
            }));
        }
    }
    let setup = json!({
        "replicas": REPLICAS,
        "slots_per_replica": SLOTS,
        "ctx_per_slot": CTX_PER_SLOT,
        "system_prompts": SYSTEM_PROMPTS,
        "words_per_system_prompt": WORDS,
        "clients": CLIENTS,
        "max_tokens": 4,
        "model": model.display().to_string(),
    });
    std::fs::write(
        out_dir.join("prefix.json"),
        serde_json::to_string_pretty(&json!({"setup": setup, "results": rows})).expect("json"),
    )
    .expect("write prefix.json");
    std::fs::write(out_dir.join("prefix.md"), &md).expect("write prefix.md");
    println!("{md}");
}
