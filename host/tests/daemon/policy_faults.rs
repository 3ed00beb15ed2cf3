//! Broken policies: trap, loop, memory bomb, deep recursion, invalid output → 503
//! POLICY_UNAVAILABLE, and the daemon keeps serving through the same policy. The faulty
//! component is a real component built from `plugins/fixtures/admission-faulty`.

use orchd_testkit::{DaemonBuilder, config, fixture_policy, mock_pool, task};
use serde_json::{Value, json};

/// Runs the fault; returns the policy's `last_error` and the error its failure was
/// logged with.
async fn check_fault(fault: &str, kind: &str) -> (String, String) {
    let admission = format!(
        "component = \"{}\"\nconfig = {{ fault = \"{fault}\" }}\n",
        fixture_policy("admission-faulty.wasm")
    );
    let d = DaemonBuilder::new(config(&admission, 8, &[mock_pool("p", "slots = 2")])).start();
    let interactive = task("p", json!({"priority": "interactive", "max_tokens": 2}));
    let batch = task("p", json!({"priority": "batch", "max_tokens": 2}));

    d.submit_ok(&interactive).await;
    for _ in 0..2 {
        let resp = d.submit(&batch).await;
        assert_eq!(resp.status().as_u16(), 503, "{fault}");
        assert!(resp.headers().contains_key("retry-after"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "POLICY_UNAVAILABLE", "{fault}: {body}");
        assert_eq!(body["retriable"], true);
        // The instance that failed is discarded; a fresh one serves the next call.
        let id = d.submit_ok(&interactive).await;
        assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
    }
    let failures = d.log_events("policy call failed; request refused (fail closed)");
    assert_eq!(failures.len(), 2, "{fault}");
    assert_eq!(failures[0]["kind"], kind, "{fault}: {}", failures[0]);
    assert_eq!(failures[0]["policy"], "admission");
    let (_, policies) = d.get_json("/v1/policies").await;
    let admission = &policies["policies"][0];
    assert_eq!(admission["name"], "admission-faulty");
    assert_eq!(admission["errors"], 2, "{admission}");
    assert_eq!(admission["timeouts"], if kind == "timeout" { 2 } else { 0 });
    assert!(admission["last_error"].is_string());
    let metrics = d.metrics().await;
    // Labelled with the component's name and version.
    let prefix = format!(
        "policy_calls_total{{name=\"admission-faulty\",outcome=\"{kind}\",policy=\"admission\",version=\""
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&prefix) && l.ends_with(" 2")),
        "{prefix}… 2 not in metrics"
    );
    let (status, _) = d.get_json("/readyz").await;
    assert_eq!(status, 200);
    (
        admission["last_error"].as_str().unwrap().to_owned(),
        failures[0]["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_panicking_policy_says_why_in_last_error_and_in_the_log() {
    // The guest's panic hook reports the panic through the host's log before the trap;
    // the failure carries the guest's own words, not a bare wasm backtrace.
    let (last_error, logged) = check_fault("panic", "trap").await;
    let said = "batch work is refused today (queue p)";
    assert!(last_error.contains(said), "{last_error}");
    assert!(last_error.contains("wasm trap"), "{last_error}");
    assert!(logged.contains(said), "{logged}");
}

#[tokio::test]
async fn a_trapping_policy_gives_503_and_the_daemon_keeps_serving() {
    check_fault("trap", "trap").await;
}

#[tokio::test]
async fn a_looping_policy_is_stopped_by_the_epoch_deadline() {
    check_fault("loop", "timeout").await;
}

#[tokio::test]
async fn a_policy_that_grows_past_the_memory_cap_traps() {
    check_fault("grow", "trap").await;
}

#[tokio::test]
async fn deep_recursion_hits_the_stack_limit() {
    check_fault("recurse", "trap").await;
}

#[tokio::test]
async fn an_invalid_output_is_refused_by_the_host() {
    check_fault("invalid", "invalid").await;
}

fn with_policy(kind: &str, file: &str, extra: &str, pools: &[String]) -> String {
    format!(
        "{}\n[policies.{kind}]\ncomponent = \"{}\"\n{extra}\n",
        config(&orchd_testkit::default_admission("reject"), 8, pools),
        fixture_policy(file)
    )
}

async fn metric(d: &orchd_testkit::Daemon, line_prefix: &str) -> Option<u64> {
    let text = d.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_failing_placement_falls_back_only_when_the_operator_allows_it() {
    let pools = [mock_pool("p", "slots = 2")];
    let d = DaemonBuilder::new(with_policy(
        "placement",
        "placement-faulty.wasm",
        "on_error = \"fallback\"",
        &pools,
    ))
    .start();
    for _ in 0..3 {
        let id = d.submit_ok(&task("p", json!({}))).await;
        assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
    }
    assert_eq!(
        metric(&d, "policy_fallbacks_total{policy=\"placement\"} ").await,
        Some(3)
    );
    assert!(!d.log_events("policy failed; host fallback used").is_empty());

    // Without fallback, a task whose dispatch placement fails ends with POLICY_UNAVAILABLE.
    let d = DaemonBuilder::new(with_policy(
        "placement",
        "placement-faulty.wasm",
        "on_error = \"fail\"",
        &pools,
    ))
    .start();
    let id = d.submit_ok(&task("p", json!({}))).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event, "error");
    assert_eq!(frames[0].data["code"], "POLICY_UNAVAILABLE");
    assert_eq!(
        metric(&d, "policy_fallbacks_total{policy=\"placement\"} ").await,
        None
    );
    let (status, _) = d.get_json("/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_failing_error_mapping_falls_back_to_the_built_in_table() {
    let pools = [
        mock_pool("p", "failure = \"error_before_first_token\""),
        mock_pool("q", "failure = \"error_mid_stream\", fail_after_tokens = 1"),
    ];
    let d = DaemonBuilder::new(with_policy(
        "error_mapping",
        "error-mapping-faulty.wasm",
        "",
        &pools,
    ))
    .start();
    // Upstream failure: the policy traps, the built-in table answers.
    let id = d.submit_ok(&task("p", json!({}))).await;
    let last = d.stream(&id).await.pop().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "WORKER_RESET");
    assert!(
        last.data["policy_label"].is_null(),
        "the built-in table, not the policy: {}",
        last.data
    );
    assert_eq!(
        metric(&d, "policy_fallbacks_total{policy=\"error_mapping\"} ").await,
        Some(1)
    );
    // Transport failure: the policy answers.
    let id = d.submit_ok(&task("q", json!({}))).await;
    let last = d.stream(&id).await.pop().unwrap();
    assert_eq!(last.data["policy_label"], "error-mapping-faulty");
}
