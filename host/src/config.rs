//! Configuration: parsed once, into types, before anything binds a port.
//!
//! Sources, weakest first: the embedded default (`config/default.toml`) or `--config FILE`,
//! then `ORCHD_*` environment variables and flags (clap binds each flag to its variable).
//! Unknown keys are rejected. Every problem is one [`ConfigError`] line; `main` exits 64.

mod file;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

pub use file::{pool_from_json, valid_id};

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("config/default.toml");

/// Exit status for bad flags or configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "orchestratord",
    version,
    about = "LLM inference orchestrator daemon"
)]
pub struct Cli {
    /// TOML configuration file (replaces the embedded default).
    #[arg(long, short = 'c', env = "ORCHD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve on (overrides `server.addr`).
    #[arg(long, env = "ORCHD_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Directory of adapter libraries (`*.so`).
    #[arg(long, env = "ORCHD_ADAPTERS_DIR")]
    pub adapters_dir: Option<PathBuf>,
    /// Directory of policy components (`*.wasm`).
    #[arg(long, env = "ORCHD_POLICIES_DIR")]
    pub policies_dir: Option<PathBuf>,
    /// Directory for precompiled policy components.
    #[arg(long, env = "ORCHD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// API keys as `name:role:key`, comma-separated (added to `[[auth.keys]]`). Give them
    /// through the environment or `--api-keys-file`: a command line is visible to every
    /// local user (`ps`), so this flag on argv logs a warning.
    #[arg(long, env = "ORCHD_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// A file of API keys, one `name:role:key` a line (`#` starts a comment); keep it 0600.
    #[arg(long, env = "ORCHD_API_KEYS_FILE", value_name = "PATH")]
    pub api_keys_file: Option<PathBuf>,
    /// A pool of one replica, `ID=ADAPTER@URL` (repeatable), e.g.
    /// `llama=llamacpp@http://127.0.0.1:8081`. Tasks name it with `model_ref` = ID. Without
    /// `--config` these replace the embedded default's pools.
    #[arg(long = "pool", value_name = "ID=ADAPTER@URL")]
    pub pools: Vec<String>,
    /// Without API keys (open mode), also allow the admin endpoints (policies, pools,
    /// drain, catalog). Open mode is data-only without it: any local process could
    /// otherwise reconfigure the daemon.
    #[arg(long, env = "ORCHD_INSECURE_OPEN_ADMIN")]
    pub insecure_open_admin: bool,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `orchd_host=debug`.
    #[arg(long, env = "ORCHD_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The daemon's settings, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub adapters_dir: PathBuf,
    pub policies_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_h2_streams: u32,
    pub queue_capacity: NonZeroU32,
    pub keep_alive: Duration,
    /// A client that drops its stream before the terminal frame cancels the task.
    pub cancel_on_disconnect: bool,
    /// How long a streamed task waits for a reader to come back before it is canceled.
    pub reconnect_grace: Duration,
    /// How long a stream token stays valid.
    pub stream_token_ttl: Duration,
    /// On SIGTERM/SIGINT, running streams get this long to finish.
    pub shutdown_grace: Duration,
    /// A dispatched task no client attached to within this long is canceled.
    pub attach_timeout: Duration,
    /// Replicas a task is tried on before its first output (retry-elsewhere).
    pub max_attempts: u32,
    /// Finished tasks stay streamable this long.
    pub retention: Duration,
    /// Memory finished tasks may hold together (`stream.retained_max_mib`).
    pub retained_max_bytes: usize,
    /// Frames a task's replay buffer holds (at least 16).
    pub replay_frames: usize,
    pub artifacts_dir: PathBuf,
    /// The model catalog's SQLite file.
    pub catalog_path: PathBuf,
    pub artifact_max_bytes: usize,
    /// Keep prompts in transcripts (default: redacted).
    pub transcript_include_prompt: bool,
    pub transcript_retention: crate::artifacts::TranscriptRetention,
    /// Sessions live this long after their last use.
    pub session_ttl: Duration,
    /// Tasks one session may run.
    pub session_max_turns: u32,
    pub max_sessions: usize,
    pub decode_idle_timeout: Duration,
    pub policy_limits: PolicyLimits,
    pub policies: PolicySettingsSet,
    /// API keys from `[[auth.keys]]` and `ORCHD_API_KEYS`; empty = open mode (loopback only).
    pub api_keys: Vec<ApiKeySettings>,
    /// Open mode may use the admin endpoints (`--insecure-open-admin`).
    pub open_admin: bool,
    /// Browser origins that may call the API.
    pub cors: CorsSettings,
    /// Where task traces are exported (OTLP/HTTP).
    pub telemetry: crate::trace::TelemetrySettings,
    /// `Host` values accepted in open mode besides loopback names.
    pub allowed_hosts: Vec<String>,
    pub budgets: BudgetSettings,
    /// When a replica that keeps failing leaves placement.
    pub outliers: crate::pool::OutlierSettings,
    pub rate_limits: RateLimits,
    /// Rate limits of tenant groups, by group name (keys name their group).
    pub rate_groups: std::collections::BTreeMap<String, RateLimits>,
    pub state: StateBackend,
    /// How long after its task's deadline an unsettled reservation is reaped.
    pub lease_margin: Duration,
    /// Where other daemons reach this one (`[state] advertise`; default the bound address).
    pub advertise: Option<String>,
    pub pools: Vec<PoolSettings>,
    /// Where the settings came from, for the startup log.
    pub origin: String,
}

