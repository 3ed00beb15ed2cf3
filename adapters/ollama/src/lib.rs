//! Ollama adapter, on Ollama's native API (newline-delimited JSON).
//!
//! - health: `GET /api/version` answers (live), and the configured model is among
//!   `GET /api/tags` (ready; Ollama loads it on first use);
//! - props: `GET /api/version` (`version`); slots and context come from the config;
//! - submit: `POST /api/generate` with `stream: true`, `raw` off (the model's template
//!   applies) and `options` (`num_predict`, `seed`, then the request's and the config's
//!   `params`); each line's `response` is a token; the line with `done: true` ends the task
//!   with `prompt_eval_count` and `eval_count`; an `error` line (or field) is the engine's
//!   error;
//! - chat (feature `chat`): `POST /api/chat` with the conversation, tools, `format` (JSON
//!   mode or a JSON schema) and `options`; lines carry `message.content` and whole
//!   `message.tool_calls` (Ollama parses tool calls itself: each becomes one fragment
//!   with an id, its name and its arguments as JSON text);
//! - embeddings: `POST /api/embed` with every input at once;
//! - cancel: the request is dropped, which closes the connection (Ollama stops).
//!
//! Replica config (JSON): `url` (e.g. `http://127.0.0.1:11434`) and `model` (required),
//! `slots` (default 1: Ollama's `OLLAMA_NUM_PARALLEL`), `ctx_max` (default 4096), `params`
//! (merged into `options`), `keep_alive` (passed through), `http`.

use abi_stable::std_types::{RNone, RSome};
use orchd_adapter_abi::plugin::{Adapter, ChatSink, EngineClient, Sink};
use orchd_adapter_abi::{
    AdapterError, ChatDelta, ChatEnd, ChatEvent, ChatRequest, EngineUsage, ErrorKind, Event,
    FEATURE_CHAT, Features, Health, Phase, Props, ResponseFormatKind, SubmitRequest, ToolCallDelta,
};
use orchd_adapter_http::{
    Decoder, HttpSettings, SseEvent, StreamJob, Upstream, VersionCache, merge_params, parse_config,
    unreachable, upstream_status,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    model: String,
    #[serde(default = "one")]
    slots: u32,
    #[serde(default = "ctx")]
    ctx_max: u32,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    http: HttpSettings,
}

fn one() -> u32 {
    1
}

fn ctx() -> u32 {
    4096
}

pub struct OllamaAdapter;

impl Adapter for OllamaAdapter {
    const NAME: &'static str = "ollama";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Client = OllamaClient;

    fn engines() -> Vec<String> {
        vec!["ollama".to_owned()]
    }

    fn more_features() -> Vec<&'static str> {
        vec![FEATURE_CHAT]
    }

    fn features() -> Features {
        Features {
            streaming: true,
            cancel: true,
            embeddings: true,
            ..Features::default()
        }
    }

    fn new_client(config: &str) -> Result<OllamaClient, AdapterError> {
        let config: Config = parse_config("ollama", config)?;
        if config.model.trim().is_empty() {
            return Err(AdapterError::new(
                ErrorKind::Config,
                Phase::Control,
                "invalid ollama adapter config: `model` must name a model (e.g. \"llama3.2:1b\")",
            ));
        }
        Ok(OllamaClient {
            upstream: Upstream::new(&config.url, config.http, None)?,
            model: config.model,
            slots: config.slots.max(1),
            ctx_max: config.ctx_max,
            params: config.params,
            keep_alive: config.keep_alive,
            version: VersionCache::default(),
        })
    }
}

orchd_adapter_abi::export_adapter!(OllamaAdapter);

#[derive(Clone)]
pub struct OllamaClient {
    upstream: Upstream,
    model: String,
    slots: u32,
    ctx_max: u32,
    params: Map<String, Value>,
    keep_alive: Option<Value>,
    version: VersionCache,
}

