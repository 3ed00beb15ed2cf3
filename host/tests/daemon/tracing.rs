//! OpenTelemetry: a task's whole path is one trace, exported over OTLP/HTTP to a receiver
//! the test starts (it decodes the protobuf with the reference OTLP definitions of
//! `opentelemetry-proto`), and the engine call carries the trace on as `traceparent`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use orchd_testkit::{DaemonBuilder, config, default_admission, openai_pool};
use prost::Message;
use serde_json::{Value, json};

/// One exported span, as a trace viewer would show it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    start: u64,
    end: u64,
    attrs: HashMap<String, String>,
    events: Vec<(String, HashMap<String, String>)>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// An OTLP/HTTP traces receiver on a free loopback port.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf trace export");
    let mut out = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    attrs: attrs(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attrs(&e.attributes)))
                        .collect(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse.
    Vec::new()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(Arc::clone(&spans));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, spans }
    }

    /// The spans of `trace_id` once `names` are all in (the exporter sends in batches).
    async fn trace(&self, trace_id: &str, names: &[&str]) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            if tokio::time::Instant::now() >= deadline {
                let all: Vec<(String, String, String, String)> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            s.name.clone(),
                            s.trace_id.clone(),
                            s.span_id.clone(),
                            s.parent.clone(),
                        )
                    })
                    .collect();
                panic!("trace {trace_id} lacks some of {names:?}: {spans:#?}; all: {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `traceparent` and `tracestate` of each engine request, in order.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An OpenAI-compatible engine that streams two chunks and remembers the trace headers
/// of each chat request.
async fn engine(seen: Seen) -> String {
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"data": [{"id": "m", "owned_by": "fixture"}]})) }),
        )
        .route(
            "/v1/chat/completions",
            post(
                |State(seen): State<Seen>,
                 headers: HeaderMap,
                 Json(_req): Json<Value>| async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    seen.lock()
                        .unwrap()
                        .push((header("traceparent"), header("tracestate")));
                    let chunk = |delta: Value, finish: Value| {
                        format!(
                            "data: {}\n\n",
                            json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                        )
                    };
                    let body = [
                        chunk(json!({"role": "assistant", "content": "hello"}), Value::Null),
                        chunk(json!({"content": " there"}), Value::Null),
                        chunk(json!({}), json!("stop")),
                        "data: [DONE]\n\n".to_owned(),
                    ]
                    .concat();
                    ([("content-type", "text/event-stream")], body)
                },
            ),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn chat(d: &orchd_testkit::Daemon, traceparent: Option<&str>) -> Value {
    let mut req = d.http.post(d.url("/v1/chat/completions")).json(&json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}]
    }));
    if let Some(tp) = traceparent {
        req = req
            .header("traceparent", tp)
            .header("tracestate", "client=1");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    if status != 200 {
        let health = d.get_json("/v1/pools/oa/health").await;
        panic!("{status} {v}; {health:?}; {:?}", d.logs());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_whole_path_is_one_trace_that_the_engine_joins() {
    let receiver = Receiver::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = engine(Arc::clone(&seen)).await;
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[openai_pool("oa", &url, "m")],
    ))
    .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
    .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    .start();
    let answer = chat(&d, Some(&format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))).await;
    assert_eq!(answer["choices"][0]["message"]["content"], "hello there");

    let spans = receiver
        .trace(
            TRACE_ID,
            &["task", "admission", "queue", "dispatch", "engine", "stream"],
        )
        .await;
    let one = |name: &str| {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
        found[0]
    };
    let task = one("task");
    // The client's span is the task's parent: the trace continues the client's.
    assert_eq!(task.parent, CLIENT_SPAN);
    assert_eq!(task.service, "orchestratord");
    assert_eq!(task.attrs["outcome"], "succeeded", "{task:#?}");
    assert_eq!(task.attrs["pool_id"], "oa");
    assert_eq!(task.attrs["replica_id"], "oa-0");
    assert!(!task.attrs["task_id"].is_empty());
    // Every stage is a child of the task, in order, within it.
    let stages = ["admission", "queue", "dispatch", "engine", "stream"].map(one);
    for s in stages {
        assert_eq!(s.parent, task.span_id, "{} hangs off the task", s.name);
        assert!(
            s.start >= task.start && s.end <= task.end,
            "{s:#?} within {task:#?}"
        );
        assert!(s.end >= s.start);
    }
    for w in stages.windows(2) {
        assert!(
            w[0].start <= w[1].start,
            "{} before {}",
            w[0].name,
            w[1].name
        );
    }
    // Each policy decision is an event with the policy's name and version.
    let (_, policies) = d.get_json("/v1/policies").await;
    let version_of = |kind: &str| {
        policies["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .map(|p| p["version"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{kind} in {policies}"))
    };
    let decisions = |span: &Span| -> Vec<HashMap<String, String>> {
        span.events
            .iter()
            .filter(|(name, _)| name == "policy decision")
            .map(|(_, a)| a.clone())
            .collect()
    };
    let admission = decisions(stages[0]);
    for kind in ["budget", "placement", "admission"] {
        let d = admission
            .iter()
            .find(|a| a["policy"] == kind)
            .unwrap_or_else(|| panic!("a {kind} decision in {admission:#?}"));
        assert_eq!(d["version"], version_of(kind), "{d:?}");
        assert_eq!(d["outcome"], "ok");
        assert!(!d["name"].is_empty());
    }
    // Placement's dispatch-stage decision happens while the task is still queued.
    assert!(
        decisions(stages[1])
            .iter()
            .any(|a| a["policy"] == "placement"),
        "{:#?}",
        stages[1]
    );
    // The engine was called with the engine span's context, and the client's tracestate.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            format!("00-{TRACE_ID}-{}-01", stages[3].span_id),
            "client=1".to_owned()
        )]
    );

    // A request without a traceparent starts its own trace.
    let before: Vec<String> = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.trace_id.clone())
        .collect();
    chat(&d, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let root = loop {
        let found = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == "task" && !before.contains(&s.trace_id))
            .cloned();
        if let Some(root) = found {
            break root;
        }
        assert!(tokio::time::Instant::now() < deadline, "no second trace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(root.trace_id, TRACE_ID);
    assert!(root.parent.is_empty(), "a root: {root:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_is_a_trace_that_says_why() {
    let receiver = Receiver::start().await;
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[orchd_testkit::mock_pool("p", "")],
    ))
    .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
    .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    .start();
    // An infeasible deadline: refused at admission with DEADLINE_UNMET.
    let resp = d
        .http
        .post(d.url("/v1/tasks"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&orchd_testkit::task(
            "p",
            json!({"deadline_ms": 1000, "max_tokens": 4000}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        400,
        "{}",
        resp.text().await.unwrap()
    );
    let spans = receiver.trace(TRACE_ID, &["task", "admission"]).await;
    let task = spans.iter().find(|s| s.name == "task").unwrap();
    assert_eq!(task.attrs["outcome"], "rejected", "{task:#?}");
    assert_eq!(task.attrs["error_code"], "DEADLINE_UNMET", "{task:#?}");
    assert!(
        !spans.iter().any(|s| s.name == "queue"),
        "a rejected task never queued: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_clients_trace_context_reaches_the_engine_unchanged() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = engine(Arc::clone(&seen)).await;
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[openai_pool("oa", &url, "m")],
    ))
    .start();
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    chat(&d, Some(&traceparent)).await;
    // A malformed one is not passed on.
    chat(&d, Some("00-nonsense")).await;
    chat(&d, None).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (traceparent, "client=1".to_owned()),
            (String::new(), String::new()),
            (String::new(), String::new()),
        ]
    );
}
