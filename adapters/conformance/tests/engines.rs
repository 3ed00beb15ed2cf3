//! The TGI, Triton and Ollama adapters against local fixture servers that speak those
//! engines' documented streaming formats: the conformance kit passes against a well-behaved
//! server, and malformed frames, oversized lines and mid-stream resets become classified
//! failures (never a hang, never a crash).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Json, Path};
use axum::routing::{get, post};
use bytes::Bytes;
use orchd_adapter_conformance::{Plan, events_of, run};
use orchd_host::adapters::{EngineEvent, FailureKind, FailurePhase};
use orchd_testkit::dist_dir;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Good,
    /// After two tokens, a frame that is not JSON.
    Malformed,
    /// After two tokens, a line far over the adapter's bound.
    Oversized,
    /// After two tokens, the connection is cut.
    Reset,
}

/// A body of `frames` with a short pause before each, ending as `mode` says.
fn body(frames: Vec<String>, mode: Mode) -> Body {
    let stream = futures_util::stream::unfold(
        (frames.into_iter(), 0usize),
        move |(mut it, i)| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if i == 2 && mode != Mode::Good {
                let item: Result<Bytes, std::io::Error> = match mode {
                    Mode::Malformed => Ok(Bytes::from_static(b"data: {\"token\": {broken\n\n")),
                    Mode::Oversized => Ok(Bytes::from(format!("data: {}\n\n", "x".repeat(16_384)))),
                    _ => Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "cut",
                    )),
                };
                return Some((item, (Vec::new().into_iter(), usize::MAX)));
            }
            if i == usize::MAX {
                return None;
            }
            it.next().map(|f| (Ok(Bytes::from(f)), (it, i + 1)))
        },
    );
    Body::from_stream(stream)
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// TGI: `/health`, `/info`, `/generate_stream` (`data:` without a space, as TGI sends it).
async fn tgi(mode: Mode) -> String {
    let app = Router::new()
        .route("/health", get(|| async { "" }))
        .route(
            "/info",
            get(|| async {
                Json(json!({"model_id": "fixture/tiny", "max_total_tokens": 2048,
                            "max_concurrent_requests": 4, "version": "2.4.1"}))
            }),
        )
        .route(
            "/v1/chat/completions",
            post(move |Json(req): Json<Value>| async move {
                Ok::<_, Infallible>((
                    [("content-type", "text/event-stream")],
                    body(tgi_chat_frames(&req), mode),
                ))
            }),
        )
        .route(
            "/generate_stream",
            post(move |Json(req): Json<Value>| async move {
                let n = req["parameters"]["max_new_tokens"].as_u64().unwrap_or(4);
                let mut frames: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "data:{{\"index\":{i},\"token\":{{\"id\":{i},\"text\":\"t{i} \",\"logprob\":-0.5,\"special\":false}},\"generated_text\":null,\"details\":null}}\n\n"
                        )
                    })
                    .collect();
                frames.push(format!(
                    "data:{{\"index\":{n},\"token\":{{\"id\":2,\"text\":\"</s>\",\"special\":true}},\"generated_text\":\"…\",\"details\":{{\"finish_reason\":\"length\",\"generated_tokens\":{n},\"seed\":1}}}}\n\n"
                ));
                Ok::<_, Infallible>(([("content-type", "text/event-stream")], body(frames, mode)))
            }),
        );
    serve(app).await
}

/// TGI's Messages API stream (`data:` without a space, `[DONE]` last): content deltas, or
/// with tools, one tool call as TGI 2 sends it, a single `tool_calls` object whose
/// arguments arrive in pieces.
pub fn tgi_chat_frames(req: &Value) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data:{}\n\n",
            json!({"object": "chat.completion.chunk", "id": "", "created": 1, "model": "tgi",
                   "system_fingerprint": "2.4.1-native",
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        )
    };
    let mut frames = Vec::new();
    if let Some(tool) = req["tools"][0]["function"]["name"].as_str() {
        for (i, piece) in ["{\"city\":", " \"Oslo\"", "}"].iter().enumerate() {
            let name = if i == 0 { json!(tool) } else { Value::Null };
            frames.push(chunk(
                json!({"role": "assistant", "tool_calls": {"index": 0, "id": "", "type": "function",
                        "function": {"description": null, "name": name, "arguments": piece}}}),
                if i == 2 {
                    json!("eos_token")
                } else {
                    Value::Null
                },
            ));
        }
    } else {
        let n = req["max_tokens"].as_u64().unwrap_or(4);
        for i in 0..n {
            frames.push(chunk(
                json!({"role": "assistant", "content": format!("t{i} ")}),
                if i + 1 == n {
                    json!("length")
                } else {
                    Value::Null
                },
            ));
        }
    }
    frames.push("data:[DONE]\n\n".to_owned());
    frames
}

