//! The benchmark suite `cargo xtask bench` runs: overhead against the engine directly at
//! 1, 100 and 1 000 streams, admission throughput at saturation, 10 000 concurrent streams,
//! and a policy hot swap under 1 000 requests/s. Each scenario starts its own simulator and
//! daemon (release build from the dist tree, default policies in Wasm, production policy
//! deadline), and the results go to `results.json`, `results.md` and `overhead.svg`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::load::{self, Mix, Percentiles, Progress, Schedule, Spec, Summary};
use crate::procs::{self, Proc, ProcStats, SimArgs};
use crate::stream::{Shape, Target};

/// Where the suite finds its programs and writes its results.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dist: PathBuf,
    pub sim: PathBuf,
    /// A second placement component to swap in (the suite swaps back and forth).
    pub swap_policy: PathBuf,
    /// The policy benchmark's JSON output, if it ran.
    pub policy_costs: Option<PathBuf>,
    pub out: PathBuf,
}

/// Which scenarios, and how long they run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds per overhead level and target.
    pub overhead_secs: u64,
    pub admission_secs: u64,
    /// Concurrent streams in the memory scenario.
    pub streams: u64,
    pub swap_secs: u64,
    /// Quick: every scenario, scaled down (a smoke run; numbers are not comparable).
    pub quick: bool,
    /// Seconds each idle daemon is watched (CPU averaged over this window).
    pub idle_secs: u64,
    /// Run only this scenario: `idle`, `floor`, `overhead`, `admission`, `state`,
    /// `streams` or `hot-swap`.
    pub only: Option<String>,
    /// Seconds per target in the floor scenario (direct, nginx, daemon).
    pub floor_secs: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            overhead_secs: 15,
            admission_secs: 10,
            streams: 10_000,
            swap_secs: 12,
            idle_secs: 60,
            quick: false,
            only: None,
            floor_secs: 6,
        }
    }
}