fn protocol(phase: Phase, message: impl Into<String>) -> AdapterError {
    AdapterError::new(ErrorKind::Protocol, phase, message)
}

impl OllamaClient {
    fn fetch_version(&self) -> Result<String, AdapterError> {
        match self.upstream.get_json("/api/version")? {
            (200, v) => Ok(format!(
                "ollama-{}",
                v["version"].as_str().unwrap_or("unknown")
            )),
            (status, v) => Err(upstream_status(status, &v.to_string(), Phase::Control)),
        }
    }

    fn cached_version(&self) -> String {
        self.version.get(
            || {
                let this = self.clone();
                move || this.fetch_version()
            },
            "ollama-unknown",
        )
    }

    /// `options` for a request: the engine-side limits first, then the config's `params`
    /// and the request's own (which win).
    fn body(
        &self,
        mut body: Value,
        max_tokens: u32,
        seed: Option<u64>,
        params_json: &str,
    ) -> Result<Value, AdapterError> {
        let mut options = json!({"num_predict": max_tokens});
        if let Some(seed) = seed {
            options["seed"] = json!(seed);
        }
        merge_params(&mut options, &self.params, params_json)?;
        body["options"] = options;
        body["stream"] = json!(true);
        if let Some(keep_alive) = &self.keep_alive {
            body["keep_alive"] = keep_alive.clone();
        }
        Ok(body)
    }
}

impl EngineClient for OllamaClient {
    type Job = StreamJob;

    fn health(&self) -> Result<Health, AdapterError> {
        if let Err(e) = self.fetch_version() {
            return unreachable(e);
        }
        let (status, tags) = self.upstream.get_json("/api/tags")?;
        if status != 200 {
            return Ok(Health {
                live: true,
                ready: false,
                message: format!("/api/tags answered {status}").into(),
            });
        }
        let wanted = self.model.as_str();
        let present = tags["models"].as_array().is_some_and(|models| {
            models.iter().any(|m| {
                let name = m["name"].as_str().or(m["model"].as_str()).unwrap_or("");
                // `llama3.2` names `llama3.2:latest`.
                name == wanted || (!wanted.contains(':') && name == format!("{wanted}:latest"))
            })
        });
        Ok(Health {
            live: true,
            ready: present,
            message: if present {
                "ok".to_owned()
            } else {
                format!("model {wanted:?} is not pulled on this server (ollama pull {wanted})")
            }
            .into(),
        })
    }

    fn props(&self) -> Result<Props, AdapterError> {
        Ok(Props {
            slots_total: self.slots,
            slots_free: self.slots,
            ctx_max: self.ctx_max,
            engine_version: self.fetch_version()?.into(),
            model: self.model.as_str().into(),
        })
    }

    fn engine_version(&self) -> Result<String, AdapterError> {
        self.fetch_version()
    }

    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<StreamJob, AdapterError> {
        let body = self.body(
            json!({"model": self.model, "prompt": req.prompt.as_str()}),
            req.max_tokens,
            Some(req.seed),
            req.params_json.as_str(),
        )?;
        Ok(self.upstream.stream(
            "/api/generate",
            body,
            self.cached_version(),
            GenerateDecoder::default(),
            sink,
        ))
    }

    fn submit_chat(&self, req: ChatRequest, sink: ChatSink) -> Result<StreamJob, AdapterError> {
        let body = self.body(
            chat_body(&req, &self.model)?,
            req.max_tokens,
            match req.seed {
                RSome(s) => Some(s),
                RNone => None,
            },
            req.params_json.as_str(),
        )?;
        Ok(self.upstream.stream(
            "/api/chat",
            body,
            self.cached_version(),
            ChatLines::default(),
            sink,
        ))
    }

