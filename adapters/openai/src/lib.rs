//! OpenAI-compatible engine adapter (engines `openai` and `vllm`): vLLM, llama-server's
//! `/v1`, TGI and Triton OpenAI frontends, hosted APIs.
//!
//! - health: `GET /v1/models` (200 and the configured model listed = ready);
//! - submit: `POST /v1/completions` or `/v1/chat/completions` (`mode`), `stream: true` with
//!   `stream_options.include_usage`; `data: {…}` chunks, `data: [DONE]` last;
//! - chat (ABI 0.1.3, feature `chat`): `POST /v1/chat/completions` with the conversation as
//!   data (messages, tools, tool choice, response format, logprobs, penalties), whatever
//!   `mode` says: the server's template and tool-call parser apply;
//! - cancel: the request is dropped, which closes the connection.
//!
//! Replica config (JSON): `url` (required), `model` (required: the upstream model id),
//! `mode` (`completions` | `chat`, default `completions`), `api_key` (sent as a bearer
//! token, never logged), `slots` and `ctx_max` (what the server does not report), `params`
//! (merged into every request), `http` (the shared timeouts and bounds).

use orchd_adapter_abi::plugin::{Adapter, ChatSink, EngineClient, Sink};
use orchd_adapter_abi::{
    AdapterError, ChatRequest, ErrorKind, Event, FEATURE_CHAT, Features, Health, Phase, Props,
    SubmitRequest,
};
use orchd_adapter_http::{
    Decoder, HttpSettings, SseEvent, StreamJob, Upstream, merge_params, parse_config, unreachable,
    upstream_status,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Completions,
    Chat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    model: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default = "default_slots")]
    slots: u32,
    #[serde(default = "default_ctx")]
    ctx_max: u32,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    http: HttpSettings,
}

fn default_slots() -> u32 {
    4
}

fn default_ctx() -> u32 {
    4096
}

pub struct OpenAiAdapter;

impl Adapter for OpenAiAdapter {
    const NAME: &'static str = "openai";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Client = OpenAiClient;

    fn engines() -> Vec<String> {
        vec!["openai".to_owned(), "vllm".to_owned()]
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

    fn new_client(config: &str) -> Result<OpenAiClient, AdapterError> {
        let config: Config = parse_config("openai", config)?;
        Ok(OpenAiClient {
            upstream: Upstream::new(&config.url, config.http.clone(), config.api_key.clone())?,
            version: orchd_adapter_http::VersionCache::default(),
            model: config.model,
            mode: config.mode,
            slots: config.slots,
            ctx_max: config.ctx_max,
            params: config.params,
        })
    }
}

orchd_adapter_abi::export_adapter!(OpenAiAdapter);

#[derive(Clone)]
pub struct OpenAiClient {
    upstream: Upstream,
    version: orchd_adapter_http::VersionCache,
    model: String,
    mode: Mode,
    slots: u32,
    ctx_max: u32,
    params: Map<String, Value>,
}

impl OpenAiClient {
    /// The server's name for itself: `owned_by` of the model (e.g. `vllm`, `llamacpp`).
    fn version(&self, models: &Value) -> String {
        let owner = models["data"]
            .as_array()
            .and_then(|list| list.iter().find(|m| m["id"] == self.model.as_str()))
            .and_then(|m| m["owned_by"].as_str())
            .unwrap_or("unknown");
        format!("openai-compatible-{owner}")
    }

    fn models(&self) -> Result<Value, AdapterError> {
        match self.upstream.get_json("/v1/models")? {
            (200, v) => Ok(v),
            (status, v) => Err(upstream_status(status, &v.to_string(), Phase::Control)),
        }
    }
}

impl EngineClient for OpenAiClient {
    type Job = StreamJob;

    fn health(&self) -> Result<Health, AdapterError> {
        match self.models() {
            Ok(models) => {
                let listed = models["data"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|m| m["id"] == self.model.as_str()));
                Ok(Health {
                    live: true,
                    ready: listed,
                    message: if listed {
                        "ok".to_owned()
                    } else {
                        format!("model {:?} is not served", self.model)
                    }
                    .into(),
                })
            }
            Err(e) if e.kind == ErrorKind::Upstream => Ok(Health {
                live: true,
                ready: false,
                message: e.message,
            }),
            Err(e) => unreachable(e),
        }
    }

