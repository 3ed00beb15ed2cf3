//! `orchestratord`: config → tracing → build → bind → serve → drain on SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use orchd_contracts::ErrorCode;
use orchd_host::config::{Cli, EXIT_CONFIG, Settings, dist_root_of};
use orchd_host::logline;
use orchd_host::logsink::LogSink;
use orchd_host::startup;
use orchd_host::trace::{self, TelemetrySettings};

/// mimalloc: per-thread free lists suit many small short-lived allocations (frames, JSON,
/// headers) better than glibc's arenas; docs/BENCHMARKS.md has the before and after.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log (JSON lines on stdout, filtered by `--log`) and, when an OTLP endpoint is
/// configured, the exporter of task traces (only the spans of [`trace::TARGET`]).
fn init_tracing(
    filter: &str,
    telemetry: &TelemetrySettings,
    runtime: tokio::runtime::Handle,
    sink: LogSink,
) -> Result<Option<trace::Exporter>, String> {
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid --log / ORCHD_LOG filter {filter:?}: {e}"))?;
    let log = fmt::layer()
        .fmt_fields(logline::SpanFields)
        .event_format(logline::JsonLine)
        .with_writer(sink)
        .with_filter(filter.and(filter_fn(|m| m.target() != trace::TARGET)));
    let (traces, exporter) = match trace::exporter(telemetry, runtime)? {
        Some((layer, exporter)) => (
            Some(layer.with_filter(filter_fn(|m| m.target() == trace::TARGET))),
            Some(exporter),
        ),
        None => (None, None),
    };
    tracing_subscriber::registry().with(log).with(traces).init();
    Ok(exporter)
}

fn fail(code: i32, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("orchestratord: {message}");
    ExitCode::from(code as u8)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Keys on the command line are visible to every local user (`ps`, /proc/*/cmdline); a
/// keys file others can read is no better.
fn warn_of_exposed_keys(cli: &Cli) {
    if std::env::args().any(|a| a == "--api-keys" || a.starts_with("--api-keys=")) {
        tracing::warn!(
            "API keys were given on the command line, where any local user can read them; use ORCHD_API_KEYS or --api-keys-file"
        );
    }
    #[cfg(unix)]
    if let Some(path) = &cli.api_keys_file {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the API keys file is readable by other users; make it 0600"
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let first = e.to_string();
            let line = first.lines().next().unwrap_or("invalid arguments");
            return fail(EXIT_CONFIG, line.trim_start_matches("error: "));
        }
    };
    let exe = std::env::current_exe().unwrap_or_default();
    let settings = match Settings::load(&cli, &dist_root_of(&exe)) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
    };
    // Log lines are written by the sink's own thread; what is logged before a panic or
    // the exit is out before the process ends.
    let sink = match LogSink::start(std::io::stdout()) {
        Ok(sink) => sink,
        Err(e) => return fail(1, format!("cannot start the log writer: {e}")),
    };
    let on_panic = sink.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        on_panic.flush(std::time::Duration::from_millis(200));
        default_hook(info);
    }));
    let exporter = match init_tracing(
        &cli.log,
        &settings.telemetry,
        runtime.handle().clone(),
        sink.clone(),
    ) {
        Ok(exporter) => exporter,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    warn_of_exposed_keys(&cli);
    if let Some(exporter) = &exporter {
        tracing::info!(endpoint = %exporter.endpoint, "exporting task traces over OTLP/HTTP");
    }
    let code = runtime.block_on(serve(settings));
    if let Some(exporter) = exporter {
        // The batch still held goes out; the exporter's requests run on the runtime.
        let _ = runtime.block_on(tokio::task::spawn_blocking(move || exporter.shutdown()));
    }
    sink.flush(std::time::Duration::from_secs(2));
    code
}

async fn serve(settings: Settings) -> ExitCode {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"), config = %settings.origin,
        adapters_dir = %settings.adapters_dir.display(), policies_dir = %settings.policies_dir.display(),
        "orchestratord starting"
    );
    if settings.api_keys.is_empty() {
        if settings.open_admin {
            tracing::warn!(
                "open mode WITH ADMIN (--insecure-open-admin): any local process can change policies, drain pools and edit the catalog; configure API keys instead"
            );
        } else {
            tracing::info!(
                "open mode (no API keys): loopback only, data endpoints only; admin endpoints need a key or --insecure-open-admin"
            );
        }
    }
    let addr = settings.addr;
    let state = match startup::build(settings) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "startup failed");
            return fail(e.exit_code(), e);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail(EXIT_CONFIG, format!("cannot bind {addr}: {e}")),
    };
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(addr = %bound, "listening");
    state.decisions.directory.advertise(
        state
            .settings
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{bound}")),
    );
    let drain_state = state.clone();
    let limits = orchd_host::server::Limits {
        header_read_timeout: state.settings.header_read_timeout,
        idle_timeout: state.settings.idle_timeout,
        max_header_bytes: state.settings.max_header_bytes,
        max_connections: state.settings.max_connections,
        max_h2_streams: state.settings.max_h2_streams,
    };
    let shutdown = async move {
        shutdown_signal().await;
        let grace = drain_state.settings.shutdown_grace;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutdown requested; refusing new tasks, draining streams"
        );
        drain_state.begin_shutdown();
        // Keep serving (new tasks get 503, /readyz is 503) while running tasks finish,
        // up to the grace period; then end the rest with a terminal frame so every
        // stream, and so every connection, can close.
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && !drain_state.tasks.live().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let n = drain_state
            .abort_all(ErrorCode::PoolUnavailable, "the daemon is shutting down")
            .await;
        tracing::info!(aborted = n, "drained; stopping");
        // Every transcript recorded so far reaches the disk before the process ends, and
        // every state-store write queued without waiting (final task records) is done.
        let artifacts = std::sync::Arc::clone(&drain_state.artifacts);
        let _ = tokio::task::spawn_blocking(move || artifacts.close()).await;
        let store = std::sync::Arc::clone(drain_state.store());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
            tracing::warn!(error = %e, "the state store's queued writes were not confirmed");
        }
    };
    orchd_host::server::serve(listener, orchd_host::app(state), limits, shutdown).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
