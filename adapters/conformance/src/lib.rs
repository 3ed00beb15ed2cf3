//! The adapter conformance kit: loads a `.so` through the same loader as the daemon (ABI
//! version and layout checked) and drives it the way the daemon does. Each check is a
//! [`Check`] with a verdict and what was seen.
//!
//! Checks: identity; a bad config is refused with a `Config` error; health and props;
//! stream order (`Started`, tokens, exactly one `End`, nothing after it, `tokens_out`
//! consistent); cancel before the first token, mid-stream and after the end; for an HTTP
//! engine (a config with a `url`), through the kit's fault proxy ([`faults`]): an engine 5xx
//! before the first token, a malformed line, an oversized line, a connection cut mid-stream
//! and a stall past the idle timeout, each a classified failure; and, when the caller gives
//! the configs that provoke them, a contained panic and classified failures of an
//! unreachable engine.

pub mod faults;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchd_host::adapters::{
    Adapter, AdapterRegistry, EngineClient, EngineEvent, FailureKind, JobSpec,
};
use tokio::sync::mpsc;

/// What to check a library with.
#[derive(Debug, Clone)]
pub struct Plan {
    /// A replica config under which the engine serves.
    pub config: String,
    pub prompt: String,
    /// Tokens asked for in the stream-order check.
    pub max_tokens: u32,
    /// A config whose `submit` panics inside the adapter (the check is skipped without one).
    pub panic_config: Option<String>,
    /// A config pointing at an engine that is not there (skipped without one).
    pub unreachable_config: Option<String>,
    /// A config under which the adapter panics mid-stream, inside its own thread (skipped
    /// without one): the stream must end (the sink dropped) without an `End`, and the
    /// library keep serving.
    pub panic_mid_stream_config: Option<String>,
    /// How long a stream may take.
    pub timeout: Duration,
}

impl Plan {
    pub fn new(config: impl Into<String>) -> Self {
        Self {
            config: config.into(),
            prompt: "The quick brown fox".into(),
            max_tokens: 8,
            panic_config: None,
            unreachable_config: None,
            panic_mid_stream_config: None,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    /// `None` = skipped (what the plan did not provide).
    pub passed: Option<bool>,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed != Some(false))
    }

    fn record(&mut self, name: &'static str, result: Result<String, String>) {
        let (passed, detail) = match result {
            Ok(d) => (Some(true), d),
            Err(d) => (Some(false), d),
        };
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.checks.push(Check {
            name,
            passed: None,
            detail: why.to_owned(),
        });
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let verdict = match c.passed {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "skip",
            };
            out.push_str(&format!("{verdict:4}  {:<22} {}\n", c.name, c.detail));
        }
        out
    }
}

fn job(plan: &Plan, max_tokens: u32, seed: u64) -> JobSpec {
    JobSpec {
        task_id: format!("conformance-{seed}"),
        model: String::new(),
        prompt: plan.prompt.clone(),
        max_tokens,
        seed,
        params_json: String::new(),
        inputs: None,
        chat: None,
        trace: orchd_host::trace::Propagated {
            traceparent: KIT_TRACEPARENT.to_owned(),
            tracestate: KIT_TRACESTATE.to_owned(),
        },
    }
}

/// The trace context every job of the kit carries (ABI 0.1.4's `trace_context`).
const KIT_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const KIT_TRACESTATE: &str = "kit=1";

/// A client of the plan's config with its `url` pointed at `proxy` (and `extra` merged).
async fn client_via(
    adapter: &Arc<dyn Adapter>,
    plan: &Plan,
    proxy: &str,
    extra: serde_json::Value,
) -> Result<Arc<dyn EngineClient>, String> {
    let config = rewritten(&plan.config, proxy, extra)?;
    let adapter = Arc::clone(adapter);
    blocking(move || adapter.new_client(&config))
        .await?
        .map_err(|e| format!("config refused: {e}"))
}