    fn props(&self) -> Result<Props, AdapterError> {
        let models = self.models()?;
        Ok(Props {
            slots_total: self.slots,
            slots_free: self.slots,
            ctx_max: self.ctx_max,
            engine_version: self.version(&models).into(),
            model: self.model.as_str().into(),
        })
    }

    fn engine_version(&self) -> Result<String, AdapterError> {
        Ok(self.version(&self.models()?))
    }

    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<StreamJob, AdapterError> {
        let (path, mut body) = match self.mode {
            Mode::Completions => (
                "/v1/completions",
                json!({"model": self.model, "prompt": req.prompt.as_str()}),
            ),
            Mode::Chat => (
                "/v1/chat/completions",
                json!({"model": self.model,
                       "messages": [{"role": "user", "content": req.prompt.as_str()}]}),
            ),
        };
        let obj = body.as_object_mut().expect("an object");
        obj.insert("max_tokens".into(), json!(req.max_tokens));
        obj.insert("seed".into(), json!(req.seed));
        obj.insert("stream".into(), json!(true));
        obj.insert("stream_options".into(), json!({"include_usage": true}));
        merge_params(&mut body, &self.params, req.params_json.as_str())?;
        let version = self.version.get(
            || {
                let this = self.clone();
                move || this.engine_version()
            },
            "openai-compatible-unknown",
        );
        Ok(self
            .upstream
            .stream(path, body, version, ChunkDecoder::new(self.mode), sink))
    }

    fn submit_chat(&self, req: ChatRequest, sink: ChatSink) -> Result<StreamJob, AdapterError> {
        let mut body = orchd_adapter_http::chat::request_body(&req, &self.model)?;
        merge_params(&mut body, &self.params, req.params_json.as_str())?;
        let version = self.version.get(
            || {
                let this = self.clone();
                move || this.engine_version()
            },
            "openai-compatible-unknown",
        );
        Ok(orchd_adapter_http::chat::stream(
            &self.upstream,
            body,
            version,
            sink,
        ))
    }

    fn embed(&self, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, AdapterError> {
        let n = inputs.len();
        let answer = self.upstream.post_json(
            "/v1/embeddings",
            json!({"model": self.model, "input": inputs, "encoding_format": "float"}),
        )?;
        let bad = |m: &str| AdapterError::new(ErrorKind::Protocol, Phase::BeforeFirstToken, m);
        let data = answer["data"]
            .as_array()
            .ok_or_else(|| bad("an embeddings answer without data"))?;
        if data.len() != n {
            return Err(bad("as many vectors as inputs were expected"));
        }
        let mut out = vec![Vec::new(); n];
        for (k, item) in data.iter().enumerate() {
            let at = item["index"].as_u64().map_or(k, |i| i as usize);
            let vector = item["embedding"]
                .as_array()
                .ok_or_else(|| bad("an embedding that is not a list"))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| bad("an embedding that is not numbers"))?;
            *out.get_mut(at)
                .ok_or_else(|| bad("an embedding index out of range"))? = vector;
        }
        Ok(out)
    }
}

/// Streaming chunks (`text_completion` or `chat.completion.chunk`) → tokens and the end.
pub struct ChunkDecoder {
    mode: Mode,
    tokens_out: u32,
    usage: Option<(u32, u32)>,
    finished: bool,
}

impl ChunkDecoder {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            tokens_out: 0,
            usage: None,
            finished: false,
        }
    }

    fn end(&self) -> Event {
        let (tokens_in, tokens_out) = self.usage.unwrap_or((0, self.tokens_out));
        Event::End {
            tokens_in,
            tokens_out,
        }
    }
}

fn protocol(phase: Phase, message: impl Into<String>) -> AdapterError {
    AdapterError::new(ErrorKind::Protocol, phase, message)
}

impl Decoder for ChunkDecoder {
    type Out = Event;

