//! Prometheus metrics (METRICS.md): registered once at start in one registry; label values
//! are bounded. Rendered by `GET /metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

struct Metrics {
    registry: Registry,
    policy_calls_total: IntCounterVec,
    policy_call_duration_seconds: HistogramVec,
    policy_reloads_total: IntCounterVec,
    policy_fallbacks_total: IntCounterVec,
    placement_decisions_total: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

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
        &["policy"],
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
    Metrics {
        policy_calls_total: counter(
            &registry,
            "policy_calls_total",
            "Policy calls by outcome",
            &["policy", "outcome"],
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
        registry,
    }
});

pub fn policy_call(policy: &'static str, outcome: &'static str, took: Duration) {
    let m = &*METRICS;
    m.policy_calls_total
        .with_label_values(&[policy, outcome])
        .inc();
    m.policy_call_duration_seconds
        .with_label_values(&[policy])
        .observe(took.as_secs_f64());
}

pub fn policy_reload(policy: &'static str, result: &'static str) {
    METRICS
        .policy_reloads_total
        .with_label_values(&[policy, result])
        .inc();
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

/// The exposition text of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut buf)
        .expect("text encoding never fails");
    String::from_utf8(buf).expect("exposition is UTF-8")
}
