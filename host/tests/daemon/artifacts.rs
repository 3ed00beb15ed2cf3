//! Transcripts and artifacts: every task leaves a transcript artifact named on its
//! terminal frame and its status; `POST`/`GET /v1/artifacts` are content-addressed,
//! owner-scoped, size-limited, cached by `ETag`, and durable across a restart.

use orchd_testkit::{
    Daemon, DaemonBuilder, config, default_admission, expect_error, mock_pool, task,
};
use serde_json::{Value, json};

const ALICE: &str = "alice-artifacts-key-1";
const BOB: &str = "bob-artifacts-key-2";
const ROOT: &str = "root-artifacts-key-3";

fn cfg(extra: &str) -> String {
    format!(
        "{extra}\n[[auth.keys]]\nname = \"alice\"\nrole = \"data\"\nkey = \"{ALICE}\"\n\n\
         [[auth.keys]]\nname = \"bob\"\nrole = \"data\"\nkey = \"{BOB}\"\n\n\
         [[auth.keys]]\nname = \"root\"\nrole = \"admin\"\nkey = \"{ROOT}\"\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[
                mock_pool(
                    "p",
                    "slots = 2, first_token_delay_ms = 5, tokens_per_s = 400.0"
                ),
                mock_pool(
                    "broken",
                    "failure = \"error_mid_stream\", fail_after_tokens = 2"
                ),
            ]
        )
    )
}

