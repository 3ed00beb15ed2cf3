//! Prometheus metrics (METRICS.md): registered once at start in one registry; label values
//! are bounded. Rendered by `GET /metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

struct Metrics {
    registry: Registry,
    tasks_enqueued_total: IntCounterVec,
    tasks_started_total: IntCounterVec,
    tasks_canceled_total: IntCounterVec,
    tasks_rejected_total: IntCounterVec,
    queue_depth: IntGaugeVec,
    latency_first_token_ms: HistogramVec,
    latency_decode_ms: HistogramVec,
    tokens_in_total: IntCounterVec,
    tokens_out_total: IntCounterVec,
    admission_backpressure_events_total: IntCounterVec,
    sse_backpressure_drops_total: prometheus::IntCounter,
    /// Exported only where NVML answers (no series at all without a driver).
    gpu_utilization: IntGaugeVec,
    vram_used_bytes: IntGaugeVec,
    model_state: IntGaugeVec,
    catalog_verifications_total: IntCounterVec,
    pool_ready: IntGaugeVec,
    active_leases: IntGaugeVec,
    policy_calls_total: IntCounterVec,
    policy_call_duration_seconds: HistogramVec,
    policy_reloads_total: IntCounterVec,
    policy_fallbacks_total: IntCounterVec,
    placement_decisions_total: IntCounterVec,
    plugin_rescans_total: IntCounterVec,
    plugin_files_hashed_total: IntCounterVec,
    bounded_evictions_total: IntCounterVec,
    rate_limited_total: IntCounterVec,
    replica_ejections_total: IntCounterVec,
    replica_ejected: IntGaugeVec,
    state_store_up: IntGaugeVec,
    finished_tasks_retained_bytes: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

const TASK: &[&str] = &[
    "engine",
    "engine_version",
    "pool_id",
    "replica_id",
    "priority",
];
const GPU: &[&str] = &[
    "engine",
    "engine_version",
    "pool_id",
    "replica_id",
    "device",
];
const REPLICA: &[&str] = &["engine", "engine_version", "pool_id", "replica_id"];
const POOL_PRIORITY: &[&str] = &["engine", "engine_version", "pool_id", "priority"];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let policy_call_duration_seconds = HistogramVec::new(
        HistogramOpts::new(
            "policy_call_duration_seconds",
            "Wall time of one policy call",
        )
        .buckets(vec![
            1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 5e-3, 1e-2,
        ]),
        &["policy", "name", "version"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(policy_call_duration_seconds.clone()))
        .expect("registered once");
    let build_info = IntGaugeVec::new(
        Opts::new("build_info", "Build of this daemon (always 1)"),
        &["version", "git_sha"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(build_info.clone()))
        .expect("registered once");
    build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            option_env!("ORCHD_GIT_SHA").unwrap_or("unknown"),
        ])
        .set(1);
    let sse_backpressure_drops_total = prometheus::IntCounter::new(
        "sse_backpressure_drops_total",
        "SSE frames dropped for slow readers (metrics frames only, never tokens)",
    )
    .expect("valid metric");
    registry
        .register(Box::new(sse_backpressure_drops_total.clone()))
        .expect("registered once");
    let m = Metrics {
        tasks_enqueued_total: counter(
            &registry,
            "tasks_enqueued_total",
            "Tasks admitted into a queue",
            TASK,
        ),
        tasks_started_total: counter(
            &registry,
            "tasks_started_total",
            "Tasks dispatched to a replica",
            TASK,
        ),
        tasks_canceled_total: counter(
            &registry,
            "tasks_canceled_total",
            "Tasks canceled, by reason",
            &[
                "engine",
                "engine_version",
                "pool_id",
                "replica_id",
                "reason",
            ],
        ),
        tasks_rejected_total: counter(
            &registry,
            "tasks_rejected_total",
            "Requests refused, by error code",
            &["engine", "reason"],
        ),
        queue_depth: gauge(
            &registry,
            "queue_depth",
            "Queued tasks per pool and class",
            POOL_PRIORITY,
        ),
        latency_first_token_ms: histogram(
            &registry,
            "latency_first_token_ms",
            "Admission to first token, ms",
            &[
                50.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0,
            ],
            POOL_PRIORITY,
        ),
        latency_decode_ms: histogram(
            &registry,
            "latency_decode_ms",
            "First token to end of stream, ms",
            &[
                250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 12000.0,
            ],
            POOL_PRIORITY,
        ),
        tokens_in_total: counter(
            &registry,
            "tokens_in_total",
            "Prompt tokens processed",
            REPLICA,
        ),
        tokens_out_total: counter(&registry, "tokens_out_total", "Tokens streamed", REPLICA),
        admission_backpressure_events_total: counter(
            &registry,
            "admission_backpressure_events_total",
            "Admission backpressure (rejections and evictions), by policy label",
            &["engine", "policy"],
        ),
        sse_backpressure_drops_total,
        gpu_utilization: gauge(
            &registry,
            "gpu_utilization",
            "GPU utilization, percent, per device of a replica",
            GPU,
        ),
        vram_used_bytes: gauge(
            &registry,
            "vram_used_bytes",
            "GPU memory in use, bytes, per device of a replica",
            GPU,
        ),
        model_state: gauge(
            &registry,
            "model_state",
            "1 for the state a catalog model is in",
            &["model_id", "state"],
        ),
        catalog_verifications_total: counter(
            &registry,
            "catalog_verifications_total",
            "Catalog verifications by result",
            &["result", "reason", "engine"],
        ),
        pool_ready: gauge(
            &registry,
            "pool_ready",
            "1 when the pool can take tasks",
            &["pool_id"],
        ),
        active_leases: gauge(
            &registry,
            "active_leases",
            "Slots leased to running tasks",
            &["pool_id"],
        ),
        policy_calls_total: counter(
            &registry,
            "policy_calls_total",
            "Policy calls by policy slot, component name and version, and outcome",
            &["policy", "name", "version", "outcome"],
        ),
        policy_call_duration_seconds,
        policy_reloads_total: counter(
            &registry,
            "policy_reloads_total",
            "Policy loads and refusals",
            &["policy", "result"],
        ),
        policy_fallbacks_total: counter(
            &registry,
            "policy_fallbacks_total",
            "Decisions the host made because a policy failed",
            &["policy"],
        ),
        placement_decisions_total: counter(
            &registry,
            "placement_decisions_total",
            "Placement decisions",
            &["outcome", "pinned", "fallback"],
        ),
        plugin_rescans_total: counter(
            &registry,
            "plugin_rescans_total",
            "Rescans of a plugin directory done after a relevant change (created, written, renamed, removed)",
            &["directory"],
        ),
        plugin_files_hashed_total: counter(
            &registry,
            "plugin_files_hashed_total",
            "Plugin files read and hashed because their stat changed",
            &["directory"],
        ),
        bounded_evictions_total: counter(
            &registry,
            "bounded_evictions_total",
            "Entries dropped because a bounded map or queue was full (finished_tasks, transcripts, sessions, pending_settles)",
            &["what"],
        ),
        rate_limited_total: counter(
            &registry,
            "rate_limited_total",
            "Requests refused by a rate limit, by limit (requests, tokens, concurrent)",
            &["limit"],
        ),
        replica_ejections_total: counter(
            &registry,
            "replica_ejections_total",
            "Replicas taken out of placement for failing (outlier ejection), by pool and replica",
            &["pool_id", "replica_id"],
        ),
        replica_ejected: gauge(
            &registry,
            "replica_ejected",
            "1 while a replica is ejected (out of placement, or waiting for its probe)",
            &["pool_id", "replica_id"],
        ),
        state_store_up: gauge(
            &registry,
            "state_store_up",
            "1 when the state store (budgets, rate limits) answered the last call",
            &["backend"],
        ),
        finished_tasks_retained_bytes: gauge(
            &registry,
            "finished_tasks_retained_bytes",
            "Approximate memory held by finished tasks kept for status and replay",
            &[],
        ),
        registry,
    };
    // Series that exist from the start (at 0), so a dashboard sees them before the
    // first event.
    for what in ["finished_tasks", "transcripts", "sessions"] {
        m.bounded_evictions_total.with_label_values(&[what]);
    }
    for limit in ["requests", "tokens", "concurrent"] {
        m.rate_limited_total.with_label_values(&[limit]);
    }
    for directory in ["adapter", "policy"] {
        m.plugin_rescans_total.with_label_values(&[directory]);
        m.plugin_files_hashed_total.with_label_values(&[directory]);
    }
    m.finished_tasks_retained_bytes
        .with_label_values::<&str>(&[])
        .set(0);
    m
});

