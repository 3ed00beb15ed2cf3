//! Chat as data through the real binary: `workload: "chat"` on the native API and the
//! OpenAI door relay tool calls, finish reasons and engine usage; an adapter built against
//! ABI 0.1.2 keeps serving completions and embeddings and refuses chat clearly; malformed
//! tool calls from an engine are a mapped error and the daemon keeps serving.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::routing::{get, post};
use orchd_testkit::{
    Daemon, DaemonBuilder, config, default_admission, dist_dir, fixtures_dir, mock_pool,
    openai_pool,
};
use serde_json::{Value, json};

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
}

fn chat_task(extra: Value) -> Value {
    let mut t = json!({
        "session_id": "s-chat", "workload": "chat", "engine": "mock", "model_ref": "p-model",
        "ctx": 512, "priority": "interactive", "max_tokens": 4, "deadline_ms": 30000,
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "weather?"}]}]
    });
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

#[tokio::test]
async fn native_chat_streams_tool_call_frames_and_the_engines_finish_reason() {
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 2")],
    ))
    .start();
    let id = d
        .submit_ok(&chat_task(json!({
            "tools": [weather_tool()], "tool_choice": "required"
        })))
        .await;
    let frames = d.stream(&id).await;
    let calls: Vec<Value> = frames
        .iter()
        .filter(|f| f.event == "tool_call")
        .map(|f| f.data.clone())
        .collect();
    assert_eq!(calls.len(), 2, "{frames:?}");
    assert_eq!(calls[0]["name"], "get_weather");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert!(calls[1].get("id").is_none() && calls[1].get("name").is_none());
    let args: String = calls
        .iter()
        .map(|c| c["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({}));
    let end = frames.last().unwrap();
    assert_eq!(end.event, "end");
    let end = &end.data;
    assert_eq!(end["finish_reason"], "tool_calls");
    assert_eq!(end["tokens_out"], 2, "the engine's count, not the frames'");

    // Without tools: text frames, the engine's `length`.
    let id = d.submit_ok(&chat_task(json!({}))).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.iter().filter(|f| f.event == "token").count(), 4);
    let end = &frames.last().unwrap().data;
    assert_eq!(end["finish_reason"], "length");
    assert_eq!(end["tokens_in"], 3, "the engine's prompt count");
}

#[tokio::test]
async fn chat_fields_are_validated_by_name() {
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 1")],
    ))
    .start();
    for (body, field) in [
        (
            json!({"session_id": "s", "workload": "completion", "engine": "mock",
                   "model_ref": "p-model", "ctx": 64, "priority": "interactive",
                   "prompt": "x", "max_tokens": 2, "deadline_ms": 30000,
                   "tools": [weather_tool()]}),
            "tools",
        ),
        (chat_task(json!({"messages": []})), "messages"),
        (
            chat_task(json!({"messages": [{"role": "tool", "content": "42"}]})),
            "messages[0].tool_call_id",
        ),
        (
            chat_task(
                json!({"tool_choice": {"type": "function", "function": {"name": "nope"}},
                             "tools": [weather_tool()]}),
            ),
            "tool_choice",
        ),
        (chat_task(json!({"top_logprobs": 3})), "top_logprobs"),
        (
            chat_task(json!({"messages": [{"role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})),
            "messages[0].content",
        ),
    ] {
        let resp = d.submit(&body).await;
        assert_eq!(resp.status().as_u16(), 400, "{field}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], "INVALID_PARAMS", "{field}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(field),
            "{field}: {v}"
        );
    }
}

#[tokio::test]
async fn the_openai_door_relays_tool_calls_streaming_and_not() {
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 2")],
    ))
    .start();
    let body = json!({"model": "p-model", "max_tokens": 8, "tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [{"role": "user", "content": "weather in Oslo?"}]});
    let v = d.post_json("/v1/chat/completions", &body).await.1;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{}");
    assert!(choice["message"]["content"].is_null());
    assert_eq!(v["usage"]["completion_tokens"], 2);

    // The call sent back as the API returned it, and the tool's answer: a completion.
    let follow = json!({"model": "p-model", "max_tokens": 3, "messages": [
        {"role": "user", "content": "weather in Oslo?"},
        choice["message"].clone(),
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp\": 3}"}]});
    let v = d.post_json("/v1/chat/completions", &follow).await.1;
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 1
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let text = d
        .http
        .post(d.url("/v1/chat/completions"))
        .json(&stream_body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant", "{text}");
    assert_eq!(first["tool_calls"][0]["index"], 0);
    assert_eq!(first["tool_calls"][0]["type"], "function");
    assert_eq!(first["tool_calls"][0]["function"]["name"], "get_weather");
    let second = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
    assert!(second.get("id").is_none() && second["function"].get("name").is_none());
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0].get("finish_reason"))
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("tool_calls")]);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 2);
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

