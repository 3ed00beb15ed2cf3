//! What every HTTP engine adapter shares (ADAPTERS.md, "Shared HTTP behaviour"):
//!
//! - [`Upstream`]: one engine base URL behind a keep-alive pool (`TCP_NODELAY`), connect
//!   timeout, first-byte timeout, idle timeout mid-stream, and retries only before the first
//!   byte and only for transport failures (at most 4 attempts, full-jitter backoff
//!   100 ms → 2 s);
//! - [`sse::SseParser`]: a streaming SSE / JSON-lines parser that tolerates frames and UTF-8
//!   split across reads, with bounded line and frame sizes (engine output is untrusted);
//! - [`classify`]: failures as the error-mapping policy sees them (kind, phase, status);
//! - [`Upstream::stream`]: runs one streaming request on the library's runtime, hands each
//!   event to a [`Decoder`], and returns a [`StreamJob`] whose `cancel` drops the request,
//!   which closes the upstream connection.
//!
//! No async type crosses the adapter boundary: each adapter library owns a small tokio
//! runtime ([`runtime`]) and exposes blocking calls to the host.

pub mod chat;
pub mod sse;

/// Fuzzing entry points (the `fuzz/` targets and their corpus replay).
#[doc(hidden)]
pub mod fuzzing;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use orchd_adapter_abi::plugin::{ChatSink, EngineJob, Sink};
use orchd_adapter_abi::{AdapterError, ChatEvent, ErrorKind, Event, Phase};
use serde::Deserialize;
use serde_json::Value;

pub use sse::{SseEvent, SseParser};

/// The library's runtime: two workers are plenty for relaying streams.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orchd-adapter-http")
            .enable_all()
            .build()
            .expect("the adapter runtime starts")
    })
}

/// Runs `fut` on the library runtime and waits for it from any thread (also from inside
/// another runtime: the caller's thread blocks, the runtime's threads do the work).
pub fn block_on<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the adapter runtime finished the call")
}

/// The engine's version as last fetched, so that starting a stream costs no extra round
/// trip: the first call fetches; later calls answer from the cache and, once it is older
/// than [`VersionCache::MAX_AGE`], refresh it on a background thread.
#[derive(Clone, Default)]
pub struct VersionCache(Arc<Mutex<CachedVersion>>);

#[derive(Default)]
struct CachedVersion {
    /// The version and when it was fetched.
    current: Option<(String, Instant)>,
    refreshing: bool,
}

impl VersionCache {
    pub const MAX_AGE: Duration = Duration::from_secs(10);

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedVersion> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version, or `fallback` when the engine has never said. `fetcher` makes the
    /// fetch, and is called only when one is due (not on the common, cached path).
    pub fn get<F>(&self, fetcher: impl FnOnce() -> F, fallback: &str) -> String
    where
        F: FnOnce() -> Result<String, AdapterError> + Send + 'static,
    {
        let mut c = self.lock();
        if let Some((version, fetched)) = &c.current {
            let version = version.clone();
            if fetched.elapsed() > Self::MAX_AGE && !c.refreshing {
                c.refreshing = true;
                drop(c);
                // Blocking calls go through `block_on`, so not on the runtime's own threads.
                let fetch = fetcher();
                let cache = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("orchd-adapter-version".into())
                    .spawn(move || cache.store(fetch()));
                if spawned.is_err() {
                    self.lock().refreshing = false;
                }
            }
            return version;
        }
        drop(c);
        let fetched = fetcher()();
        self.store(fetched).unwrap_or_else(|| fallback.to_owned())
    }

    fn store(&self, fetched: Result<String, AdapterError>) -> Option<String> {
        let mut c = self.lock();
        c.refreshing = false;
        if let Ok(v) = fetched {
            c.current = Some((v, Instant::now()));
        }
        c.current.as_ref().map(|(v, _)| v.clone())
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Timeouts and bounds of one upstream; every field has a default (ADAPTERS.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub connect_timeout_ms: u64,
    /// From sending the request to the response head.
    pub first_byte_timeout_ms: u64,
    /// Silence allowed between two reads of a streaming body.
    pub idle_timeout_ms: u64,
    /// Timeout of control calls (health, props).
    pub control_timeout_ms: u64,
    /// Attempts for transport failures before the first byte (1 = no retry).
    pub max_attempts: u32,
    pub max_line_bytes: usize,
    pub max_frame_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 30_000,
            idle_timeout_ms: 30_000,
            control_timeout_ms: 5_000,
            max_attempts: 4,
            max_line_bytes: 1 << 20,
            max_frame_bytes: 4 << 20,
        }
    }
}