/// One policy call of the component `name` `version` (as it reports itself; cut to 64
/// characters) filling slot `policy`.
pub fn policy_call(
    policy: &'static str,
    name: &str,
    version: &str,
    outcome: &'static str,
    took: Duration,
) {
    let m = &*METRICS;
    let (name, version) = (bounded(name), bounded(version));
    m.policy_calls_total
        .with_label_values(&[policy, name, version, outcome])
        .inc();
    m.policy_call_duration_seconds
        .with_label_values(&[policy, name, version])
        .observe(took.as_secs_f64());
}

/// A label value from a component's own words: at most 64 characters.
fn bounded(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

pub fn policy_reload(policy: &'static str, result: &'static str) {
    METRICS
        .policy_reloads_total
        .with_label_values(&[policy, result])
        .inc();
}

/// One rescan of the `adapter` or `policy` directory.
pub fn plugin_rescan(directory: &'static str) {
    METRICS
        .plugin_rescans_total
        .with_label_values(&[directory])
        .inc();
}

/// One plugin file read and hashed.
pub fn plugin_file_hashed(directory: &'static str) {
    METRICS
        .plugin_files_hashed_total
        .with_label_values(&[directory])
        .inc();
}

/// How many files of `directory` were hashed so far (tests).
pub fn plugin_files_hashed(directory: &str) -> u64 {
    METRICS
        .plugin_files_hashed_total
        .with_label_values(&[directory])
        .get()
}

pub fn policy_fallback(policy: &'static str) {
    METRICS
        .policy_fallbacks_total
        .with_label_values(&[policy])
        .inc();
}

pub fn placement_decision(outcome: &'static str, pinned: bool, fallback: bool) {
    let b = |v: bool| if v { "true" } else { "false" };
    METRICS
        .placement_decisions_total
        .with_label_values(&[outcome, b(pinned), b(fallback)])
        .inc();
}

/// Labels of a task on a replica.
pub struct TaskLabels<'a> {
    pub engine: &'a str,
    pub engine_version: &'a str,
    pub pool_id: &'a str,
    pub replica_id: &'a str,
    pub priority: &'a str,
}

