//! OpenAI-compatible chat on the wire: `POST /v1/chat/completions` with `stream: true`, as
//! llama-server, vLLM, TGI's Messages API and hosted OpenAI-compatible servers speak it.
//! The engine applies the model's own chat template and tool-call parser; this module only
//! carries the conversation there ([`request_body`]) and its answer back ([`ChatDecoder`]:
//! `chat.completion.chunk` frames → [`ChatEvent`]s).
//!
//! Engine output is untrusted: frames are parsed into typed structs (unknown fields
//! ignored), tool-call fragments are bounded per task, and a call whose assembled
//! arguments are not JSON fails the task with a `Protocol` error.

use std::collections::BTreeMap;

use orchd_adapter_abi::abi_stable::std_types::{RNone, ROption, RSome, RString, RVec};
use orchd_adapter_abi::{
    AdapterError, ChatDelta, ChatEnd, ChatEvent, ChatRequest, EngineUsage, ErrorKind, Phase,
    ResponseFormatKind, TokenLogprob, ToolCallDelta, ToolChoiceMode, TopLogprob,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{SseEvent, StreamJob, Upstream};
use orchd_adapter_abi::plugin::ChatSink;

/// Streams `body` to the engine's `/v1/chat/completions` and decodes its answer.
pub fn stream(
    upstream: &Upstream,
    body: Value,
    engine_version: String,
    sink: ChatSink,
) -> StreamJob {
    upstream.stream(
        "/v1/chat/completions",
        body,
        engine_version,
        ChatDecoder::new(),
        sink,
    )
}

/// Tool calls one answer may make.
const MAX_TOOL_CALLS: usize = 128;

fn json_text(field: &str, text: &str) -> Result<Value, AdapterError> {
    serde_json::from_str(text).map_err(|e| {
        AdapterError::new(
            ErrorKind::InvalidRequest,
            Phase::BeforeFirstToken,
            format!("{field} is not JSON: {e}"),
        )
    })
}

fn opt(s: &ROption<RString>) -> Option<&str> {
    s.as_ref().map(|s| s.as_str()).into_option()
}

/// The request body for `/v1/chat/completions` (`model` is the engine's name for it).
/// Sampler extras (`params_json`, replica defaults) are merged in by the caller.
pub fn request_body(req: &ChatRequest, model: &str) -> Result<Value, AdapterError> {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let mut msg = Map::new();
            msg.insert("role".into(), json!(m.role.as_str()));
            let content = if !m.parts.is_empty() {
                json!(
                    m.parts
                        .iter()
                        .map(|p| json!({"type": "text", "text": p.as_str()}))
                        .collect::<Vec<_>>()
                )
            } else {
                opt(&m.content).map_or(Value::Null, |c| json!(c))
            };
            msg.insert("content".into(), content);
            if let Some(name) = opt(&m.name) {
                msg.insert("name".into(), json!(name));
            }
            if !m.tool_calls.is_empty() {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id.as_str(), "type": "function",
                           "function": {"name": c.name.as_str(), "arguments": c.arguments.as_str()}})
                    })
                    .collect();
                msg.insert("tool_calls".into(), json!(calls));
            }
            if let Some(id) = opt(&m.tool_call_id) {
                msg.insert("tool_call_id".into(), json!(id));
            }
            Value::Object(msg)
        })
        .collect();
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let obj = body.as_object_mut().expect("an object");
    if !req.tools.is_empty() {
        let mut tools = Vec::with_capacity(req.tools.len());
        for t in req.tools.iter() {
            let mut function = Map::new();
            function.insert("name".into(), json!(t.name.as_str()));
            if let Some(d) = opt(&t.description) {
                function.insert("description".into(), json!(d));
            }
            if let Some(p) = opt(&t.parameters_json) {
                function.insert("parameters".into(), json_text("a tool's parameters", p)?);
            }
            if let RSome(strict) = t.strict {
                function.insert("strict".into(), json!(strict));
            }
            tools.push(json!({"type": "function", "function": function}));
        }
        obj.insert("tools".into(), json!(tools));
    }
    let choice = match req.tool_choice.mode {
        ToolChoiceMode::Unset => None,
        ToolChoiceMode::None => Some(json!("none")),
        ToolChoiceMode::Auto => Some(json!("auto")),
        ToolChoiceMode::Required => Some(json!("required")),
        ToolChoiceMode::Function => Some(
            json!({"type": "function", "function": {"name": req.tool_choice.function.as_str()}}),
        ),
    };
    if let Some(choice) = choice {
        obj.insert("tool_choice".into(), choice);
    }
    if let RSome(p) = req.parallel_tool_calls {
        obj.insert("parallel_tool_calls".into(), json!(p));
    }
    let rf = &req.response_format;
    match rf.kind {
        ResponseFormatKind::Text => {}
        ResponseFormatKind::JsonObject => {
            obj.insert("response_format".into(), json!({"type": "json_object"}));
        }
        ResponseFormatKind::JsonSchema => {
            let mut schema = Map::new();
            schema.insert("name".into(), json!(rf.name.as_str()));
            if let Some(d) = opt(&rf.description) {
                schema.insert("description".into(), json!(d));
            }
            if let Some(s) = opt(&rf.schema_json) {
                schema.insert("schema".into(), json_text("the response schema", s)?);
            }
            if let RSome(strict) = rf.strict {
                schema.insert("strict".into(), json!(strict));
            }
            obj.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": schema}),
            );
        }
    }
    if req.logprobs {
        obj.insert("logprobs".into(), json!(true));
        if req.top_logprobs > 0 {
            obj.insert("top_logprobs".into(), json!(req.top_logprobs));
        }
    }
    if let RSome(p) = req.frequency_penalty {
        obj.insert("frequency_penalty".into(), json!(p));
    }
    if let RSome(p) = req.presence_penalty {
        obj.insert("presence_penalty".into(), json!(p));
    }
    if !req.logit_bias.is_empty() {
        let bias: BTreeMap<String, f32> = req
            .logit_bias
            .iter()
            .map(|b| (b.token.to_string(), b.bias))
            .collect();
        obj.insert("logit_bias".into(), json!(bias));
    }
    if !req.stop.is_empty() {
        let stop: Vec<&str> = req.stop.iter().map(|s| s.as_str()).collect();
        obj.insert("stop".into(), json!(stop));
    }
    if let RSome(seed) = req.seed {
        obj.insert("seed".into(), json!(seed));
    }
    Ok(body)
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
    /// llama-server's own counts.
    #[serde(default)]
    timings: Option<Timings>,
}