impl Options {
    pub fn quick() -> Self {
        Self {
            overhead_secs: 2,
            admission_secs: 2,
            streams: 300,
            swap_secs: 4,
            idle_secs: 5,
            quick: true,
            only: None,
            floor_secs: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OverheadRow {
    pub concurrency: usize,
    pub tokens: u32,
    pub inter_token_ms: u64,
    pub direct: Summary,
    pub daemon: Summary,
    pub added_first_token_p50_us: i64,
    pub added_first_token_p99_us: i64,
    pub added_inter_token_p50_us: i64,
    pub added_inter_token_p99_us: i64,
    pub daemon_cpu_per_s: f64,
}

/// One load level of the floor scenario: the same engine and load through nothing (direct),
/// through nginx as a plain reverse proxy, and through orchestratord, in one run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FloorRow {
    /// `native` (`POST /v1/tasks` + SSE; the engine's `/completion` for direct and nginx)
    /// or `openai` (`/v1/chat/completions` streaming everywhere).
    pub api: String,
    /// `paced` (first token after 5 ms, then a token every `inter_token_ms`) or
    /// `zero-delay` (every token at once: per-request CPU shows).
    pub engine: String,
    pub concurrency: usize,
    pub tokens: u32,
    pub inter_token_ms: u64,
    pub direct: Summary,
    pub nginx: Summary,
    pub daemon: Summary,
    /// CPU seconds spent during each run (nginx: master and workers).
    pub nginx_cpu_s: f64,
    pub daemon_cpu_s: f64,
}

impl FloorRow {
    fn added(&self, via: &Summary, q: fn(&Percentiles) -> u64) -> i64 {
        diff(q(&via.first_token), q(&self.direct.first_token))
    }

    fn rate_vs_direct(&self, via: &Summary) -> f64 {
        per_s(via) / per_s(&self.direct).max(1e-9)
    }

    fn cpu_per_request_us(cpu_s: f64, via: &Summary) -> f64 {
        cpu_s * 1e6 / (via.ended.max(1) as f64)
    }
}

/// Streams that ran to their end, per second.
fn per_s(s: &Summary) -> f64 {
    s.ended as f64 / s.elapsed_s.max(1e-9)
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Admission {
    /// Every admitted task runs (1 token, no engine delay) and leaves a transcript.
    pub run: Summary,
    pub daemon_cpu_per_s: f64,
    /// The engine's slots and the queue are full: every request is decided (202 until the
    /// queue is full, then refusals), nothing more runs.
    #[serde(default)]
    pub saturated: Option<Summary>,
    #[serde(default)]
    pub saturated_daemon_cpu_per_s: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Streams {
    pub run: Summary,
    pub peak_in_flight: u64,
    pub rss_idle_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_per_stream_bytes: u64,
    pub daemon_cpu_s: f64,
    pub sim_rss_peak_bytes: u64,
    pub sim_cpu_s: f64,
    pub h2_connections: usize,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HotSwap {
    pub run: Summary,
    pub rate: f64,
    pub swaps: Vec<SwapTiming>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SwapTiming {
    pub to: String,
    /// From the rename into the policy directory to `/v1/policies` naming the new version.
    pub to_live_ms: f64,
}

/// Daemons at rest on the embedded default config: CPU in percent of one core.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Idle {
    pub secs: u64,
    pub alone_pct: f64,
    /// Two daemons sharing the adapter and policy directories, both measured.
    pub shared_first_pct: f64,
    pub shared_second_pct: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Results {
    pub date: String,
    pub machine: String,
    pub quick: bool,
    #[serde(default)]
    pub idle: Option<Idle>,
    pub overhead: Vec<OverheadRow>,
    pub admission: Option<Admission>,
    pub streams: Option<Streams>,
    pub hot_swap: Option<HotSwap>,
    pub policy_costs: Option<Value>,
    /// Admission throughput per state-store setup.
    #[serde(default)]
    pub state: Vec<StateRow>,
    /// Against the floor: direct, nginx and orchestratord in the same run.
    #[serde(default)]
    pub floor: Vec<FloorRow>,
}

/// One state-store setup under the admission scenario (64 clients, tasks of one token).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StateRow {
    pub setup: String,
    pub run: Summary,
    pub daemon_cpu_per_s: f64,
}

const POOL: &str = "sim";

/// The bench daemon's config: the embedded default's settings, one pool on the llamacpp
/// adapter pointing at the simulator. Changed for load: queue capacity, retention (finished
/// tasks stay streamable 5 s, not 60 s) and session TTL (60 s): the load generator opens a
/// session per stream.
/// `extra`: more TOML in front (budgets, rate limits, `[state]`).
fn daemon_config_with(dir: &Path, sim: &str, queue: u32, placement: &str, extra: &str) -> String {
    let var = dir.join("var");
    format!(
        r#"{extra}
[paths]
artifacts = "{var}/artifacts"
catalog = "{var}/catalog.sqlite"

[queue]
capacity = {queue}

[stream]
retention_ms = 5000

[sessions]
ttl_ms = 60000

[policies]
timeout_ms = 5

[policies.admission]
component = "admission-default.wasm"
config = {{ mode = "reject" }}

[policies.budget]
component = "budget-default.wasm"
config = {{ price_per_token = 0.000002 }}

[policies.placement]
component = "{placement}"

[policies.error_mapping]
component = "error-mapping-default.wasm"

[[pools]]
id = "{POOL}"
adapter = "llamacpp"
model_ref = "sim"
queue_capacity = {queue}

[[pools.replicas]]
id = "sim-0"
config = {{ url = "{sim}" }}
"#,
        var = var.display(),
    )
}

fn daemon_target(base: &str) -> Target {
    Target::Daemon {
        base: base.to_owned(),
        api_key: None,
        model_ref: "sim".into(),
        engine: "llamacpp".into(),
    }
}

fn shape(tokens: u32) -> Shape {
    Shape {
        prompt: "a benchmark prompt of a few words".into(),
        max_tokens: tokens,
        check_text: true,
    }
}

struct Env {
    paths: Paths,
    scratch: tempfile::TempDir,
}

impl Env {
    async fn daemon(&self, name: &str, sim: &Proc, queue: u32) -> Result<(Proc, PathBuf)> {
        self.daemon_with(name, sim, queue, "").await
    }

    async fn daemon_with(
        &self,
        name: &str,
        sim: &Proc,
        queue: u32,
        extra: &str,
    ) -> Result<(Proc, PathBuf)> {
        let dir = self.scratch.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let policies = procs::copy_policies(&self.paths.dist, &dir)?;
        std::fs::copy(
            policies.join("placement-default.wasm"),
            policies.join("placement.wasm"),
        )?;
        let config = daemon_config_with(&dir, &sim.base, queue, "placement.wasm", extra);
        let d = procs::start_daemon(&self.paths.dist, &dir, &policies, &config, POOL).await?;
        Ok((d, policies))
    }
}

/// Runs the suite and writes its results under `paths.out`.
pub async fn run(paths: Paths, opts: Options) -> Result<Results> {
    std::fs::create_dir_all(&paths.out)?;
    let env = Env {
        paths: paths.clone(),
        scratch: tempfile::tempdir()?,
    };
    let mut results = Results {
        date: today(),
        machine: machine(),
        quick: opts.quick,
        idle: None,
        overhead: Vec::new(),
        admission: None,
        streams: None,
        hot_swap: None,
        state: Vec::new(),
        floor: Vec::new(),
        policy_costs: match &paths.policy_costs {
            Some(p) if p.exists() => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
            _ => None,
        },
    };
    // (streams, tokens, inter-token ms): each level keeps about the same work per second.
    let levels: &[(usize, u32, u64)] = if opts.quick {
        &[(1, 8, 5), (20, 8, 20)]
    } else {
        &[(1, 8, 5), (100, 16, 20), (1000, 16, 100)]
    };
    let wanted = |name: &str| opts.only.as_deref().is_none_or(|o| o == name);
    if wanted("idle") {
        results.idle = Some(idle(&env, &opts).await?);
        write(&paths.out, &results)?;
    }
    if wanted("floor") {
        floor(&env, &opts, &mut results).await?;
    }
    if wanted("overhead") {
        for &(concurrency, tokens, itl) in levels {
            let row = overhead(&env, &opts, concurrency, tokens, itl).await?;
            print_overhead(&row);
            results.overhead.push(row);
            write(&paths.out, &results)?;
        }
        crate::plot::overhead(&results.overhead, &paths.out.join("overhead.svg"))?;
    }
    if wanted("admission") {
        results.admission = Some(admission(&env, &opts).await?);
        write(&paths.out, &results)?;
    }
    if wanted("streams") {
        results.streams = Some(many_streams(&env, &opts).await?);
        write(&paths.out, &results)?;
    }
    if wanted("state") {
        results.state = state_stores(&env, &opts).await?;
        write(&paths.out, &results)?;
    }
    if wanted("hot-swap") {
        results.hot_swap = Some(hot_swap(&env, &opts).await?);
        write(&paths.out, &results)?;
    }
    std::fs::write(paths.out.join("results.md"), markdown(&results))?;
    Ok(results)
}

fn write(out: &Path, results: &Results) -> Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    Ok(())
}

fn diff(a: u64, b: u64) -> i64 {
    a as i64 - b as i64
}

async fn overhead(
    env: &Env,
    opts: &Options,
    concurrency: usize,
    tokens: u32,
    itl: u64,
) -> Result<OverheadRow> {
    eprintln!("overhead: {concurrency} streams, {tokens} tokens every {itl} ms");
    let sim = procs::start_sim(
        &env.paths.sim,
        SimArgs {
            first_token_ms: 5,
            inter_token_ms: itl,
            slots: (concurrency as u32 * 2).max(64),
            threads: 1,
        },
    )?;
    let queue = (concurrency as u32 * 2).max(256);
    let (daemon, _) = env
        .daemon(&format!("overhead-{concurrency}"), &sim, queue)
        .await?;
    // Workers start spread over one stream's length: equal streams started together would
    // otherwise start and end in lockstep waves of `concurrency` requests.
    let stream_len = Duration::from_millis(5 + u64::from(tokens) * itl);
    let run = |label: &str, target: Target| Spec {
        label: label.to_owned(),
        target,
        shape: shape(tokens),
        schedule: Schedule::Closed {
            concurrency,
            total: None,
            duration: Some(Duration::from_secs(opts.overhead_secs)),
            ramp: stream_len,
        },
        mix: Mix::default(),
        h2_connections: None,
    };
    // Warm both paths (connections, JIT-free but caches and pools), then measure.
    let warm = |mut s: Spec| {
        s.schedule = Schedule::Closed {
            concurrency,
            total: Some(concurrency as u64 * 2),
            duration: None,
            ramp: stream_len,
        };
        s
    };
    let direct_target = Target::Llama {
        base: sim.base.clone(),
    };
    load::run(warm(run("warm", direct_target.clone())), Progress::new()).await?;
    let direct = load::run(run("direct", direct_target), Progress::new()).await?;
    load::run(
        warm(run("warm", daemon_target(&daemon.base))),
        Progress::new(),
    )
    .await?;
    let cpu0 = daemon.stats()?.cpu;
    let through = load::run(run("daemon", daemon_target(&daemon.base)), Progress::new()).await?;
    let cpu = (daemon.stats()?.cpu - cpu0).as_secs_f64() / through.elapsed.as_secs_f64();
    let (d, o) = (direct.summary(), through.summary());
    Ok(OverheadRow {
        concurrency,
        tokens,
        inter_token_ms: itl,
        added_first_token_p50_us: diff(o.first_token.p50_us, d.first_token.p50_us),
        added_first_token_p99_us: diff(o.first_token.p99_us, d.first_token.p99_us),
        added_inter_token_p50_us: diff(o.inter_token.p50_us, d.inter_token.p50_us),
        added_inter_token_p99_us: diff(o.inter_token.p99_us, d.inter_token.p99_us),
        daemon_cpu_per_s: cpu,
        direct: d,
        daemon: o,
    })
}

/// The floor scenario: for each engine shape and load level, one simulator, nginx in front
/// of it and a daemon on it; each API runs direct, through nginx and through the daemon,
/// one after the other, each after a warm-up.
async fn floor(env: &Env, opts: &Options, results: &mut Results) -> Result<()> {
    // (engine, streams, tokens, first-token ms, inter-token ms)
    let levels: Vec<(&str, usize, u32, u64, u64)> = if opts.quick {
        vec![("paced", 10, 8, 5, 5), ("zero-delay", 10, 32, 0, 0)]
    } else {
        vec![
            ("paced", 1, 8, 5, 5),
            ("paced", 10, 16, 5, 20),
            ("paced", 100, 16, 5, 20),
            ("paced", 1000, 16, 5, 100),
            ("zero-delay", 1, 32, 0, 0),
            ("zero-delay", 10, 32, 0, 0),
            ("zero-delay", 100, 32, 0, 0),
            ("zero-delay", 1000, 32, 0, 0),
        ]
    };
    for (engine, concurrency, tokens, first, itl) in levels {
        eprintln!("floor: {engine} engine, {concurrency} streams, {tokens} tokens");
        let sim = procs::start_sim(
            &env.paths.sim,
            SimArgs {
                first_token_ms: first,
                inter_token_ms: itl,
                slots: (concurrency as u32 * 2).max(64),
                threads: 1,
            },
        )?;
        let name = format!("floor-{engine}-{concurrency}");
        let nginx = procs::start_nginx(&env.scratch.path().join(&name).join("nginx"), &sim.base)?;
        let queue = (concurrency as u32 * 2).max(256);
        let (daemon, _) = env.daemon(&name, &sim, queue).await?;
        let stream_len = Duration::from_millis((first + u64::from(tokens) * itl).max(5));
        let spec = |label: &str, target: Target, warm: bool| Spec {
            label: label.to_owned(),
            target,
            shape: shape(tokens),
            schedule: if warm {
                Schedule::Closed {
                    concurrency,
                    total: Some(concurrency as u64 * 2),
                    duration: None,
                    ramp: stream_len,
                }
            } else {
                Schedule::Closed {
                    concurrency,
                    total: None,
                    duration: Some(Duration::from_secs(opts.floor_secs)),
                    ramp: stream_len,
                }
            },
            mix: Mix::default(),
            h2_connections: None,
        };
        let chat = |base: &str| Target::OpenAiChat {
            base: base.to_owned(),
            model: "sim".into(),
            api_key: None,
        };
        for api in ["native", "openai"] {
            let (direct_t, nginx_t, daemon_t) = if api == "native" {
                (
                    Target::Llama {
                        base: sim.base.clone(),
                    },
                    Target::Llama {
                        base: nginx.base.clone(),
                    },
                    daemon_target(&daemon.base),
                )
            } else {
                (chat(&sim.base), chat(&nginx.base), chat(&daemon.base))
            };
            let measure = async |label: &str, target: Target, pid: Option<u32>| {
                load::run(spec("warm", target.clone(), true), Progress::new()).await?;
                let cpu0 = pid.map(procs::tree_cpu).transpose()?;
                let run = load::run(spec(label, target, false), Progress::new()).await?;
                let cpu = match (pid, cpu0) {
                    (Some(pid), Some(c0)) => (procs::tree_cpu(pid)? - c0).as_secs_f64(),
                    _ => 0.0,
                };
                anyhow::Ok((run.summary(), cpu))
            };
            let (direct, _) = measure("direct", direct_t, None).await?;
            let (via_nginx, nginx_cpu_s) = measure("nginx", nginx_t, Some(nginx.pid())).await?;
            let (via_daemon, daemon_cpu_s) =
                measure("daemon", daemon_t, Some(daemon.pid())).await?;
            let row = FloorRow {
                api: api.to_owned(),
                engine: engine.to_owned(),
                concurrency,
                tokens,
                inter_token_ms: itl,
                direct,
                nginx: via_nginx,
                daemon: via_daemon,
                nginx_cpu_s,
                daemon_cpu_s,
            };
            eprintln!(
                "  {api}: first token added p50 nginx {} / daemon {} µs; req/s vs direct nginx {:.2} / daemon {:.2}; CPU per request nginx {:.0} / daemon {:.0} µs; daemon failed {} violations {}",
                row.added(&row.nginx, |p| p.p50_us),
                row.added(&row.daemon, |p| p.p50_us),
                row.rate_vs_direct(&row.nginx),
                row.rate_vs_direct(&row.daemon),
                FloorRow::cpu_per_request_us(row.nginx_cpu_s, &row.nginx),
                FloorRow::cpu_per_request_us(row.daemon_cpu_s, &row.daemon),
                row.daemon.failed,
                row.daemon.violations,
            );
            results.floor.push(row);
            write(&env.paths.out, results)?;
        }
    }
    Ok(())
}

fn print_overhead(r: &OverheadRow) {
    eprintln!(
        "  first token p50 {} µs direct / {} µs daemon (+{}), p99 {} / {} (+{}); inter-token p50 +{} p99 +{}; failed {} violations {} lost {}",
        r.direct.first_token.p50_us,
        r.daemon.first_token.p50_us,
        r.added_first_token_p50_us,
        r.direct.first_token.p99_us,
        r.daemon.first_token.p99_us,
        r.added_first_token_p99_us,
        r.added_inter_token_p50_us,
        r.added_inter_token_p99_us,
        r.daemon.failed,
        r.daemon.violations,
        r.daemon.lost_frames
    );
}

async fn admission(env: &Env, opts: &Options) -> Result<Admission> {
    eprintln!("admission throughput: tasks admitted and run");
    let flowing = admission_run(
        env,
        opts,
        "admission-flowing",
        SimArgs {
            first_token_ms: 0,
            inter_token_ms: 0,
            slots: 4096,
            threads: 1,
        },
    )
    .await?;
    eprintln!("admission throughput at saturation: engine full, queue full");
    let saturated = admission_run(
        env,
        opts,
        "admission-saturated",
        SimArgs {
            first_token_ms: 30_000,
            inter_token_ms: 0,
            slots: 4,
            threads: 1,
        },
    )
    .await?;
    Ok(Admission {
        run: flowing.0,
        daemon_cpu_per_s: flowing.1,
        saturated: Some(saturated.0),
        saturated_daemon_cpu_per_s: saturated.1,
    })
}

/// 64 closed-loop clients POST tasks for `opts.admission_secs` and never attach.
async fn admission_run(
    env: &Env,
    opts: &Options,
    name: &str,
    sim: SimArgs,
) -> Result<(Summary, f64)> {
    admission_run_with(env, opts, name, sim, "").await
}

async fn admission_run_with(
    env: &Env,
    opts: &Options,
    name: &str,
    sim: SimArgs,
    extra: &str,
) -> Result<(Summary, f64)> {
    let sim = procs::start_sim(&env.paths.sim, sim)?;
    let (daemon, _) = env.daemon_with(name, &sim, 4096, extra).await?;
    let spec = |secs: u64| Spec {
        label: name.into(),
        target: daemon_target(&daemon.base),
        shape: shape(1),
        schedule: Schedule::Closed {
            concurrency: 64,
            total: None,
            duration: Some(Duration::from_secs(secs)),
            ramp: Duration::ZERO,
        },
        mix: Mix {
            submit_only: true,
            ..Mix::default()
        },
        h2_connections: None,
    };
    load::run(spec(1), Progress::new()).await?;
    let cpu0 = daemon.stats()?.cpu;
    let report = load::run(spec(opts.admission_secs), Progress::new()).await?;
    let cpu = (daemon.stats()?.cpu - cpu0).as_secs_f64() / report.elapsed.as_secs_f64();
    let run = report.summary();
    eprintln!(
        "  {:.0} decisions/s: {:.0} admitted/s, {} refused {:?} (POST → answer p50 {} µs, p99 {} µs); daemon CPU {:.2} cores",
        run.decided_per_s,
        run.admitted_per_s,
        run.refused,
        run.errors,
        run.admit.p50_us,
        run.admit.p99_us,
        cpu
    );
    Ok((run, cpu))
}

/// The admission scenario (every task runs) per state-store setup: SQLite with nothing
/// limited (sessions and the task directory only), SQLite and Redis with a budget and rate
/// limits on every request (limits high enough never to refuse).
async fn state_stores(env: &Env, opts: &Options) -> Result<Vec<StateRow>> {
    let limits = "[budgets]\nper_key = { tokens = 1000000000000, period = \"1d\" }\n\n\
                  [rate_limits]\nper_key = { requests = 1000000000, tokens = 1000000000000, concurrent = 100000 }\n";
    let redis = procs::start_redis()?;
    let setups = [
        ("sqlite, no limits", String::new()),
        ("sqlite, budget + rate limits", limits.to_owned()),
        (
            "redis, budget + rate limits",
            format!(
                "{limits}\n[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
                redis.base
            ),
        ),
    ];
    let mut rows = Vec::new();
    for (i, (setup, extra)) in setups.iter().enumerate() {
        eprintln!("admission with state store: {setup}");
        let (run, cpu) = admission_run_with(
            env,
            opts,
            &format!("state-{i}"),
            SimArgs {
                first_token_ms: 0,
                inter_token_ms: 0,
                slots: 4096,
                threads: 1,
            },
            extra,
        )
        .await?;
        rows.push(StateRow {
            setup: (*setup).to_owned(),
            run,
            daemon_cpu_per_s: cpu,
        });
    }
    Ok(rows)
}

async fn many_streams(env: &Env, opts: &Options) -> Result<Streams> {
    let n = opts.streams;
    eprintln!("{n} concurrent streams");
    let (tokens, itl) = if opts.quick { (6, 200) } else { (30, 500) };
    let sim = procs::start_sim(
        &env.paths.sim,
        SimArgs {
            first_token_ms: 1000,
            inter_token_ms: itl,
            slots: n as u32 + 64,
            threads: 1,
        },
    )?;
    let (daemon, _) = env.daemon("streams", &sim, n as u32 + 64).await?;
    // One warm stream so the idle figure includes the adapter's client and runtime.
    let one = Spec {
        label: "warm".into(),
        target: daemon_target(&daemon.base),
        shape: shape(2),
        schedule: Schedule::Closed {
            concurrency: 1,
            total: Some(1),
            duration: None,
            ramp: Duration::ZERO,
        },
        mix: Mix::default(),
        h2_connections: None,
    };
    load::run(one, Progress::new()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = daemon.stats()?;
    let sim0 = sim.stats()?;
    // HTTP/2 to the daemon: 10 000 HTTP/1.1 client connections plus 10 000 engine
    // connections would pass this machine's 20 000 descriptors per process.
    let h2 = 64;
    let progress = Progress::new();
    let spec = Spec {
        label: "streams".into(),
        target: daemon_target(&daemon.base),
        shape: shape(tokens),
        schedule: Schedule::Closed {
            concurrency: n as usize,
            total: Some(n),
            duration: None,
            ramp: Duration::ZERO,
        },
        mix: Mix::default(),
        h2_connections: Some(h2),
    };
    let run = tokio::spawn(load::run(spec, Arc::clone(&progress)));
    let (mut peak_in_flight, mut rss_peak, mut sim_rss_peak) = (0, idle.rss_bytes, 0);
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_in_flight = peak_in_flight.max(progress.in_flight.load(Ordering::Relaxed));
        if let Ok(s) = daemon.stats() {
            rss_peak = rss_peak.max(s.rss_bytes);
        }
        if let Ok(s) = sim.stats() {
            sim_rss_peak = sim_rss_peak.max(s.rss_bytes);
        }
    }
    let report = run.await??;
    let end: ProcStats = daemon.stats()?;
    let run = report.summary();
    let per_stream = rss_peak.saturating_sub(idle.rss_bytes) / n.max(1);
    eprintln!(
        "  peak {peak_in_flight} in flight; RSS {} MiB idle, {} MiB peak: {} KiB per stream; lost {} violations {} failed {}",
        idle.rss_bytes >> 20,
        rss_peak >> 20,
        per_stream / 1024,
        run.lost_frames,
        run.violations,
        run.failed
    );
    Ok(Streams {
        peak_in_flight,
        rss_idle_bytes: idle.rss_bytes,
        rss_peak_bytes: rss_peak,
        rss_per_stream_bytes: per_stream,
        daemon_cpu_s: (end.cpu - idle.cpu).as_secs_f64(),
        sim_rss_peak_bytes: sim_rss_peak,
        sim_cpu_s: (sim.stats()?.cpu - sim0.cpu).as_secs_f64(),
        h2_connections: h2,
        run,
    })
}

/// The embedded default config (`dist/etc/orchd.toml`) with its state under `dir` and its
/// plugins from the dist tree, so two daemons share plugin directories and nothing else.
fn default_config(dist: &Path, dir: &Path) -> Result<String> {
    let text = std::fs::read_to_string(dist.join("etc/orchd.toml"))?;
    let mut out = String::new();
    for line in text.lines() {
        let path = |rel: &str| format!("\"{}\"", dir.join(rel).display());
        let line = match line.split_once(" = ").map(|(k, _)| k) {
            Some("adapters") => format!("adapters = \"{}\"", dist.join("adapters").display()),
            Some("policies") => format!("policies = \"{}\"", dist.join("policies").display()),
            Some("cache") => format!("cache = {}", path("var/cache")),
            Some("artifacts") if line.contains("var/") => {
                format!("artifacts = {}", path("var/artifacts"))
            }
            Some("catalog") => format!("catalog = {}", path("var/catalog.sqlite")),
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// CPU of `procs` over `secs`, in percent of one core each.
async fn cpu_pct(procs: &[&Proc], secs: u64) -> Result<Vec<f64>> {
    let before = procs
        .iter()
        .map(|p| p.stats())
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = started.elapsed().as_secs_f64();
    procs
        .iter()
        .zip(before)
        .map(|(p, b)| Ok((p.stats()?.cpu - b.cpu).as_secs_f64() / wall * 100.0))
        .collect()
}

/// Idle daemons: one alone, then a second sharing its plugin directories (the second's
/// start reads every plugin file the first one watches).
async fn idle(env: &Env, opts: &Options) -> Result<Idle> {
    let secs = opts.idle_secs;
    eprintln!("idle: default config, {secs} s alone, then {secs} s beside a second daemon");
    let dist = &env.paths.dist;
    let start = |name: &'static str| async move {
        let dir = env.scratch.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let config = default_config(dist, &dir)?;
        procs::start_daemon(dist, &dir, &dist.join("policies"), &config, "mock").await
    };
    let first = start("idle-first").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = cpu_pct(&[&first], secs).await?[0];
    let second = start("idle-second").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shared = cpu_pct(&[&first, &second], secs).await?;
    eprintln!(
        "  alone {alone:.2} % of a core; sharing plugin directories {:.2} % and {:.2} %",
        shared[0], shared[1]
    );
    Ok(Idle {
        secs,
        alone_pct: alone,
        shared_first_pct: shared[0],
        shared_second_pct: shared[1],
    })
}

async fn placement_name(http: &reqwest::Client, base: &str) -> Result<String> {
    let v: Value = http
        .get(format!("{base}/v1/policies"))
        .send()
        .await?
        .json()
        .await?;
    v["policies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["kind"] == "placement"))
        .and_then(|p| p["name"].as_str())
        .map(str::to_owned)
        .context("placement in /v1/policies")
}

async fn hot_swap(env: &Env, opts: &Options) -> Result<HotSwap> {
    let rate = if opts.quick { 200.0 } else { 1000.0 };
    eprintln!("policy hot swap under {rate} requests/s");
    let sim = procs::start_sim(
        &env.paths.sim,
        SimArgs {
            first_token_ms: 5,
            inter_token_ms: 5,
            slots: 1024,
            threads: 1,
        },
    )?;
    let (daemon, policies) = env.daemon("hot-swap", &sim, 1024).await?;
    let versions = [
        policies.join("placement-default.wasm"),
        env.paths.swap_policy.clone(),
    ];
    let spec = Spec {
        label: "hot-swap".into(),
        target: daemon_target(&daemon.base),
        shape: shape(4),
        schedule: Schedule::Open {
            rate,
            duration: Duration::from_secs(opts.swap_secs),
            max_in_flight: 4096,
        },
        mix: Mix::default(),
        h2_connections: None,
    };
    let run = tokio::spawn(load::run(spec, Progress::new()));
    let http = reqwest::Client::new();
    let mut swaps = Vec::new();
    let every = Duration::from_secs(opts.swap_secs) / 4;
    let target = policies.join("placement.wasm");
    for i in 1..4 {
        tokio::time::sleep(every).await;
        let source = &versions[i % 2];
        let before = placement_name(&http, &daemon.base).await?;
        let tmp = target.with_extension("swap-tmp");
        std::fs::copy(source, &tmp)?;
        std::fs::rename(&tmp, &target)?;
        let written = Instant::now();
        loop {
            let now = placement_name(&http, &daemon.base).await?;
            if now != before {
                swaps.push(SwapTiming {
                    to: now,
                    to_live_ms: written.elapsed().as_secs_f64() * 1000.0,
                });
                break;
            }
            if written.elapsed() > Duration::from_secs(10) {
                bail!("the swap to {} never took effect", source.display());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        eprintln!("  swap {i}: {:.1} ms to live", swaps[i - 1].to_live_ms);
    }
    let run = run.await??.summary();
    eprintln!(
        "  {} requests, failed {} {:?}, violations {}",
        run.started, run.failed, run.errors, run.violations
    );
    Ok(HotSwap { run, rate, swaps })
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {} GiB memory, {}",
        mem / (1 << 20),
        std::env::consts::ARCH
    )
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn added(us: i64) -> String {
    format!("{:+.2}", us as f64 / 1000.0)
}

fn pct(p: &Percentiles) -> String {
    format!("{} / {} / {}", ms(p.p50_us), ms(p.p99_us), ms(p.max_us))
}

/// The results as the tables in docs/BENCHMARKS.md.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let line = |s: &mut String, l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line(
        &mut s,
        &format!("Machine: {}. Date: {}.", r.machine, r.date),
    );
    if r.quick {
        line(&mut s, "\n**Quick run: scaled down, not comparable.**");
    }
    if let Some(i) = &r.idle {
        line(&mut s, "\n### Idle daemon (embedded default config)\n");
        line(
            &mut s,
            "| daemons | CPU averaged over the window (% of one core) | window |",
        );
        line(&mut s, "|---|---|---|");
        line(
            &mut s,
            &format!("| one, alone | **{:.2} %** | {} s |", i.alone_pct, i.secs),
        );
        line(
            &mut s,
            &format!(
                "| two sharing adapter and policy directories | **{:.2} %** and **{:.2} %** | {} s |",
                i.shared_first_pct, i.shared_second_pct, i.secs
            ),
        );
    }
    for (api, engine) in [
        ("native", "paced"),
        ("native", "zero-delay"),
        ("openai", "paced"),
        ("openai", "zero-delay"),
    ] {
        let rows: Vec<&FloorRow> = r
            .floor
            .iter()
            .filter(|f| f.api == api && f.engine == engine)
            .collect();
        if rows.is_empty() {
            continue;
        }
        line(
            &mut s,
            &format!("\n### Against the floor: {api} API, {engine} engine\n"),
        );
        line(
            &mut s,
            "| streams | tokens × inter-token | first token direct p50 / p99 (ms) | added p50: nginx / daemon (ms) | **daemon − nginx p50** | added p99: nginx / daemon | **daemon − nginx p99** | req/s direct | vs direct: nginx / **daemon** | CPU per request nginx / daemon (µs) | **CPU ×nginx** | daemon failed / violations / lost |",
        );
        line(&mut s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for f in rows {
            let (n50, d50) = (
                f.added(&f.nginx, |p| p.p50_us),
                f.added(&f.daemon, |p| p.p50_us),
            );
            let (n99, d99) = (
                f.added(&f.nginx, |p| p.p99_us),
                f.added(&f.daemon, |p| p.p99_us),
            );
            let (nc, dc) = (
                FloorRow::cpu_per_request_us(f.nginx_cpu_s, &f.nginx),
                FloorRow::cpu_per_request_us(f.daemon_cpu_s, &f.daemon),
            );
            line(
                &mut s,
                &format!(
                    "| {} | {} × {} ms | {:.2} / {:.2} | {} / {} | **{}** | {} / {} | **{}** | {:.0} | {:.2} / **{:.2}** | {:.0} / {:.0} | **{:.1}×** | {} / {} / {} |",
                    f.concurrency,
                    f.tokens,
                    f.inter_token_ms,
                    f.direct.first_token.p50_us as f64 / 1000.0,
                    f.direct.first_token.p99_us as f64 / 1000.0,
                    added(n50),
                    added(d50),
                    added(d50 - n50),
                    added(n99),
                    added(d99),
                    added(d99 - n99),
                    per_s(&f.direct),
                    f.rate_vs_direct(&f.nginx),
                    f.rate_vs_direct(&f.daemon),
                    nc,
                    dc,
                    dc / nc.max(1e-9),
                    f.daemon.failed,
                    f.daemon.violations,
                    f.daemon.lost_frames,
                ),
            );
        }
    }
    line(
        &mut s,
        "\n### Overhead: through orchestratord vs direct to the engine\n",
    );
    line(
        &mut s,
        "| streams | tokens × inter-token | first token direct p50 / p99 / max (ms) | through daemon | **added p50** | **added p99** | inter-token added p50 / p99 | daemon CPU (cores) | failed / violations / lost |",
    );
    line(&mut s, "|---|---|---|---|---|---|---|---|---|");
    for o in &r.overhead {
        line(
            &mut s,
            &format!(
                "| {} | {} × {} ms | {} | {} | **{}** | **{}** | {} / {} | {:.2} | {} / {} / {} |",
                o.concurrency,
                o.tokens,
                o.inter_token_ms,
                pct(&o.direct.first_token),
                pct(&o.daemon.first_token),
                added(o.added_first_token_p50_us),
                added(o.added_first_token_p99_us),
                added(o.added_inter_token_p50_us),
                added(o.added_inter_token_p99_us),
                o.daemon_cpu_per_s,
                o.daemon.failed,
                o.daemon.violations,
                o.daemon.lost_frames,
            ),
        );
    }
    if !r.state.is_empty() {
        line(&mut s, "\n### Admission with the state store\n");
        line(
            &mut s,
            "| setup | admitted/s | POST → 202 p50 µs | p99 µs | daemon CPU (cores) |",
        );
        line(&mut s, "|---|---|---|---|---|");
        for row in &r.state {
            line(
                &mut s,
                &format!(
                    "| {} | {:.0} | {} | {} | {:.2} |",
                    row.setup,
                    row.run.admitted_per_s,
                    row.run.admit.p50_us,
                    row.run.admit.p99_us,
                    row.daemon_cpu_per_s
                ),
            );
        }
    }
    if let Some(a) = &r.admission {
        line(&mut s, "\n### Admission throughput\n");
        line(
            &mut s,
            "| engine | **decisions/s** | admitted/s | POST → answer p50 / p99 / max (ms) | refusals | daemon CPU (cores) |",
        );
        line(&mut s, "|---|---|---|---|---|---|");
        let rows = [
            (
                "flowing: every admitted task runs",
                Some(&a.run),
                a.daemon_cpu_per_s,
            ),
            (
                "saturated: slots and queue full",
                a.saturated.as_ref(),
                a.saturated_daemon_cpu_per_s,
            ),
        ];
        for (what, run, cpu) in rows {
            let Some(run) = run else { continue };
            line(
                &mut s,
                &format!(
                    "| {what} | **{:.0}** | {:.0} | {} | {} {:?} | {:.2} |",
                    run.decided_per_s,
                    run.admitted_per_s,
                    pct(&run.admit),
                    run.refused,
                    run.errors,
                    cpu
                ),
            );
        }
    }
    if let Some(m) = &r.streams {
        line(&mut s, "\n### Concurrent streams\n");
        line(
            &mut s,
            "| streams (peak in flight) | tokens | RSS idle → peak | **RSS per stream** | daemon CPU | lost / reordered-or-broken / failed | engine-sim RSS, CPU (1 thread) |",
        );
        line(&mut s, "|---|---|---|---|---|---|---|");
        line(
            &mut s,
            &format!(
                "| {} ({}) | {} | {} → {} MiB | **{:.1} KiB** | {:.1} s | {} / {} / {} | {} MiB, {:.1} s |",
                m.run.started,
                m.peak_in_flight,
                m.run.tokens,
                m.rss_idle_bytes >> 20,
                m.rss_peak_bytes >> 20,
                m.rss_per_stream_bytes as f64 / 1024.0,
                m.daemon_cpu_s,
                m.run.lost_frames,
                m.run.violations,
                m.run.failed,
                m.sim_rss_peak_bytes >> 20,
                m.sim_cpu_s,
            ),
        );
    }
    if let Some(h) = &r.hot_swap {
        line(&mut s, "\n### Policy hot swap under load\n");
        line(
            &mut s,
            "| load | requests | failed | violations | file write → new version live (each swap) |",
        );
        line(&mut s, "|---|---|---|---|---|");
        let swaps: Vec<String> = h
            .swaps
            .iter()
            .map(|w| format!("{:.0} ms ({})", w.to_live_ms, w.to))
            .collect();
        line(
            &mut s,
            &format!(
                "| {:.0} req/s open loop | {} | {} | {} | {} |",
                h.rate,
                h.run.started,
                h.run.failed,
                h.run.violations,
                swaps.join(", ")
            ),
        );
    }
    if let Some(Value::Array(rows)) = &r.policy_costs {
        line(&mut s, "\n### Policy call costs (warm instance)\n");
        line(&mut s, "| call | p50 (µs) | p90 | p99 |");
        line(&mut s, "|---|---|---|---|");
        for row in rows {
            line(
                &mut s,
                &format!(
                    "| {} | {:.2} | {:.2} | {:.2} |",
                    row["name"].as_str().unwrap_or("?"),
                    row["p50_us"].as_f64().unwrap_or(0.0),
                    row["p90_us"].as_f64().unwrap_or(0.0),
                    row["p99_us"].as_f64().unwrap_or(0.0)
                ),
            );
        }
    }
    s
}