impl TaskLabels<'_> {
    fn values(&self) -> [&str; 5] {
        [
            self.engine,
            self.engine_version,
            self.pool_id,
            self.replica_id,
            self.priority,
        ]
    }
}

pub fn task_enqueued(l: &TaskLabels<'_>) {
    METRICS
        .tasks_enqueued_total
        .with_label_values(&l.values())
        .inc();
}

pub fn task_started(l: &TaskLabels<'_>) {
    METRICS
        .tasks_started_total
        .with_label_values(&l.values())
        .inc();
}

pub fn task_canceled(l: &TaskLabels<'_>, reason: &str) {
    METRICS
        .tasks_canceled_total
        .with_label_values(&[l.engine, l.engine_version, l.pool_id, l.replica_id, reason])
        .inc();
}

pub fn task_rejected(engine: &str, code: &str) {
    METRICS
        .tasks_rejected_total
        .with_label_values(&[engine, code])
        .inc();
}

pub fn queue_depth(engine: &str, engine_version: &str, pool_id: &str, priority: &str, depth: u32) {
    METRICS
        .queue_depth
        .with_label_values(&[engine, engine_version, pool_id, priority])
        .set(i64::from(depth));
}

/// A finished stream: first-token latency from admission, decode time, tokens.
pub fn task_finished(
    l: &TaskLabels<'_>,
    first_token_ms: Option<f64>,
    decode_ms: f64,
    tokens_in: u32,
    tokens_out: u32,
) {
    let m = &*METRICS;
    let pool = [l.engine, l.engine_version, l.pool_id, l.priority];
    if let Some(ms) = first_token_ms {
        m.latency_first_token_ms
            .with_label_values(&pool)
            .observe(ms);
        m.latency_decode_ms
            .with_label_values(&pool)
            .observe(decode_ms);
    }
    let replica = [l.engine, l.engine_version, l.pool_id, l.replica_id];
    m.tokens_in_total
        .with_label_values(&replica)
        .inc_by(u64::from(tokens_in));
    m.tokens_out_total
        .with_label_values(&replica)
        .inc_by(u64::from(tokens_out));
}

