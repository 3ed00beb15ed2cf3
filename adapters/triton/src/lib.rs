//! Triton Inference Server adapter (the generate extension, as TensorRT-LLM serves it).
//!
//! - health: `GET /v2/health/ready` and `GET /v2/models/{model}/ready` (both 200 = ready);
//! - props: `GET /v2` (server `version`); slots and context come from the config;
//! - submit: `POST /v2/models/{model}/generate_stream` with `text_input`, `max_tokens`,
//!   `random_seed` and `stream: true`; SSE `data:` events carry `text_output`; the stream
//!   ends when the server closes it; an `error` field is the engine's error;
//! - cancel: the request is dropped, which closes the connection.
//!
//! Replica config (JSON): `url` and `model` (required), `slots` (default 1), `ctx_max`
//! (default 4096), `params` (merged into every request), `http`.

use orchd_adapter_abi::plugin::{Adapter, EngineClient, Sink};
use orchd_adapter_abi::{
    AdapterError, ErrorKind, Event, Features, Health, Phase, Props, SubmitRequest,
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
    model: String,
    #[serde(default = "one")]
    slots: u32,
    #[serde(default = "ctx")]
    ctx_max: u32,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    http: HttpSettings,
}

fn one() -> u32 {
    1
}

fn ctx() -> u32 {
    4096
}

pub struct TritonAdapter;

impl Adapter for TritonAdapter {
    const NAME: &'static str = "triton";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Client = TritonClient;

    fn engines() -> Vec<String> {
        vec!["triton".to_owned()]
    }

    fn features() -> Features {
        Features {
            streaming: true,
            cancel: true,
            ..Features::default()
        }
    }

    fn new_client(config: &str) -> Result<TritonClient, AdapterError> {
        let config: Config = parse_config("triton", config)?;
        if config.model.is_empty() || config.model.contains('/') {
            return Err(AdapterError::new(
                ErrorKind::Config,
                Phase::Control,
                "invalid triton adapter config: `model` must be a model name",
            ));
        }
        Ok(TritonClient {
            upstream: Upstream::new(&config.url, config.http, None)?,
            model: config.model,
            slots: config.slots.max(1),
            ctx_max: config.ctx_max,
            params: config.params,
        })
    }
}

orchd_adapter_abi::export_adapter!(TritonAdapter);

pub struct TritonClient {
    upstream: Upstream,
    model: String,
    slots: u32,
    ctx_max: u32,
    params: Map<String, Value>,
}

impl TritonClient {
    fn version(&self) -> Result<String, AdapterError> {
        match self.upstream.get_json("/v2")? {
            (200, v) => Ok(format!(
                "triton-{}",
                v["version"].as_str().unwrap_or("unknown")
            )),
            (status, v) => Err(upstream_status(status, &v.to_string(), Phase::Control)),
        }
    }
}

impl EngineClient for TritonClient {
    type Job = StreamJob;

    fn health(&self) -> Result<Health, AdapterError> {
        let server = match self.upstream.get_json("/v2/health/ready") {
            Ok((status, _)) => status,
            Err(e) => return unreachable(e),
        };
        if server != 200 {
            return Ok(Health {
                live: true,
                ready: false,
                message: format!("server not ready ({server})").into(),
            });
        }
        let (model, _) = self
            .upstream
            .get_json(&format!("/v2/models/{}/ready", self.model))?;
        Ok(Health {
            live: true,
            ready: model == 200,
            message: if model == 200 {
                "ok".to_owned()
            } else {
                format!("model {:?} not ready ({model})", self.model)
            }
            .into(),
        })
    }

    fn props(&self) -> Result<Props, AdapterError> {
        Ok(Props {
            slots_total: self.slots,
            slots_free: self.slots,
            ctx_max: self.ctx_max,
            engine_version: self.version()?.into(),
            model: self.model.as_str().into(),
        })
    }

    fn engine_version(&self) -> Result<String, AdapterError> {
        self.version()
    }

    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<StreamJob, AdapterError> {
        let mut body = json!({
            "text_input": req.prompt.as_str(),
            "max_tokens": req.max_tokens,
            "random_seed": req.seed,
            "stream": true,
        });
        merge_params(&mut body, &self.params, req.params_json.as_str())?;
        let version = self
            .version()
            .unwrap_or_else(|_| "triton-unknown".to_owned());
        Ok(self.upstream.stream(
            &format!("/v2/models/{}/generate_stream", self.model),
            body,
            version,
            StreamDecoder::default(),
            sink,
        ))
    }
}

/// `generate_stream` events → tokens; the end is the end of the stream.
///
/// The generate extension has no in-band final marker: Triton ends the chunked body after
/// the response flagged final, and a connection cut before that is a transport error (the
/// body is incomplete). A body that ends cleanly before any response is not a final
/// response either: that is an error too, never an empty `End`.
#[derive(Default)]
pub struct StreamDecoder {
    tokens_out: u32,
    responses: u32,
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
                format!("invalid JSON in a generate_stream event: {e}"),
            )
        })?;
        if let Some(err) = frame.get("error") {
            return Err(AdapterError::new(
                ErrorKind::Upstream,
                phase,
                format!("triton: {}", err.as_str().unwrap_or("unknown error")),
            ));
        }
        self.responses += 1;
        match &frame["text_output"] {
            Value::String(t) if !t.is_empty() => {
                self.tokens_out += 1;
                Ok(vec![Event::Token {
                    text: t.as_str().into(),
                }])
            }
            Value::String(_) => Ok(Vec::new()),
            _ => Err(AdapterError::new(
                ErrorKind::Protocol,
                phase,
                "an event without a text_output string",
            )),
        }
    }

    fn on_eof(&mut self, phase: Phase) -> Result<Vec<Event>, AdapterError> {
        if self.responses == 0 {
            return Err(AdapterError::new(
                ErrorKind::Transport,
                phase,
                "triton closed the stream before any response",
            ));
        }
        Ok(vec![Event::End {
            tokens_in: 0,
            tokens_out: self.tokens_out,
        }])
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
    fn text_outputs_then_the_end_of_the_stream() {
        let mut d = StreamDecoder::default();
        let out = d
            .on_data(
                &ev(r#"{"model_name":"ensemble","text_output":"Hi"}"#),
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
    fn a_stream_closed_before_any_response_is_an_error_not_an_end() {
        let mut d = StreamDecoder::default();
        let err = d.on_eof(Phase::BeforeFirstToken).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transport);
        // An empty final response is a response: the stream ended well.
        d.on_data(&ev(r#"{"text_output":""}"#), Phase::BeforeFirstToken)
            .unwrap();
        assert!(matches!(
            &d.on_eof(Phase::BeforeFirstToken).unwrap()[..],
            [Event::End { tokens_out: 0, .. }]
        ));
    }

    #[test]
    fn errors_and_garbage_are_classified() {
        let mut d = StreamDecoder::default();
        assert_eq!(
            d.on_data(&ev(r#"{"error":"boom"}"#), Phase::MidStream)
                .unwrap_err()
                .kind,
            ErrorKind::Upstream
        );
        assert_eq!(
            d.on_data(&ev(r#"{"model_name":"x"}"#), Phase::MidStream)
                .unwrap_err()
                .kind,
            ErrorKind::Protocol
        );
        assert_eq!(
            d.on_data(&ev("]"), Phase::MidStream).unwrap_err().kind,
            ErrorKind::Protocol
        );
    }

    #[test]
    fn model_names_cannot_escape_the_path() {
        assert!(TritonAdapter::new_client(r#"{"url":"http://x","model":"../v2"}"#).is_err());
    }
}
