//! Enqueue and stream: order, indices, determinism, status, error envelopes.

use orchd_testkit::{
    DaemonBuilder, SseFrame, config, default_admission, expect_error, mock_pool, task,
};
use serde_json::{Value, json};

fn events(frames: &[SseFrame]) -> Vec<&str> {
    frames.iter().map(|f| f.event.as_str()).collect()
}

fn tokens(frames: &[SseFrame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["t"].as_str().unwrap().to_owned())
        .collect()
}

fn fast() -> String {
    config(
        &default_admission("reject"),
        16,
        &[mock_pool(
            "p",
            "slots = 2, first_token_delay_ms = 5, tokens_per_s = 500.0",
        )],
    )
}

#[tokio::test]
async fn a_task_streams_started_tokens_metrics_end_in_order() {
    let d = DaemonBuilder::new(fast()).start();
    let resp = d
        .submit(&task(
            "p",
            json!({"max_tokens": 12, "task_id": "order-1", "session_id": "s1"}),
        ))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    assert!(resp.headers().contains_key("x-correlation-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["task_id"], "order-1");
    assert_eq!(body["queue_position"], 0);
    assert_eq!(body["streams"]["sse"], "/v1/tasks/order-1/stream");
    assert!(body["predicted_start_ms"].is_u64() && body["backoff_ms"].is_u64());

    let frames = d.stream("order-1").await;
    let ev = events(&frames);
    assert_eq!(ev.first(), Some(&"started"));
    assert_eq!(ev.last(), Some(&"end"));
    assert_eq!(
        ev[ev.len() - 2],
        "metrics",
        "a metrics frame precedes end: {ev:?}"
    );
    assert_eq!(
        ev.iter().filter(|e| **e == "end" || **e == "error").count(),
        1
    );
    for (seq, f) in frames.iter().enumerate() {
        assert_eq!(
            f.id,
            Some(seq as u64),
            "frame ids are the 0-based positions"
        );
    }
    let indices: Vec<u64> = frames
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["i"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..12).collect::<Vec<_>>());
    let started = &frames[0].data;
    assert_eq!(started["pool_id"], "p");
    assert_eq!(started["replica_id"], "p-0");
    assert_eq!(started["engine"], "mock");
    assert!(
        started["engine_version"]
            .as_str()
            .unwrap()
            .starts_with("mock-")
    );
    let end = &frames.last().unwrap().data;
    assert_eq!(end["tokens_out"], 12);
    assert_eq!(end["canceled"], false);

    let (status, task) = d.get_json("/v1/tasks/order-1").await;
    assert_eq!(status, 200);
    assert_eq!(task["state"], "succeeded");
    assert_eq!(task["tokens_out"], 12);
    assert_eq!(task["session_id"], "s1");

    // A finished task replays in full; Last-Event-ID resumes after the given frame.
    assert_eq!(events(&d.stream("order-1").await), ev);
    let resumed = d
        .http
        .get(d.url("/v1/tasks/order-1/stream"))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    let mut reader = orchd_testkit::SseReader::new(resumed);
    assert_eq!(reader.next_frame().await.unwrap().id, Some(4));

    // Log lines about the task carry its span: correlation id, task, session, pool,
    // replica, engine and version.
    let started = d
        .log_events("task started")
        .into_iter()
        .find(|e| e["span"]["task_id"] == "order-1")
        .expect("a `task started` line in the task's span");
    let span = &started["span"];
    assert_eq!(span["session_id"], "s1");
    assert_eq!(span["pool_id"], "p");
    assert_eq!(span["replica_id"], "p-0");
    assert_eq!(span["engine"], "mock");
    assert!(
        span["engine_version"]
            .as_str()
            .unwrap()
            .starts_with("mock-")
    );
    assert!(span["correlation_id"].is_string());
    let admitted = d
        .log_events("task admitted")
        .into_iter()
        .find(|e| e["task_id"] == "order-1")
        .expect("a `task admitted` line");
    assert_eq!(admitted["span"]["task_id"], "order-1");
    assert_eq!(admitted["span"]["pool_id"], "p");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_tokens() {
    let d = DaemonBuilder::new(fast()).start();
    let mut runs = Vec::new();
    for (id, seed) in [("seed-a", 42), ("seed-b", 42), ("seed-c", 43)] {
        d.submit_ok(&task("p", json!({"task_id": id, "seed": seed})))
            .await;
        runs.push(tokens(&d.stream(id).await));
    }
    assert_eq!(runs[0].len(), 8);
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2]);
}

async fn check_error(
    _d: &orchd_testkit::Daemon,
    resp: reqwest::Response,
    status: u16,
    code: &str,
    needle: &str,
) {
    expect_error(resp, status, code, needle).await;
}