/// The engine request of a job carries the job's trace context as `traceparent` and
/// `tracestate` (checked at the fault proxy, which answers 500).
async fn trace_context(
    adapter: &Arc<dyn Adapter>,
    plan: &Plan,
    upstream: &str,
) -> Result<String, String> {
    let (proxy, seen) = faults::start_seeing(upstream, faults::Fault::Status500).await?;
    let client = client_via(adapter, plan, &proxy, serde_json::json!({})).await?;
    let (tx, mut rx) = mpsc::channel(256);
    let spec = job(plan, plan.max_tokens, 22);
    let c = Arc::clone(&client);
    if let Ok(_job) = blocking(move || c.submit(spec, tx)).await? {
        collect(&mut rx, plan.timeout).await?;
    }
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let want = (KIT_TRACEPARENT.to_owned(), KIT_TRACESTATE.to_owned());
    match seen.first() {
        Some(first) if *first == want => {
            Ok("the engine request carried traceparent and tracestate".to_owned())
        }
        Some((tp, ts)) => Err(format!(
            "the engine request carried traceparent {tp:?} and tracestate {ts:?}, not the task's (send sink.trace_context() as headers, ABI 0.1.4)"
        )),
        None => Err("no streaming request reached the engine".to_owned()),
    }
}

/// A two-turn conversation with a system message, as a chat job.
fn chat_job(plan: &Plan, max_tokens: u32, seed: u64) -> JobSpec {
    use orchd_contracts::chat::{ChatMessage, Content, Role};
    let message = |role, text: &str| ChatMessage {
        role,
        content: Some(Content::Text(text.to_owned())),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        refusal: None,
    };
    JobSpec {
        chat: Some(Arc::new(orchd_host::adapters::ChatJob {
            messages: vec![
                message(Role::System, "Answer briefly."),
                message(Role::User, &plan.prompt),
            ],
            ..Default::default()
        })),
        ..job(plan, max_tokens, seed)
    }
}

/// A chat job streams `Started`, at least one delta, then one `End` with a finish reason.
async fn chat(client: &Arc<dyn EngineClient>, plan: &Plan) -> Result<String, String> {
    let spec = chat_job(plan, plan.max_tokens, 5);
    let events = run_job(Arc::clone(client), spec, plan.timeout).await?;
    started_first(&events)?;
    let deltas = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Delta(_)))
        .count();
    match events.last() {
        Some(EngineEvent::End(end)) if deltas > 0 => Ok(format!(
            "Started, {deltas} deltas, End (finish_reason {:?}, usage in/out {:?}/{:?})",
            end.finish_reason, end.tokens_in, end.tokens_out
        )),
        last => Err(format!("{deltas} deltas, then {last:?}")),
    }
}