/// Full-jitter backoff before attempt `attempt` (1-based retries): uniform in
/// `[0, min(2 s, 100 ms × 2^(attempt-1))]`.
/// `request` with the task's W3C trace context (`traceparent`, `tracestate`) as headers,
/// when it has one, so the engine's spans join the task's trace.
pub fn traced(
    mut request: reqwest::RequestBuilder,
    trace: &orchd_adapter_abi::TraceContext,
) -> reqwest::RequestBuilder {
    if !trace.traceparent.is_empty() {
        request = request.header("traceparent", trace.traceparent.as_str());
        if !trace.tracestate.is_empty() {
            request = request.header("tracestate", trace.tracestate.as_str());
        }
    }
    request
}

pub fn backoff(attempt: u32) -> Duration {
    let cap = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(2_000);
    ms(fastrand::u64(0..=cap))
}

/// A failure of a request, classified. Bodies are read as raw bytes (no decompression,
/// JSON is parsed by the adapters), so every non-timeout error here is the connection:
/// refused, reset, or cut mid-body (which reqwest calls "error decoding response body").
pub fn classify(err: &reqwest::Error, phase: Phase) -> AdapterError {
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Transport
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    AdapterError::new(kind, phase, message)
}

/// An error status from the engine, with the start of its body.
pub fn upstream_status(status: u16, body: &str, phase: Phase) -> AdapterError {
    let snippet: String = body.chars().take(300).collect();
    let mut e = AdapterError::new(
        ErrorKind::Upstream,
        phase,
        format!("engine answered {status}: {snippet}"),
    );
    e.upstream_status = status;
    e
}

fn protocol(phase: Phase, message: impl Into<String>) -> AdapterError {
    AdapterError::new(ErrorKind::Protocol, phase, message)
}

/// Parses an adapter's replica config (JSON). An empty config is `{}`; errors are `Config`
/// failures naming the adapter and the field (serde names fields, never their values, so
/// secrets such as API keys stay out of logs).
pub fn parse_config<T: serde::de::DeserializeOwned>(
    adapter: &str,
    config: &str,
) -> Result<T, AdapterError> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(text).map_err(|e| {
        AdapterError::new(
            ErrorKind::Config,
            Phase::Control,
            format!("invalid {adapter} adapter config: {e}"),
        )
    })
}

/// The health of an engine a control call could not reach: not live, not ready. Other
/// failures stay failures.
pub fn unreachable(err: AdapterError) -> Result<orchd_adapter_abi::Health, AdapterError> {
    if matches!(err.kind, ErrorKind::Transport | ErrorKind::Timeout) {
        Ok(orchd_adapter_abi::Health {
            live: false,
            ready: false,
            message: err.message,
        })
    } else {
        Err(err)
    }
}

/// Merges sampler parameters into a request object: the replica's configured `defaults`
/// first, then the task's own (`params_json`, a JSON object or empty) over them.
pub fn merge_params(
    body: &mut Value,
    defaults: &serde_json::Map<String, Value>,
    params_json: &str,
) -> Result<(), AdapterError> {
    let Some(obj) = body.as_object_mut() else {
        return Err(AdapterError::new(
            ErrorKind::Internal,
            Phase::BeforeFirstToken,
            "a request body that is not an object",
        ));
    };
    for (k, v) in defaults {
        obj.insert(k.clone(), v.clone());
    }
    if !params_json.is_empty() {
        let extra: serde_json::Map<String, Value> =
            serde_json::from_str(params_json).map_err(|e| {
                AdapterError::new(
                    ErrorKind::InvalidRequest,
                    Phase::BeforeFirstToken,
                    format!("params_json is not a JSON object: {e}"),
                )
            })?;
        obj.extend(extra);
    }
    Ok(())
}

