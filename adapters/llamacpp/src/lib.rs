//! llama.cpp `llama-server` adapter.
//!
//! - health: `GET /health` (200 ready; 503 while the model loads; unreachable = not live);
//! - props: `GET /props` (context size, slots, build) and `GET /slots` (slots busy now);
//! - submit: `POST /completion` with `stream: true`; SSE `data:` lines carry `content`,
//!   the last one `stop: true` with `tokens_predicted` and `tokens_evaluated`;
//! - chat (ABI 0.1.3, feature `chat`): `POST /v1/chat/completions` with `stream: true`, so
//!   llama-server applies the model's own chat template and, started with `--jinja`, its
//!   tool-call parser and grammar; chunks are decoded by `orchd_adapter_http::chat`;
//! - cancel: the request is dropped, which closes the connection; llama-server stops the
//!   slot's generation when its client goes away.
//!
//! Replica config (JSON): `url` (required), `params` (sampler fields merged into every
//! request, e.g. `{"temperature": 0}`), and `http` (the shared timeouts and bounds).

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
    params: Map<String, Value>,
    /// Timeouts and bounds (`connect_timeout_ms`, `first_byte_timeout_ms`, …).
    #[serde(default)]
    http: HttpSettings,
}

pub struct LlamaCppAdapter;

impl Adapter for LlamaCppAdapter {
    const NAME: &'static str = "llamacpp";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Client = LlamaCppClient;

    fn engines() -> Vec<String> {
        vec!["llamacpp".to_owned()]
    }

    fn more_features() -> Vec<&'static str> {
        vec![FEATURE_CHAT]
    }

    fn features() -> Features {
        Features {
            streaming: true,
            cancel: true,
            embeddings: true,
            tokenize: true,
            ..Features::default()
        }
    }

    fn new_client(config: &str) -> Result<LlamaCppClient, AdapterError> {
        let config: Config = parse_config("llamacpp", config)?;
        Ok(LlamaCppClient {
            upstream: Upstream::new(&config.url, config.http, None)?,
            version: orchd_adapter_http::VersionCache::default(),
            params: config.params,
        })
    }
}

orchd_adapter_abi::export_adapter!(LlamaCppAdapter);

#[derive(Clone)]
pub struct LlamaCppClient {
    upstream: Upstream,
    version: orchd_adapter_http::VersionCache,
    params: Map<String, Value>,
}

fn protocol(phase: Phase, message: impl Into<String>) -> AdapterError {
    AdapterError::new(ErrorKind::Protocol, phase, message)
}

/// The server's build as it reports it (`build_info`, e.g. `b6123-abcdef0`).
fn version_of(props: &Value) -> String {
    props["build_info"]
        .as_str()
        .map(|b| format!("llama.cpp-{b}"))
        .unwrap_or_else(|| "llama.cpp-unknown".to_owned())
}

impl LlamaCppClient {
    fn props_json(&self) -> Result<Value, AdapterError> {
        match self.upstream.get_json("/props")? {
            (200, v) if v.is_object() => Ok(v),
            (status, v) => Err(upstream_status(status, &v.to_string(), Phase::Control)),
        }
    }
}

/// `/embedding` answers per input either one pooled vector or one vector per token (when
/// the server runs without pooling); per-token vectors are mean-pooled here.
fn pooled(embedding: &Value) -> Result<Vec<f32>, AdapterError> {
    let bad = || {
        protocol(
            Phase::BeforeFirstToken,
            "an /embedding vector is not numbers",
        )
    };
    let floats = |v: &Value| -> Result<Vec<f32>, AdapterError> {
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(bad))
            .collect()
    };
    let list = embedding.as_array().ok_or_else(bad)?;
    if list.first().is_some_and(Value::is_array) {
        let rows = list.iter().map(floats).collect::<Result<Vec<_>, _>>()?;
        let dim = rows.first().map_or(0, Vec::len);
        if rows.iter().any(|r| r.len() != dim) {
            return Err(bad());
        }
        let n = rows.len().max(1) as f32;
        Ok((0..dim)
            .map(|d| rows.iter().map(|r| r[d]).sum::<f32>() / n)
            .collect())
    } else {
        floats(embedding)
    }
}

impl EngineClient for LlamaCppClient {
    type Job = StreamJob;

    fn health(&self) -> Result<Health, AdapterError> {
        match self.upstream.get_json("/health") {
            Ok((200, _)) => Ok(Health {
                live: true,
                ready: true,
                message: "ok".into(),
            }),
            Ok((status, body)) => Ok(Health {
                live: true,
                ready: false,
                message: format!(
                    "{status}: {}",
                    body["error"]["message"].as_str().unwrap_or("not ready")
                )
                .into(),
            }),
            Err(e) => unreachable(e),
        }
    }