    fn embed(&self, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, AdapterError> {
        let n = inputs.len();
        let answer = self
            .upstream
            .post_json("/api/embed", json!({"model": self.model, "input": inputs}))?;
        let vectors: Vec<Vec<f32>> = answer["embeddings"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .map(|v| {
                        v.as_array()?
                            .iter()
                            .map(|x| x.as_f64().map(|x| x as f32))
                            .collect::<Option<Vec<f32>>>()
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                protocol(
                    Phase::BeforeFirstToken,
                    "an /api/embed answer without embeddings",
                )
            })?;
        if vectors.len() != n {
            return Err(protocol(
                Phase::BeforeFirstToken,
                format!("{} vectors for {n} inputs", vectors.len()),
            ));
        }
        Ok(vectors)
    }
}

/// The conversation in Ollama's `/api/chat` shape, from the OpenAI shape the HTTP helper
/// builds: content is text (parts joined), tool-call arguments are JSON objects, JSON mode
/// and schemas go to `format`.
fn chat_body(req: &ChatRequest, model: &str) -> Result<Value, AdapterError> {
    let openai = orchd_adapter_http::chat::request_body(req, model)?;
    let mut messages = Vec::new();
    for m in openai["messages"].as_array().into_iter().flatten() {
        let mut msg = Map::new();
        msg.insert("role".into(), m["role"].clone());
        let content = match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        msg.insert("content".into(), json!(content));
        if let Some(calls) = m["tool_calls"].as_array() {
            let mut converted = Vec::with_capacity(calls.len());
            for c in calls {
                let text = c["function"]["arguments"].as_str().unwrap_or("{}");
                let arguments: Value = serde_json::from_str(text).map_err(|e| {
                    AdapterError::new(
                        ErrorKind::InvalidRequest,
                        Phase::BeforeFirstToken,
                        format!("tool call arguments are not JSON: {e}"),
                    )
                })?;
                converted.push(
                    json!({"function": {"name": c["function"]["name"], "arguments": arguments}}),
                );
            }
            msg.insert("tool_calls".into(), json!(converted));
        }
        if let Some(name) = m["name"].as_str() {
            msg.insert("tool_name".into(), json!(name));
        }
        messages.push(Value::Object(msg));
    }
    let mut body = json!({"model": model, "messages": messages});
    if let Some(tools) = openai.get("tools") {
        body["tools"] = tools.clone();
    }
    match req.response_format.kind {
        ResponseFormatKind::Text => {}
        ResponseFormatKind::JsonObject => body["format"] = json!("json"),
        ResponseFormatKind::JsonSchema => {
            body["format"] = openai["response_format"]["json_schema"]["schema"].clone();
        }
    }
    Ok(body)
}

/// One NDJSON line as JSON; an `error` field is the engine's error.
fn line(ev: &SseEvent, phase: Phase) -> Result<Option<Value>, AdapterError> {
    if ev.data.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(&ev.data)
        .map_err(|e| protocol(phase, format!("invalid JSON line from ollama: {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(AdapterError::new(
            ErrorKind::Upstream,
            phase,
            format!("ollama: {}", err.as_str().unwrap_or("unknown error")),
        ));
    }
    Ok(Some(v))
}

fn count(v: &Value, field: &str) -> u32 {
    v[field]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// `/api/generate` lines → tokens; the `done` line ends the task.
#[derive(Default)]
pub struct GenerateDecoder {
    tokens_out: u32,
}

impl Decoder for GenerateDecoder {
    type Out = Event;

    fn on_data(&mut self, ev: &SseEvent, phase: Phase) -> Result<Vec<Event>, AdapterError> {
        let Some(v) = line(ev, phase)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        match &v["response"] {
            Value::String(t) if !t.is_empty() => {
                self.tokens_out += 1;
                out.push(Event::Token {
                    text: t.as_str().into(),
                });
            }
            Value::String(_) | Value::Null => {}
            _ => return Err(protocol(phase, "a line whose response is not text")),
        }
        if v["done"] == true {
            out.push(Event::End {
                tokens_in: count(&v, "prompt_eval_count"),
                tokens_out: match count(&v, "eval_count") {
                    0 => self.tokens_out,
                    n => n,
                },
            });
        }
        Ok(out)
    }
}

/// `/api/chat` lines → content deltas and whole tool calls; the `done` line ends it.
#[derive(Default)]
pub struct ChatLines {
    tool_calls: u32,
}

impl Decoder for ChatLines {
    type Out = ChatEvent;

    fn on_data(&mut self, ev: &SseEvent, phase: Phase) -> Result<Vec<ChatEvent>, AdapterError> {
        let Some(v) = line(ev, phase)? else {
            return Ok(Vec::new());
        };
        let message = &v["message"];
        let content = message["content"].as_str().unwrap_or("");
        let mut tool_calls = Vec::new();
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let function = &call["function"];
            let name = function["name"]
                .as_str()
                .ok_or_else(|| protocol(phase, "a tool call without a function name"))?;
            let arguments = match &function["arguments"] {
                Value::String(s) => s.clone(),
                Value::Null => "{}".to_owned(),
                other => other.to_string(),
            };
            let index = self.tool_calls;
            self.tool_calls += 1;
            tool_calls.push(ToolCallDelta {
                index,
                id: RSome(format!("call_{index}").into()),
                name: RSome(name.into()),
                arguments: arguments.into(),
            });
        }
        let mut out = Vec::new();
        if !content.is_empty() || !tool_calls.is_empty() {
            out.push(ChatEvent::Delta(ChatDelta {
                content: content.into(),
                tool_calls: tool_calls.into(),
                logprobs: Default::default(),
            }));
        }
        if v["done"] == true {
            let reason = match v["done_reason"].as_str() {
                Some("stop") if self.tool_calls > 0 => "tool_calls",
                Some(r) => r,
                None => "",
            };
            out.push(ChatEvent::End(ChatEnd {
                finish_reason: reason.into(),
                usage: RSome(EngineUsage {
                    prompt_tokens: count(&v, "prompt_eval_count"),
                    completion_tokens: count(&v, "eval_count"),
                    cached_tokens: RNone,
                }),
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            id: None,
            event: None,
            data: data.to_owned(),
            error: None,
        }
    }

    #[test]
    fn generate_lines_are_tokens_then_the_counts() {
        let mut d = GenerateDecoder::default();
        let p = Phase::BeforeFirstToken;
        assert!(matches!(
            d.on_data(&ev(r#"{"response":"Hel","done":false}"#), p)
                .unwrap()[..],
            [Event::Token { .. }]
        ));
        let end = d
            .on_data(
                &ev(r#"{"response":"","done":true,"done_reason":"stop","prompt_eval_count":7,"eval_count":1}"#),
                Phase::MidStream,
            )
            .unwrap();
        assert!(matches!(
            end[..],
            [Event::End {
                tokens_in: 7,
                tokens_out: 1
            }]
        ));
        let err = d
            .on_data(&ev(r#"{"error":"model 'x' not found"}"#), p)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Upstream);
        assert!(d.on_data(&ev("{not json"), p).is_err());
    }

    #[test]
    fn chat_lines_carry_content_and_whole_tool_calls() {
        let mut d = ChatLines::default();
        let p = Phase::MidStream;
        let out = d
            .on_data(
                &ev(r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},"done":false}"#),
                p,
            )
            .unwrap();
        let [ChatEvent::Delta(delta)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(delta.tool_calls[0].name, RSome("get_weather".into()));
        assert_eq!(
            delta.tool_calls[0].arguments.as_str(),
            r#"{"city":"Paris"}"#
        );
        let end = d
            .on_data(
                &ev(r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":20,"eval_count":9}"#),
                p,
            )
            .unwrap();
        let [ChatEvent::End(end)] = &end[..] else {
            panic!("{end:?}")
        };
        assert_eq!(end.finish_reason.as_str(), "tool_calls");
    }
}
