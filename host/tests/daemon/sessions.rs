//! Sessions: created by the first task, turn cap, budget left, DELETE cancels its tasks.

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool, task};
use serde_json::{Value, json};

#[tokio::test]
async fn sessions_count_turns_report_budget_and_delete_cancels() {
    let cfg = format!(
        "[sessions]\nmax_turns = 2\n\n[budgets]\nper_session = {{ tokens = 1000 }}\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "slots = 2, tokens_per_s = 20.0")]
        )
    );
    let d = DaemonBuilder::new(cfg).start();
    let (status, _) = d.get_json("/v1/sessions/chat-1").await;
    assert_eq!(status, 404, "sessions are created by their first task");

    let first = d
        .submit_ok(&task("p", json!({"session_id": "chat-1", "max_tokens": 3})))
        .await;
    d.stream(&first).await;
    let long = d
        .submit_ok(&task(
            "p",
            json!({"session_id": "chat-1", "max_tokens": 500}),
        ))
        .await;
    let resp = d.submit(&task("p", json!({"session_id": "chat-1"}))).await;
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_PARAMS");
    assert!(
        body["message"].as_str().unwrap().contains("turns"),
        "{body}"
    );

    let (status, s) = d.get_json("/v1/sessions/chat-1").await;
    assert_eq!(status, 200);
    assert_eq!(s["turns"], 2);
    assert!(s["ttl_ms_remaining"].as_u64().unwrap() > 0);
    assert!(s["tokens_budget_remaining"].as_u64().unwrap() < 1000, "{s}");
    assert!(s.get("prompt").is_none(), "metadata only");

    d.wait_state(&long, "running").await;
    let resp = d
        .http
        .delete(d.url("/v1/sessions/chat-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (_, t) = d.get_json(&format!("/v1/tasks/{long}")).await;
    assert_eq!(t["state"], "canceled");
    assert_eq!(d.get_json("/v1/sessions/chat-1").await.0, 404);
    let resp = d
        .http
        .delete(d.url("/v1/sessions/chat-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    // A deleted session starts afresh.
    d.submit_ok(&task("p", json!({"session_id": "chat-1", "max_tokens": 2})))
        .await;
}