    fn props(&self) -> Result<Props, AdapterError> {
        let props = self.props_json()?;
        let settings = &props["default_generation_settings"];
        let ctx = settings["n_ctx"]
            .as_u64()
            .or_else(|| props["n_ctx"].as_u64())
            .unwrap_or(0);
        let (_, slots) = self.upstream.get_json("/slots")?;
        let (total, busy) = match slots.as_array() {
            Some(list) => (
                list.len() as u64,
                list.iter()
                    .filter(|s| s["is_processing"].as_bool().unwrap_or(false))
                    .count() as u64,
            ),
            None => (props["total_slots"].as_u64().unwrap_or(1), 0),
        };
        let model = props["model_path"]
            .as_str()
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
            .unwrap_or_default();
        Ok(Props {
            slots_total: total as u32,
            slots_free: total.saturating_sub(busy) as u32,
            ctx_max: ctx as u32,
            engine_version: version_of(&props).into(),
            model: model.into(),
        })
    }

    fn engine_version(&self) -> Result<String, AdapterError> {
        Ok(version_of(&self.props_json()?))
    }

    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<StreamJob, AdapterError> {
        let mut body = json!({
            "prompt": req.prompt.as_str(),
            "n_predict": req.max_tokens,
            "seed": req.seed,
            "stream": true,
            "cache_prompt": true,
        });
        merge_params(&mut body, &self.params, req.params_json.as_str())?;
        // The version is asked for once per job only when the stream starts; a failure
        // there is not worth failing the task for.
        let version = self.version.get(
            || {
                let this = self.clone();
                move || this.engine_version()
            },
            "llama.cpp-unknown",
        );
        Ok(self.upstream.stream(
            "/completion",
            body,
            version,
            CompletionDecoder::default(),
            sink,
        ))
    }

    fn submit_chat(&self, req: ChatRequest, sink: ChatSink) -> Result<StreamJob, AdapterError> {
        let mut body = orchd_adapter_http::chat::request_body(&req, req.model.as_str())?;
        body["cache_prompt"] = json!(true);
        name_the_function(&mut body);
        merge_params(&mut body, &self.params, req.params_json.as_str())?;
        let version = self.version.get(
            || {
                let this = self.clone();
                move || this.engine_version()
            },
            "llama.cpp-unknown",
        );
        Ok(orchd_adapter_http::chat::stream(
            &self.upstream,
            body,
            version,
            sink,
        ))
    }