#[tokio::test]
async fn bad_requests_get_envelopes_naming_the_problem() {
    let d = DaemonBuilder::new(fast()).start();
    let post = |body: String| {
        d.http
            .post(d.url("/v1/tasks"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    check_error(
        &d,
        post("{not json".into()).await.unwrap(),
        400,
        "INVALID_PARAMS",
        "invalid JSON",
    )
    .await;
    let mut unknown = task("p", json!({}));
    unknown["colour"] = json!("blue");
    check_error(
        &d,
        post(unknown.to_string()).await.unwrap(),
        400,
        "INVALID_PARAMS",
        "colour",
    )
    .await;
    let mut missing = task("p", json!({}));
    missing.as_object_mut().unwrap().remove("session_id");
    check_error(
        &d,
        post(missing.to_string()).await.unwrap(),
        400,
        "INVALID_PARAMS",
        "session_id",
    )
    .await;
    check_error(
        &d,
        d.submit(&task("p", json!({"max_tokens": 0}))).await,
        400,
        "INVALID_PARAMS",
        "max_tokens",
    )
    .await;
    check_error(
        &d,
        d.submit(&task("p", json!({"ctx": 100000}))).await,
        400,
        "INVALID_PARAMS",
        "ctx",
    )
    .await;
    check_error(
        &d,
        d.submit(&task("p", json!({"engine": "tensorrt"}))).await,
        400,
        "INVALID_PARAMS",
        "engine",
    )
    .await;
    check_error(
        &d,
        d.submit(&task("p", json!({"model_ref": "other"}))).await,
        404,
        "NOT_FOUND",
        "no pool",
    )
    .await;
    check_error(
        &d,
        d.submit(&task("p", json!({"deadline_ms": 1, "max_tokens": 500})))
            .await,
        400,
        "DEADLINE_UNMET",
        "infeasible",
    )
    .await;
    let huge = "x".repeat(2 << 20);
    check_error(
        &d,
        d.submit(&task("p", json!({"prompt": huge}))).await,
        413,
        "PAYLOAD_TOO_LARGE",
        "limit",
    )
    .await;

    check_error(
        &d,
        d.http.get(d.url("/v1/tasks/nope")).send().await.unwrap(),
        404,
        "NOT_FOUND",
        "nope",
    )
    .await;
    check_error(
        &d,
        d.http
            .get(d.url("/v1/tasks/nope/stream"))
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
        "nope",
    )
    .await;
    check_error(&d, d.cancel("nope").await, 404, "NOT_FOUND", "nope").await;
    check_error(
        &d,
        d.http.get(d.url("/v2/nothing")).send().await.unwrap(),
        404,
        "NOT_FOUND",
        "/v2/nothing",
    )
    .await;

    // A duplicate live id is a conflict; the first task is untouched.
    d.submit_ok(&task("p", json!({"task_id": "dup"}))).await;
    check_error(
        &d,
        d.submit(&task("p", json!({"task_id": "dup"}))).await,
        409,
        "CONFLICT",
        "dup",
    )
    .await;

    // The correlation id is echoed when acceptable, replaced when not.
    let resp = d
        .http
        .get(d.url("/healthz"))
        .header("x-correlation-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-correlation-id"], "abc-123");
    let long = "y".repeat(200);
    let resp = d
        .http
        .get(d.url("/healthz"))
        .header("x-correlation-id", long.as_str())
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-correlation-id"].to_str().unwrap(), long);

    // Still serving after all of that.
    let id = d.submit_ok(&task("p", json!({}))).await;
    assert_eq!(events(&d.stream(&id).await).last(), Some(&"end"));
    let (status, _) = d.get_json("/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn live_tasks_are_listed_for_their_owner_and_every_one_for_an_admin() {
    let d = DaemonBuilder::new(format!(
        "[[auth.keys]]\nname = \"alice\"\nrole = \"data\"\nkey = \"alice-key-1\"\n\n\
         [[auth.keys]]\nname = \"bob\"\nrole = \"data\"\nkey = \"bob-key-1\"\n\n\
         [[auth.keys]]\nname = \"ops\"\nrole = \"admin\"\nkey = \"ops-key-1\"\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "slots = 2, tokens_per_s = 20.0")]
        )
    ))
    .start();
    let as_key = |key: &'static str, method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = d
            .http
            .request(method, d.url(&path))
            .header("x-api-key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, accepted) = as_key(
        "alice-key-1",
        reqwest::Method::POST,
        "/v1/tasks".into(),
        Some(task("p", json!({"max_tokens": 500}))),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let list = |key: &'static str| as_key(key, reqwest::Method::GET, "/v1/tasks".into(), None);
    let (_, alice) = list("alice-key-1").await;
    assert_eq!(alice["tasks"][0]["task_id"], id.as_str(), "{alice}");
    assert_eq!(alice["tasks"][0]["pool_id"], "p");
    let (_, bob) = list("bob-key-1").await;
    assert_eq!(
        bob["tasks"].as_array().unwrap().len(),
        0,
        "bob sees none of alice's: {bob}"
    );
    let (_, ops) = list("ops-key-1").await;
    assert_eq!(ops["tasks"].as_array().unwrap().len(), 1, "{ops}");
    // Its placement decisions: admin only.
    let (status, _) = as_key(
        "alice-key-1",
        reqwest::Method::GET,
        "/v1/placements".into(),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, placed) = as_key(
        "ops-key-1",
        reqwest::Method::GET,
        "/v1/placements".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mine: Vec<&Value> = placed["placements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["task_id"] == id.as_str())
        .collect();
    assert!(
        mine.iter()
            .any(|p| p["stage"] == "admission" && p["pool_id"] == "p"),
        "{placed}"
    );
    as_key(
        "alice-key-1",
        reqwest::Method::POST,
        format!("/v1/tasks/{id}/cancel"),
        Some(json!({})),
    )
    .await;
}