/// Runs every check against the library at `lib`. Must run inside a tokio runtime.
pub async fn run(lib: &Path, plan: &Plan) -> Report {
    let mut report = Report::default();
    let adapter = match AdapterRegistry::load_file(lib) {
        Ok(a) => a,
        Err(e) => {
            report.record("load", Err(format!("{}: {e}", lib.display())));
            return report;
        }
    };
    let info = adapter.info().clone();
    report.record(
        "load",
        if info.name.is_empty() || info.engines.is_empty() {
            Err(format!("name {:?}, engines {:?}", info.name, info.engines))
        } else {
            Ok(format!(
                "{} {} (ABI {}), engines {:?}",
                info.name, info.version, info.abi_version, info.engines
            ))
        },
    );
    report.record("bad config refused", bad_config(adapter.as_ref()).await);
    let client = {
        let adapter = Arc::clone(&adapter);
        let config = plan.config.clone();
        match tokio::task::spawn_blocking(move || adapter.new_client(&config)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                report.record("client", Err(format!("the plan's config was refused: {e}")));
                return report;
            }
            Err(e) => {
                report.record("client", Err(format!("new_client did not return: {e}")));
                return report;
            }
        }
    };
    report.record("health and props", health_props(&client).await);
    report.record("stream order", stream_order(&client, plan).await);
    if info.features.iter().any(|f| f == "tokenize") {
        report.record("tokenize", tokenize(&client, plan).await);
    } else {
        report.skip("tokenize", "the adapter does not declare the feature");
    }
    if info.features.iter().any(|f| f == "chat") {
        report.record("chat", chat(&client, plan).await);
    } else {
        report.skip("chat", "the adapter does not declare the feature");
    }
    report.record(
        "cancel before the first token",
        cancel_before_first_token(&client, plan).await,
    );
    report.record("cancel", cancel(&client, plan).await);
    report.record(
        "cancel after the end",
        cancel_after_end(&client, plan).await,
    );
    faults_checks(&mut report, &adapter, plan).await;
    match &plan.panic_config {
        Some(config) => report.record(
            "contained panic",
            panic(adapter.as_ref(), config, plan).await,
        ),
        None => report.skip("contained panic", "no panic config in the plan"),
    }
    match &plan.panic_mid_stream_config {
        Some(config) => report.record(
            "panic mid-stream",
            panic_mid_stream(adapter.as_ref(), config, &client, plan).await,
        ),
        None => report.skip("panic mid-stream", "no panic-mid-stream config in the plan"),
    }
    match &plan.unreachable_config {
        Some(config) => report.record(
            "classified errors",
            unreachable(adapter.as_ref(), config, plan).await,
        ),
        None => report.skip("classified errors", "no unreachable config in the plan"),
    }
    report
}

/// Loads `lib`, makes a client from `config` and streams one job to its end: every event
/// the adapter delivered (for tests of how an adapter reports a misbehaving engine).
pub async fn events_of(
    lib: &Path,
    config: &str,
    max_tokens: u32,
    timeout: Duration,
) -> Result<Vec<EngineEvent>, String> {
    let spec = job(&Plan::new(config), max_tokens, 1);
    run_job(client_of(lib, config)?, spec, timeout).await
}

/// Loads `lib`, makes a client from `config` and streams one chat job to its end: every
/// event the adapter delivered.
pub async fn chat_events_of(
    lib: &Path,
    config: &str,
    chat: orchd_host::adapters::ChatJob,
    max_tokens: u32,
    timeout: Duration,
) -> Result<Vec<EngineEvent>, String> {
    let spec = JobSpec {
        chat: Some(Arc::new(chat)),
        ..job(&Plan::new(config), max_tokens, 1)
    };
    run_job(client_of(lib, config)?, spec, timeout).await
}

fn client_of(lib: &Path, config: &str) -> Result<Arc<dyn EngineClient>, String> {
    AdapterRegistry::load_file(lib)?
        .new_client(config)
        .map_err(|e| format!("config refused: {e}"))
}

/// Submits `spec` (as a chat when it carries a conversation) and collects its events; the
/// job lives until they are in.
async fn run_job(
    client: Arc<dyn EngineClient>,
    spec: JobSpec,
    timeout: Duration,
) -> Result<Vec<EngineEvent>, String> {
    let (tx, mut rx) = mpsc::channel(256);
    let chat = spec.chat.is_some();
    let _job = blocking(move || {
        if chat {
            client.submit_chat(spec, tx)
        } else {
            client.submit(spec, tx)
        }
    })
    .await?
    .map_err(|e| {
        format!(
            "{} failed: {e}",
            if chat { "submit_chat" } else { "submit" }
        )
    })?;
    collect(&mut rx, timeout).await
}