/// One engine base URL.
#[derive(Clone)]
pub struct Upstream {
    base: String,
    client: reqwest::Client,
    settings: HttpSettings,
    bearer: Option<Arc<str>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bearer key.
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("bearer", &self.bearer.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The events a streaming task emits: a completion's [`Event`]s or a chat's
/// [`ChatEvent`]s, each through its own sink.
pub trait Streamed: Send + Sized + 'static {
    type Sink: Send + Sync + 'static;
    fn started(engine_version: String) -> Self;
    fn error(e: AdapterError) -> Self;
    /// The task's last event.
    fn is_terminal(&self) -> bool;
    /// Output reached the client (later failures are mid-stream).
    fn is_output(&self) -> bool;
    fn emit(sink: &Self::Sink, event: Self) -> bool;
    /// The task's trace context (ABI 0.1.4), sent to the engine as headers.
    fn trace_context(sink: &Self::Sink) -> orchd_adapter_abi::TraceContext;
}

impl Streamed for Event {
    type Sink = Sink;
    fn started(engine_version: String) -> Self {
        Event::Started {
            engine_version: engine_version.into(),
        }
    }
    fn error(e: AdapterError) -> Self {
        Event::Error(e)
    }
    fn is_terminal(&self) -> bool {
        matches!(self, Event::End { .. } | Event::Error(_))
    }
    fn is_output(&self) -> bool {
        matches!(self, Event::Token { .. })
    }
    fn emit(sink: &Sink, event: Self) -> bool {
        sink.emit(event)
    }
    fn trace_context(sink: &Sink) -> orchd_adapter_abi::TraceContext {
        sink.trace_context()
    }
}

impl Streamed for ChatEvent {
    type Sink = ChatSink;
    fn started(engine_version: String) -> Self {
        ChatEvent::Started {
            engine_version: engine_version.into(),
        }
    }
    fn error(e: AdapterError) -> Self {
        ChatEvent::Error(e)
    }
    fn is_terminal(&self) -> bool {
        matches!(self, ChatEvent::End(_) | ChatEvent::Error(_))
    }
    fn is_output(&self) -> bool {
        matches!(self, ChatEvent::Delta(_))
    }
    fn emit(sink: &ChatSink, event: Self) -> bool {
        sink.emit(event)
    }
    fn trace_context(sink: &ChatSink) -> orchd_adapter_abi::TraceContext {
        sink.trace_context()
    }
}

/// What an adapter does with a streaming response.
pub trait Decoder: Send + 'static {
    /// [`Event`] for a completion, [`ChatEvent`] for a chat.
    type Out: Streamed;
    /// One event (an SSE event or a JSON line) → the events to emit: tokens, and `End`
    /// when this was the engine's final frame. An error fails the task.
    fn on_data(&mut self, event: &SseEvent, phase: Phase) -> Result<Vec<Self::Out>, AdapterError>;
    /// The body ended. Engines whose protocol ends by closing the stream return their
    /// final event here; the others say the stream was cut.
    fn on_eof(&mut self, phase: Phase) -> Result<Vec<Self::Out>, AdapterError> {
        Err(AdapterError::new(
            ErrorKind::Transport,
            phase,
            "the engine closed the stream before its final frame",
        ))
    }
}

/// A running streaming request; `cancel` drops it, which closes the connection.
pub struct StreamJob {
    abort: tokio::task::AbortHandle,
    canceled: Arc<AtomicBool>,
}

impl EngineJob for StreamJob {
    fn cancel(&self) {
        self.canceled.store(true, Ordering::Release);
        self.abort.abort();
    }
}

/// Delivers an event; `false` when the host wants no more (or the job was canceled).
///
/// Called on the runtime's worker directly. The host drains its buffer without waiting for
/// its client (slow readers are the host's replay buffer's business), so the buffer is full
/// only when the host itself is starved; then this worker blocks until it catches up, which
/// is the backpressure the ABI asks for. `block_in_place` here cost two thread hand-offs per
/// token (the worker's core moved to a new thread and back), measured in docs/BENCHMARKS.md.
fn emit<E: Streamed>(sink: &E::Sink, canceled: &AtomicBool, event: E) -> bool {
    if canceled.load(Ordering::Acquire) {
        return false;
    }
    E::emit(sink, event)
}