    fn on_data(&mut self, ev: &SseEvent, phase: Phase) -> Result<Vec<Event>, AdapterError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        if data == "[DONE]" {
            return Ok(vec![self.end()]);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| protocol(phase, format!("invalid JSON in a stream chunk: {e}")))?;
        if let Some(err) = chunk.get("error") {
            let status = err["code"].as_u64().filter(|c| *c < 600).unwrap_or(500) as u16;
            let mut e = AdapterError::new(
                ErrorKind::Upstream,
                phase,
                format!(
                    "engine error: {}",
                    err["message"].as_str().unwrap_or("unknown")
                ),
            );
            e.upstream_status = status;
            return Err(e);
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some((
                usage["prompt_tokens"].as_u64().unwrap_or(0) as u32,
                usage["completion_tokens"].as_u64().unwrap_or(0) as u32,
            ));
        }
        let mut out = Vec::new();
        if let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) {
            let text = match self.mode {
                Mode::Completions => &choice["text"],
                Mode::Chat => &choice["delta"]["content"],
            };
            match text {
                Value::String(t) if !t.is_empty() => {
                    self.tokens_out += 1;
                    out.push(Event::Token {
                        text: t.as_str().into(),
                    });
                }
                Value::String(_) | Value::Null => {}
                _ => return Err(protocol(phase, "chunk text is not a string")),
            }
            if !choice["finish_reason"].is_null() {
                self.finished = true;
            }
        }
        Ok(out)
    }

    fn on_eof(&mut self, phase: Phase) -> Result<Vec<Event>, AdapterError> {
        if self.finished {
            // Some servers close without `[DONE]` after the finish reason.
            Ok(vec![self.end()])
        } else {
            Err(AdapterError::new(
                ErrorKind::Transport,
                phase,
                "the engine closed the stream before its final chunk",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            data: data.to_owned(),
            ..SseEvent::default()
        }
    }

    #[test]
    fn completion_and_chat_chunks_stream_tokens_and_usage() {
        let mut d = ChunkDecoder::new(Mode::Completions);
        let out = d
            .on_data(
                &ev(r#"{"choices":[{"text":"Hi","finish_reason":null}]}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap();
        assert!(matches!(&out[..], [Event::Token { text }] if text.as_str() == "Hi"));
        d.on_data(
            &ev(r#"{"choices":[{"text":"","finish_reason":"length"}]}"#),
            Phase::MidStream,
        )
        .unwrap();
        d.on_data(
            &ev(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#),
            Phase::MidStream,
        )
        .unwrap();
        let out = d.on_data(&ev("[DONE]"), Phase::MidStream).unwrap();
        assert!(matches!(
            &out[..],
            [Event::End {
                tokens_in: 3,
                tokens_out: 1
            }]
        ));

        let mut d = ChunkDecoder::new(Mode::Chat);
        let out = d
            .on_data(
                &ev(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap();
        assert!(out.is_empty());
        let out = d
            .on_data(
                &ev(r#"{"choices":[{"delta":{"content":"yo"},"finish_reason":"stop"}]}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(matches!(
            &d.on_eof(Phase::MidStream).unwrap()[..],
            [Event::End { tokens_out: 1, .. }]
        ));
    }

    #[test]
    fn errors_and_garbage_are_classified() {
        let mut d = ChunkDecoder::new(Mode::Completions);
        assert_eq!(
            d.on_data(&ev("{"), Phase::MidStream).unwrap_err().kind,
            ErrorKind::Protocol
        );
        let e = d
            .on_data(
                &ev(r#"{"error":{"code":429,"message":"busy"}}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap_err();
        assert_eq!((e.kind, e.upstream_status), (ErrorKind::Upstream, 429));
        assert_eq!(
            d.on_eof(Phase::MidStream).unwrap_err().kind,
            ErrorKind::Transport
        );
    }

    #[test]
    fn the_api_key_never_appears_in_errors_or_debug_output() {
        let err =
            OpenAiAdapter::new_client(r#"{"url":"http://x","api_key":"sk-secret-1","bogus":true}"#)
                .err()
                .unwrap();
        assert!(!err.message.contains("sk-secret-1"));
        let client =
            OpenAiAdapter::new_client(r#"{"url":"http://x","model":"m","api_key":"sk-secret-1"}"#)
                .ok()
                .unwrap();
        assert!(!format!("{:?}", client.upstream).contains("sk-secret-1"));
    }
}