fn started_first(events: &[EngineEvent]) -> Result<(), String> {
    match events.first() {
        Some(EngineEvent::Started { .. }) => Ok(()),
        first => Err(format!("first event is not Started: {first:?}")),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the call did not return: {e}"))
}

async fn bad_config(adapter: &dyn Adapter) -> Result<String, String> {
    let bogus = r#"{"orchd_conformance_unknown_field": true}"#;
    match adapter.new_client(bogus) {
        Err(e) if e.kind == FailureKind::Config => Ok(format!("Config: {}", e.message)),
        Err(e) => Err(format!(
            "refused, but as {:?} (want Config): {}",
            e.kind, e.message
        )),
        Ok(_) => Err("a config with an unknown field was accepted".into()),
    }
}

async fn health_props(client: &Arc<dyn EngineClient>) -> Result<String, String> {
    let c = Arc::clone(client);
    let (health, props) = blocking(move || (c.health(), c.props())).await?;
    let health = health.map_err(|e| format!("health failed: {e}"))?;
    if !(health.live && health.ready) {
        return Err(format!("not ready: {}", health.message));
    }
    let props = props.map_err(|e| format!("props failed: {e}"))?;
    if props.slots_total == 0 || props.engine_version.is_empty() || props.ctx_max == 0 {
        return Err(format!("implausible props: {props:?}"));
    }
    Ok(format!(
        "ready; {} slots, ctx {}, {}",
        props.slots_total, props.ctx_max, props.engine_version
    ))
}

/// Every event of one job, until the adapter drops its sender or `timeout`.
async fn collect(
    rx: &mut mpsc::Receiver<EngineEvent>,
    timeout: Duration,
) -> Result<Vec<EngineEvent>, String> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => return Ok(events),
            Err(_) => {
                return Err(format!(
                    "the stream did not end within {} s ({} events)",
                    timeout.as_secs(),
                    events.len()
                ));
            }
        }
    }
}

async fn tokenize(client: &Arc<dyn EngineClient>, plan: &Plan) -> Result<String, String> {
    let (c, text) = (Arc::clone(client), plan.prompt.clone());
    let ids = blocking(move || c.tokenize(&text))
        .await?
        .map_err(|e| format!("tokenize failed: {e}"))?;
    if ids.is_empty() {
        return Err("no tokens for a non-empty prompt".into());
    }
    Ok(format!("{} tokens for the prompt", ids.len()))
}

async fn stream_order(client: &Arc<dyn EngineClient>, plan: &Plan) -> Result<String, String> {
    let spec = job(plan, plan.max_tokens, 7);
    let events = run_job(Arc::clone(client), spec, plan.timeout).await?;
    started_first(&events)?;
    let tokens = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Token(_)))
        .count() as u32;
    let ends: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, EngineEvent::End(_) | EngineEvent::Error(_)))
        .map(|(i, _)| i)
        .collect();
    match (ends.as_slice(), events.last()) {
        ([at], Some(EngineEvent::End(end))) if *at == events.len() - 1 => {
            let tokens_out = &end.tokens_out.unwrap_or(0);
            if tokens == 0 || tokens > plan.max_tokens {
                return Err(format!(
                    "{tokens} tokens for max_tokens {}",
                    plan.max_tokens
                ));
            }
            if *tokens_out < tokens {
                return Err(format!(
                    "End says {tokens_out} tokens, {tokens} were streamed"
                ));
            }
            Ok(format!(
                "Started, {tokens} tokens, End (tokens_out {tokens_out})"
            ))
        }
        _ => Err(format!(
            "want exactly one terminal End, last: {:?}",
            events.last()
        )),
    }
}

