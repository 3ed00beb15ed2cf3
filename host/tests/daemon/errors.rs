//! One test per row of API.md's error table: each code is produced by the real daemon,
//! with its status, envelope, `retriable` and (for 429/503) retry hints. Rows whose
//! behaviour has deeper tests elsewhere are checked here at the edge only.

use orchd_testkit::{
    Daemon, DaemonBuilder, config, default_admission, expect_error, fixture_policy, mock_pool, task,
};
use serde_json::{Value, json};

fn daemon(mock: &str) -> Daemon {
    DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", mock)],
    ))
    .start()
}

/// Retry hints of a backpressure or unavailability answer.
fn check_retry(resp: &reqwest::Response) {
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 1);
    assert!(resp.headers().contains_key("x-backoff-ms"));
}

/// Streams a task that fails in the engine; returns its `error` frame.
async fn engine_error(d: &Daemon) -> Value {
    let id = d.submit_ok(&task("p", json!({"max_tokens": 5}))).await;
    let frames = d.stream(&id).await;
    let last = frames.last().unwrap();
    assert_eq!(last.event, "error", "{frames:?}");
    assert_eq!(last.data["engine"], "mock");
    assert!(last.data["correlation_id"].is_string());
    last.data.clone()
}

#[tokio::test]
async fn invalid_params_400_names_the_field() {
    let d = daemon("");
    let body = expect_error(
        d.submit(&task("p", json!({"priority": "urgent"}))).await,
        400,
        "INVALID_PARAMS",
        "priority",
    )
    .await;
    assert_eq!(body["retriable"], false);
}

#[tokio::test]
async fn deadline_unmet_400_before_admission() {
    let d = daemon("");
    expect_error(
        d.submit(&task("p", json!({"max_tokens": 5000, "deadline_ms": 10})))
            .await,
        400,
        "DEADLINE_UNMET",
        "deadline_ms",
    )
    .await;
}

#[tokio::test]
async fn admission_reject_429_with_retry_hints() {
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        1,
        &[mock_pool("p", "slots = 1, tokens_per_s = 10.0")],
    ))
    .start();
    let running = d
        .submit_ok(&task("p", json!({"max_tokens": 500, "expected_tokens": 5})))
        .await;
    d.wait_state(&running, "running").await;
    d.submit_ok(&task("p", json!({"max_tokens": 5}))).await;
    let resp = d.submit(&task("p", json!({"max_tokens": 5}))).await;
    check_retry(&resp);
    let body = expect_error(resp, 429, "ADMISSION_REJECT", "").await;
    assert_eq!(body["retriable"], true);
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(body["policy_label"].is_string());
}

#[tokio::test]
async fn queue_full_drop_lru_429_and_an_error_frame_for_the_evicted_task() {
    let d = DaemonBuilder::new(config(
        &default_admission("drop-lru"),
        1,
        &[mock_pool("p", "slots = 1, tokens_per_s = 10.0")],
    ))
    .start();
    let running = d
        .submit_ok(&task("p", json!({"max_tokens": 500, "expected_tokens": 5})))
        .await;
    d.wait_state(&running, "running").await;
    let victim = d
        .submit_ok(&task("p", json!({"max_tokens": 5, "priority": "batch"})))
        .await;
    d.submit_ok(&task(
        "p",
        json!({"max_tokens": 5, "priority": "interactive"}),
    ))
    .await;
    let frames = d.stream(&victim).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].event, "error");
    assert_eq!(frames[0].data["code"], "QUEUE_FULL_DROP_LRU");
    assert_eq!(frames[0].data["retriable"], true);
    // With only interactive work queued, a batch request is refused with the same code.
    let resp = d
        .submit(&task("p", json!({"max_tokens": 5, "priority": "batch"})))
        .await;
    check_retry(&resp);
    expect_error(resp, 429, "QUEUE_FULL_DROP_LRU", "").await;
}

#[tokio::test]
async fn budget_exceeded_429() {
    let d = DaemonBuilder::new(format!(
        "[budgets]\nper_key = {{ tokens = 10 }}\n\n{}",
        config(&default_admission("reject"), 8, &[mock_pool("p", "")])
    ))
    .start();
    let body = expect_error(
        d.submit(&task("p", json!({"max_tokens": 50}))).await,
        429,
        "BUDGET_EXCEEDED",
        "",
    )
    .await;
    // A budget without a period never refills by itself: retrying cannot help.
    assert_eq!(body["retriable"], false, "{body}");
}

#[tokio::test]
async fn pool_unready_503_while_the_engine_loads() {
    let d = daemon("ready = false");
    let resp = d.submit(&task("p", json!({}))).await;
    check_retry(&resp);
    let body = expect_error(resp, 503, "POOL_UNREADY", "ready").await;
    assert_eq!(body["retriable"], true);
    let resp = d.http.get(d.url("/readyz")).send().await.unwrap();
    expect_error(resp, 503, "POOL_UNREADY", "ready").await;
}

