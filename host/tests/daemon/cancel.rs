//! Cancel: race-free (no token after the 204), the engine work stops, the slot is freed.

use std::time::Duration;

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool, task};
use serde_json::json;

/// One slot, slow tokens: a task of 10 000 tokens would hold the slot for ~100 s.
fn slow() -> String {
    config(
        &default_admission("reject"),
        8,
        &[mock_pool(
            "slow",
            "slots = 1, first_token_delay_ms = 5, tokens_per_s = 100.0",
        )],
    )
}

#[tokio::test]
async fn cancel_mid_stream_ends_with_canceled_and_frees_the_slot() {
    let d = DaemonBuilder::new(slow()).start();
    let id = d
        .submit_ok(&task(
            "slow",
            json!({"task_id": "long", "max_tokens": 10000}),
        ))
        .await;
    let mut reader = d.open_stream(&id).await;
    let mut seen_tokens = 0;
    while seen_tokens < 3 {
        let f = reader.next_frame().await.expect("stream open");
        if f.event == "token" {
            seen_tokens += 1;
        }
    }
    let resp = d.cancel(&id).await;
    assert_eq!(resp.status().as_u16(), 204);
    assert!(resp.headers().contains_key("x-correlation-id"));
    // What the task had produced when the 204 was sent is final.
    let (_, at_204) = d.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(at_204["state"], "canceled");

    let mut rest = Vec::new();
    while let Some(f) = reader.next_frame().await {
        rest.push(f);
    }
    let end = rest.last().expect("terminal frame");
    assert_eq!(end.event, "end");
    assert_eq!(end.data["canceled"], true);
    assert!(
        end.data["tokens_in"].as_u64().unwrap() > 0,
        "the engine had the prompt: it counts: {}",
        end.data
    );
    assert_eq!(end.data["tokens_out"], at_204["tokens_out"]);
    let tokens_in_log = d
        .stream(&id)
        .await
        .iter()
        .filter(|f| f.event == "token")
        .count();
    assert_eq!(
        tokens_in_log as u64,
        at_204["tokens_out"].as_u64().unwrap(),
        "no token after the 204"
    );

    // Cancel is idempotent.
    assert_eq!(d.cancel(&id).await.status().as_u16(), 204);

    // The only slot is free again: the next task runs to completion.
    let next = d.submit_ok(&task("slow", json!({"max_tokens": 3}))).await;
    let frames = tokio::time::timeout(Duration::from_secs(20), d.stream(&next))
        .await
        .expect("slot was freed");
    assert_eq!(frames.last().unwrap().event, "end");
    assert_eq!(frames.last().unwrap().data["canceled"], false);
    // One log line says which task was canceled and why.
    let canceled: Vec<_> = d
        .log_events("task canceled")
        .into_iter()
        .filter(|e| e["task_id"] == id.as_str())
        .collect();
    assert_eq!(canceled.len(), 1, "{:#?}", d.logs());
    assert_eq!(canceled[0]["reason"], "client");
}

#[tokio::test]
async fn a_canceled_queued_task_is_never_dispatched() {
    let d = DaemonBuilder::new(slow()).start();
    let running = d
        .submit_ok(&task("slow", json!({"max_tokens": 10000})))
        .await;
    // Only once the first task holds the only slot is the second one surely queued.
    d.wait_state(&running, "running").await;
    let queued = d
        .submit_ok(&task("slow", json!({"task_id": "waiting"})))
        .await;
    let (_, status) = d.get_json("/v1/tasks/waiting").await;
    assert_eq!(status["state"], "queued");
    assert_eq!(status["queue_position"], 0);

    assert_eq!(d.cancel(&queued).await.status().as_u16(), 204);
    let frames = d.stream(&queued).await;
    assert_eq!(frames.len(), 1, "only the terminal frame: {frames:?}");
    assert_eq!(frames[0].event, "end");
    assert_eq!(frames[0].data["canceled"], true);
    assert_eq!(
        frames[0].data["tokens_in"], 0,
        "never dispatched: no prompt consumed"
    );
    assert_eq!(frames[0].data["tokens_out"], 0);

    assert_eq!(d.cancel(&running).await.status().as_u16(), 204);
    let (_, status) = d.get_json("/v1/tasks/waiting").await;
    assert_eq!(status["state"], "canceled");
}

#[tokio::test]
async fn a_client_that_disconnects_while_queued_cancels_its_task() {
    // Keep-alives every 100 ms: the daemon notices the closed connection on the next one;
    // no reader comes back within the 200 ms grace.
    let d = DaemonBuilder::new(format!(
        "[stream]\nkeep_alive_ms = 100\nreconnect_grace_ms = 200\n\n{}",
        slow()
    ))
    .start();
    let running = d
        .submit_ok(&task("slow", json!({"max_tokens": 10000})))
        .await;
    d.wait_state(&running, "running").await;
    let queued = d.submit_ok(&task("slow", json!({"max_tokens": 5}))).await;
    {
        let _reader = d.open_stream(&queued).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    } // dropped while the task waits in the queue
    d.wait_state(&queued, "canceled").await;
    let (_, status) = d.get_json(&format!("/v1/tasks/{queued}")).await;
    assert!(
        status.get("replica_id").is_none(),
        "never dispatched: {status}"
    );
    let frames = d.stream(&queued).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].data["canceled"], true);
}

#[tokio::test]
async fn a_client_that_disconnects_and_does_not_come_back_cancels_its_task() {
    let d = DaemonBuilder::new(format!("[stream]\nreconnect_grace_ms = 200\n\n{}", slow())).start();
    let id = d
        .submit_ok(&task("slow", json!({"max_tokens": 10000})))
        .await;
    {
        let mut reader = d.open_stream(&id).await;
        while reader.next_frame().await.expect("open").event != "token" {}
    } // dropped: the connection closes
    let mut state = String::new();
    for _ in 0..100 {
        let (_, s) = d.get_json(&format!("/v1/tasks/{id}")).await;
        state = s["state"].as_str().unwrap().to_owned();
        if state == "canceled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "canceled");
}