pub fn admission_backpressure(engine: &str, policy: &str) {
    METRICS
        .admission_backpressure_events_total
        .with_label_values(&[engine, policy])
        .inc();
}

/// One device of a replica, as NVML last saw it.
pub fn gpu(labels: [&str; 5], utilization_percent: u32, vram_used: u64) {
    METRICS
        .gpu_utilization
        .with_label_values(&labels)
        .set(i64::from(utilization_percent));
    METRICS
        .vram_used_bytes
        .with_label_values(&labels)
        .set(i64::try_from(vram_used).unwrap_or(i64::MAX));
}

/// A catalog model's state (the other state's series goes to 0); `None` forgets it.
pub fn model_state(model_id: &str, state: Option<&str>) {
    for s in ["Active", "Retired"] {
        match state {
            Some(current) => METRICS
                .model_state
                .with_label_values(&[model_id, s])
                .set(i64::from(s == current)),
            None => {
                let _ = METRICS.model_state.remove_label_values(&[model_id, s]);
            }
        }
    }
}

pub fn catalog_verification(result: &str, reason: &str, engine: &str) {
    METRICS
        .catalog_verifications_total
        .with_label_values(&[result, reason, engine])
        .inc();
}

/// Entries a bounded structure dropped to stay within its bound.
pub fn bounded_eviction(what: &'static str, n: usize) {
    METRICS
        .bounded_evictions_total
        .with_label_values(&[what])
        .inc_by(n as u64);
}

pub fn rate_limited(limit: &'static str) {
    METRICS.rate_limited_total.with_label_values(&[limit]).inc();
}

/// A replica ejected (`true`, counted) or back in placement (`false`).
pub fn replica_ejected(pool_id: &str, replica_id: &str, ejected: bool) {
    if ejected {
        METRICS
            .replica_ejections_total
            .with_label_values(&[pool_id, replica_id])
            .inc();
    }
    METRICS
        .replica_ejected
        .with_label_values(&[pool_id, replica_id])
        .set(i64::from(ejected));
}

pub fn state_store_up(backend: &'static str, up: bool) {
    METRICS
        .state_store_up
        .with_label_values(&[backend])
        .set(i64::from(up));
}

pub fn finished_tasks_evicted(n: usize) {
    bounded_eviction("finished_tasks", n);
}

pub fn finished_tasks_retained_bytes(bytes: usize) {
    METRICS
        .finished_tasks_retained_bytes
        .with_label_values::<&str>(&[])
        .set(bytes as i64);
}

/// A `metrics` frame dropped from a full replay buffer.
pub fn sse_backpressure_drop() {
    METRICS.sse_backpressure_drops_total.inc();
}

pub fn pool_state(pool_id: &str, ready: bool, leases: u32) {
    METRICS
        .pool_ready
        .with_label_values(&[pool_id])
        .set(i64::from(ready));
    METRICS
        .active_leases
        .with_label_values(&[pool_id])
        .set(i64::from(leases));
}

/// The exposition text of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut buf)
        .expect("text encoding never fails");
    String::from_utf8(buf).expect("exposition is UTF-8")
}
