//! An engine simulator for benchmarks and protocol tests. It speaks llama.cpp's server
//! (`/health`, `/props`, `/slots`, `/completion` streaming) and OpenAI's
//! (`/v1/models`, `/v1/completions`, `/v1/chat/completions` streaming), with a configurable
//! first-token delay, inter-token delay and number of slots. A stream is one timer-driven
//! task and a few bytes per token, so one core serves many thousands of streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Json, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// How the simulated engine behaves.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub first_token: Duration,
    pub inter_token: Duration,
    /// Tokens when the request names none.
    pub default_tokens: u32,
    /// Streams generating at once; more wait for a slot.
    pub slots: u32,
    pub ctx: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            first_token: Duration::from_millis(20),
            inter_token: Duration::from_millis(5),
            default_tokens: 16,
            slots: 64,
            ctx: 4096,
        }
    }
}

struct Sim {
    config: SimConfig,
    slots: Arc<Semaphore>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Llama,
    Completions,
    Chat,
}

/// The simulator's router.
pub fn app(config: SimConfig) -> Router {
    let sim = Arc::new(Sim {
        config,
        slots: Arc::new(Semaphore::new(config.slots as usize)),
    });
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/v1/models", get(|| async {
            Json(json!({"object": "list", "data": [{"id": "sim", "object": "model", "owned_by": "engine-sim"}]}))
        }))
        .route("/completion", post(|s, b| generate(s, b, Dialect::Llama)))
        .route("/v1/completions", post(|s, b| generate(s, b, Dialect::Completions)))
        .route("/v1/chat/completions", post(|s, b| generate(s, b, Dialect::Chat)))
        .with_state(sim)
}

async fn props(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({
        "default_generation_settings": {"n_ctx": sim.config.ctx},
        "total_slots": sim.config.slots,
        "model_path": "/sim/sim.gguf",
        "build_info": "engine-sim-0.1.0",
    }))
}

async fn slots(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let busy = sim.config.slots as usize - sim.slots.available_permits();
    Json(Value::Array(
        (0..sim.config.slots as usize)
            .map(|i| json!({"id": i, "is_processing": i < busy}))
            .collect(),
    ))
}

fn frame(dialect: Dialect, i: u32, n: u32, text: &str) -> Bytes {
    let last = i + 1 == n;
    let v = match dialect {
        Dialect::Llama => json!({"content": text, "stop": false, "tokens_predicted": i + 1}),
        Dialect::Completions => {
            json!({"object": "text_completion", "choices": [{"index": 0, "text": text,
            "finish_reason": if last { Value::from("length") } else { Value::Null }}]})
        }
        Dialect::Chat => json!({"object": "chat.completion.chunk", "choices": [{"index": 0,
            "delta": {"content": text}, "finish_reason": if last { Value::from("length") } else { Value::Null }}]}),
    };
    Bytes::from(format!("data: {v}\n\n"))
}

fn closing(dialect: Dialect, n: u32, prompt_tokens: u32) -> Bytes {
    match dialect {
        Dialect::Llama => Bytes::from(format!(
            "data: {}\n\n",
            json!({"content": "", "stop": true, "tokens_predicted": n, "tokens_evaluated": prompt_tokens})
        )),
        _ => Bytes::from(format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                   "total_tokens": prompt_tokens + n}})
        )),
    }
}

async fn generate(
    State(sim): State<Arc<Sim>>,
    Json(req): Json<Value>,
    dialect: Dialect,
) -> Response {
    let n = req["n_predict"]
        .as_u64()
        .or_else(|| req["max_tokens"].as_u64())
        .map_or(sim.config.default_tokens, |n| n.clamp(1, 1 << 20) as u32);
    let prompt_len = req["prompt"]
        .as_str()
        .map(str::len)
        .or_else(|| req["messages"].as_array().map(|m| m.len() * 8))
        .unwrap_or(0);
    let prompt_tokens = (prompt_len as u32).div_ceil(4).max(1);
    let Ok(permit) = Arc::clone(&sim.slots).acquire_owned().await else {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    };
    let config = sim.config;
    // One timer per stream; the slot is held until the body is done or dropped.
    let stream =
        futures_util::stream::unfold((0u32, Some(permit)), move |(i, permit)| async move {
            if i > n {
                return None;
            }
            if i == n {
                let bytes = closing(dialect, n, prompt_tokens);
                drop(permit);
                return Some((Ok::<_, Infallible>(bytes), (i + 1, None)));
            }
            let delay = if i == 0 {
                config.first_token
            } else {
                config.inter_token
            };
            // A zero-delay engine makes no timer (a timer rounds up to the next tick).
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let text = format!("t{i} ");
            Some((Ok(frame(dialect, i, n, &text)), (i + 1, permit)))
        });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