/// A daemon whose pool `pool` runs on the fixture library `fixture` (an adapter built
/// against an earlier ABI, named and serving engine `name`, model `{name}-model`), beside
/// the mock adapter; and that library's entry in `GET /v1/adapters`.
async fn older_abi_daemon(pool: &str, name: &str, fixture: &str) -> (Daemon, Value) {
    let config_text = format!(
        r#"
[[pools]]
id = "{pool}"
engine = "{name}"
adapter = "{name}"
model_ref = "{name}-model"

[[pools.replicas]]
id = "{pool}-0"
config = {{}}
"#
    );
    let b = DaemonBuilder::new(config(&default_admission("reject"), 8, &[config_text]));
    let dir = b.scratch().join("adapters");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(dist_dir().join("adapters/mock.so"), dir.join("mock.so")).unwrap();
    std::fs::copy(
        fixtures_dir().join("adapters").join(fixture),
        dir.join(format!("{name}.so")),
    )
    .unwrap();
    let d = b.adapters_dir(&dir).start();
    let (_, adapters) = d.get_json("/v1/adapters").await;
    let entry = adapters["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{adapters}"));
    (d, entry)
}

#[tokio::test]
async fn an_adapter_built_against_abi_0_1_2_serves_completions_and_embeddings_but_not_chat() {
    let (d, legacy) = older_abi_daemon("old", "legacy", "legacy-0.1.2.so").await;
    assert_eq!(legacy["abi_version"], "0.1.2");
    assert!(
        !legacy["features"]
            .as_array()
            .unwrap()
            .contains(&json!("chat"))
    );

    let id = d
        .submit_ok(
            &json!({"session_id": "s", "workload": "completion", "engine": "legacy",
            "model_ref": "legacy-model", "ctx": 64, "priority": "interactive",
            "prompt": "one two three", "max_tokens": 8, "deadline_ms": 30000}),
        )
        .await;
    let frames = d.stream(&id).await;
    let text: String = frames
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["t"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "one two three ");
    assert_eq!(frames.last().unwrap().event, "end");

    let v: Value = d
        .http
        .post(d.url("/v1/embeddings"))
        .json(
            &json!({"model": "legacy-model", "input": ["ab", "abc d"], "encoding_format": "float"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][1]["embedding"][0], 5.0, "{v}");

    let resp = d
        .http
        .post(d.url("/v1/chat/completions"))
        .json(&json!({"model": "legacy-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"old\"") && message.contains("`chat`"),
        "names the pool and the feature: {v}"
    );
}

#[tokio::test]
async fn an_adapter_built_against_abi_0_1_3_keeps_its_chat_on_a_later_host() {
    let (d, older) = older_abi_daemon("older", "older", "legacy-0.1.3.so").await;
    assert_eq!(older["abi_version"], "0.1.3");
    assert!(
        older["features"]
            .as_array()
            .unwrap()
            .contains(&json!("chat")),
        "a 0.1.3 library is checked against 0.1.3's layout, not 0.1.2's: {older}"
    );
    // Chat (0.1.3's submit_chat and emit_chat) works, and a traced request reaches a
    // library that cannot ask for its trace context without harm.
    let v: Value = d
        .http
        .post(d.url("/v1/chat/completions"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"model": "older-model",
            "messages": [{"role": "user", "content": "red green blue"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], "red green blue ",
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let id = d
        .submit_ok(
            &json!({"session_id": "s", "workload": "completion", "engine": "older",
            "model_ref": "older-model", "ctx": 64, "priority": "interactive",
            "prompt": "one two", "max_tokens": 8, "deadline_ms": 30000}),
        )
        .await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
}

/// An OpenAI-compatible engine whose tool call is malformed JSON while `broken` is set.
async fn flaky_engine(broken: Arc<AtomicBool>) -> String {
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"data": [{"id": "m", "owned_by": "fixture"}]})) }),
        )
        .route(
            "/v1/chat/completions",
            post(move |Json(_req): Json<Value>| {
                let broken = broken.load(Ordering::Acquire);
                async move {
                    let args = if broken { "{\"city\": Oslo" } else { "{\"city\": \"Oslo\"}" };
                    let chunk = |delta: Value, finish: Value| {
                        format!(
                            "data: {}\n\n",
                            json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                        )
                    };
                    let body = [
                        chunk(
                            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "c1",
                                "type": "function", "function": {"name": "get_weather", "arguments": args}}]}),
                            Value::Null,
                        ),
                        chunk(json!({}), json!("tool_calls")),
                        "data: [DONE]\n\n".to_owned(),
                    ]
                    .concat();
                    Ok::<_, Infallible>(([("content-type", "text/event-stream")], body))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