async fn get(d: &Daemon, path: &str, key: &str) -> reqwest::Response {
    d.http
        .get(d.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

async fn post(d: &Daemon, path: &str, key: &str, body: &Value) -> reqwest::Response {
    d.http
        .post(d.url(path))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Streams a task as `key` to its end; returns the frames' (event, data).
async fn run(d: &Daemon, key: &str, body: &Value) -> (String, Vec<(String, Value)>) {
    let resp = post(d, "/v1/tasks", key, body).await;
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = get(d, &format!("/v1/tasks/{id}/stream"), key).await;
    let mut reader = orchd_testkit::SseReader::new(resp);
    let mut frames = Vec::new();
    while let Some(f) = reader.next_frame().await {
        frames.push((f.event, f.data));
    }
    (id, frames)
}

#[tokio::test]
async fn every_task_leaves_a_transcript_named_on_its_terminal_frame() {
    let d = DaemonBuilder::new(cfg("")).start();
    let (id, frames) = run(&d, ALICE, &task("p", json!({"max_tokens": 5, "seed": 42}))).await;
    let (event, end) = frames.last().unwrap();
    assert_eq!(event, "end");
    let artifact = end["artifact_id"].as_str().expect("artifact_id on end");
    assert!(artifact.starts_with("sha256:") && artifact.len() == 71);
    let status: Value = get(&d, &format!("/v1/tasks/{id}"), ALICE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["artifact_id"], artifact);

    let resp = get(&d, &format!("/v1/artifacts/{artifact}"), ALICE).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["etag"], format!("\"{artifact}\"").as_str());
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["id"], artifact);
    assert_eq!(doc["kind"], "transcript");
    let t = &doc["content"];
    assert_eq!(t["task_id"], id.as_str());
    assert_eq!(t["state"], "succeeded");
    assert_eq!(t["seed"], 42);
    assert_eq!(t["pool_id"], "p");
    assert_eq!(t["replica_id"], "p-0");
    assert_eq!(t["engine"], "mock");
    assert!(t["engine_version"].as_str().unwrap().starts_with("mock-"));
    assert_eq!(t["prompt"], "<redacted>", "prompts are redacted by default");
    // The transcript holds the stream: the same events with the same data.
    let recorded: Vec<(String, Value)> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect();
    assert_eq!(recorded.len(), frames.len());
    for ((ev, data), (rev, rdata)) in frames.iter().zip(&recorded) {
        assert_eq!(ev, rev);
        if ev != "end" {
            assert_eq!(data, rdata);
        }
    }

    // A failed task's error frame names its transcript, which records the error.
    let (_, frames) = run(&d, ALICE, &task("broken", json!({"max_tokens": 5}))).await;
    let (event, error) = frames.last().unwrap();
    assert_eq!(event, "error");
    let failed = error["artifact_id"].as_str().expect("artifact_id on error");
    let doc: Value = get(&d, &format!("/v1/artifacts/{failed}"), ALICE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["content"]["state"], "failed");
    assert_eq!(doc["content"]["error"]["code"], error["code"]);

    // A canceled task too.
    let resp = post(
        &d,
        "/v1/tasks",
        ALICE,
        &task("p", json!({"max_tokens": 100000, "expected_tokens": 10})),
    )
    .await;
    let id: String = resp.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .into();
    let resp = d
        .http
        .post(d.url(&format!("/v1/tasks/{id}/cancel")))
        .header("x-api-key", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let status: Value = get(&d, &format!("/v1/tasks/{id}"), ALICE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "canceled");
    let canceled = status["artifact_id"].as_str().unwrap();
    let doc: Value = get(&d, &format!("/v1/artifacts/{canceled}"), ALICE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["content"]["state"], "canceled");

    // Another key cannot see them (the same 404 as an unknown id); an admin can.
    expect_error(
        get(&d, &format!("/v1/artifacts/{artifact}"), BOB).await,
        404,
        "NOT_FOUND",
        "artifact",
    )
    .await;
    assert_eq!(
        get(&d, &format!("/v1/artifacts/{artifact}"), ROOT)
            .await
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn transcripts_keep_the_prompt_only_when_configured() {
    let d = DaemonBuilder::new(cfg("[transcripts]\ninclude_prompt = true\n")).start();
    let (_, frames) = run(
        &d,
        ALICE,
        &task("p", json!({"prompt": "the secret plan", "max_tokens": 2})),
    )
    .await;
    let artifact = frames.last().unwrap().1["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc: Value = get(&d, &format!("/v1/artifacts/{artifact}"), ALICE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["content"]["prompt"], "the secret plan");
}

#[tokio::test]
async fn artifacts_are_content_addressed_owned_limited_cached_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[paths]\nartifacts = \"{}\"\n\n[artifacts]\nmax_bytes = 4096\n",
        dir.path().display()
    );
    let mut d = DaemonBuilder::new(cfg(&extra)).start();
    let plan = json!({"kind": "plan", "content": {"steps": ["a", "b"]}, "tags": ["x"]});
    let resp = post(&d, "/v1/artifacts", ALICE, &plan).await;
    assert_eq!(resp.status().as_u16(), 201);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["digest"], id.as_str());
    assert_eq!(created["kind"], "plan");
    assert_eq!(created["tags"], json!(["x"]));
    assert!(created["created_ms"].as_u64().unwrap() > 0);
    assert_eq!(etag, format!("\"{id}\""));

    // The same content is the same artifact; different content is another.
    let again: Value = post(&d, "/v1/artifacts", ALICE, &plan)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, created);
    let other: Value = post(
        &d,
        "/v1/artifacts",
        ALICE,
        &json!({"kind": "plan", "content": "b"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_ne!(other["id"], created["id"]);

    // ETag / If-None-Match.
    let resp = d
        .http
        .get(d.url(&format!("/v1/artifacts/{id}")))
        .header("x-api-key", ALICE)
        .header("if-none-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 304);
    assert_eq!(resp.headers()["etag"], etag.as_str());

    // Owner-scoped; bad input has clear errors; nothing is stored for them.
    expect_error(
        get(&d, &format!("/v1/artifacts/{id}"), BOB).await,
        404,
        "NOT_FOUND",
        "artifact",
    )
    .await;
    expect_error(
        get(&d, "/v1/artifacts/sha256:nope", ALICE).await,
        404,
        "NOT_FOUND",
        "artifact",
    )
    .await;
    expect_error(
        post(
            &d,
            "/v1/artifacts",
            ALICE,
            &json!({"kind": "plan", "content": "x".repeat(5000)}),
        )
        .await,
        413,
        "PAYLOAD_TOO_LARGE",
        "4096",
    )
    .await;
    expect_error(
        post(
            &d,
            "/v1/artifacts",
            ALICE,
            &json!({"kind": "poem", "content": "x"}),
        )
        .await,
        400,
        "INVALID_PARAMS",
        "kind",
    )
    .await;
    expect_error(
        post(
            &d,
            "/v1/artifacts",
            ALICE,
            &json!({"kind": "plan", "content": "x", "colour": 1}),
        )
        .await,
        400,
        "INVALID_PARAMS",
        "colour",
    )
    .await;
    expect_error(
        post(&d, "/v1/artifacts", ALICE, &json!({"kind": "plan"})).await,
        400,
        "INVALID_PARAMS",
        "content",
    )
    .await;
    let objects = std::fs::read_dir(dir.path().join("objects"))
        .unwrap()
        .count();
    assert_eq!(objects, 2);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );

    // Durable: a new daemon on the same directory serves the same bytes.
    d.signal_term();
    assert_eq!(d.wait_exit(), Some(0));
    let d = DaemonBuilder::new(cfg(&extra)).start();
    let doc: Value = get(&d, &format!("/v1/artifacts/{id}"), ALICE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["content"], json!({"steps": ["a", "b"]}));
    assert_eq!(doc["created_ms"], created["created_ms"]);
    expect_error(
        get(&d, &format!("/v1/artifacts/{id}"), BOB).await,
        404,
        "NOT_FOUND",
        "artifact",
    )
    .await;
}
