//! Distributed tracing: one OpenTelemetry trace per task, exported over OTLP/HTTP.
//!
//! A task's trace is a root span `task` (the child of a client's `traceparent`, when it
//! sent one) with, in order: `admission` (every policy decision is a span event naming the
//! policy's kind, name and version), `queue` (until a slot is leased), `dispatch` (the
//! lease and the hand-over to the adapter, and the placement of a retry), one `engine` per
//! attempt (the engine call; its context goes to HTTP engines as `traceparent`), and
//! `stream` (first output to the terminal frame).
//!
//! The spans are `tracing` spans of the target [`TARGET`]: the log never shows them, and
//! without an exporter no layer wants them, so each costs a disabled-callsite check.
//! Without an exporter a client's `traceparent` still goes on to the engine unchanged.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of task spans and policy-decision events.
pub const TARGET: &str = "orchd_trace";

/// Where traces go: `[telemetry]`, else the standard `OTEL_EXPORTER_OTLP_*` variables.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended), or its full traces
    /// URL. `None`: the environment decides.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME` wins).
    pub service_name: String,
}

impl TelemetrySettings {
    /// The traces URL: `[telemetry] otlp_endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// as given, else `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL, as the config's, gets
    /// `/v1/traces`). `None`: nothing is exported.
    fn traces_url(&self) -> Option<String> {
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let base = match (
            &self.otlp_endpoint,
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ) {
            (Some(url), _) => url.clone(),
            (None, Some(url)) => return Some(url),
            (None, None) => env("OTEL_EXPORTER_OTLP_ENDPOINT")?,
        };
        let base = base.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

/// The exporter's life: flushed and stopped at shutdown.
pub struct Exporter {
    provider: SdkTracerProvider,
    pub endpoint: String,
}

impl Exporter {
    /// Sends what is still batched and stops the exporter (blocking: call it off the async
    /// workers, while the runtime still runs).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "the last traces were not exported");
        }
    }
}

/// The `tracing` layer that exports task spans, and its exporter; `None` when no endpoint
/// is configured (neither `[telemetry] otlp_endpoint` nor `OTEL_EXPORTER_OTLP_*`).
pub fn exporter<S>(
    settings: &TelemetrySettings,
    runtime: tokio::runtime::Handle,
) -> Result<Option<(impl tracing_subscriber::Layer<S>, Exporter)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let Some(endpoint) = settings.traces_url() else {
        return Ok(None);
    };
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(10))
        .with_http_client(OtlpClient::new(runtime)?)
        .with_endpoint(endpoint.clone());
    let exporter = builder
        .build()
        .map_err(|e| format!("invalid OTLP exporter settings: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| settings.service_name.clone());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer("orchestratord");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_target(false);
    Ok(Some((layer, Exporter { provider, endpoint })))
}

/// The exporter's HTTP client: reqwest on the daemon's runtime. The batch processor calls
/// it from its own thread; the request runs on the runtime and the thread waits for it.
#[derive(Debug)]
struct OtlpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl OtlpClient {
    fn new(runtime: tokio::runtime::Handle) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let answer = self
            .runtime
            .spawn(async move {
                let resp = client.execute(request).await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let (status, headers, body) = answer;
        let mut response = opentelemetry_http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// The W3C trace context a request came with (`traceparent`, `tracestate`), if valid.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Incoming {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let Some(traceparent) = header("traceparent").filter(|v| valid_traceparent(v)) else {
            return Self::default();
        };
        Self {
            traceparent: Some(traceparent.to_ascii_lowercase()),
            tracestate: header("tracestate")
                .filter(|v| !v.is_empty() && v.len() <= 512)
                .map(str::to_owned),
        }
    }
}

/// `version-traceid-parentid-flags` (W3C Trace Context level 1): lower-case hex, ids not
/// all zeros, version `ff` invalid; a later version may append fields after a `-`.
pub fn valid_traceparent(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() < 55 || (b.len() > 55 && (b[..2] == *b"00" || b[55] != b'-')) {
        return false;
    }
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let zeros = |r: std::ops::Range<usize>| b[r].iter().all(|&c| c == b'0');
    hex(0..2)
        && !b[..2].eq_ignore_ascii_case(b"ff")
        && b[2] == b'-'
        && hex(3..35)
        && !zeros(3..35)
        && b[35] == b'-'
        && hex(36..52)
        && !zeros(36..52)
        && b[52] == b'-'
        && hex(53..55)
}

/// What an engine call carries on: `traceparent` and `tracestate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Propagated {
    pub traceparent: String,
    pub tracestate: String,
}

/// A task's spans. Each part ends when the next begins or the task ends; the root ends
/// with the task (a span is exported once its last handle is dropped).
pub struct TaskTrace {
    /// Whether anything records the task's spans (an exporter is configured).
    recorded: bool,
    incoming: Incoming,
    parts: Mutex<Parts>,
}