/// Triton: health, model readiness, server metadata, `generate_stream` ended by closing.
async fn triton(mode: Mode) -> String {
    let app = Router::new()
        .route("/v2/health/ready", get(|| async { "" }))
        .route("/v2/models/{model}/ready", get(|Path(_m): Path<String>| async { "" }))
        .route("/v2", get(|| async { Json(json!({"name": "triton", "version": "2.50.0"})) }))
        .route(
            "/v2/models/{model}/generate_stream",
            post(move |Path(model): Path<String>, Json(req): Json<Value>| async move {
                let n = req["max_tokens"].as_u64().unwrap_or(4);
                let frames: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "data: {{\"model_name\":\"{model}\",\"model_version\":\"1\",\"sequence_end\":false,\"text_output\":\"t{i} \"}}\n\n"
                        )
                    })
                    .collect();
                Ok::<_, Infallible>(([("content-type", "text/event-stream")], body(frames, mode)))
            }),
        );
    serve(app).await
}

/// Ollama's native API: `/api/version`, `/api/tags`, `/api/generate` and `/api/chat`
/// (newline-delimited JSON, the `done` line last, with counts), `/api/embed`. The last
/// request body is kept for the tests to read.
async fn ollama(mode: Mode) -> (String, std::sync::Arc<std::sync::Mutex<Value>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let (chat_seen, generate_seen) = (seen.clone(), seen.clone());
    let app = Router::new()
        .route("/api/version", get(|| async { Json(json!({"version": "0.6.2"})) }))
        .route(
            "/api/tags",
            get(|| async { Json(json!({"models": [{"name": "fixture:latest", "model": "fixture:latest"}]})) }),
        )
        .route(
            "/api/generate",
            post(move |Json(req): Json<Value>| async move {
                *generate_seen.lock().unwrap() = req.clone();
                let n = req["options"]["num_predict"].as_u64().unwrap_or(4);
                let mut frames: Vec<String> = (0..n)
                    .map(|i| format!("{{\"model\":\"fixture\",\"response\":\"t{i} \",\"done\":false}}\n"))
                    .collect();
                frames.push(format!(
                    "{{\"model\":\"fixture\",\"response\":\"\",\"done\":true,\"done_reason\":\"length\",\"prompt_eval_count\":5,\"eval_count\":{n}}}\n"
                ));
                Ok::<_, Infallible>(([("content-type", "application/x-ndjson")], body(frames, mode)))
            }),
        )
        .route(
            "/api/chat",
            post(move |Json(req): Json<Value>| async move {
                *chat_seen.lock().unwrap() = req.clone();
                let frames = if req["tools"].as_array().is_some_and(|t| !t.is_empty()) {
                    vec![
                        "{\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}}]},\"done\":false}\n".to_owned(),
                        "{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":31,\"eval_count\":12}\n".to_owned(),
                    ]
                } else {
                    let mut frames: Vec<String> = ["Hello", " from", " ollama"]
                        .iter()
                        .map(|t| format!("{{\"message\":{{\"role\":\"assistant\",\"content\":\"{t}\"}},\"done\":false}}\n"))
                        .collect();
                    frames.push("{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":9,\"eval_count\":3}\n".to_owned());
                    frames
                };
                Ok::<_, Infallible>(([("content-type", "application/x-ndjson")], body(frames, mode)))
            }),
        )
        .route(
            "/api/embed",
            post(|Json(req): Json<Value>| async move {
                let n = req["input"].as_array().map_or(1, Vec::len);
                Json(json!({"model": "fixture", "embeddings": (0..n).map(|i| vec![i as f32, 0.5, -1.0]).collect::<Vec<_>>()}))
            }),
        );
    (serve(app).await, seen)
}

fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn lib(name: &str) -> std::path::PathBuf {
    dist_dir().join("adapters").join(name)
}