#[derive(Deserialize)]
struct Timings {
    #[serde(default)]
    cache_n: Option<u32>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<OneOrMany<WireToolCall>>,
}

/// TGI before 3.0 sent `tool_calls` as one object, not a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            Self::Many(v) => v,
            Self::One(t) => vec![t],
        }
    }
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    /// A string fragment; some servers send the whole arguments as an object.
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<WireDetails>,
}

#[derive(Deserialize)]
struct WireDetails {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<Vec<WireTokenLogprob>>,
}

#[derive(Deserialize)]
struct WireTokenLogprob {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<WireTop>,
}

#[derive(Deserialize)]
struct WireTop {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
}

fn bytes_of(token: &str, bytes: Option<Vec<u8>>) -> RVec<u8> {
    RVec::from(bytes.unwrap_or_else(|| token.as_bytes().to_vec()))
}

/// One tool call as its fragments arrive.
#[derive(Default)]
struct CallSoFar {
    name: String,
    arguments: String,
}

/// Decodes `chat.completion.chunk` frames into [`ChatEvent`]s. The answer ends at
/// `data: [DONE]` with the finish reason and usage seen before it; a stream closed after
/// a finish reason but without `[DONE]` also ends well, one closed before is cut.
#[derive(Default)]
pub struct ChatDecoder {
    finish_reason: Option<String>,
    usage: Option<EngineUsage>,
    cache_n: Option<u32>,
    calls: Vec<CallSoFar>,
}

