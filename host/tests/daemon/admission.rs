//! Queue full under both modes of the default admission policy (a Wasm component).

use orchd_testkit::{Daemon, DaemonBuilder, config, default_admission, mock_pool, task};
use serde_json::{Value, json};

/// One slot, a queue of two, slow tokens.
fn daemon(mode: &str) -> Daemon {
    DaemonBuilder::new(config(
        &default_admission(mode),
        2,
        &[mock_pool(
            "q",
            "slots = 1, first_token_delay_ms = 5, tokens_per_s = 50.0",
        )],
    ))
    .start()
}

async fn wait_running(d: &Daemon, id: &str) {
    d.wait_state(id, "running").await;
}

/// Task `run` on the pool's one slot, batch tasks `b1` and `b2` in its queue of two.
async fn fill(d: &Daemon) {
    assert_eq!(submit(d, "run", "interactive").await.status().as_u16(), 202);
    wait_running(d, "run").await;
    assert_eq!(submit(d, "b1", "batch").await.status().as_u16(), 202);
    assert_eq!(submit(d, "b2", "batch").await.status().as_u16(), 202);
}

async fn submit(d: &Daemon, id: &str, priority: &str) -> reqwest::Response {
    d.submit(&task(
        "q",
        json!({"task_id": id, "priority": priority, "max_tokens": 5000}),
    ))
    .await
}

/// Checks a 429 backpressure answer: envelope, headers, computed retry hint.
async fn check_429(resp: reqwest::Response, code: &str, label: &str) {
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let backoff: u64 = resp.headers()["x-backoff-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["policy_label"], label);
    assert_eq!(body["retriable"], true);
    assert_eq!(body["pool_id"], "q");
    let ms = body["retry_after_ms"].as_u64().unwrap();
    assert_eq!(ms, backoff);
    assert_eq!(retry_after, ms.div_ceil(1000).max(1));
    // Two queued 5000-token tasks ahead at the nominal 200 tokens/s on one slot: the hint
    // reflects the queue, so it is far above the policy's 100 ms floor.
    assert!(
        ms > 1000,
        "retry hint {ms} should reflect the work queued ahead"
    );
}

#[tokio::test]
async fn reject_mode_refuses_when_full_and_leaves_no_state() {
    let d = daemon("reject");
    assert_eq!(
        submit(&d, "run", "interactive").await.status().as_u16(),
        202
    );
    wait_running(&d, "run").await;
    assert_eq!(submit(&d, "a", "batch").await.status().as_u16(), 202);
    assert_eq!(submit(&d, "b", "interactive").await.status().as_u16(), 202);
    check_429(
        submit(&d, "c", "interactive").await,
        "ADMISSION_REJECT",
        "reject",
    )
    .await;
    let (status, _) = d.get_json("/v1/tasks/c").await;
    assert_eq!(status, 404, "a rejected request leaves no task behind");
    // Interactive goes first: b is at position 0 of its class.
    let (_, b) = d.get_json("/v1/tasks/b").await;
    assert_eq!(b["queue_position"], 0);
    // Room again after a cancel.
    assert_eq!(d.cancel("a").await.status().as_u16(), 204);
    assert_eq!(submit(&d, "c", "batch").await.status().as_u16(), 202);
}

#[tokio::test]
async fn drop_lru_evicts_the_oldest_batch_task_then_refuses_batch() {
    let d = daemon("drop-lru");
    fill(&d).await;

    // Full: an interactive request evicts the least recently enqueued batch task.
    assert_eq!(submit(&d, "i1", "interactive").await.status().as_u16(), 202);
    let frames = d.stream("b1").await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event, "error");
    assert_eq!(frames[0].data["code"], "QUEUE_FULL_DROP_LRU");
    assert_eq!(frames[0].data["retriable"], true);
    let (_, b1) = d.get_json("/v1/tasks/b1").await;
    assert_eq!(b1["state"], "failed");
    assert_eq!(b1["error"]["code"], "QUEUE_FULL_DROP_LRU");

    // Another interactive request evicts the remaining batch task.
    assert_eq!(submit(&d, "i2", "interactive").await.status().as_u16(), 202);
    let (_, b2) = d.get_json("/v1/tasks/b2").await;
    assert_eq!(b2["state"], "failed");

    // Only interactive work is queued: a batch request may not displace it.
    check_429(
        submit(&d, "b3", "batch").await,
        "QUEUE_FULL_DROP_LRU",
        "drop-lru",
    )
    .await;
    for id in ["i1", "i2"] {
        let (_, s) = d.get_json(&format!("/v1/tasks/{id}")).await;
        assert_eq!(s["state"], "queued", "{id}");
    }
}

#[tokio::test]
async fn a_policy_config_changes_without_a_restart_and_a_refused_one_changes_nothing() {
    // reject mode: a full queue refuses.
    let d = daemon("reject");
    fill(&d).await;
    assert_eq!(submit(&d, "i1", "interactive").await.status().as_u16(), 429);
    // A config the component's init refuses: 400 naming why, and nothing changes.
    const CONFIG: &str = "/v1/policies/admission/config";
    let (status, err) = d.post_json(CONFIG, &json!({"mode": "sometimes"})).await;
    assert_eq!(status, 400);
    assert!(err["message"].as_str().unwrap().contains("init"), "{err}");
    assert_eq!(submit(&d, "i2", "interactive").await.status().as_u16(), 429);
    // drop-lru, without a restart: the next interactive request evicts a batch task.
    let (status, _) = d.post_json(CONFIG, &json!({"mode": "drop-lru"})).await;
    assert_eq!(status, 200);
    assert_eq!(submit(&d, "i3", "interactive").await.status().as_u16(), 202);
    let (_, b1) = d.get_json("/v1/tasks/b1").await;
    assert_eq!(b1["error"]["code"], "QUEUE_FULL_DROP_LRU", "{b1}");
    // An unknown policy kind is 404; a config that is not an object, 400.
    let (status, _) = d.post_json("/v1/policies/nope/config", &json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(d.post_json(CONFIG, &json!([1])).await.0, 400);
}
