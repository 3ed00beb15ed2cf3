//! The OpenAI-compatible front door: shapes on the wire, errors in OpenAI's shape, cancel
//! on disconnect, and the official `openai` Python client (sync and async, streaming and
//! not, chat, completions, embeddings, errors) against the mock engine.

use std::time::Duration;

use orchd_testkit::{Daemon, DaemonBuilder, SseReader, config, default_admission, mock_pool};
use serde_json::{Value, json};

const KEY: &str = "openai-test-key-1";
const POOR: &str = "openai-poor-key-2";

fn daemon(mock: &str) -> Daemon {
    DaemonBuilder::new(format!(
        "[[auth.keys]]\nname = \"app\"\nrole = \"data\"\nkey = \"{KEY}\"\n\n\
         [[auth.keys]]\nname = \"poor\"\nrole = \"data\"\nkey = \"{POOR}\"\nbudget = {{ tokens = 10 }}\n\n{}",
        config(&default_admission("reject"), 16, &[mock_pool("p", mock)])
    ))
    .start()
}

async fn post(d: &Daemon, path: &str, body: Value) -> reqwest::Response {
    d.http
        .post(d.url(path))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn models_and_non_streaming_answers_have_openai_shapes() {
    let d = daemon("slots = 2, tokens_per_s = 1000.0");
    let resp = d
        .http
        .get(d.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let models: Value = resp.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "p-model");
    assert_eq!(models["data"][0]["object"], "model");

    let resp = post(
        &d,
        "/v1/chat/completions",
        json!({"model": "p-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let task_id = resp.headers()["x-orchd-task-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let chat: Value = resp.json().await.unwrap();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert!(
        !chat["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert_eq!(chat["choices"][0]["finish_reason"], "length");
    assert_eq!(chat["usage"]["completion_tokens"], 5);
    // It was a task like any other: its status and transcript exist.
    let status: Value = d
        .http
        .get(d.url(&format!("/v1/tasks/{task_id}")))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "succeeded");
    assert!(status["artifact_id"].is_string());

    let resp = post(
        &d,
        "/v1/completions",
        json!({"model": "p-model", "prompt": "x", "max_tokens": 3}),
    )
    .await;
    let comp: Value = resp.json().await.unwrap();
    assert_eq!(comp["object"], "text_completion");
    assert_eq!(comp["usage"]["completion_tokens"], 3);

    let resp = post(
        &d,
        "/v1/embeddings",
        json!({"model": "p-model", "input": ["a", "b"], "encoding_format": "float"}),
    )
    .await;
    let emb: Value = resp.json().await.unwrap();
    assert_eq!(emb["object"], "list");
    assert_eq!(emb["data"].as_array().unwrap().len(), 2);
    assert_eq!(emb["data"][1]["index"], 1);
    assert_eq!(emb["data"][0]["embedding"].as_array().unwrap().len(), 16);
}

#[tokio::test]
async fn streams_are_openai_chunks_ending_with_done() {
    let d = daemon("slots = 2, tokens_per_s = 1000.0");
    let resp = post(
        &d,
        "/v1/chat/completions",
        json!({"model": "p-model", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut reader = SseReader::new(resp);
    let mut data = Vec::new();
    while let Some(f) = reader.next_frame().await {
        data.push(f.data);
    }
    assert_eq!(data.last().unwrap(), &Value::String("[DONE]".into()));
    assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
    let content: Vec<&Value> = data
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .collect();
    assert_eq!(content.len(), 4);
    let finish = data
        .iter()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = &data[data.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert!(
        data.iter()
            .all(|c| c == "[DONE]" || c["object"] == "chat.completion.chunk")
    );
}

#[tokio::test]
async fn errors_come_in_openai_shape_with_api_statuses() {
    let d = daemon("");
    let shape = |v: &Value| {
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
    };
    let resp = post(
        &d,
        "/v1/chat/completions",
        json!({"model": "p-model", "messages": [{"role": "user", "content": "x"}], "n": 3}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    shape(&v);
    assert_eq!(v["error"]["param"], "n");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // A field the door does not know is refused by name; logit_bias is known and checked.
    let resp = post(
        &d,
        "/v1/chat/completions",
        json!({"model": "p-model", "messages": [{"role": "user", "content": "x"}],
               "logit_bias": {"hello": 1}}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "logit_bias.hello", "{v}");
    let resp = post(
        &d,
        "/v1/chat/completions",
        json!({"model": "p-model", "messages": [{"role": "user", "content": "x"}],
               "functions": []}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("functions"),
        "{v}"
    );

    // An unknown model is OpenAI's 404, which the official clients do not retry.
    let resp = post(
        &d,
        "/v1/chat/completions",
        json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.headers().get("retry-after").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");

    let resp = d
        .http
        .post(d.url("/v1/completions"))
        .json(&json!({"model": "p-model", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    shape(&resp.json().await.unwrap());

    let resp = d
        .http
        .post(d.url("/v1/chat/completions"))
        .bearer_auth(POOR)
        .json(&json!({"model": "p-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "BUDGET_EXCEEDED");

    let resp = post(
        &d,
        "/v1/completions",
        json!({"model": "nobody", "prompt": "x"}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 404);
    assert!(!resp.headers().contains_key("retry-after"));
    let v = resp.json().await.unwrap();
    shape(&v);
    assert_eq!(v["error"]["code"], "model_not_found");
}

async fn state_of(d: &Daemon, id: &str) -> String {
    let v: Value = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}")))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["state"].as_str().unwrap_or_default().to_owned()
}

async fn wait_canceled(d: &Daemon, id: &str) {
    for _ in 0..200 {
        if state_of(d, id).await == "canceled" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} was not canceled: {}", state_of(d, id).await);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_before_and_after_the_first_token() {
    // One slot, slow tokens, keep-alives every 100 ms (so a silent wait notices the close).
    let d = DaemonBuilder::new(format!(
        "[stream]\nkeep_alive_ms = 100\n\n[[auth.keys]]\nname = \"app\"\nrole = \"data\"\nkey = \"{KEY}\"\n\n{}",
        config(&default_admission("reject"), 16, &[mock_pool("p", "slots = 1, tokens_per_s = 20.0")])
    ))
    .start();
    // A streaming request holds the only slot; its client has read the first chunk.
    let resp = post(&d, "/v1/chat/completions", json!({"model": "p-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000, "stream": true})).await;
    let running = resp.headers()["x-orchd-task-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut reader = SseReader::new(resp);
    reader.next_frame().await.expect("a first chunk");
    // A non-streaming request waits in the queue behind it; its client gives up before
    // any token (the request times out on the client side).
    let gave_up = d
        .http
        .post(d.url("/v1/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "p-model", "prompt": "x", "max_tokens": 5}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "it was still queued");
    // The streaming client goes away after its first token.
    drop(reader);
    wait_canceled(&d, &running).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d
        .metric_sum("tasks_canceled_total", &[("reason", "disconnect")])
        .await
        < 2.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the queued request's task was not canceled"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Nothing is left running or queued: a new request is served at once.
    let resp = post(
        &d,
        "/v1/completions",
        json!({"model": "p-model", "prompt": "x", "max_tokens": 2}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn the_official_python_client_works_unchanged() {
    let python = std::env::var("ORCHD_OPENAI_PYTHON").expect(
        "ORCHD_OPENAI_PYTHON (a python with the `openai` package) is set by `cargo xtask test`",
    );
    let d = daemon("slots = 4, tokens_per_s = 2000.0, first_token_delay_ms = 2");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai/client_check.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([
            "--base-url",
            &d.url("/v1"),
            "--key",
            KEY,
            "--model",
            "p-model",
        ])
        .args(["--budget-key", POOR, "--embeddings", "--deterministic"])
        .output()
        .await
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[tokio::test]
async fn embeddings_reserve_their_inputs_tokens() {
    let keys = "[[auth.keys]]\nname = \"small\"\nrole = \"data\"\nkey = \"small-key\"\nbudget = { tokens = 20 }\n\n";
    let d = DaemonBuilder::new(format!(
        "{keys}{}",
        config(&default_admission("reject"), 8, &[mock_pool("p", "")])
    ))
    .start();
    let embed = |input: Value| {
        d.http
            .post(d.url("/v1/embeddings"))
            .bearer_auth("small-key")
            .json(&json!({"model": "p-model", "input": input, "encoding_format": "float"}))
            .send()
    };
    // About 50 tokens of input against a 20-token budget: refused before any work.
    let resp = embed(json!(["word ".repeat(40)])).await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "BUDGET_EXCEEDED", "{v}");
    // A small input fits.
    let resp = embed(json!("hi")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn a_time_budget_reserves_the_expected_service_time_not_the_deadline() {
    // The OpenAI door's default deadline is 600 s. A session time budget of 600 s used to
    // be reserved whole by the first request, so the second one got 429.
    let d = DaemonBuilder::new(format!(
        "[sessions]\nmax_turns = 100\n\n[budgets]\nper_session = {{ time_ms = 600000 }}\n\n{}",
        config(
            &default_admission("reject"),
            16,
            &[mock_pool("p", "slots = 2, tokens_per_s = 1000.0")]
        )
    ))
    .start();
    for n in 0..5 {
        let resp = d
            .http
            .post(d.url("/v1/chat/completions"))
            .header("x-session-id", "timed")
            .json(&json!({
                "model": "p-model",
                "messages": [{"role": "user", "content": format!("turn {n}")}],
                "max_tokens": 5,
            }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(status, 200, "turn {n}: {}", resp.text().await.unwrap());
    }
    // What the session spent is the time its tasks took, far from one deadline each.
    let (_, s) = d.get_json("/v1/sessions/timed").await;
    let left = s["time_budget_remaining_ms"]
        .as_u64()
        .expect("a time budget");
    assert!(left > 590_000, "{s}");
}