// Multi-threaded: the fixture engine runs on this runtime while the daemon starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_tool_call_from_the_engine_is_an_error_and_the_daemon_keeps_serving() {
    let broken = Arc::new(AtomicBool::new(true));
    let url = flaky_engine(Arc::clone(&broken)).await;
    let pool = openai_pool("oa", &url, "m");
    let d = DaemonBuilder::new(config(&default_admission("reject"), 8, &[pool])).start();
    let body = json!({"model": "m", "tools": [weather_tool()], "tool_choice": "required",
        "messages": [{"role": "user", "content": "weather?"}]});
    let resp = d
        .http
        .post(d.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    assert!(status >= 500, "{status} {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("not JSON"),
        "{v}"
    );
    broken.store(false, Ordering::Release);
    let v = d.post_json("/v1/chat/completions", &body).await.1;
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\": \"Oslo\"}",
        "{v}"
    );
}

#[tokio::test]
async fn an_engine_that_reports_no_counts_is_billed_by_its_tokenizer_or_the_estimate_never_zero() {
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 2, report_usage = false")],
    ))
    .start();
    // A completion: the adapter declares `tokenize`, so the prompt is counted by the
    // engine's tokenizer (one id per word for the mock), not estimated (bytes / 4 = 10).
    let prompt = "one two three four five six seven eight";
    let id = d
        .submit_ok(
            &json!({"session_id": "s", "workload": "completion", "engine": "mock",
            "model_ref": "p-model", "ctx": 64, "priority": "interactive",
            "prompt": prompt, "max_tokens": 5, "deadline_ms": 30000}),
        )
        .await;
    let frames = d.stream(&id).await;
    let end = &frames.last().unwrap().data;
    assert_eq!(end["tokens_in"], 8, "{end}");
    assert_eq!(end["tokens_out"], 5, "the frames sent, not the engine's 0");
    let status = d.get_json(&format!("/v1/tasks/{id}")).await.1;
    assert_eq!(status["tokens_out"], 5);

    // A chat without usage: the estimate, never 0, and the OpenAI door reports the same.
    let v = d
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "p-model", "max_tokens": 3,
            "messages": [{"role": "user", "content": "count these words please"}]}),
        )
        .await
        .1;
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
}