async fn cancel(client: &Arc<dyn EngineClient>, plan: &Plan) -> Result<String, String> {
    let (tx, mut rx) = mpsc::channel(256);
    let (c, spec) = (Arc::clone(client), job(plan, 100_000, 11));
    let job = blocking(move || c.submit(spec, tx))
        .await?
        .map_err(|e| format!("submit failed: {e}"))?;
    // Wait for the first token, then cancel.
    let deadline = tokio::time::Instant::now() + plan.timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(EngineEvent::Token(_))) => break,
            Ok(Some(EngineEvent::Started { .. })) => {}
            Ok(other) => return Err(format!("no token before {other:?}")),
            Err(_) => return Err("no token in time".into()),
        }
    }
    let started = Instant::now();
    let job: Arc<dyn orchd_host::adapters::EngineJob> = Arc::from(job);
    let j = Arc::clone(&job);
    blocking(move || j.cancel())
        .await?
        .map_err(|e| format!("cancel failed: {e}"))?;
    let returned = started.elapsed();
    // Events already in flight may arrive; then the adapter must let go of the stream.
    let rest = collect(&mut rx, Duration::from_secs(2))
        .await
        .map_err(|e| format!("after cancel: {e}"))?;
    if rest.iter().any(|e| matches!(e, EngineEvent::End { .. })) {
        return Err("an End followed the cancel".into());
    }
    blocking(move || job.cancel())
        .await?
        .map_err(|e| format!("a second cancel failed: {e}"))?;
    Ok(format!(
        "cancel returned in {} ms; stream released after {} more events; idempotent",
        returned.as_millis(),
        rest.len()
    ))
}

async fn panic(adapter: &dyn Adapter, config: &str, plan: &Plan) -> Result<String, String> {
    let client = adapter
        .new_client(config)
        .map_err(|e| format!("the panic config was refused: {e}"))?;
    let (tx, mut rx) = mpsc::channel(16);
    let spec = job(plan, 4, 3);
    let c = Arc::clone(&client);
    let failure = match blocking(move || c.submit(spec, tx)).await? {
        Err(e) => e,
        Ok(_job) => match collect(&mut rx, plan.timeout).await?.pop() {
            Some(EngineEvent::Error(e)) => e,
            other => return Err(format!("no failure after the panic: {other:?}")),
        },
    };
    if failure.kind != FailureKind::Panic {
        return Err(format!("failure of kind {:?}, want Panic", failure.kind));
    }
    // Still usable afterwards.
    let c = Arc::clone(&client);
    blocking(move || c.health())
        .await?
        .map_err(|e| format!("health after the panic failed: {e}"))?;
    Ok(format!("contained: {}", failure.message))
}

async fn unreachable(adapter: &dyn Adapter, config: &str, plan: &Plan) -> Result<String, String> {
    let client = adapter
        .new_client(config)
        .map_err(|e| format!("the unreachable config was refused: {e}"))?;
    let c = Arc::clone(&client);
    let health = blocking(move || c.health()).await?;
    match &health {
        Ok(h) if h.ready => return Err("an unreachable engine reported ready".into()),
        Err(e) if !matches!(e.kind, FailureKind::Transport | FailureKind::Timeout) => {
            return Err(format!("health failure classified {:?}", e.kind));
        }
        _ => {}
    }
    let (tx, mut rx) = mpsc::channel(16);
    let spec = job(plan, 4, 5);
    let c = Arc::clone(&client);
    let failure = match blocking(move || c.submit(spec, tx)).await? {
        Err(e) => e,
        Ok(_job) => match collect(&mut rx, plan.timeout).await?.pop() {
            Some(EngineEvent::Error(e)) => e,
            other => return Err(format!("no failure from an unreachable engine: {other:?}")),
        },
    };
    match failure.kind {
        FailureKind::Transport | FailureKind::Timeout => Ok(format!(
            "health not ready; submit failed as {:?} ({:?})",
            failure.kind, failure.phase
        )),
        other => Err(format!(
            "submit failure classified {other:?}, want Transport"
        )),
    }
}

/// An HTTP engine config's `url` (the fault checks need one).
fn engine_url(config: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(config).ok()?;
    v["url"]
        .as_str()
        .filter(|u| u.starts_with("http://"))
        .map(str::to_owned)
}

/// `config` with `url` replaced, and `extra` fields merged over it.
fn rewritten(config: &str, url: &str, extra: serde_json::Value) -> Result<String, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("the config is not JSON: {e}"))?;
    v["url"] = serde_json::json!(url);
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in more {
            match (obj.get_mut(k), x) {
                (Some(serde_json::Value::Object(inner)), serde_json::Value::Object(add)) => {
                    inner.extend(add.clone())
                }
                _ => {
                    obj.insert(k.clone(), x.clone());
                }
            }
        }
    }
    Ok(v.to_string())
}

