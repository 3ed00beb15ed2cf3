//! One stream, start to end, against orchestratord (`POST /v1/tasks`, then its SSE stream) or
//! directly against an engine (llama.cpp `/completion` streaming), with the client-side
//! checks: `started` first, ids consecutive, token indices strictly increasing from 0 with no
//! gap, token text as the simulator generates it, exactly one terminal frame, nothing after
//! it, and `tokens_out` equal to the tokens received.

use std::time::{Duration, Instant};

use orchd_adapter_http::sse::{SseEvent, SseParser};
use serde_json::{Value, json};

/// Where streams go.
#[derive(Debug, Clone)]
pub enum Target {
    /// orchestratord's task API.
    Daemon {
        base: String,
        api_key: Option<String>,
        model_ref: String,
        engine: String,
    },
    /// An engine's llama.cpp `/completion` endpoint, for the direct baseline.
    Llama { base: String },
    /// An OpenAI-compatible `/v1/chat/completions` (streaming): orchestratord's OpenAI
    /// door, or an engine's own, directly or through a proxy.
    OpenAiChat {
        base: String,
        model: String,
        api_key: Option<String>,
    },
}

impl Target {
    pub fn base(&self) -> &str {
        match self {
            Target::Daemon { base, .. }
            | Target::Llama { base }
            | Target::OpenAiChat { base, .. } => base,
        }
    }
}

/// What a stream does besides reading to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read every frame.
    Read,
    /// `POST /v1/tasks/{id}/cancel` after this many tokens, then read to the end.
    Cancel(u32),
    /// Drop the stream after this many tokens and check the task ends canceled.
    Disconnect(u32),
    /// Drop the stream after this many tokens and reconnect with `Last-Event-ID`.
    Reconnect(u32),
    /// Admit only; never attach (admission throughput).
    SubmitOnly,
}

/// The request every stream makes.
#[derive(Debug, Clone)]
pub struct Shape {
    pub prompt: String,
    pub max_tokens: u32,
    /// Token text is `t{i} ` (engine-sim's), so text and order can be checked.
    pub check_text: bool,
}

/// What one stream saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The daemon answered 202 (always true for direct streams that got a 200).
    pub admitted: bool,
    /// The daemon refused the request with an error envelope (a decision, like a 202).
    pub refused: bool,
    /// POST → the daemon's answer (202 or a refusal), for daemon streams.
    pub admit: Option<Duration>,
    /// Start → first token frame.
    pub first_token: Option<Duration>,
    /// Gaps between consecutive token frames (across a reconnect, the gap is not counted).
    pub inter_token: Vec<Duration>,
    pub tokens: u32,
    /// A terminal `end` frame arrived.
    pub ended: bool,
    pub canceled: bool,
    /// The request was refused, or the stream ended in an `error` frame / a transport
    /// failure: the error code (or a short description).
    pub error: Option<String>,
    /// Broken client-side checks (ordering, gaps, terminal frames), described.
    pub violations: Vec<String>,
    /// Tokens the stream should have carried and did not (complete, uncanceled streams).
    pub lost: u32,
    pub action_taken: Option<Action>,
}

impl Outcome {
    fn violation(&mut self, what: impl Into<String>) {
        self.violations.push(what.into());
    }
}

/// Runs one stream.
pub async fn run(
    client: &reqwest::Client,
    target: &Target,
    shape: &Shape,
    action: Action,
    session: &str,
) -> Outcome {
    let start = Instant::now();
    match target {
        Target::Daemon {
            base,
            api_key,
            model_ref,
            engine,
        } => {
            let body = json!({
                "session_id": session,
                "workload": "completion",
                "model_ref": model_ref,
                "engine": engine,
                "ctx": 0,
                "priority": "interactive",
                "prompt": shape.prompt,
                "max_tokens": shape.max_tokens,
                "deadline_ms": 600_000,
            });
            let auth = |req: reqwest::RequestBuilder| match api_key {
                Some(key) => req.bearer_auth(key),
                None => req,
            };
            daemon_stream(client, base, &auth, body, shape, action, start).await
        }
        Target::Llama { base } => {
            let body =
                json!({"prompt": shape.prompt, "n_predict": shape.max_tokens, "stream": true});
            llama_stream(client, base, body, shape, start).await
        }
        Target::OpenAiChat {
            base,
            model,
            api_key,
        } => {
            let body = json!({
                "model": model,
                "messages": [{"role": "user", "content": shape.prompt}],
                "max_tokens": shape.max_tokens,
                "stream": true,
                "user": session,
            });
            let mut req = client
                .post(format!("{base}/v1/chat/completions"))
                .json(&body);
            if let Some(key) = api_key {
                req = req.bearer_auth(key);
            }
            openai_stream(req, shape, start).await
        }
    }
}

