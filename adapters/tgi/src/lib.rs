//! Hugging Face Text Generation Inference (TGI) adapter.
//!
//! - health: `GET /health` (200 = ready);
//! - props: `GET /info` (`model_id`, `max_total_tokens`, `max_concurrent_requests`,
//!   `version`);
//! - submit: `POST /generate_stream` with `parameters.details`; SSE `data:` events carry
//!   `token.text` (special tokens are not text), the last one `generated_text` and
//!   `details.generated_tokens`; an `error` field is the engine's error;
//! - chat (ABI 0.1.3, feature `chat`): the Messages API, `POST /v1/chat/completions` with
//!   `stream: true` (model `tgi`): TGI applies the model's chat template and its tool
//!   grammar; chunks are decoded by `orchd_adapter_http::chat` (which also reads TGI 2's
//!   single-object `tool_calls`);
//! - cancel: the request is dropped, which closes the connection (TGI stops generating).
//!
//! Replica config (JSON): `url` (required), `slots` (default: the server's
//! `max_concurrent_requests`), `params` (merged into `parameters`), `http`.

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    http: HttpSettings,
}

pub struct TgiAdapter;

impl Adapter for TgiAdapter {
    const NAME: &'static str = "tgi";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Client = TgiClient;

    fn engines() -> Vec<String> {
        vec!["tgi".to_owned()]
    }

    fn more_features() -> Vec<&'static str> {
        vec![FEATURE_CHAT]
    }

    fn features() -> Features {
        Features {
            streaming: true,
            cancel: true,
            ..Features::default()
        }
    }

    fn new_client(config: &str) -> Result<TgiClient, AdapterError> {
        let config: Config = parse_config("tgi", config)?;
        Ok(TgiClient {
            upstream: Upstream::new(&config.url, config.http, None)?,
            version: orchd_adapter_http::VersionCache::default(),
            slots: config.slots,
            params: config.params,
        })
    }
}

orchd_adapter_abi::export_adapter!(TgiAdapter);

#[derive(Clone)]
pub struct TgiClient {
    upstream: Upstream,
    version: orchd_adapter_http::VersionCache,
    slots: Option<u32>,
    params: Map<String, Value>,
}

fn version_of(info: &Value) -> String {
    format!("tgi-{}", info["version"].as_str().unwrap_or("unknown"))
}

impl TgiClient {
    fn info(&self) -> Result<Value, AdapterError> {
        match self.upstream.get_json("/info")? {
            (200, v) if v.is_object() => Ok(v),
            (status, v) => Err(upstream_status(status, &v.to_string(), Phase::Control)),
        }
    }
}

impl EngineClient for TgiClient {
    type Job = StreamJob;

    fn health(&self) -> Result<Health, AdapterError> {
        match self.upstream.get_json("/health") {
            Ok((200, _)) => Ok(Health {
                live: true,
                ready: true,
                message: "ok".into(),
            }),
            Ok((status, _)) => Ok(Health {
                live: true,
                ready: false,
                message: format!("/health answered {status}").into(),
            }),
            Err(e) => unreachable(e),
        }
    }

    fn props(&self) -> Result<Props, AdapterError> {
        let info = self.info()?;
        let slots = self
            .slots
            .or_else(|| info["max_concurrent_requests"].as_u64().map(|n| n as u32))
            .unwrap_or(1);
        Ok(Props {
            slots_total: slots,
            slots_free: slots,
            ctx_max: info["max_total_tokens"].as_u64().unwrap_or(0) as u32,
            engine_version: version_of(&info).into(),
            model: info["model_id"].as_str().unwrap_or("").into(),
        })
    }

    fn engine_version(&self) -> Result<String, AdapterError> {
        Ok(version_of(&self.info()?))
    }