#[derive(Default)]
struct Parts {
    /// `None` once the task ended.
    root: Option<Span>,
    queue: Option<Span>,
    dispatch: Option<Span>,
    engine: Option<Span>,
    stream: Option<Span>,
}

impl TaskTrace {
    /// The root span of a task, the child of the client's trace when it sent one.
    pub fn start(incoming: Incoming, correlation_id: &str, model_ref: &str) -> Self {
        let root = tracing::info_span!(
            target: TARGET, parent: None, "task",
            otel.kind = "server",
            task_id = tracing::field::Empty,
            model_ref,
            correlation_id,
            pool_id = tracing::field::Empty,
            replica_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            error_code = tracing::field::Empty,
            tokens_out = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if !root.is_disabled()
            && let Some(traceparent) = &incoming.traceparent
        {
            let mut carrier = HeaderMap::new();
            if let Ok(v) = traceparent.parse() {
                carrier.insert("traceparent", v);
            }
            if let Some(v) = incoming.tracestate.as_deref().and_then(|s| s.parse().ok()) {
                carrier.insert("tracestate", v);
            }
            let cx = TraceContextPropagator::new()
                .extract(&opentelemetry_http::HeaderExtractor(&carrier));
            let _ = root.set_parent(cx);
        }
        Self {
            recorded: !root.is_disabled(),
            incoming,
            parts: Mutex::new(Parts {
                root: Some(root),
                ..Parts::default()
            }),
        }
    }

    /// A trace that records nothing (tests, internal tasks).
    pub fn none() -> Self {
        Self {
            recorded: false,
            incoming: Incoming::default(),
            parts: Mutex::new(Parts::default()),
        }
    }

    /// The root span (a disabled one once the task ended).
    pub fn root(&self) -> Span {
        self.parts().root.clone().unwrap_or_else(Span::none)
    }

    /// A child of the root; `None` when nothing records, or the task ended.
    fn child(&self, make: impl FnOnce(&Span) -> Span) -> Option<Span> {
        if !self.recorded {
            return None;
        }
        self.parts().root.as_ref().map(make)
    }

    /// The admission span (entered by the caller for the admission's duration).
    pub fn admission(&self) -> Span {
        self.child(|root| tracing::info_span!(target: TARGET, parent: root, "admission"))
            .unwrap_or_else(Span::none)
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task joined a queue.
    pub fn queued(&self, pool_id: &str, priority: &str) {
        let span = self.child(|root| {
            root.record("pool_id", pool_id);
            tracing::info_span!(target: TARGET, parent: root, "queue", pool_id, priority)
        });
        if span.is_some() {
            self.parts().queue = span;
        }
    }

    /// Runs `f` inside the queue span (placement's dispatch-stage decision for the head).
    pub fn in_queue<T>(&self, f: impl FnOnce() -> T) -> T {
        let span = self.parts().queue.clone();
        match span {
            Some(span) => span.in_scope(f),
            None => f(),
        }
    }

    /// A slot was leased (or, for a retry, is being looked for): the queue wait is over
    /// and the hand-over to an adapter begins.
    pub fn dispatching(&self, pool_id: &str, attempt: u32) -> Span {
        let Some(span) = self.child(
            |root| tracing::info_span!(target: TARGET, parent: root, "dispatch", pool_id, attempt),
        ) else {
            return Span::none();
        };
        let mut parts = self.parts();
        parts.queue = None;
        parts.dispatch = Some(span.clone());
        span
    }

    /// The engine call of one attempt begins (the dispatch span ends). What the adapter
    /// sends the engine as its trace context comes with it.
    pub fn engine_call(&self, pool_id: &str, replica_id: &str, attempt: u32) -> (Span, Propagated) {
        let Some(span) = self.child(|root| {
            root.record("replica_id", replica_id);
            tracing::info_span!(
                target: TARGET, parent: root, "engine",
                otel.kind = "client", pool_id, replica_id, attempt,
                outcome = tracing::field::Empty,
            )
        }) else {
            return (Span::none(), self.passed_on());
        };
        let sc = span.context().span().span_context().clone();
        let propagated = if sc.is_valid() {
            Propagated {
                traceparent: format!(
                    "00-{}-{}-{:02x}",
                    sc.trace_id(),
                    sc.span_id(),
                    sc.trace_flags().to_u8()
                ),
                tracestate: sc.trace_state().header(),
            }
        } else {
            self.passed_on()
        };
        let mut parts = self.parts();
        parts.queue = None;
        parts.dispatch = None;
        parts.engine = Some(span.clone());
        (span, propagated)
    }

    /// The client's own context, unchanged (when no span of ours is recorded).
    fn passed_on(&self) -> Propagated {
        Propagated {
            traceparent: self.incoming.traceparent.clone().unwrap_or_default(),
            tracestate: self.incoming.tracestate.clone().unwrap_or_default(),
        }
    }

    /// The engine call of an attempt ended (`outcome`: `ok`, or why not).
    pub fn engine_ended(&self, outcome: &str) {
        if let Some(span) = self.parts().engine.take() {
            span.record("outcome", outcome);
        }
    }

    /// The first output reached the task: the stream to the client begins.
    pub fn streaming(&self) {
        if !self.recorded {
            return;
        }
        let mut parts = self.parts();
        if parts.stream.is_none()
            && let Some(root) = &parts.root
        {
            parts.stream = Some(tracing::info_span!(
                target: TARGET, parent: root, "stream",
                tokens_out = tracing::field::Empty,
            ));
        }
    }

    /// The task ended: every span still open ends with it.
    pub fn finish(&self, outcome: &str, error_code: Option<&str>, tokens_out: u32) {
        if !self.recorded {
            return;
        }
        let parts = std::mem::take(&mut *self.parts());
        if let Some(stream) = &parts.stream {
            stream.record("tokens_out", tokens_out);
        }
        if let Some(root) = &parts.root {
            root.record("outcome", outcome);
            root.record("tokens_out", tokens_out);
            if let Some(code) = error_code {
                root.record("error_code", code);
                root.record("otel.status_code", "ERROR");
            }
        }
        // Every part ends here, and the root with them unless admission still holds it.
        drop(parts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `f` with a subscriber that records task spans in memory; the finished spans.
    fn recorded(f: impl FnOnce()) -> Vec<SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target() == TARGET
            }));
        let log = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::EnvFilter::new("info").and(
                tracing_subscriber::filter::filter_fn(|m| m.target() != TARGET),
            ));
        let subscriber = tracing_subscriber::registry().with(log).with(layer);
        tracing::subscriber::with_default(subscriber, f);
        exporter.get_finished_spans().unwrap()
    }

    #[test]
    fn every_stage_is_a_child_of_the_task_and_the_task_ends_with_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let mut propagated = Propagated::default();
        let spans = recorded(|| {
            let trace = TaskTrace::start(Incoming::from_headers(&headers), "c", "m");
            {
                let root = trace.root();
                let admission = trace.admission();
                let _in = admission.enter();
                tracing::info!(target: TARGET, policy = "admission", version = "1", "policy decision");
                root.record("task_id", "t1");
            }
            trace.queued("p", "interactive");
            let log_span = {
                let admission = trace.admission();
                let _in = admission.enter();
                tracing::info_span!("task", task_id = "t1")
            };
            trace.in_queue(|| {
                tracing::info!(target: TARGET, policy = "placement", "policy decision");
            });
            trace.dispatching("p", 1);
            let (engine, p) = trace.engine_call("p", "r", 1);
            propagated = p;
            trace.streaming();
            trace.finish("succeeded", None, 3);
            drop(engine);
            trace.engine_ended("ok");
            drop(log_span);
        });
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        let task = spans
            .iter()
            .find(|s| s.name == "task")
            .unwrap_or_else(|| panic!("the task span ended: {names:?}"));
        assert_eq!(
            task.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(task.parent_span_id.to_string(), "00f067aa0ba902b7");
        for name in ["admission", "queue", "dispatch", "engine", "stream"] {
            let s = spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} in {names:?}"));
            assert_eq!(s.parent_span_id, task.span_context.span_id(), "{name}");
        }
        let engine = spans.iter().find(|s| s.name == "engine").unwrap();
        assert_eq!(
            propagated.traceparent,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                engine.span_context.span_id()
            )
        );
        let queue = spans.iter().find(|s| s.name == "queue").unwrap();
        assert_eq!(queue.events.len(), 1, "{queue:?}");
    }

    #[test]
    fn a_configured_base_url_gets_the_traces_path_once() {
        let with = |url: &str| TelemetrySettings {
            otlp_endpoint: Some(url.to_owned()),
            service_name: "s".into(),
        };
        if std::env::var("OTEL_SDK_DISABLED").is_ok() {
            return; // the environment turns export off; nothing to resolve
        }
        for url in ["http://c:4318", "http://c:4318/", "http://c:4318/v1/traces"] {
            assert_eq!(
                with(url).traces_url().as_deref(),
                Some("http://c:4318/v1/traces")
            );
        }
    }

    #[test]
    fn traceparent_syntax() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(ok));
        // A later version may append fields.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?} passed");
        }
    }

    #[test]
    fn without_an_exporter_the_clients_context_is_passed_on_unchanged() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "vendor=x".parse().unwrap());
        let trace = TaskTrace::start(Incoming::from_headers(&headers), "c", "m");
        let (_span, propagated) = trace.engine_call("p", "r", 1);
        assert_eq!(
            propagated,
            Propagated {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: "vendor=x".into(),
            }
        );
        let mut bad = HeaderMap::new();
        bad.insert("traceparent", "nonsense".parse().unwrap());
        bad.insert("tracestate", "vendor=x".parse().unwrap());
        let trace = TaskTrace::start(Incoming::from_headers(&bad), "c", "m");
        assert_eq!(trace.engine_call("p", "r", 1).1, Propagated::default());
    }
}