/// A streamed chat chunk: only what the checks read, borrowed.
#[derive(serde::Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChatChoice<'a>>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ChatChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<ChatDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ChatDelta<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// An OpenAI chat stream: every content chunk is a token (checked like the others), one
/// chunk carries the finish reason, and `[DONE]` ends it.
async fn openai_stream(req: reqwest::RequestBuilder, shape: &Shape, start: Instant) -> Outcome {
    let mut out = Outcome::default();
    let mut resp = match send_ok(req, "").await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    out.admitted = true;
    let mut tokens = Tokens {
        shape,
        start,
        last: None,
        next: 0,
    };
    let mut finished = false;
    let mut parser = SseParser::new(1 << 20, 1 << 20);
    let read = read_events(&mut resp, &mut parser, |ev, at| {
        if out.ended {
            out.violation("data after [DONE]");
            return true;
        }
        if ev.data == "[DONE]" {
            out.ended = true;
            return true;
        }
        match serde_json::from_str::<ChatChunk<'_>>(&ev.data) {
            Ok(c) if c.error.is_some() => out.error = Some("error chunk".into()),
            Ok(c) => {
                for choice in c.choices {
                    if let Some(text) = choice.delta.and_then(|d| d.content) {
                        tokens.token(&mut out, None, Some(&text), at);
                    }
                    if choice.finish_reason.is_some() {
                        if finished {
                            out.violation("a second finish_reason");
                        }
                        finished = true;
                    }
                }
            }
            Err(e) => out.violation(format!("chunk {:?}: {e}", ev.data)),
        }
        true
    })
    .await;
    if let Err(e) = read {
        out.error = Some(e);
    } else if !out.ended && out.error.is_none() {
        out.violation("the stream closed without [DONE]");
    }
    if out.ended && !finished {
        out.violation("no chunk carried a finish_reason");
    }
    if out.ended && tokens.next < shape.max_tokens {
        out.lost = shape.max_tokens - tokens.next;
    }
    out
}

/// Sends `req`; a non-2xx status (`{what}HTTP <status>`) or a transport failure is the
/// stream's error.
async fn send_ok(req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, String> {
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(r),
        Ok(r) => Err(format!("{what}HTTP {}", r.status())),
        Err(e) => Err(format!("transport: {e}")),
    }
}

/// Reads a response's body as SSE events, calling `on_event` until it returns false or the
/// body ends. Returns `Err` on a transport failure.
async fn read_events(
    resp: &mut reqwest::Response,
    parser: &mut SseParser,
    mut on_event: impl FnMut(SseEvent, Instant) -> bool,
) -> Result<bool, String> {
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                let now = Instant::now();
                for ev in parser.push(&bytes)? {
                    if !on_event(ev, now) {
                        return Ok(false);
                    }
                }
            }
            Ok(None) => return Ok(true),
            Err(e) => return Err(format!("transport: {e}")),
        }
    }
}

/// A daemon `token` frame's data.
#[derive(serde::Deserialize)]
struct TokenFrame<'a> {
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
    i: u64,
}

/// A llama.cpp `/completion` stream frame.
#[derive(serde::Deserialize)]
struct LlamaFrame<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    stop: bool,
    #[serde(default)]
    tokens_predicted: Option<u64>,
}

/// Whether `text` is engine-sim's token `n`: `t{n} `.
fn is_sim_token(text: Option<&str>, n: u32) -> bool {
    let Some(rest) = text.and_then(|t| t.strip_prefix('t')) else {
        return false;
    };
    let Some(digits) = rest.strip_suffix(' ') else {
        return false;
    };
    digits.parse::<u32>().ok() == Some(n)
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'))
}

/// Per-stream token bookkeeping shared by both targets.
struct Tokens<'a> {
    shape: &'a Shape,
    start: Instant,
    last: Option<Instant>,
    next: u32,
}