#[tokio::test]
async fn pool_unavailable_503_while_every_pool_of_the_model_drains() {
    let d = daemon("");
    let resp = d
        .http
        .post(d.url("/v1/pools/p/drain"))
        .json(&json!({"deadline_ms": 60000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let resp = d.submit(&task("p", json!({}))).await;
    check_retry(&resp);
    let body = expect_error(resp, 503, "POOL_UNAVAILABLE", "draining").await;
    assert_eq!(body["retriable"], true);
}

#[tokio::test]
async fn not_found_404_when_nothing_serves_the_model() {
    let d = daemon("");
    let resp = d
        .submit(&task("p", json!({"model_ref": "elsewhere"})))
        .await;
    assert!(resp.headers().get("retry-after").is_none());
    let body = expect_error(resp, 404, "NOT_FOUND", "elsewhere").await;
    assert_eq!(body["retriable"], false);
}

#[tokio::test]
async fn replica_exhausted_503_when_no_replica_can_ever_take_it() {
    let d = daemon("");
    let resp = d
        .submit(&task(
            "p",
            json!({"placement": {"require_device_mask": "gpu9"}}),
        ))
        .await;
    check_retry(&resp);
    expect_error(resp, 503, "REPLICA_EXHAUSTED", "no replica").await;
}

#[tokio::test]
async fn decode_timeout_sse_error_when_the_engine_stalls() {
    let d = DaemonBuilder::new(format!(
        "[stream]\ndecode_idle_timeout_ms = 300\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "failure = \"stall\", fail_after_tokens = 2")]
        )
    ))
    .start();
    let err = engine_error(&d).await;
    assert_eq!(err["code"], "DECODE_TIMEOUT");
    assert_eq!(err["retriable"], true);
}

#[tokio::test]
async fn worker_reset_sse_error_when_the_engine_dies_mid_stream() {
    let d = daemon("failure = \"panic_mid_stream\", fail_after_tokens = 2");
    let err = engine_error(&d).await;
    assert_eq!(err["code"], "WORKER_RESET");
    assert_eq!(err["retriable"], true);
}

#[tokio::test]
async fn policy_unavailable_503_when_a_policy_traps() {
    let admission = format!(
        "component = \"{}\"\nconfig = {{ fault = \"trap\" }}\n",
        fixture_policy("admission-faulty.wasm")
    );
    let d = DaemonBuilder::new(config(&admission, 8, &[mock_pool("p", "")])).start();
    let resp = d.submit(&task("p", json!({"priority": "batch"}))).await;
    check_retry(&resp);
    let body = expect_error(resp, 503, "POLICY_UNAVAILABLE", "").await;
    assert_eq!(body["retriable"], true);
}

#[tokio::test]
async fn not_found_404_for_unknown_task_session_and_artifact() {
    let d = daemon("");
    for path in [
        "/v1/tasks/missing",
        "/v1/sessions/missing",
        "/v1/artifacts/sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let resp = d.http.get(d.url(path)).send().await.unwrap();
        let body = expect_error(resp, 404, "NOT_FOUND", "").await;
        assert_eq!(body["retriable"], false);
    }
}

#[tokio::test]
async fn conflict_409_for_a_duplicate_live_task_id() {
    let d = daemon("");
    d.submit_ok(&task("p", json!({"task_id": "twice"}))).await;
    expect_error(
        d.submit(&task("p", json!({"task_id": "twice"}))).await,
        409,
        "CONFLICT",
        "twice",
    )
    .await;
}

#[tokio::test]
async fn unauthenticated_401_and_forbidden_403() {
    let d = DaemonBuilder::new(format!(
        "[[auth.keys]]\nname = \"a\"\nrole = \"data\"\nkey = \"errors-key-a\"\n\n{}",
        config(&default_admission("reject"), 8, &[mock_pool("p", "")])
    ))
    .start();
    let resp = d.http.get(d.url("/v1/tasks/x")).send().await.unwrap();
    expect_error(resp, 401, "UNAUTHENTICATED", "API key").await;
    let resp = d
        .http
        .get(d.url("/v1/tasks/x"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "FORBIDDEN", "API key").await;
    let resp = d
        .http
        .get(d.url("/v1/policies"))
        .header("x-api-key", "errors-key-a")
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "FORBIDDEN", "admin").await;
}

#[tokio::test]
async fn payload_too_large_413() {
    let d = daemon("");
    let huge = "x".repeat(2 << 20);
    expect_error(
        d.submit(&task("p", json!({"prompt": huge}))).await,
        413,
        "PAYLOAD_TOO_LARGE",
        "max_body_bytes",
    )
    .await;
}

#[tokio::test]
async fn internal_sse_error_for_an_adapter_bug() {
    let d = daemon("failure = \"internal_error\"");
    let err = engine_error(&d).await;
    assert_eq!(err["code"], "INTERNAL");
    assert_eq!(err["retriable"], false);
    // Still serving.
    let (status, _) = d.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn untrusted_artifact_400_under_strict_trust() {
    let d = daemon("");
    let resp = d
        .http
        .post(d.url("/v1/tasks"))
        .header("x-trust-policy", "strict")
        .json(&task("p", json!({})))
        .send()
        .await
        .unwrap();
    let body = expect_error(resp, 400, "UNTRUSTED_ARTIFACT", "strict trust").await;
    assert_eq!(body["retriable"], false);
}

#[tokio::test]
async fn model_deprecated_410_for_a_retired_model() {
    let d = daemon("");
    let register = d
        .http
        .post(d.url("/v1/catalog/models"))
        .json(&json!({"id": "p-model", "digest": format!("sha256:{}", "b".repeat(64))}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status().as_u16(), 201);
    let retire = d
        .http
        .post(d.url("/v1/catalog/models/p-model/state"))
        .json(&json!({"state": "Retired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(retire.status().as_u16(), 202);
    let body = expect_error(
        d.submit(&task("p", json!({}))).await,
        410,
        "MODEL_DEPRECATED",
        "Retired",
    )
    .await;
    assert_eq!(body["retriable"], false);
}
