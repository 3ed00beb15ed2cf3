//! Broken policies: trap, loop, memory bomb, deep recursion, invalid output → 503
//! POLICY_UNAVAILABLE, and the daemon keeps serving through the same policy. The faulty
//! component is a real component built from `plugins/fixtures/admission-faulty`.

use orchd_testkit::{DaemonBuilder, config, fixture_policy, mock_pool, task};
use serde_json::{Value, json};

async fn check_fault(fault: &str, kind: &str) {
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
    let metrics = d
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("policy_calls_total{{outcome=\"{kind}\",policy=\"admission\"}} 2");
    assert!(metrics.contains(&line), "{line} not in metrics");
    let (status, _) = d.get_json("/readyz").await;
    assert_eq!(status, 200);
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
