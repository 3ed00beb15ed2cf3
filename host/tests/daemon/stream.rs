//! SSE details: resume with `Last-Event-ID` (each event exactly once), the bounded replay
//! buffer, slow readers, attach timeout, keep-alive comments.

use std::collections::BTreeSet;
use std::time::Duration;

use orchd_testkit::{DaemonBuilder, SseFrame, config, default_admission, mock_pool, task};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cfg(stream: &str, mock: &str) -> String {
    format!(
        "[stream]\n{stream}\n\n{}",
        config(&default_admission("reject"), 16, &[mock_pool("p", mock)])
    )
}

fn ids(frames: &[SseFrame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f.id.expect("every frame has an id"))
        .collect()
}

#[tokio::test]
async fn resume_with_last_event_id_yields_each_event_exactly_once() {
    // Disconnects must not cancel here: the client comes back.
    let d = DaemonBuilder::new(cfg(
        "cancel_on_disconnect = false",
        "slots = 2, first_token_delay_ms = 5, tokens_per_s = 200.0",
    ))
    .start();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 40}))).await;

    // Read a few frames, then drop the connection mid-stream.
    let mut first = Vec::new();
    {
        let mut reader = d.open_stream(&id).await;
        while first.len() < 6 {
            first.push(reader.next_frame().await.expect("stream open"));
        }
    }
    let last_seen = first.last().unwrap().id.unwrap();
    // Reconnect after the last frame seen: the rest, from the next id on, exactly once.
    let rest = d.stream_after(&id, last_seen).await;
    assert_eq!(rest.first().unwrap().id, Some(last_seen + 1));
    let mut all: Vec<SseFrame> = first;
    all.extend(rest);
    let seqs = ids(&all);
    let expected: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no gap, no repeat");
    assert_eq!(all.last().unwrap().event, "end");
    let indices: Vec<u64> = all
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["i"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..40).collect::<Vec<_>>());

    // A finished task replays in full, and from any id still held.
    let replay = d.stream(&id).await;
    assert_eq!(ids(&replay), expected);
    let tail = d.stream_after(&id, 9).await;
    assert_eq!(ids(&tail), (10..seqs.len() as u64).collect::<Vec<_>>());
    // The last id: the client saw the end and is told to stop reconnecting (204).
    let resp = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}/stream")))
        .header("last-event-id", expected.last().unwrap().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}

#[tokio::test]
async fn two_readers_each_get_every_event_once() {
    let d = DaemonBuilder::new(cfg(
        "",
        "slots = 2, first_token_delay_ms = 5, tokens_per_s = 300.0",
    ))
    .start();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 30}))).await;
    let (a, b) = tokio::join!(d.stream(&id), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        d.stream_after(&id, 2).await
    });
    let a_ids = ids(&a);
    assert_eq!(a_ids, (0..a.len() as u64).collect::<Vec<_>>());
    assert_eq!(ids(&b), a_ids[3..].to_vec());
    let unique: BTreeSet<u64> = ids(&b).into_iter().collect();
    assert_eq!(unique.len(), b.len());
}

#[tokio::test]
async fn the_replay_buffer_is_bounded_and_says_when_events_are_gone() {
    let d = DaemonBuilder::new(cfg(
        "replay_frames = 16",
        "slots = 1, first_token_delay_ms = 1, tokens_per_s = 400.0",
    ))
    .start();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 60}))).await;
    // A reader that keeps up sees every token, in order, no gap among them.
    let live = d.stream(&id).await;
    let indices: Vec<u64> = live
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["i"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..60).collect::<Vec<_>>());
    let end = live.last().unwrap();
    assert_eq!(end.event, "end");

    // Afterwards only the last 16 frames are held: an early id is gone, with an error.
    let gone = d.stream_after(&id, 0).await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0].event, "error");
    assert_eq!(gone[0].data["code"], "NOT_FOUND");
    assert!(
        gone[0].data["message"]
            .as_str()
            .unwrap()
            .contains("replay buffer")
    );
    // The tail is still there.
    let from = end.id.unwrap() - 3;
    let tail = d.stream_after(&id, from).await;
    assert!(!tail.is_empty() && tail.iter().all(|f| f.id.unwrap() > from));
    assert_eq!(tail.last().unwrap().event, "end");
    // Metrics frames were dropped before any token: counted.
    assert!(d.metric_sum("sse_backpressure_drops_total", &[]).await >= 1.0);
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_its_task_canceled() {
    let d = DaemonBuilder::new(cfg(
        "replay_frames = 64",
        "slots = 1, first_token_delay_ms = 1, tokens_per_s = 50000.0",
    ))
    .start();
    let id = d
        .submit_ok(&task(
            "p",
            json!({"max_tokens": 2000000, "expected_tokens": 100, "deadline_ms": 600000}),
        ))
        .await;
    // A client with a tiny receive window that never reads past the headers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = d.url("").trim_start_matches("http://").parse().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /v1/tasks/{id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    // The engine outruns the reader; the buffer bound is hit and the task canceled.
    d.wait_state(&id, "canceled").await;
    let (_, status) = d.get_json(&format!("/v1/tasks/{id}")).await;
    let produced = status["tokens_out"].as_u64().unwrap();
    assert!(produced < 2_000_000, "{status}");
    assert!(
        d.metric_sum("tasks_canceled_total", &[("reason", "disconnect")])
            .await
            >= 1.0
    );
    drop(stream);
    // The daemon keeps serving.
    let next = d.submit_ok(&task("p", json!({"max_tokens": 3}))).await;
    assert_eq!(d.stream(&next).await.last().unwrap().event, "end");
}

#[tokio::test]
async fn a_task_nobody_attaches_to_is_canceled_after_the_attach_timeout() {
    let d = DaemonBuilder::new(cfg(
        "attach_timeout_ms = 300",
        "slots = 2, first_token_delay_ms = 5, tokens_per_s = 20.0",
    ))
    .start();
    let orphan = d.submit_ok(&task("p", json!({"max_tokens": 200}))).await;
    let watched = d.submit_ok(&task("p", json!({"max_tokens": 10}))).await;
    let frames = d.stream(&watched).await;
    assert_eq!(frames.last().unwrap().event, "end");
    assert_eq!(frames.last().unwrap().data["canceled"], false);
    d.wait_state(&orphan, "canceled").await;
    assert_eq!(
        d.metric_sum("tasks_canceled_total", &[("reason", "no_consumer")])
            .await,
        1.0
    );
    // Its stream still replays, ending canceled.
    let replay = d.stream(&orphan).await;
    assert_eq!(replay.last().unwrap().data["canceled"], true);
}

#[tokio::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let d = DaemonBuilder::new(cfg(
        "keep_alive_ms = 100",
        "slots = 1, first_token_delay_ms = 700, tokens_per_s = 100.0",
    ))
    .start();
    let id = d.submit_ok(&task("p", json!({"max_tokens": 2}))).await;
    let mut reader = d.open_stream(&id).await;
    let mut frames = Vec::new();
    while let Some(f) = reader.next_frame().await {
        frames.push(f);
    }
    assert_eq!(frames.last().unwrap().event, "end");
    assert!(reader.comments >= 2, "comments: {}", reader.comments);
}