/// One job through the fault proxy: the stream must end with an error of one of `want`
/// (classified, not a hang and not a crash), with nothing after it.
async fn fault(
    adapter: &Arc<dyn Adapter>,
    plan: &Plan,
    upstream: &str,
    fault: faults::Fault,
    extra: serde_json::Value,
    want: &[FailureKind],
) -> Result<String, String> {
    let proxy = faults::start(upstream, fault).await?;
    let client = client_via(adapter, plan, &proxy, extra).await?;
    let (tx, mut rx) = mpsc::channel(256);
    let spec = job(plan, plan.max_tokens.max(8), 21);
    let c = Arc::clone(&client);
    let events = match blocking(move || c.submit(spec, tx)).await? {
        // Refused at submit: the failure is the answer.
        Err(f) => vec![EngineEvent::Error(f)],
        Ok(_job) => collect(&mut rx, plan.timeout).await?,
    };
    let tokens = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Token(_) | EngineEvent::Delta(_)))
        .count();
    match events.last() {
        Some(EngineEvent::Error(f)) if want.contains(&f.kind) => Ok(format!(
            "{:?} in phase {:?} after {tokens} tokens: {}",
            f.kind,
            f.phase,
            f.message.chars().take(80).collect::<String>()
        )),
        Some(EngineEvent::Error(f)) => Err(format!(
            "classified as {:?} (want one of {want:?}): {}",
            f.kind, f.message
        )),
        other => Err(format!("the stream ended with {other:?}, not an error")),
    }
}

/// The fault checks, run through the kit's fault proxy when the config names an HTTP
/// engine (`url`).
async fn faults_checks(report: &mut Report, adapter: &Arc<dyn Adapter>, plan: &Plan) {
    const NAMES: [&str; 7] = [
        "engine 5xx before the first token",
        "malformed line",
        "oversized line",
        "connection cut mid-stream",
        "stall past the idle timeout",
        "engine error mid-stream",
        "trace context to the engine",
    ];
    let Some(upstream) = engine_url(&plan.config) else {
        for name in NAMES {
            report.skip(
                name,
                "the config has no http:// url to put the fault proxy on",
            );
        }
        return;
    };
    use faults::Fault;
    report.record(NAMES[6], trace_context(adapter, plan, &upstream).await);
    let none = serde_json::json!({});
    report.record(
        NAMES[0],
        fault(
            adapter,
            plan,
            &upstream,
            Fault::Status500,
            none.clone(),
            &[FailureKind::Upstream, FailureKind::Transport],
        )
        .await,
    );
    report.record(
        NAMES[1],
        fault(
            adapter,
            plan,
            &upstream,
            Fault::Malformed,
            none.clone(),
            &[FailureKind::Protocol],
        )
        .await,
    );
    report.record(
        NAMES[2],
        fault(
            adapter,
            plan,
            &upstream,
            Fault::Oversized,
            none.clone(),
            &[FailureKind::Protocol],
        )
        .await,
    );
    report.record(
        NAMES[3],
        fault(
            adapter,
            plan,
            &upstream,
            Fault::Reset,
            none,
            &[FailureKind::Transport, FailureKind::Protocol],
        )
        .await,
    );
    // An adapter that does not know the engine's error frames still fails it, as Protocol.
    report.record(
        NAMES[5],
        fault(
            adapter,
            plan,
            &upstream,
            Fault::EngineError,
            serde_json::json!({}),
            &[FailureKind::Upstream, FailureKind::Protocol],
        )
        .await,
    );
    // The stall needs an idle timeout shorter than the kit's: adapters on the HTTP helper
    // take `http.idle_timeout_ms`; one that refuses it is skipped.
    let short = serde_json::json!({"http": {"idle_timeout_ms": 1500}});
    let accepts = rewritten(&plan.config, &upstream, short.clone())
        .ok()
        .is_some_and(|c| adapter.new_client(&c).is_ok());
    if accepts {
        report.record(
            NAMES[4],
            fault(
                adapter,
                plan,
                &upstream,
                Fault::Stall,
                short,
                &[
                    FailureKind::Timeout,
                    FailureKind::Stall,
                    FailureKind::Transport,
                ],
            )
            .await,
        );
    } else {
        report.skip(
            NAMES[4],
            "the adapter takes no http.idle_timeout_ms to shorten its idle timeout",
        );
    }
}