/// CORS: the page origins that may call the API, and what a preflight answers.
#[derive(Debug, Clone, Default)]
pub struct CorsSettings {
    /// Lower-case `scheme://host[:port]`, or `*`.
    pub allowed_origins: Vec<String>,
    /// For `Access-Control-Allow-Methods` / `-Headers`.
    pub allowed_methods: String,
    pub allowed_headers: String,
    pub max_age_s: u32,
}

impl CorsSettings {
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || *o == origin)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PolicyLimits {
    pub timeout: Duration,
    pub memory_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// The component file, resolved against the policy directory.
    pub component: PathBuf,
    /// The policy's own configuration as JSON text, handed to its `init`.
    pub config_json: String,
    /// What the host does when the policy fails (placement only; the others are fixed by
    /// POLICIES.md: admission and budget fail closed, error mapping falls back).
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The request fails with `POLICY_UNAVAILABLE`.
    #[default]
    Fail,
    /// The host's least-loaded choice, counted in `policy_fallbacks_total`.
    Fallback,
}

#[derive(Debug, Clone)]
pub struct PolicySettingsSet {
    pub admission: PolicySettings,
    pub budget: PolicySettings,
    pub placement: PolicySettings,
    pub error_mapping: PolicySettings,
}

/// A budget: `None` = unlimited in that dimension; with a `period` it resets at each
/// window boundary (`"1h"`, `"1d"`, `"30d"`, `"month"` …), without one it never does.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetLimits {
    pub tokens: Option<u64>,
    pub time_ms: Option<u64>,
    pub cost: Option<f64>,
    #[serde(default, deserialize_with = "period")]
    pub period: Option<crate::store::Period>,
}

fn period<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::store::Period>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    crate::store::Period::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Rate limits of a key: requests and (estimated, then corrected) tokens per window,
/// and tasks running at once. `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub concurrent: Option<u64>,
    /// The window the counts are kept in (default one minute).
    #[serde(default = "minute")]
    pub window_ms: u64,
}

fn minute() -> u64 {
    60_000
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            requests: None,
            tokens: None,
            concurrent: None,
            window_ms: minute(),
        }
    }
}

impl RateLimits {
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none() && self.concurrent.is_none()
    }
}

/// Where budgets, rate limits and reservations live.
#[derive(Debug, Clone, PartialEq)]
pub enum StateBackend {
    Sqlite { path: PathBuf },
    Redis { url: String, prefix: String },
}

/// What a key may do: the data plane (its own tasks and sessions) or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Data,
    Admin,
}