impl ChatDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn protocol(phase: Phase, message: impl Into<String>) -> AdapterError {
        AdapterError::new(ErrorKind::Protocol, phase, message)
    }

    /// The final event, once every tool call's arguments are checked to be JSON.
    fn end(&mut self, phase: Phase) -> Result<Vec<ChatEvent>, AdapterError> {
        for (i, call) in self.calls.iter().enumerate() {
            let args = call.arguments.trim();
            if let Err(e) = serde_json::from_str::<Value>(if args.is_empty() { "{}" } else { args })
            {
                return Err(Self::protocol(
                    phase,
                    format!(
                        "the engine's tool call {i} ({:?}) has arguments that are not JSON: {e}",
                        call.name
                    ),
                ));
            }
        }
        let mut usage = self.usage.take();
        if let (Some(u), Some(cached)) = (usage.as_mut(), self.cache_n)
            && u.cached_tokens.is_none()
        {
            u.cached_tokens = RSome(cached);
        }
        Ok(vec![ChatEvent::End(ChatEnd {
            finish_reason: self.finish_reason.take().unwrap_or_default().into(),
            usage: usage.into(),
        })])
    }

    fn tool_call(
        &mut self,
        position: usize,
        call: WireToolCall,
        phase: Phase,
    ) -> Result<ToolCallDelta, AdapterError> {
        let index = call.index.map_or(position, |i| i as usize);
        if index >= MAX_TOOL_CALLS {
            return Err(Self::protocol(
                phase,
                format!("tool call index {index} is over {MAX_TOOL_CALLS}"),
            ));
        }
        let is_new = index >= self.calls.len();
        if is_new {
            self.calls.resize_with(index + 1, CallSoFar::default);
        }
        let (name, arguments) = match call.function {
            Some(f) => (
                f.name.filter(|n| !n.is_empty()),
                match f.arguments {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                },
            ),
            None => (None, String::new()),
        };
        let so_far = &mut self.calls[index];
        if let Some(n) = &name {
            so_far.name.push_str(n);
        }
        so_far.arguments.push_str(&arguments);
        // Every call has an id on its first fragment, whether the engine gave one or not.
        let id = call
            .id
            .filter(|id| !id.is_empty())
            .or_else(|| is_new.then(|| format!("call_{index}")));
        Ok(ToolCallDelta {
            index: index as u32,
            id: id.map(RString::from).into(),
            name: name.map(RString::from).into(),
            arguments: arguments.into(),
        })
    }
}

impl crate::Decoder for ChatDecoder {
    type Out = ChatEvent;