/// Cancel right after submit, before any token: the adapter lets go of the stream
/// promptly, without an `End`.
async fn cancel_before_first_token(
    client: &Arc<dyn EngineClient>,
    plan: &Plan,
) -> Result<String, String> {
    let (tx, mut rx) = mpsc::channel(256);
    let (c, spec) = (Arc::clone(client), job(plan, 100_000, 12));
    let job: Arc<dyn orchd_host::adapters::EngineJob> = Arc::from(
        blocking(move || c.submit(spec, tx))
            .await?
            .map_err(|e| format!("submit failed: {e}"))?,
    );
    let j = Arc::clone(&job);
    blocking(move || j.cancel())
        .await?
        .map_err(|e| format!("cancel failed: {e}"))?;
    let events = collect(&mut rx, Duration::from_secs(5))
        .await
        .map_err(|e| format!("after an early cancel: {e}"))?;
    if events.iter().any(|e| matches!(e, EngineEvent::End { .. })) {
        return Err("an End followed the cancel".into());
    }
    Ok(format!("stream released after {} events", events.len()))
}

/// Cancel after the job ended: harmless (no panic, prompt), as when a client cancels a
/// task that just finished.
async fn cancel_after_end(client: &Arc<dyn EngineClient>, plan: &Plan) -> Result<String, String> {
    let (tx, mut rx) = mpsc::channel(256);
    let (c, spec) = (Arc::clone(client), job(plan, 2, 13));
    let job: Arc<dyn orchd_host::adapters::EngineJob> = Arc::from(
        blocking(move || c.submit(spec, tx))
            .await?
            .map_err(|e| format!("submit failed: {e}"))?,
    );
    let events = collect(&mut rx, plan.timeout).await?;
    if !matches!(events.last(), Some(EngineEvent::End(_))) {
        return Err(format!("the job did not end: {:?}", events.last()));
    }
    let started = Instant::now();
    blocking(move || job.cancel())
        .await?
        .map_err(|e| format!("cancel after the end failed: {e}"))?;
    Ok(format!("returned in {} ms", started.elapsed().as_millis()))
}

/// A panic inside the adapter's own thread mid-stream: the stream ends (the sink is
/// dropped) without an `End` instead of hanging, and the library serves the next job.
async fn panic_mid_stream(
    adapter: &dyn Adapter,
    config: &str,
    healthy: &Arc<dyn EngineClient>,
    plan: &Plan,
) -> Result<String, String> {
    let client = adapter
        .new_client(config)
        .map_err(|e| format!("the panic-mid-stream config was refused: {e}"))?;
    let events = run_job(client, job(plan, plan.max_tokens.max(8), 14), plan.timeout).await?;
    if events.iter().any(|e| matches!(e, EngineEvent::End(_))) {
        return Err("an End arrived: the adapter did not panic mid-stream".into());
    }
    let tokens = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Token(_)))
        .count();
    let after = run_job(Arc::clone(healthy), job(plan, 2, 15), plan.timeout).await?;
    if !matches!(after.last(), Some(EngineEvent::End(_))) {
        return Err(format!("the next job did not end: {:?}", after.last()));
    }
    Ok(format!(
        "the stream ended after {tokens} tokens without an End; the next job ran"
    ))
}
