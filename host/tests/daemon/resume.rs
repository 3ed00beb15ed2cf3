//! A network blip does not cancel a streamed task: the task waits `reconnect_grace_ms` for a
//! reader to come back, a reconnect with Last-Event-ID gets every frame exactly once, and
//! only a reader that never returns cancels it. `retry:` tells clients how soon to
//! reconnect; a client that saw the end is told to stop (204); ids are checked.

use std::time::Duration;

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool, read_to_end, task};
use serde_json::{Value, json};

/// 20 tokens/s on one slot; a 1.5 s grace.
fn daemon() -> orchd_testkit::Daemon {
    DaemonBuilder::new(format!(
        "[stream]\nkeep_alive_ms = 100\nreconnect_grace_ms = 1500\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool(
                "p",
                "slots = 2, first_token_delay_ms = 5, tokens_per_s = 20.0",
            )],
        )
    ))
    .start()
}

async fn state(d: &orchd_testkit::Daemon, id: &str) -> String {
    d.get_json(&format!("/v1/tasks/{id}")).await.1["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_reconnect_within_the_grace_resumes_and_gets_every_frame_once() {
    let d = daemon();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 30}))).await;
    let mut seen = Vec::new();
    {
        let mut reader = d.open_stream(&id).await;
        while seen
            .iter()
            .filter(|f: &&orchd_testkit::SseFrame| f.event == "token")
            .count()
            < 5
        {
            seen.push(reader.next_frame().await.expect("a frame"));
        }
    } // the connection drops
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(state(&d, &id).await, "running", "not canceled by the blip");
    let last = seen.last().unwrap().id.unwrap();
    let rest = read_to_end(&id, d.open_stream_after(&id, last).await).await;
    seen.extend(rest);
    let ids: Vec<u64> = seen.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(
        ids,
        (0..ids.len() as u64).collect::<Vec<_>>(),
        "each frame once"
    );
    let tokens: Vec<u64> = seen
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["i"].as_u64().unwrap())
        .collect();
    assert_eq!(tokens, (0..30).collect::<Vec<_>>());
    let end = seen.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["canceled"], false);
}

#[tokio::test]
async fn a_reader_that_never_returns_cancels_after_the_grace_and_not_before() {
    let d = daemon();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 10000}))).await;
    {
        let mut reader = d.open_stream(&id).await;
        while reader.next_frame().await.expect("open").event != "token" {}
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(state(&d, &id).await, "running", "still inside the grace");
    d.wait_state(&id, "canceled").await;
    assert!(
        d.metric_sum("tasks_canceled_total", &[("reason", "disconnect")])
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_reader_leaving_while_another_reads_cancels_nothing() {
    let d = daemon();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 60}))).await;
    let staying = d.open_stream(&id).await;
    {
        let mut leaving = d.open_stream(&id).await;
        while leaving.next_frame().await.expect("open").event != "token" {}
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(state(&d, &id).await, "running");
    let frames = read_to_end(&id, staying).await;
    assert_eq!(frames.last().unwrap().event, "end");
    assert_eq!(frames.last().unwrap().data["canceled"], false);
}

#[tokio::test]
async fn retry_is_sent_a_finished_stream_answers_204_and_ids_are_checked() {
    let d = daemon();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 3}))).await;
    let text = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}/stream")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\nretry: 500\n") || text.starts_with("retry: 500\n"),
        "{text}"
    );
    let end_id: u64 = text
        .split("\n\n")
        .filter(|e| e.contains("event: end"))
        .find_map(|e| e.lines().find_map(|l| l.strip_prefix("id: ")))
        .unwrap()
        .parse()
        .unwrap();
    let get = |last: String| {
        d.http
            .get(d.url(&format!("/v1/tasks/{id}/stream")))
            .header("last-event-id", last)
            .send()
    };
    // Seen to the end: stop reconnecting.
    assert_eq!(
        get(end_id.to_string()).await.unwrap().status().as_u16(),
        204
    );
    // Not a replay of everything from 0, and not a silent skip.
    for bad in [u64::MAX.to_string(), "12345".to_owned(), "-1".to_owned()] {
        let resp = get(bad.clone()).await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            if bad == "12345" { 204 } else { 400 },
            "{bad}"
        );
    }
    let live = d.submit_ok(&task("p", json!({"max_tokens": 10000}))).await;
    let resp = d
        .http
        .get(d.url(&format!("/v1/tasks/{live}/stream")))
        .header("last-event-id", "999999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("beyond"), "{v}");
}