impl Tokens<'_> {
    fn token(&mut self, out: &mut Outcome, i: Option<u64>, text: Option<&str>, at: Instant) {
        match i {
            Some(i) if i == u64::from(self.next) => {}
            Some(i) => out.violation(format!("token index {i} where {} was due", self.next)),
            None => {}
        }
        if self.shape.check_text && !is_sim_token(text, self.next) {
            out.violation(format!(
                "token {} is {text:?}, not \"t{} \"",
                self.next, self.next
            ));
        }
        match self.last {
            None if out.first_token.is_none() => out.first_token = Some(at - self.start),
            Some(prev) => out.inter_token.push(at - prev),
            None => {}
        }
        self.last = Some(at);
        self.next += 1;
        out.tokens = self.next;
    }
}

async fn daemon_stream(
    client: &reqwest::Client,
    base: &str,
    auth: &(dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Sync),
    body: Value,
    shape: &Shape,
    action: Action,
    start: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let resp = match auth(client.post(format!("{base}/v1/tasks")))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(format!("transport: {e}"));
            return out;
        }
    };
    let status = resp.status();
    let admitted: Value = resp.json().await.unwrap_or(Value::Null);
    out.admit = Some(start.elapsed());
    if status != reqwest::StatusCode::ACCEPTED {
        out.refused = admitted["code"].is_string();
        out.error = Some(
            admitted["code"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_owned),
        );
        return out;
    }
    out.admitted = true;
    if action == Action::SubmitOnly {
        out.action_taken = Some(action);
        return out;
    }
    let Some(task_id) = admitted["task_id"].as_str().map(str::to_owned) else {
        out.violation("202 without task_id");
        return out;
    };
    let stream_url = match admitted["streams"]["sse"].as_str() {
        Some(u) if u.starts_with('/') => format!("{base}{u}"),
        Some(u) => u.to_owned(),
        None => format!("{base}/v1/tasks/{task_id}/stream"),
    };

    let mut frames = Frames {
        tokens: Tokens {
            shape,
            start,
            last: None,
            next: 0,
        },
        next_id: 0,
        terminal: false,
        fire_after: match action {
            Action::Cancel(k) | Action::Disconnect(k) | Action::Reconnect(k) => Some(k),
            Action::Read | Action::SubmitOnly => None,
        },
    };
    let mut last_event_id: Option<u64> = None;
    loop {
        let mut req = auth(client.get(&stream_url)).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let mut resp = match send_ok(req, "stream ").await {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        let mut parser = SseParser::new(1 << 20, 1 << 20);
        let mut read =
            read_events(&mut resp, &mut parser, |ev, at| frames.on(&mut out, ev, at)).await;
        if frames.fired() {
            frames.fire_after = None;
            out.action_taken = Some(action);
            match action {
                Action::Cancel(_) => {
                    let cancel = auth(client.post(format!("{base}/v1/tasks/{task_id}/cancel")))
                        .send()
                        .await;
                    match cancel {
                        Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => {}
                        Ok(r) => out.violation(format!("cancel answered {}", r.status())),
                        Err(e) => out.violation(format!("cancel failed: {e}")),
                    }
                    // The rest of this response ends `canceled`; tokens sent before the cancel
                    // took effect may still arrive.
                    read =
                        read_events(&mut resp, &mut parser, |ev, at| frames.on(&mut out, ev, at))
                            .await;
                    if out.ended && !out.canceled && frames.tokens.next < shape.max_tokens {
                        out.violation("a canceled task ended without canceled: true");
                    }
                }
                Action::Disconnect(_) => {
                    drop(resp);
                    // The daemon cancels a task whose reader went away (cancel_on_disconnect).
                    check_canceled(client, base, auth, &task_id, &mut out).await;
                    return out;
                }
                Action::Reconnect(_) => {
                    drop(resp);
                    last_event_id = Some(frames.next_id - 1);
                    // The gap across a reconnect is the client's, not the daemon's.
                    frames.tokens.last = None;
                    continue;
                }
                Action::Read | Action::SubmitOnly => {}
            }
        }
        if let Err(e) = read {
            out.error.get_or_insert(e);
        }
        break;
    }
    if !frames.terminal && out.error.is_none() {
        out.violation("the stream closed without a terminal frame");
    }
    if out.ended && !out.canceled && frames.tokens.next < shape.max_tokens {
        out.lost = shape.max_tokens - frames.tokens.next;
    }
    out
}