fn config(engine: &str, url: &str) -> String {
    let bounds = r#""http": {"max_line_bytes": 4096, "max_attempts": 2, "idle_timeout_ms": 5000}"#;
    match engine {
        "tgi.so" => format!(r#"{{"url": "{url}", {bounds}}}"#),
        "ollama.so" => format!(r#"{{"url": "{url}", "model": "fixture", {bounds}}}"#),
        _ => format!(r#"{{"url": "{url}", "model": "ensemble", {bounds}}}"#),
    }
}

async fn server(engine: &str, mode: Mode) -> String {
    match engine {
        "tgi.so" => tgi(mode).await,
        "ollama.so" => ollama(mode).await.0,
        _ => triton(mode).await,
    }
}

#[tokio::test]
async fn tgi_triton_and_ollama_adapters_pass_the_kit_against_their_fixture_servers() {
    for engine in ["tgi.so", "triton.so", "ollama.so"] {
        let url = server(engine, Mode::Good).await;
        let mut plan = Plan::new(config(engine, &url));
        plan.unreachable_config = Some(config(engine, &closed_url()));
        plan.timeout = Duration::from_secs(20);
        let report = run(&lib(engine), &plan).await;
        print!("{engine}:\n{}", report.render());
        assert!(report.passed(), "{engine} is not conformant");
        let version = report
            .checks
            .iter()
            .find(|c| c.name == "health and props")
            .unwrap();
        assert!(version.detail.contains(match engine {
            "tgi.so" => "tgi-2.4.1",
            "ollama.so" => "ollama-0.6.2",
            _ => "triton-2.50.0",
        }));
    }
}

#[tokio::test]
async fn malformed_frames_oversized_lines_and_resets_are_classified() {
    for engine in ["tgi.so", "triton.so", "ollama.so"] {
        for (mode, kind) in [
            (Mode::Malformed, FailureKind::Protocol),
            (Mode::Oversized, FailureKind::Protocol),
            (Mode::Reset, FailureKind::Transport),
        ] {
            let url = server(engine, mode).await;
            let events = events_of(
                &lib(engine),
                &config(engine, &url),
                10,
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("{engine} {mode:?}: {e}"));
            let tokens = events
                .iter()
                .filter(|e| matches!(e, EngineEvent::Token(_)))
                .count();
            assert_eq!(tokens, 2, "{engine} {mode:?}: {events:?}");
            match events.last() {
                Some(EngineEvent::Error(f)) => {
                    assert_eq!(f.kind, kind, "{engine} {mode:?}: {f:?}");
                    assert_eq!(f.phase, FailurePhase::MidStream, "{engine} {mode:?}");
                }
                other => panic!("{engine} {mode:?}: ended with {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn llamacpp_and_openai_adapters_pass_the_kit_against_the_engine_simulator() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sim = orchd_engine_sim::SimConfig {
        first_token: Duration::from_millis(2),
        inter_token: Duration::from_millis(2),
        ..orchd_engine_sim::SimConfig::default()
    };
    tokio::spawn(async move { axum::serve(listener, orchd_engine_sim::app(sim)).await });
    let dead = closed_url();
    for (engine, config, unreachable) in [
        (
            "llamacpp.so",
            format!(r#"{{"url": "{url}"}}"#),
            format!(r#"{{"url": "{dead}"}}"#),
        ),
        (
            "openai.so",
            format!(r#"{{"url": "{url}", "model": "sim", "mode": "chat"}}"#),
            format!(r#"{{"url": "{dead}", "model": "sim"}}"#),
        ),
    ] {
        let mut plan = Plan::new(config);
        plan.unreachable_config = Some(unreachable);
        let report = run(&lib(engine), &plan).await;
        print!("{engine} vs engine-sim:\n{}", report.render());
        // The simulator has no /tokenize: that check is the one allowed to fail.
        for check in report.checks.iter().filter(|c| c.name != "tokenize") {
            assert_ne!(
                check.passed,
                Some(false),
                "{engine}: {}: {}",
                check.name,
                check.detail
            );
        }
    }
}

/// A vLLM-style chat stream (`data: ` with a space): a role chunk, a tool call whose id
/// and name come first and whose arguments arrive in three pieces, the finish reason, the
/// usage chunk, `[DONE]`. `broken` makes the assembled arguments invalid JSON.
fn vllm_tool_frames(broken: bool) -> Vec<String> {
    let chunk = |v: Value| format!("data: {v}\n\n");
    let delta = |d: Value, finish: Value| {
        chunk(
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                     "model": "m", "choices": [{"index": 0, "delta": d, "logprobs": null,
                     "finish_reason": finish}]}),
        )
    };
    let mut frames = vec![delta(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    frames.push(delta(
        json!({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-7", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
        Value::Null,
    ));
    let last = if broken { "\"Oslo\"" } else { "\"Oslo\"}" };
    for piece in ["{\"ci", "ty\": ", last] {
        frames.push(delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            Value::Null,
        ));
    }
    frames.push(delta(json!({}), json!("tool_calls")));
    frames.push(chunk(
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
        "created": 1, "model": "m", "choices": [],
        "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40,
                  "prompt_tokens_details": {"cached_tokens": 12}}}),
    ));
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

/// vLLM's OpenAI server: `/v1/models` and a streaming `/v1/chat/completions` that keeps the
/// last request body it was sent.
async fn vllm(broken: bool) -> (String, std::sync::Arc<std::sync::Mutex<Value>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let keep = std::sync::Arc::clone(&seen);
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"data": [{"id": "m", "owned_by": "vllm"}]})) }),
        )
        .route(
            "/v1/chat/completions",
            post(move |Json(req): Json<Value>| {
                let keep = std::sync::Arc::clone(&keep);
                async move {
                    *keep.lock().unwrap() = req;
                    Ok::<_, Infallible>((
                        [("content-type", "text/event-stream")],
                        body(vllm_tool_frames(broken), Mode::Good),
                    ))
                }
            }),
        );
    (serve(app).await, seen)
}

fn weather_chat() -> orchd_host::adapters::ChatJob {
    use orchd_contracts::chat::{ChatMessage, Content, FunctionDef, Role, Tool, ToolChoice};
    let message = |role, text: &str| ChatMessage {
        role,
        content: Some(Content::Text(text.to_owned())),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        refusal: None,
    };
    orchd_host::adapters::ChatJob {
        messages: vec![
            message(Role::System, "You answer with tools."),
            message(Role::User, "Weather in Oslo?"),
        ],
        tools: vec![Tool {
            kind: "function".into(),
            function: FunctionDef {
                name: "get_weather".into(),
                description: Some("The weather in a city".into()),
                parameters: Some(json!({"type": "object",
                    "properties": {"city": {"type": "string"}}, "required": ["city"]})),
                strict: None,
            },
        }],
        tool_choice: Some(ToolChoice::Mode("required".into())),
        frequency_penalty: Some(0.5),
        presence_penalty: Some(-0.5),
        logit_bias: vec![(42, -100.0)],
        logprobs: true,
        top_logprobs: 2,
        stop: vec!["END".into()],
        ..Default::default()
    }
}

/// Every tool-call fragment of `events` assembled per index: (id, name, arguments).
fn assembled_calls(events: &[EngineEvent]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for e in events {
        if let EngineEvent::Delta(d) = e {
            for f in &d.tool_calls {
                let i = f.index as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                if let Some(id) = &f.id {
                    calls[i].0 = id.clone();
                }
                if let Some(name) = &f.name {
                    calls[i].1.push_str(name);
                }
                calls[i].2.push_str(&f.arguments);
            }
        }
    }
    calls
}

#[tokio::test]
async fn vllm_chat_streams_tool_call_fragments_and_gets_every_sampling_field() {
    let (url, seen) = vllm(false).await;
    let events = orchd_adapter_conformance::chat_events_of(
        &lib("openai.so"),
        &format!(r#"{{"url": "{url}", "model": "m"}}"#),
        weather_chat(),
        32,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert!(matches!(events.first(), Some(EngineEvent::Started { .. })));
    let calls = assembled_calls(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0].0, "chatcmpl-tool-7");
    assert_eq!(calls[0].1, "get_weather");
    let args: Value = serde_json::from_str(&calls[0].2).unwrap();
    assert_eq!(args, json!({"city": "Oslo"}));
    match events.last() {
        Some(EngineEvent::End(end)) => {
            assert_eq!(end.finish_reason.as_deref(), Some("tool_calls"));
            assert_eq!((end.tokens_in, end.tokens_out), (Some(31), Some(9)));
            assert_eq!(end.cached_tokens, Some(12));
        }
        other => panic!("ended with {other:?}"),
    }
    // What reached the engine: the conversation as data and every sampling field.
    let req = seen.lock().unwrap().clone();
    assert_eq!(req["model"], "m");
    assert_eq!(
        req["messages"][0],
        json!({"role": "system", "content": "You answer with tools."})
    );
    assert_eq!(req["messages"][1]["role"], "user");
    assert_eq!(req["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(req["tool_choice"], "required");
    assert_eq!(req["frequency_penalty"], 0.5);
    assert_eq!(req["presence_penalty"], -0.5);
    assert_eq!(req["logit_bias"], json!({"42": -100.0}));
    assert_eq!(req["logprobs"], true);
    assert_eq!(req["top_logprobs"], 2);
    assert_eq!(req["stop"], json!(["END"]));
    assert_eq!(req["stream"], true);
    assert_eq!(req["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn tool_call_arguments_that_are_not_json_fail_with_a_protocol_error() {
    let (url, _) = vllm(true).await;
    let events = orchd_adapter_conformance::chat_events_of(
        &lib("openai.so"),
        &format!(r#"{{"url": "{url}", "model": "m"}}"#),
        weather_chat(),
        32,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    match events.last() {
        Some(EngineEvent::Error(f)) => {
            assert_eq!(f.kind, FailureKind::Protocol, "{f:?}");
            assert!(f.message.contains("not JSON"), "{f:?}");
        }
        other => panic!("ended with {other:?}"),
    }
}

#[tokio::test]
async fn tgi_messages_api_tool_call_object_split_across_frames() {
    let url = tgi(Mode::Good).await;
    let events = orchd_adapter_conformance::chat_events_of(
        &lib("tgi.so"),
        &config("tgi.so", &url),
        weather_chat(),
        32,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let calls = assembled_calls(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(
        calls[0].0, "call_0",
        "TGI sends an empty id; the adapter makes one"
    );
    assert_eq!(calls[0].1, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].2).unwrap(),
        json!({"city": "Oslo"})
    );
    match events.last() {
        // TGI's own finish reason is passed on; the door maps it for OpenAI's clients.
        Some(EngineEvent::End(end)) => assert_eq!(end.finish_reason.as_deref(), Some("eos_token")),
        other => panic!("ended with {other:?}"),
    }
}

#[tokio::test]
async fn triton_refuses_chat_clearly() {
    let url = triton(Mode::Good).await;
    let err = orchd_adapter_conformance::chat_events_of(
        &lib("triton.so"),
        &config("triton.so", &url),
        weather_chat(),
        8,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(err.contains("does not serve chat"), "{err}");
}

#[tokio::test]
async fn ollama_chat_tool_calls_counts_and_embeddings_on_the_native_api() {
    let (url, seen) = ollama(Mode::Good).await;
    let cfg = format!(
        r#"{{"url": "{url}", "model": "fixture", "keep_alive": "10m", "params": {{"temperature": 0.2}}}}"#
    );
    // A chat with a tool: Ollama's whole tool call becomes one fragment with an id.
    let events = orchd_adapter_conformance::chat_events_of(
        &lib("ollama.so"),
        &cfg,
        weather_chat(),
        64,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let calls = assembled_calls(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0].1, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].2).unwrap(),
        json!({"city": "Oslo"})
    );
    match events.last() {
        Some(EngineEvent::End(end)) => {
            assert_eq!(end.finish_reason.as_deref(), Some("tool_calls"));
            assert_eq!((end.tokens_in, end.tokens_out), (Some(31), Some(12)));
        }
        other => panic!("{other:?}"),
    }
    let req = seen.lock().unwrap().clone();
    assert_eq!(req["model"], "fixture");
    assert_eq!(req["stream"], true);
    assert_eq!(req["keep_alive"], "10m");
    assert_eq!(req["options"]["num_predict"], 64);
    assert_eq!(req["options"]["temperature"], 0.2);
    assert_eq!(req["messages"][1]["content"], "Weather in Oslo?");
    assert_eq!(req["tools"][0]["function"]["name"], "get_weather");
    // A completion's counts are the engine's.
    let events = events_of(&lib("ollama.so"), &cfg, 3, Duration::from_secs(20))
        .await
        .unwrap();
    match events.last() {
        Some(EngineEvent::End(end)) => {
            assert_eq!((end.tokens_in, end.tokens_out), (Some(5), Some(3)));
        }
        other => panic!("{other:?}"),
    }
    // Embeddings: one vector per input, in order.
    let adapter = orchd_host::adapters::AdapterRegistry::load_file(&lib("ollama.so")).unwrap();
    let client = adapter.new_client(&cfg).unwrap();
    let vectors = tokio::task::spawn_blocking(move || client.embed(vec!["a".into(), "b".into()]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(vectors, vec![vec![0.0, 0.5, -1.0], vec![1.0, 0.5, -1.0]]);
}
