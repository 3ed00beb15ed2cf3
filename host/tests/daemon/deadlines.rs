//! Deadlines and ETAs: infeasible → 400 before admission; expiry while queued removes the
//! task; expiry mid-stream ends it with an `error` frame and frees the engine slot;
//! `on_time_probability` rides on `metrics` frames.

use orchd_testkit::{DaemonBuilder, config, default_admission, expect_error, task};
use serde_json::json;

/// One slot whose engine is far slower (5 tokens/s) than the pool's nominal rate
/// (200 tokens/s), so admission believes deadlines that cannot be met.
fn optimistic() -> String {
    config(
        &default_admission("reject"),
        8,
        &["
[[pools]]
id = \"p\"
engine = \"mock\"
adapter = \"mock\"
model_ref = \"p-model\"
ctx_max = 4096
nominal_tokens_per_s = 200.0
nominal_first_token_ms = 20

[[pools.replicas]]
id = \"p-0\"
config = { slots = 1, first_token_delay_ms = 5, tokens_per_s = 5.0 }
"
        .to_owned()],
    )
}

#[tokio::test]
async fn an_infeasible_deadline_is_refused_before_admission() {
    let d = DaemonBuilder::new(optimistic()).start();
    // 4 000 tokens at the nominal 200/s take 20 s: a 1 s deadline cannot be met.
    let resp = d
        .submit(&task("p", json!({"max_tokens": 4000, "deadline_ms": 1000})))
        .await;
    let body = expect_error(resp, 400, "DEADLINE_UNMET", "infeasible").await;
    assert_eq!(body["pool_id"], "p");
    assert_eq!(body["retriable"], false);
    // Nothing was enqueued.
    assert_eq!(d.metric_sum("tasks_enqueued_total", &[]).await, 0.0);
}

#[tokio::test]
async fn expiry_while_queued_removes_the_task_and_expiry_mid_stream_cancels_the_engine() {
    let d = DaemonBuilder::new(optimistic()).start();
    // Holds the only slot: 40 tokens at 5/s, ends by its deadline of 1.5 s mid-stream.
    let running = d
        .submit_ok(&task("p", json!({"max_tokens": 40, "deadline_ms": 1500})))
        .await;
    d.wait_state(&running, "running").await;
    // Queued behind it with a deadline of 800 ms: it never starts.
    let queued = d
        .submit_ok(&task("p", json!({"max_tokens": 4, "deadline_ms": 800})))
        .await;
    let q_frames = d.stream(&queued).await;
    assert_eq!(q_frames.len(), 1, "{q_frames:?}");
    assert_eq!(q_frames[0].event, "error");
    assert_eq!(q_frames[0].data["code"], "DEADLINE_UNMET");
    let (_, q_status) = d.get_json(&format!("/v1/tasks/{queued}")).await;
    assert_eq!(q_status["state"], "failed");
    assert!(q_status.get("replica_id").is_none(), "{q_status}");

    let frames = d.stream(&running).await;
    let last = frames.last().unwrap();
    assert_eq!(last.event, "error", "{frames:?}");
    assert_eq!(last.data["code"], "DEADLINE_UNMET");
    assert!(frames.iter().any(|f| f.event == "token"));
    assert!(frames.iter().filter(|f| f.event == "token").count() < 40);
    assert_eq!(
        d.metric_sum("tasks_canceled_total", &[("reason", "deadline")])
            .await,
        2.0
    );
    // The slot is free again: a new task runs to the end.
    let next = d
        .submit_ok(&task("p", json!({"max_tokens": 2, "deadline_ms": 60000})))
        .await;
    assert_eq!(d.stream(&next).await.last().unwrap().event, "end");
}

#[tokio::test]
async fn metrics_frames_carry_on_time_probability_from_the_measured_rate() {
    let d = DaemonBuilder::new(optimistic()).start();
    // 12 tokens at 5/s need ~2.4 s: a 60 s deadline is near-certain.
    let easy = d
        .submit_ok(&task("p", json!({"max_tokens": 12, "deadline_ms": 60000})))
        .await;
    let frames = d.stream(&easy).await;
    let probabilities: Vec<f64> = frames
        .iter()
        .filter(|f| f.event == "metrics")
        .map(|f| f.data["on_time_probability"].as_f64().unwrap())
        .collect();
    assert!(!probabilities.is_empty());
    assert!(probabilities.iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(*probabilities.last().unwrap() > 0.9, "{probabilities:?}");
    // 40 tokens at 5/s need 8 s: with a 3 s deadline the odds drop as the rate is measured.
    let hard = d
        .submit_ok(&task(
            "p",
            json!({"max_tokens": 40, "expected_tokens": 5, "deadline_ms": 3000}),
        ))
        .await;
    let frames = d.stream(&hard).await;
    let late: Vec<f64> = frames
        .iter()
        .filter(|f| f.event == "metrics")
        .map(|f| f.data["on_time_probability"].as_f64().unwrap())
        .collect();
    assert!(late.iter().skip(1).all(|p| *p < 0.5), "{late:?}");
}