    fn embed(&self, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, AdapterError> {
        let answer = self
            .upstream
            .post_json("/embedding", json!({"content": inputs}))?;
        let items: Vec<&Value> = match &answer {
            Value::Array(list) => list.iter().collect(),
            obj @ Value::Object(_) => vec![obj],
            _ => {
                return Err(protocol(
                    Phase::BeforeFirstToken,
                    "unexpected /embedding answer",
                ));
            }
        };
        if items.len() != inputs.len() {
            return Err(protocol(
                Phase::BeforeFirstToken,
                format!("{} vectors for {} inputs", items.len(), inputs.len()),
            ));
        }
        let mut out = vec![Vec::new(); items.len()];
        for (n, item) in items.iter().enumerate() {
            let at = item["index"].as_u64().map_or(n, |i| i as usize);
            let slot = out.get_mut(at).ok_or_else(|| {
                protocol(Phase::BeforeFirstToken, "an /embedding index out of range")
            })?;
            *slot = pooled(&item["embedding"])?;
        }
        Ok(out)
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, AdapterError> {
        let answer = self
            .upstream
            .post_json("/tokenize", json!({"content": text}))?;
        answer["tokens"]
            .as_array()
            .and_then(|ids| {
                ids.iter()
                    .map(|t| t.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect::<Option<Vec<u32>>>()
            })
            .ok_or_else(|| protocol(Phase::Control, "a /tokenize answer without token ids"))
    }
}

/// llama-server (b11434) reads a `tool_choice` object as `auto`: a named function is sent
/// as `required` with `tools` narrowed to that one function, which constrains the answer
/// to a call of it, as OpenAI's named choice does.
fn name_the_function(body: &mut Value) {
    let Some(name) = body["tool_choice"]["function"]["name"]
        .as_str()
        .map(str::to_owned)
    else {
        return;
    };
    if let Some(tools) = body["tools"].as_array_mut() {
        tools.retain(|t| t["function"]["name"] == name.as_str());
    }
    body["tool_choice"] = json!("required");
}

/// `/completion` stream frames → tokens and the end.
#[derive(Default)]
pub struct CompletionDecoder {
    tokens_out: u32,
}

impl Decoder for CompletionDecoder {
    type Out = Event;

    fn on_data(&mut self, ev: &SseEvent, phase: Phase) -> Result<Vec<Event>, AdapterError> {
        if let Some(err) = &ev.error {
            return Err(engine_error(err, phase));
        }
        if ev.data.is_empty() {
            return Ok(Vec::new());
        }
        // Typed and borrowed: a token's text is read where it lies (no `Value` tree per
        // token); fields this adapter does not use are skipped.
        let frame: CompletionFrame<'_> = serde_json::from_str(&ev.data).map_err(|e| {
            let what = if serde_json::from_str::<serde::de::IgnoredAny>(&ev.data).is_ok() {
                "an unexpected /completion frame (`content` is not a string?)"
            } else {
                "invalid JSON in a /completion frame"
            };
            protocol(phase, format!("{what}: {e}"))
        })?;
        if frame.error.is_some() {
            return Err(engine_error(&ev.data, phase));
        }
        let mut out = Vec::new();
        if let Some(text) = frame.content
            && !text.is_empty()
        {
            self.tokens_out += 1;
            out.push(Event::Token {
                text: text.as_ref().into(),
            });
        }
        if frame.stop == Some(true) {
            out.push(Event::End {
                tokens_in: frame.tokens_evaluated.unwrap_or(0) as u32,
                tokens_out: frame.tokens_predicted.map_or(self.tokens_out, |n| n as u32),
            });
        }
        Ok(out)
    }
}

/// What this adapter reads of a `/completion` stream frame.
#[derive(serde::Deserialize)]
struct CompletionFrame<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    stop: Option<bool>,
    #[serde(default)]
    tokens_predicted: Option<u64>,
    #[serde(default)]
    tokens_evaluated: Option<u64>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// An error the server reported inside the stream (`error:` line or an `error` object).
fn engine_error(text: &str, phase: Phase) -> AdapterError {
    let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let err = if parsed["error"].is_object() {
        &parsed["error"]
    } else {
        &parsed
    };
    let status = err["code"].as_u64().unwrap_or(500) as u16;
    let message = err["message"].as_str().unwrap_or(text);
    let mut e = AdapterError::new(
        if (400..500).contains(&status) {
            ErrorKind::InvalidRequest
        } else {
            ErrorKind::Upstream
        },
        phase,
        format!("llama-server: {message}"),
    );
    e.upstream_status = status;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_function_is_required_of_the_one_tool() {
        let mut body = json!({"tools": [{"type": "function", "function": {"name": "a"}},
                                         {"type": "function", "function": {"name": "b"}}],
                              "tool_choice": {"type": "function", "function": {"name": "b"}}});
        name_the_function(&mut body);
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
        assert_eq!(body["tools"][0]["function"]["name"], "b");
        let mut auto = json!({"tool_choice": "auto"});
        name_the_function(&mut auto);
        assert_eq!(auto["tool_choice"], "auto");
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            data: data.to_owned(),
            ..SseEvent::default()
        }
    }

    #[test]
    fn frames_become_tokens_then_the_end() {
        let mut d = CompletionDecoder::default();
        let out = d
            .on_data(
                &ev(r#"{"content":"Hel","stop":false}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap();
        assert!(matches!(&out[..], [Event::Token { text }] if text.as_str() == "Hel"));
        assert!(
            d.on_data(&ev(r#"{"content":"","stop":false}"#), Phase::MidStream)
                .unwrap()
                .is_empty()
        );
        let out = d
            .on_data(
                &ev(r#"{"content":"","stop":true,"tokens_predicted":2,"tokens_evaluated":5}"#),
                Phase::MidStream,
            )
            .unwrap();
        assert!(matches!(
            &out[..],
            [Event::End {
                tokens_in: 5,
                tokens_out: 2
            }]
        ));
    }

    #[test]
    fn garbage_and_engine_errors_are_classified() {
        let mut d = CompletionDecoder::default();
        let e = d.on_data(&ev("{not json"), Phase::MidStream).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
        let e = d
            .on_data(&ev(r#"{"content":5}"#), Phase::MidStream)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
        let e = d
            .on_data(
                &SseEvent {
                    error: Some(r#"{"code":500,"message":"boom","type":"server_error"}"#.into()),
                    ..SseEvent::default()
                },
                Phase::MidStream,
            )
            .unwrap_err();
        assert_eq!((e.kind, e.upstream_status), (ErrorKind::Upstream, 500));
        let e = d
            .on_data(
                &ev(r#"{"error":{"code":400,"message":"context too long"}}"#),
                Phase::BeforeFirstToken,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        // The stream ending before `stop` is a cut connection.
        assert_eq!(
            d.on_eof(Phase::MidStream).unwrap_err().kind,
            ErrorKind::Transport
        );
    }

    #[test]
    fn config_is_checked() {
        assert!(LlamaCppAdapter::new_client("{}").is_err());
        assert!(LlamaCppAdapter::new_client(r#"{"url":"http://127.0.0.1:1","bogus":1}"#).is_err());
        assert!(
            LlamaCppAdapter::new_client(
                r#"{"url":"http://127.0.0.1:1","params":{"temperature":0}}"#
            )
            .is_ok()
        );
    }
}