/// One API key (never kept in plain text after parsing).
#[derive(Clone)]
pub struct ApiKeySettings {
    pub name: String,
    pub role: Role,
    pub sha256: [u8; 32],
    /// Overrides `rate_limits.per_key` for this key.
    pub rate: Option<RateLimits>,
    /// The tenant group whose rate limits the key shares, if any.
    pub group: Option<String>,
    /// Overrides `budgets.per_key` for this key.
    pub budget: Option<BudgetLimits>,
}

impl std::fmt::Debug for ApiKeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeySettings")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("fingerprint", &hex::encode(&self.sha256[..3]))
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct BudgetSettings {
    /// Budget of each API key (of the open-mode tenant when no keys are configured).
    pub per_key: BudgetLimits,
    /// Budget of each session.
    pub per_session: BudgetLimits,
    /// Budgets of a key on one model (`[[budgets.per_key_model]]`), on top of the key's.
    pub per_key_model: Vec<KeyModelBudget>,
}

/// A key's budget on one model: `key` is a key name or `"*"` (every key, each its own).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyModelBudget {
    pub key: String,
    pub model: String,
    pub tokens: Option<u64>,
    pub time_ms: Option<u64>,
    pub cost: Option<f64>,
    #[serde(default, deserialize_with = "period")]
    pub period: Option<crate::store::Period>,
}

impl KeyModelBudget {
    pub fn limits(&self) -> BudgetLimits {
        BudgetLimits {
            tokens: self.tokens,
            time_ms: self.time_ms,
            cost: self.cost,
            period: self.period,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub id: String,
    /// `None`: the first engine the adapter serves.
    pub engine: Option<String>,
    pub adapter: String,
    pub model_ref: String,
    /// `None`: what the engine reports.
    pub ctx_max: Option<u32>,
    /// How often replicas' health and props are polled.
    pub health_interval: Duration,
    pub queue_capacity: NonZeroU32,
    pub nominal_tokens_per_s: f64,
    pub nominal_first_token_ms: u64,
    /// Prompt tokens each replica's engine caches (`None`: slots × ctx_max).
    pub prefix_cache_tokens: Option<u32>,
    pub replicas: Vec<ReplicaSettings>,
}

#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub id: String,
    /// Devices the replica runs on (comma-separated ids), for placement's device mask.
    pub device_mask: Option<String>,
    /// The adapter's configuration as JSON text, handed to its constructor.
    pub adapter_config_json: String,
    /// Set when the pool manager starts and supervises the engine itself.
    pub launch: Option<LaunchSettings>,
}

/// How to start a replica's engine (`launch` in the config).
#[derive(Debug, Clone)]
pub struct LaunchSettings {
    pub cmd: PathBuf,
    /// `{model}` is replaced by the model file.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub model: String,
    pub ready_timeout: Duration,
}

impl Settings {
    /// Loads the settings from the CLI (flags and `ORCHD_*` variables) and the config file.
    /// `dist_root` anchors relative paths: the directory that holds `bin/`.
    /// Settings from a config file's text (what `--config` reads), with `cli`'s overrides.
    pub fn from_text(
        text: &str,
        cli: &Cli,
        base: &Path,
        origin: String,
    ) -> Result<Self, ConfigError> {
        let file = file::parse(text).map_err(|message| ConfigError::Parse {
            origin: origin.clone(),
            message,
        })?;
        file.into_settings(cli, base, origin)
    }

    pub fn load(cli: &Cli, dist_root: &Path) -> Result<Self, ConfigError> {
        let (text, origin) = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                (text, path.display().to_string())
            }
            None => (DEFAULT_TOML.to_owned(), "(embedded default)".to_owned()),
        };
        let file = file::parse(&text).map_err(|message| ConfigError::Parse {
            origin: origin.clone(),
            message,
        })?;
        // Relative paths in a file resolve against the file's directory; in the embedded
        // default, against the dist root.
        let base = match &cli.config {
            Some(path) => path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            None => dist_root.to_path_buf(),
        };
        file.into_settings(cli, &base, origin)
    }
}

/// The dist root for an executable at `<root>/bin/orchestratord`.
pub fn dist_root_of(exe: &Path) -> PathBuf {
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests;