    fn on_data(&mut self, ev: &SseEvent, phase: Phase) -> Result<Vec<ChatEvent>, AdapterError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        if data == "[DONE]" {
            return self.end(phase);
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            Self::protocol(
                phase,
                format!("a chat chunk that is not the expected JSON: {e}"),
            )
        })?;
        if let Some(err) = chunk.error {
            let message = err["message"]
                .as_str()
                .map_or_else(|| err.to_string(), str::to_owned);
            let status = err["code"].as_u64().and_then(|c| u16::try_from(c).ok());
            let mut e = AdapterError::new(
                ErrorKind::Upstream,
                phase,
                format!("the engine reported: {message}"),
            );
            e.upstream_status = status.unwrap_or(0);
            return Err(e);
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(EngineUsage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cached_tokens: u
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .map_or(RNone, RSome),
            });
        }
        if let Some(t) = chunk.timings {
            self.cache_n = t.cache_n.or(self.cache_n);
        }
        let mut out = Vec::new();
        // n = 1: the first choice is the answer.
        if let Some(choice) = chunk.choices.into_iter().next() {
            let mut delta = ChatDelta {
                content: RString::new(),
                tool_calls: RVec::new(),
                logprobs: RVec::new(),
            };
            if let Some(d) = choice.delta {
                if let Some(c) = d.content {
                    delta.content = c.into();
                }
                for (position, call) in d
                    .tool_calls
                    .map(OneOrMany::into_vec)
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    delta
                        .tool_calls
                        .push(self.tool_call(position, call, phase)?);
                }
            }
            if let Some(lp) = choice.logprobs.and_then(|l| l.content) {
                delta.logprobs = lp
                    .into_iter()
                    .map(|t| TokenLogprob {
                        bytes: bytes_of(&t.token, t.bytes),
                        token: t.token.into(),
                        logprob: t.logprob,
                        top: t
                            .top_logprobs
                            .into_iter()
                            .map(|a| TopLogprob {
                                bytes: bytes_of(&a.token, a.bytes),
                                token: a.token.into(),
                                logprob: a.logprob,
                            })
                            .collect(),
                    })
                    .collect();
            }
            if !delta.content.is_empty()
                || !delta.tool_calls.is_empty()
                || !delta.logprobs.is_empty()
            {
                out.push(ChatEvent::Delta(delta));
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        Ok(out)
    }

    fn on_eof(&mut self, phase: Phase) -> Result<Vec<ChatEvent>, AdapterError> {
        if self.finish_reason.is_some() {
            return self.end(phase);
        }
        Err(AdapterError::new(
            ErrorKind::Transport,
            phase,
            "the engine closed the chat stream before its final frame",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decoder;
    use orchd_adapter_abi::{
        ChatMessage, ChatRole, ChatTool, LogitBias, ResponseFormat, ToolChoice,
    };

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            data: data.to_owned(),
            ..SseEvent::default()
        }
    }

    fn request() -> ChatRequest {
        ChatRequest {
            task_id: "t".into(),
            model: "m".into(),
            messages: vec![
                ChatMessage {
                    role: ChatRole::System,
                    content: RSome("be brief".into()),
                    parts: RVec::new(),
                    name: RNone,
                    tool_calls: RVec::new(),
                    tool_call_id: RNone,
                },
                ChatMessage {
                    role: ChatRole::Tool,
                    content: RNone,
                    parts: vec![RString::from("4"), RString::from("2")].into(),
                    name: RNone,
                    tool_calls: RVec::new(),
                    tool_call_id: RSome("c1".into()),
                },
            ]
            .into(),
            tools: vec![ChatTool {
                name: "f".into(),
                description: RNone,
                parameters_json: RSome(r#"{"type":"object"}"#.into()),
                strict: RSome(true),
            }]
            .into(),
            tool_choice: ToolChoice {
                mode: ToolChoiceMode::Function,
                function: "f".into(),
            },
            parallel_tool_calls: RSome(false),
            response_format: ResponseFormat {
                kind: ResponseFormatKind::JsonSchema,
                name: "s".into(),
                description: RNone,
                schema_json: RSome(r#"{"type":"object"}"#.into()),
                strict: RSome(true),
            },
            logprobs: true,
            top_logprobs: 3,
            frequency_penalty: RSome(0.5),
            presence_penalty: RNone,
            logit_bias: vec![LogitBias {
                token: 42,
                bias: -100.0,
            }]
            .into(),
            stop: vec![RString::from("END")].into(),
            seed: RSome(7),
            max_tokens: 16,
            params_json: RString::new(),
        }
    }

    #[test]
    fn the_body_carries_the_conversation_as_data() {
        let body = request_body(&request(), "served").unwrap();
        assert_eq!(body["model"], "served");
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            body["messages"][1],
            json!({"role": "tool", "tool_call_id": "c1",
                   "content": [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}]})
        );
        assert_eq!(
            body["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["top_logprobs"], 3);
        assert_eq!(body["logit_bias"], json!({"42": -100.0}));
        assert_eq!(body["frequency_penalty"], 0.5);
        assert!(body.get("presence_penalty").is_none());
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["seed"], 7);
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    fn decode(frames: &[&str]) -> Result<Vec<ChatEvent>, AdapterError> {
        let mut d = ChatDecoder::new();
        let mut out = Vec::new();
        for f in frames {
            out.extend(d.on_data(&ev(f), Phase::MidStream)?);
        }
        Ok(out)
    }

    #[test]
    fn tool_call_fragments_across_frames_become_deltas_then_the_end() {
        let out = decode(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":9,"total_tokens":40,"prompt_tokens_details":{"cached_tokens":12}}}"#,
            "[DONE]",
        ])
        .unwrap();
        assert_eq!(out.len(), 4);
        let ChatEvent::Delta(first) = &out[0] else {
            panic!()
        };
        assert_eq!(
            first.tool_calls[0].id.as_ref().map(|s| s.as_str()),
            RSome("call_a")
        );
        assert_eq!(
            first.tool_calls[0].name.as_ref().map(|s| s.as_str()),
            RSome("get_weather")
        );
        let ChatEvent::End(end) = &out[3] else {
            panic!()
        };
        assert_eq!(end.finish_reason.as_str(), "tool_calls");
        let usage = end.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (31, 9));
        assert_eq!(usage.cached_tokens, RSome(12));
    }

    #[test]
    fn tgi_sends_one_tool_call_object_without_index_or_id() {
        let out = decode(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":{"index":0,"id":"","type":"function","function":{"description":null,"name":"f","arguments":"{\"a\":"}}},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":{"index":0,"id":"","type":"function","function":{"description":null,"name":null,"arguments":"1}"}}},"finish_reason":"stop"}]}"#,
            "[DONE]",
        ])
        .unwrap();
        let ChatEvent::Delta(first) = &out[0] else {
            panic!()
        };
        assert_eq!(
            first.tool_calls[0].id.as_ref().map(|s| s.as_str()),
            RSome("call_0")
        );
        let ChatEvent::Delta(second) = &out[1] else {
            panic!()
        };
        assert_eq!(second.tool_calls[0].id, RNone);
        assert!(matches!(&out[2], ChatEvent::End(e) if e.usage.is_none()));
    }

    #[test]
    fn arguments_that_are_not_json_fail_the_task() {
        let err = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{\"a\": tru"}}]},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ])
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Protocol);
        assert!(err.message.contains("not JSON"), "{}", err.message);
    }

    #[test]
    fn logprobs_content_and_engine_errors() {
        let out = decode(&[
            r#"{"choices":[{"delta":{"content":"Hi"},"logprobs":{"content":[{"token":"Hi","logprob":-0.5,"top_logprobs":[{"token":"Hi","logprob":-0.5},{"token":"Yo","logprob":-1.5}]}]},"finish_reason":null}]}"#,
        ])
        .unwrap();
        let ChatEvent::Delta(d) = &out[0] else {
            panic!()
        };
        assert_eq!(d.content.as_str(), "Hi");
        assert_eq!(d.logprobs[0].top.len(), 2);
        assert_eq!(d.logprobs[0].bytes.as_slice(), b"Hi");
        let err = decode(&[r#"{"error":{"code":500,"message":"boom"}}"#]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Upstream);
        assert_eq!(err.upstream_status, 500);
        assert_eq!(
            decode(&["{not json"]).unwrap_err().kind,
            ErrorKind::Protocol
        );
    }

    #[test]
    fn a_stream_cut_before_the_finish_reason_is_an_error() {
        let mut d = ChatDecoder::new();
        d.on_data(
            &ev(r#"{"choices":[{"delta":{"content":"a"}}]}"#),
            Phase::MidStream,
        )
        .unwrap();
        assert_eq!(
            d.on_eof(Phase::MidStream).unwrap_err().kind,
            ErrorKind::Transport
        );
    }
}