/// The checks on a daemon stream's frames, across reconnects.
struct Frames<'a> {
    tokens: Tokens<'a>,
    next_id: u64,
    terminal: bool,
    /// The action fires after this many tokens; `None` once it has (or when there is none).
    fire_after: Option<u32>,
}

impl Frames<'_> {
    fn fired(&self) -> bool {
        self.fire_after.is_some_and(|k| self.tokens.next >= k) && !self.terminal
    }

    /// Checks one frame; `false` stops reading (the action is due).
    fn on(&mut self, out: &mut Outcome, ev: SseEvent, at: Instant) -> bool {
        if self.terminal {
            out.violation(format!("frame {:?} after the terminal frame", ev.event));
            return true;
        }
        let id = ev.id.as_deref().and_then(|s| s.parse::<u64>().ok());
        match id {
            Some(id) if id == self.next_id => self.next_id += 1,
            Some(id) => {
                out.violation(format!("frame id {id} where {} was due", self.next_id));
                self.next_id = id + 1;
            }
            None => out.violation("frame without id"),
        }
        if ev.event.as_deref() == Some("token") {
            if id == Some(0) {
                out.violation("a token before started");
            }
            // Typed and borrowed: the load generator shares the machine it measures.
            match serde_json::from_str::<TokenFrame<'_>>(&ev.data) {
                Ok(t) => self.tokens.token(out, Some(t.i), Some(&t.t), at),
                Err(e) => out.violation(format!("token frame {:?}: {e}", ev.data)),
            }
            return !self.fired();
        }
        let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        match ev.event.as_deref() {
            Some("started") if id != Some(0) => out.violation("started is not frame 0"),
            Some("started") | Some("metrics") => {}
            Some("end") => {
                self.terminal = true;
                out.ended = true;
                out.canceled = data["canceled"].as_bool() == Some(true);
                let tokens_out = data["tokens_out"].as_u64();
                if tokens_out != Some(u64::from(self.tokens.next)) {
                    out.violation(format!(
                        "end says tokens_out {tokens_out:?}, {} received",
                        self.tokens.next
                    ));
                }
            }
            Some("error") => {
                self.terminal = true;
                out.error = Some(data["code"].as_str().unwrap_or("error").to_owned());
            }
            other => out.violation(format!("unknown event {other:?}")),
        }
        true
    }
}

/// After a disconnect, the task must end canceled (or have finished just before).
async fn check_canceled(
    client: &reqwest::Client,
    base: &str,
    auth: &(dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Sync),
    task_id: &str,
    out: &mut Outcome,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let state = match auth(client.get(format!("{base}/v1/tasks/{task_id}")))
            .send()
            .await
        {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null)["state"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            Err(_) => String::new(),
        };
        match state.as_str() {
            "canceled" | "succeeded" => {
                out.canceled = state == "canceled";
                return;
            }
            _ if Instant::now() > deadline => {
                out.violation(format!("task still {state:?} 5 s after its reader left"));
                return;
            }
            _ => {}
        }
    }
}

async fn llama_stream(
    client: &reqwest::Client,
    base: &str,
    body: Value,
    shape: &Shape,
    start: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut resp = match send_ok(client.post(format!("{base}/completion")).json(&body), "").await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    out.admitted = true;
    let mut tokens = Tokens {
        shape,
        start,
        last: None,
        next: 0,
    };
    let mut parser = SseParser::new(1 << 20, 1 << 20);
    let read = read_events(&mut resp, &mut parser, |ev, at| {
        if out.ended {
            out.violation("data after the final frame");
            return true;
        }
        match serde_json::from_str::<LlamaFrame<'_>>(&ev.data) {
            Ok(f) if f.stop => {
                out.ended = true;
                if f.tokens_predicted != Some(u64::from(tokens.next)) {
                    out.violation("tokens_predicted differs from the tokens received");
                }
            }
            Ok(f) => tokens.token(&mut out, None, f.content.as_deref(), at),
            Err(e) => out.violation(format!("engine frame {:?}: {e}", ev.data)),
        }
        true
    })
    .await;
    if let Err(e) = read {
        out.error = Some(e);
    } else if !out.ended {
        out.violation("the stream closed without its final frame");
    }
    if out.ended && tokens.next < shape.max_tokens {
        out.lost = shape.max_tokens - tokens.next;
    }
    out
}