impl Upstream {
    pub fn new(
        base_url: &str,
        settings: HttpSettings,
        bearer: Option<String>,
    ) -> Result<Self, AdapterError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(AdapterError::new(
                ErrorKind::Config,
                Phase::Control,
                format!("url {base_url:?} must start with http:// or https://"),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(ms(settings.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| AdapterError::new(ErrorKind::Config, Phase::Control, e.to_string()))?;
        Ok(Self {
            base,
            client,
            settings,
            bearer: bearer.map(Arc::from),
        })
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, self.url(path));
        match &self.bearer {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// Sends with retries: transport failures before any response byte are retried with
    /// full-jitter backoff; anything else is returned.
    async fn send_retrying(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
        first_byte: Duration,
        phase: Phase,
    ) -> Result<reqwest::Response, AdapterError> {
        let attempts = self.settings.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(first_byte, build().send()).await;
            let err = match result {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => classify(&e, phase),
                Err(_) => AdapterError::new(
                    ErrorKind::Timeout,
                    phase,
                    format!("no response head within {} ms", first_byte.as_millis()),
                ),
            };
            if err.kind != ErrorKind::Transport || attempt >= attempts {
                return Err(err);
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// A control call: `GET path` → (status, JSON body or `null`).
    pub fn get_json(&self, path: &str) -> Result<(u16, Value), AdapterError> {
        let this = self.clone();
        let path = path.to_owned();
        block_on(async move {
            let timeout = ms(this.settings.control_timeout_ms);
            let resp = this
                .send_retrying(
                    || this.request(reqwest::Method::GET, &path),
                    timeout,
                    Phase::Control,
                )
                .await?;
            let status = resp.status().as_u16();
            let bytes = tokio::time::timeout(timeout, resp.bytes())
                .await
                .map_err(|_| AdapterError::new(ErrorKind::Timeout, Phase::Control, "body timeout"))?
                .map_err(|e| classify(&e, Phase::Control))?;
            if bytes.len() > this.settings.max_frame_bytes {
                return Err(protocol(
                    Phase::Control,
                    "response body over the frame bound",
                ));
            }
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Ok((status, value))
        })
    }

    /// A control call: `POST path` with a JSON body → JSON (error statuses are errors).
    pub fn post_json(&self, path: &str, body: Value) -> Result<Value, AdapterError> {
        let this = self.clone();
        let path = path.to_owned();
        block_on(async move {
            let timeout = ms(this.settings.first_byte_timeout_ms);
            let resp = this
                .send_retrying(
                    || this.request(reqwest::Method::POST, &path).json(&body),
                    timeout,
                    Phase::Control,
                )
                .await?;
            let status = resp.status().as_u16();
            let bytes = tokio::time::timeout(timeout, resp.bytes())
                .await
                .map_err(|_| AdapterError::new(ErrorKind::Timeout, Phase::Control, "body timeout"))?
                .map_err(|e| classify(&e, Phase::Control))?;
            let text = String::from_utf8_lossy(&bytes);
            if !(200..300).contains(&status) {
                return Err(upstream_status(status, &text, Phase::Control));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| protocol(Phase::Control, format!("invalid JSON from the engine: {e}")))
        })
    }

    /// Starts a streaming `POST path` on the runtime: `Started` once the engine answered
    /// 2xx, then what `decoder` makes of each event, then its end, or one `Error`.
    pub fn stream<D: Decoder>(
        &self,
        path: &str,
        body: Value,
        engine_version: String,
        mut decoder: D,
        sink: <D::Out as Streamed>::Sink,
    ) -> StreamJob {
        let this = self.clone();
        let path = path.to_owned();
        let canceled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&canceled);
        let trace = D::Out::trace_context(&sink);
        let handle = runtime().spawn(async move {
            let fail = |e: AdapterError| {
                emit(&sink, &flag, D::Out::error(e));
            };
            let first_byte = ms(this.settings.first_byte_timeout_ms);
            let resp = match this
                .send_retrying(
                    || traced(this.request(reqwest::Method::POST, &path), &trace).json(&body),
                    first_byte,
                    Phase::BeforeFirstToken,
                )
                .await
            {
                Ok(resp) => resp,
                Err(e) => return fail(e),
            };
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                let text = tokio::time::timeout(first_byte, resp.text())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                return fail(upstream_status(status, &text, Phase::BeforeFirstToken));
            }
            if !emit(&sink, &flag, D::Out::started(engine_version)) {
                return;
            }
            let mut parser =
                SseParser::new(this.settings.max_line_bytes, this.settings.max_frame_bytes);
            let mut body = resp.bytes_stream();
            let idle = ms(this.settings.idle_timeout_ms);
            let mut phase = Phase::BeforeFirstToken;
            loop {
                let chunk = match tokio::time::timeout(idle, body.next()).await {
                    Err(_) => {
                        return fail(AdapterError::new(
                            ErrorKind::Timeout,
                            phase,
                            format!("the engine sent nothing for {} ms", idle.as_millis()),
                        ));
                    }
                    Ok(None) => {
                        match parser.finish().and_then(|tail| {
                            let mut out = Vec::new();
                            for ev in tail {
                                out.extend(decoder.on_data(&ev, phase)?);
                            }
                            out.extend(decoder.on_eof(phase)?);
                            Ok(out)
                        }) {
                            Ok(events) => {
                                for ev in events {
                                    if !emit(&sink, &flag, ev) {
                                        return;
                                    }
                                }
                            }
                            Err(e) => fail(e),
                        }
                        return;
                    }
                    Ok(Some(Err(e))) => return fail(classify(&e, phase)),
                    Ok(Some(Ok(bytes))) => bytes,
                };
                let events = match parser.push(&chunk) {
                    Ok(events) => events,
                    Err(e) => return fail(protocol(phase, e)),
                };
                for ev in events {
                    let out = match decoder.on_data(&ev, phase) {
                        Ok(out) => out,
                        Err(e) => return fail(e),
                    };
                    for event in out {
                        let terminal = event.is_terminal();
                        if event.is_output() {
                            phase = Phase::MidStream;
                        }
                        if !emit(&sink, &flag, event) || terminal {
                            return; // dropping the body closes the connection
                        }
                    }
                }
            }
        });
        StreamJob {
            abort: handle.abort_handle(),
            canceled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_fetched_once_and_a_failure_falls_back_without_caching() {
        use std::sync::atomic::AtomicU32;
        let cache = VersionCache::default();
        let fails = || {
            || {
                Err(AdapterError::new(
                    ErrorKind::Transport,
                    Phase::Control,
                    "down",
                ))
            }
        };
        assert_eq!(cache.get(fails, "unknown"), "unknown");
        let calls = Arc::new(AtomicU32::new(0));
        let fetcher = || {
            let calls = Arc::clone(&calls);
            move || {
                calls.fetch_add(1, Ordering::Relaxed);
                Ok("v1".to_owned())
            }
        };
        assert_eq!(cache.get(fetcher, "unknown"), "v1");
        assert_eq!(cache.get(fetcher, "unknown"), "v1");
        assert_eq!(cache.get(fails, "unknown"), "v1", "fresh: no fetch at all");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn backoff_is_full_jitter_capped_at_two_seconds() {
        for attempt in 1..10 {
            let cap = (100u64 << (attempt - 1).min(5)).min(2_000);
            for _ in 0..50 {
                assert!(backoff(attempt) <= ms(cap));
            }
        }
        assert!(
            (0..200).any(|_| backoff(5) > ms(1_000)),
            "spreads up to the cap"
        );
    }

    #[test]
    fn task_params_override_replica_defaults() {
        let mut body = serde_json::json!({"prompt": "x", "temperature": 1.0});
        let defaults: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"temperature": 0.5, "top_k": 40}"#).unwrap();
        merge_params(&mut body, &defaults, r#"{"temperature": 0.0}"#).unwrap();
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["top_k"], 40);
        let err = merge_params(&mut body, &defaults, "[1]").unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn urls_must_be_http() {
        let err = Upstream::new("ftp://x", HttpSettings::default(), None).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        let up = Upstream::new("http://h:1/", HttpSettings::default(), Some("sk".into())).unwrap();
        assert_eq!(up.url("/v1/models"), "http://h:1/v1/models");
        assert!(!format!("{up:?}").contains("sk"));
    }

    #[test]
    fn refused_connections_are_transport_failures_after_retries() {
        // A port nobody listens on: connect is refused at once, retried, then classified.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let settings = HttpSettings {
            max_attempts: 2,
            ..HttpSettings::default()
        };
        let up = Upstream::new(&format!("http://127.0.0.1:{port}"), settings, None).unwrap();
        let err = up.get_json("/health").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transport, "{err}");
        assert_eq!(err.phase, Phase::Control);
    }
}