    fn submit_chat(&self, req: ChatRequest, sink: ChatSink) -> Result<StreamJob, AdapterError> {
        // TGI serves one model; its Messages API names it `tgi`.
        let mut body = orchd_adapter_http::chat::request_body(&req, "tgi")?;
        merge_params(&mut body, &self.params, req.params_json.as_str())?;
        let version = self.version.get(
            || {
                let this = self.clone();
                move || this.engine_version()
            },
            "tgi-unknown",
        );
        Ok(orchd_adapter_http::chat::stream(
            &self.upstream,
            body,
            version,
            sink,
        ))
    }

    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<StreamJob, AdapterError> {
        let mut parameters = json!({
            "max_new_tokens": req.max_tokens,
            "seed": req.seed,
            "details": true,
        });
        merge_params(&mut parameters, &self.params, req.params_json.as_str())?;
        let body = json!({"inputs": req.prompt.as_str(), "parameters": parameters});
        let version = self.version.get(
            || {
                let this = self.clone();
                move || this.engine_version()
            },
            "tgi-unknown",
        );
        Ok(self.upstream.stream(
            "/generate_stream",
            body,
            version,
            StreamDecoder::default(),
            sink,
        ))
    }
}

/// `/generate_stream` events → tokens and the end.
#[derive(Default)]
pub struct StreamDecoder {
    tokens_out: u32,
}

impl Decoder for StreamDecoder {
    type Out = Event;

    fn on_data(&mut self, ev: &SseEvent, phase: Phase) -> Result<Vec<Event>, AdapterError> {
        if ev.data.is_empty() {
            return Ok(Vec::new());
        }
        let frame: Value = serde_json::from_str(&ev.data).map_err(|e| {
            AdapterError::new(
                ErrorKind::Protocol,
                phase,
                format!("invalid JSON in a /generate_stream event: {e}"),
            )
        })?;
        if let Some(err) = frame.get("error") {
            let kind = match frame["error_type"].as_str() {
                Some("validation") => ErrorKind::InvalidRequest,
                _ => ErrorKind::Upstream,
            };
            return Err(AdapterError::new(
                kind,
                phase,
                format!("tgi: {}", err.as_str().unwrap_or("unknown error")),
            ));
        }
        let mut out = Vec::new();
        let token = &frame["token"];
        if !token["special"].as_bool().unwrap_or(false) {
            match &token["text"] {
                Value::String(t) if !t.is_empty() => {
                    self.tokens_out += 1;
                    out.push(Event::Token {
                        text: t.as_str().into(),
                    });
                }
                Value::String(_) | Value::Null => {}
                _ => {
                    return Err(AdapterError::new(
                        ErrorKind::Protocol,
                        phase,
                        "token.text is not a string",
                    ));
                }
            }
        }
        if !frame["generated_text"].is_null() {
            let details = &frame["details"];
            out.push(Event::End {
                tokens_in: details["prefill"].as_array().map_or(0, |p| p.len() as u32),
                tokens_out: details["generated_tokens"]
                    .as_u64()
                    .map_or(self.tokens_out, |n| n as u32),
            });
        }
        Ok(out)
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
    fn tokens_special_tokens_and_the_final_event() {
        let mut d = StreamDecoder::default();
        let out = d
            .on_data(
                &ev(r#"{"token":{"id":1,"text":"Hi","special":false},"generated_text":null,"details":null}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap();
        assert_eq!(out.len(), 1);
        let out = d
            .on_data(
                &ev(r#"{"token":{"id":2,"text":"</s>","special":true},"generated_text":"Hi","details":{"finish_reason":"eos_token","generated_tokens":2}}"#),
                Phase::MidStream,
            )
            .unwrap();
        assert!(matches!(&out[..], [Event::End { tokens_out: 2, .. }]));
    }

    #[test]
    fn errors_are_classified() {
        let mut d = StreamDecoder::default();
        let e = d
            .on_data(
                &ev(r#"{"error":"Input validation error","error_type":"validation"}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let e = d
            .on_data(
                &ev(r#"{"error":"CUDA OOM","error_type":"generation"}"#),
                Phase::MidStream,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Upstream);
        assert_eq!(
            d.on_data(&ev("{nope"), Phase::MidStream).unwrap_err().kind,
            ErrorKind::Protocol
        );
        assert_eq!(
            d.on_eof(Phase::MidStream).unwrap_err().kind,
            ErrorKind::Transport
        );
    }
}
