//! The TOML file's shape (unknown keys rejected) and its conversion into [`Settings`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    ApiKeySettings, BudgetLimits, BudgetSettings, Cli, ConfigError, CorsSettings, LaunchSettings,
    OnError, PolicyLimits, PolicySettings, PolicySettingsSet, PoolSettings, RateLimits,
    ReplicaSettings, Role, Settings, StateBackend,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    paths: PathsFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    queue: QueueFile,
    #[serde(default)]
    stream: StreamFile,
    #[serde(default)]
    policies: PoliciesFile,
    #[serde(default)]
    budgets: BudgetsFile,
    #[serde(default)]
    rate_limits: RateLimitsFile,
    #[serde(default)]
    outliers: OutliersFile,
    #[serde(default)]
    state: StateFile,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    sessions: SessionsFile,
    #[serde(default)]
    artifacts: ArtifactsFile,
    #[serde(default)]
    transcripts: TranscriptsFile,
    #[serde(default)]
    cors: CorsFile,
    #[serde(default)]
    telemetry: TelemetryFile,
    #[serde(default)]
    pools: Vec<PoolFile>,
}

/// Where task traces go (OTLP/HTTP); without an endpoint here or in
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, nothing is exported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TelemetryFile {
    /// The collector's base URL, e.g. `http://127.0.0.1:4318` (`/v1/traces` is appended).
    otlp_endpoint: Option<String>,
    service_name: String,
}

impl Default for TelemetryFile {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "orchestratord".to_owned(),
        }
    }
}

/// Which browser pages may call the API. A request whose `Origin` is not listed is
/// refused, so a page on another site cannot reach the daemon (not even with a "simple"
/// request that needs no preflight).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CorsFile {
    /// `scheme://host[:port]` of each allowed page origin, or `"*"` for any (never with
    /// open mode's admin).
    allowed_origins: Vec<String>,
    allowed_methods: Vec<String>,
    allowed_headers: Vec<String>,
    max_age_s: u32,
}

impl Default for CorsFile {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "POST", "DELETE"].map(String::from).to_vec(),
            allowed_headers: [
                "content-type",
                "authorization",
                "x-api-key",
                "last-event-id",
                "x-session-id",
                "x-priority",
                "x-deadline-ms",
                "x-correlation-id",
            ]
            .map(String::from)
            .to_vec(),
            max_age_s: 600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SessionsFile {
    ttl_ms: NonZeroU32,
    max_turns: NonZeroU32,
    /// Live sessions the daemon holds at most; a new one past it gets 503.
    max_sessions: NonZeroU32,
}

impl Default for SessionsFile {
    fn default() -> Self {
        Self {
            ttl_ms: NonZeroU32::new(600_000).expect("non-zero"),
            max_turns: NonZeroU32::new(8).expect("non-zero"),
            max_sessions: NonZeroU32::new(100_000).expect("non-zero"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ArtifactsFile {
    /// Largest artifact document; a bigger `POST /v1/artifacts` is answered 413.
    max_bytes: NonZeroU32,
}

impl Default for ArtifactsFile {
    fn default() -> Self {
        Self {
            max_bytes: NonZeroU32::new(512 * 1024).expect("non-zero"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TranscriptsFile {
    /// Keep prompts in transcripts (default: redacted).
    include_prompt: bool,
    /// Transcripts older than this are deleted.
    retention_days: NonZeroU32,
    /// Past this much, the oldest transcripts are deleted.
    max_mib: NonZeroU32,
    /// Transcripts waiting to be written at most; past it one is dropped and counted.
    queue: NonZeroU32,
}

impl Default for TranscriptsFile {
    fn default() -> Self {
        Self {
            include_prompt: false,
            retention_days: NonZeroU32::new(30).expect("non-zero"),
            max_mib: NonZeroU32::new(1024).expect("non-zero"),
            queue: NonZeroU32::new(4096).expect("non-zero"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    keys: Vec<KeyFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: String,
    role: Role,
    /// The key itself, or
    #[serde(default)]
    key: Option<String>,
    /// its SHA-256 (hex), so the config file need not hold the secret.
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    budget: Option<BudgetLimits>,
    #[serde(default)]
    rate: Option<RateLimits>,
    /// The tenant group whose rate limits (`[rate_limits.groups.<name>]`) the key shares.
    #[serde(default)]
    group: Option<String>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(super) fn digest_for_tests(key: &str) -> [u8; 32] {
    digest(key)
}

fn digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// `[[auth.keys]]`, plus `--api-keys-file` (one `name:role:key` a line; `#` comments)
/// and `ORCHD_API_KEYS` (`name:role:key,…`), validated.
fn api_keys(
    file: &[KeyFile],
    env: Option<&str>,
    keys_file: Option<&Path>,
) -> Result<Vec<ApiKeySettings>, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let mut keys = Vec::new();
    for k in file {
        let sha256 = match (&k.key, &k.sha256) {
            (Some(key), None) if !key.is_empty() => digest(key),
            (None, Some(hex_digest)) => {
                let bytes = hex::decode(hex_digest)
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| {
                        invalid(format!(
                            "auth.keys {:?}: sha256 must be 64 hex characters",
                            k.name
                        ))
                    })?;
                bytes.try_into().expect("32 bytes")
            }
            _ => {
                return Err(invalid(format!(
                    "auth.keys {:?}: give exactly one of key or sha256",
                    k.name
                )));
            }
        };
        keys.push(ApiKeySettings {
            name: k.name.clone(),
            role: k.role,
            sha256,
            budget: k.budget,
            rate: k.rate,
            group: k.group.clone(),
        });
    }
    let from_file = match keys_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("--api-keys-file {}: {e}", path.display())))?,
        None => String::new(),
    };
    let file_entries = from_file.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| {
            let at = format!("--api-keys-file line {}", i + 1);
            (at, line)
        })
    });
    let env_entries = env
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, item)| (format!("ORCHD_API_KEYS entry {}", i + 1), item));
    for (at, item) in file_entries.chain(env_entries) {
        let mut parts = item.splitn(3, ':');
        let (Some(name), Some(role), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid(format!("{at} must be name:role:key")));
        };
        let role = match role {
            "data" => Role::Data,
            "admin" => Role::Admin,
            _ => {
                return Err(invalid(format!(
                    "{at} ({name}): role must be data or admin"
                )));
            }
        };
        if key.is_empty() {
            return Err(invalid(format!("{at} ({name}): empty key")));
        }
        keys.push(ApiKeySettings {
            name: name.to_owned(),
            role,
            sha256: digest(key),
            budget: None,
            rate: None,
            group: None,
        });
    }
    let mut names = HashSet::new();
    for k in &keys {
        if !valid_id(&k.name) {
            return Err(invalid(format!(
                "API key name {:?} must be 1-128 chars of [A-Za-z0-9._:-]",
                k.name
            )));
        }
        if !names.insert(k.name.clone()) {
            return Err(invalid(format!(
                "API key name {:?} is declared twice",
                k.name
            )));
        }
    }
    Ok(keys)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetsFile {
    #[serde(default)]
    per_key: BudgetLimits,
    #[serde(default)]
    per_session: BudgetLimits,
    #[serde(default)]
    per_key_model: Vec<crate::config::KeyModelBudget>,
}

/// Outlier ejection: when a replica that keeps failing leaves placement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OutliersFile {
    /// Failures in a row that eject a replica (0: this rule is off).
    consecutive_failures: u32,
    /// Share of failed runs within `window_ms` that ejects a replica, once at least
    /// `min_requests` ended in it (above 1: this rule is off).
    error_rate: f64,
    min_requests: u32,
    window_ms: NonZeroU32,
    /// The first ejection's length; each failed probe doubles it, up to `max_ejection_ms`.
    base_ejection_ms: NonZeroU32,
    max_ejection_ms: NonZeroU32,
}

impl Default for OutliersFile {
    fn default() -> Self {
        let d = crate::pool::OutlierSettings::default();
        let ms = |d: Duration| NonZeroU32::new(d.as_millis() as u32).expect("non-zero");
        Self {
            consecutive_failures: d.consecutive_failures,
            error_rate: d.error_rate,
            min_requests: d.min_requests,
            window_ms: ms(d.window),
            base_ejection_ms: ms(d.base_ejection),
            max_ejection_ms: ms(d.max_ejection),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitsFile {
    #[serde(default)]
    per_key: RateLimits,
    /// Limits shared by every key of a tenant group (`group = "<name>"` on a key), on top
    /// of each key's own.
    #[serde(default)]
    groups: std::collections::BTreeMap<String, RateLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StateFile {
    /// `sqlite` (embedded, default) or `redis`.
    backend: String,
    /// The SQLite file (relative: to the config file's directory).
    path: String,
    /// `redis://host:port/db` for the redis backend.
    url: Option<String>,
    /// Prefix of every Redis key (daemons sharing one Redis for different clusters).
    prefix: String,
    /// A reservation left unsettled is settled at its reserved amount this long after
    /// its task's deadline (its daemon died).
    lease_margin_ms: u64,
    /// This daemon's address as other daemons sharing the store reach it (they relay
    /// requests for its live tasks there), e.g. `http://10.0.0.5:8080`. Default: the
    /// bound address.
    advertise: Option<String>,
}

impl Default for StateFile {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
            path: "var/state.sqlite".into(),
            url: None,
            prefix: "orchd:".into(),
            lease_margin_ms: 60_000,
            advertise: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerFile {
    addr: SocketAddr,
    /// `Host` header values accepted besides loopback names (`localhost`, `127.0.0.1`,
    /// `[::1]`, any port) while the daemon runs open: other hosts are refused, which defeats
    /// DNS rebinding.
    allowed_hosts: Vec<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PathsFile {
    adapters: PathBuf,
    policies: PathBuf,
    cache: PathBuf,
    artifacts: PathBuf,
    catalog: PathBuf,
}

impl Default for PathsFile {
    fn default() -> Self {
        Self {
            adapters: "adapters".into(),
            policies: "policies".into(),
            cache: "var/cache".into(),
            artifacts: "var/artifacts".into(),
            catalog: "var/catalog.sqlite".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsFile {
    max_body_bytes: usize,
    /// A client must send its whole request head within this (slowloris defence).
    header_read_timeout_ms: NonZeroU32,
    /// A connection with no request in progress for this long is closed.
    idle_timeout_ms: NonZeroU32,
    /// Largest request head; more is answered 431.
    max_header_bytes: usize,
    /// A request body must arrive whole within this (a trickled body is answered 408).
    body_read_timeout_ms: NonZeroU32,
    /// Open connections at most; one more is answered 503 and closed.
    max_connections: NonZeroU32,
    /// Concurrent streams per HTTP/2 connection.
    max_h2_streams: NonZeroU32,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            header_read_timeout_ms: NonZeroU32::new(10_000).expect("non-zero"),
            idle_timeout_ms: NonZeroU32::new(75_000).expect("non-zero"),
            max_header_bytes: 64 * 1024,
            body_read_timeout_ms: NonZeroU32::new(30_000).expect("non-zero"),
            max_connections: NonZeroU32::new(8192).expect("non-zero"),
            max_h2_streams: NonZeroU32::new(256).expect("non-zero"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct QueueFile {
    capacity: NonZeroU32,
}

impl Default for QueueFile {
    fn default() -> Self {
        Self {
            capacity: NonZeroU32::new(256).expect("non-zero"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StreamFile {
    keep_alive_ms: NonZeroU32,
    decode_idle_timeout_ms: NonZeroU32,
    cancel_on_disconnect: bool,
    /// A streamed task is canceled once no reader has been attached for this long (a
    /// reconnect with Last-Event-ID within it resumes the task).
    reconnect_grace_ms: u32,
    /// How long a stream token (`?token=` for EventSource) stays valid.
    token_ttl_ms: NonZeroU32,
    shutdown_grace_ms: u32,
    /// A dispatched task no client attached to within this long is canceled.
    attach_timeout_ms: NonZeroU32,
    /// Finished tasks stay streamable (full replay) this long.
    retention_ms: u32,
    /// Memory finished tasks may hold together; past it the oldest are forgotten early.
    retained_max_mib: NonZeroU32,
    /// Frames a task's replay buffer holds.
    replay_frames: NonZeroU32,
    /// Replicas a task is tried on when it fails before its first output and the
    /// error-mapping policy says another replica may take it: its pool's first, then a
    /// free one of another pool serving its model (1 = never retried).
    max_attempts: NonZeroU32,
}

impl Default for StreamFile {
    fn default() -> Self {
        Self {
            keep_alive_ms: NonZeroU32::new(15_000).expect("non-zero"),
            decode_idle_timeout_ms: NonZeroU32::new(30_000).expect("non-zero"),
            cancel_on_disconnect: true,
            reconnect_grace_ms: 5_000,
            token_ttl_ms: NonZeroU32::new(300_000).expect("non-zero"),
            shutdown_grace_ms: 30_000,
            attach_timeout_ms: NonZeroU32::new(30_000).expect("non-zero"),
            retention_ms: 60_000,
            retained_max_mib: NonZeroU32::new(256).expect("non-zero"),
            replay_frames: NonZeroU32::new(4096).expect("non-zero"),
            max_attempts: NonZeroU32::new(3).expect("non-zero"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PoliciesFile {
    timeout_ms: NonZeroU32,
    memory_mib: NonZeroU32,
    admission: PolicyFile,
    budget: PolicyFile,
    placement: PolicyFile,
    error_mapping: PolicyFile,
}

impl Default for PoliciesFile {
    fn default() -> Self {
        Self {
            timeout_ms: NonZeroU32::new(5).expect("non-zero"),
            memory_mib: NonZeroU32::new(64).expect("non-zero"),
            admission: PolicyFile::named("admission-default.wasm"),
            budget: PolicyFile::named("budget-default.wasm"),
            placement: PolicyFile::named("placement-default.wasm"),
            error_mapping: PolicyFile::named("error-mapping-default.wasm"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    component: PathBuf,
    /// Opaque to the host: the policy validates it in `init`.
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    on_error: OnError,
}

impl PolicyFile {
    fn named(component: &str) -> Self {
        Self {
            component: component.into(),
            config: toml::Table::new(),
            on_error: OnError::Fail,
        }
    }

    fn settings(&self, kind: &str, dir: &Path) -> Result<PolicySettings, ConfigError> {
        if kind != "placement" && self.on_error != OnError::Fail {
            return Err(ConfigError::Invalid(format!(
                "policies.{kind}.on_error: only placement may fall back (admission and budget fail closed; error mapping always falls back to the built-in table)"
            )));
        }
        Ok(PolicySettings {
            component: resolve(dir, &self.component),
            config_json: table_to_json(&self.config),
            on_error: self.on_error,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    pub id: String,
    /// Default: the first engine the adapter serves.
    #[serde(default)]
    pub engine: Option<String>,
    pub adapter: String,
    /// Default: the pool id.
    #[serde(default)]
    pub model_ref: Option<String>,
    /// Default: what the engine reports (4096 when it cannot be asked).
    #[serde(default)]
    pub ctx_max: Option<u32>,
    /// How often every replica's health and props are asked for.
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: NonZeroU32,
    #[serde(default)]
    pub queue_capacity: Option<NonZeroU32>,
    /// Rates assumed until the pool has measured its own (conservative by default).
    #[serde(default = "default_nominal_tps")]
    pub nominal_tokens_per_s: f64,
    #[serde(default = "default_nominal_ftt")]
    pub nominal_first_token_ms: u64,
    /// Prompt tokens each replica's engine keeps cached, for prefix-aware placement's
    /// memory of what it sent where. Default: slots × ctx_max (the KV cache of its slots).
    #[serde(default)]
    pub prefix_cache_tokens: Option<NonZeroU32>,
    pub replicas: Vec<ReplicaFile>,
}

/// One `[[pools]]` entry, validated: ids (unique among `pool_ids` and `replica_ids`, which
/// it extends), replicas, rates; relative launch paths resolve against `base`.
fn pool_settings(
    pool: PoolFile,
    base: &Path,
    default_capacity: NonZeroU32,
    pool_ids: &mut HashSet<String>,
    replica_ids: &mut HashSet<String>,
) -> Result<PoolSettings, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    if !valid_id(&pool.id) {
        return Err(invalid(format!(
            "pool id {:?} must be 1-128 chars of [A-Za-z0-9._:-]",
            pool.id
        )));
    }
    if !pool_ids.insert(pool.id.clone()) {
        return Err(invalid(format!("pool id {:?} is declared twice", pool.id)));
    }
    if pool.replicas.is_empty() {
        return Err(invalid(format!("pool {:?} has no replicas", pool.id)));
    }
    if !(pool.nominal_tokens_per_s.is_finite() && pool.nominal_tokens_per_s > 0.0) {
        return Err(invalid(format!(
            "pool {:?}: nominal_tokens_per_s must be > 0",
            pool.id
        )));
    }
    let mut replicas = Vec::with_capacity(pool.replicas.len());
    for r in pool.replicas {
        if !valid_id(&r.id) {
            return Err(invalid(format!(
                "pool {:?}: replica id {:?} must be 1-128 chars of [A-Za-z0-9._:-]",
                pool.id, r.id
            )));
        }
        if !replica_ids.insert(r.id.clone()) {
            return Err(invalid(format!("replica id {:?} is declared twice", r.id)));
        }
        let launch = r.launch.map(|l| LaunchSettings {
            cmd: resolve(base, &l.cmd),
            args: l.args,
            env: l
                .env
                .into_iter()
                .map(|(k, v)| {
                    let value = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, value)
                })
                .collect(),
            model: l.model,
            ready_timeout: Duration::from_millis(l.ready_timeout_ms.get().into()),
        });
        replicas.push(ReplicaSettings {
            id: r.id,
            device_mask: r.device_mask,
            adapter_config_json: table_to_json(&r.config),
            launch,
        });
    }
    Ok(PoolSettings {
        queue_capacity: pool.queue_capacity.unwrap_or(default_capacity),
        model_ref: pool.model_ref.unwrap_or_else(|| pool.id.clone()),
        id: pool.id,
        engine: pool.engine,
        adapter: pool.adapter,
        ctx_max: pool.ctx_max,
        health_interval: Duration::from_millis(pool.health_interval_ms.get().into()),
        nominal_tokens_per_s: pool.nominal_tokens_per_s,
        nominal_first_token_ms: pool.nominal_first_token_ms,
        prefix_cache_tokens: pool.prefix_cache_tokens.map(NonZeroU32::get),
        replicas,
    })
}

/// A pool created through the API (`POST /v1/pools`): the body is one `[[pools]]` entry as
/// JSON. Launching engine processes is for the config file only (the API never runs a
/// command). `pool_ids` and `replica_ids` are the ids in use.
pub fn pool_from_json(
    body: serde_json::Value,
    default_capacity: NonZeroU32,
    mut pool_ids: HashSet<String>,
    mut replica_ids: HashSet<String>,
) -> Result<PoolSettings, String> {
    // An optional field is left out, never `null` (as everywhere in the API).
    let nulls = |v: &serde_json::Value, at: &str| -> Result<(), String> {
        for (k, x) in v.as_object().into_iter().flatten() {
            if x.is_null() {
                return Err(format!("{at}{k}: null is not a value; leave the field out"));
            }
        }
        Ok(())
    };
    nulls(&body, "")?;
    for (i, r) in body["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        nulls(r, &format!("replicas[{i}]."))?;
    }
    let pool: PoolFile = serde_json::from_value(body).map_err(|e| e.to_string())?;
    if pool.replicas.iter().any(|r| r.launch.is_some()) {
        return Err(
            "replicas[].launch: engine processes are launched from the config file only".into(),
        );
    }
    pool_settings(
        pool,
        Path::new("/"),
        default_capacity,
        &mut pool_ids,
        &mut replica_ids,
    )
    .map_err(|e| e.to_string())
}

fn default_health_interval() -> NonZeroU32 {
    NonZeroU32::new(2_000).expect("non-zero")
}

/// A pool of one replica from `--pool ID=ADAPTER@URL`: engine from the adapter, model_ref
/// = ID, replica `ID-0` with adapter config `{"url": URL}`.
pub(super) fn quick_pool(spec: &str) -> Result<PoolFile, String> {
    let bad = |why: &str| format!("--pool {spec:?}: {why} (expected ID=ADAPTER@URL)");
    let (id, rest) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (adapter, url) = rest.split_once('@').ok_or_else(|| bad("no '@'"))?;
    if !valid_id(id) {
        return Err(bad("ID must be 1-128 chars of [A-Za-z0-9._:-]"));
    }
    if adapter.is_empty() {
        return Err(bad("ADAPTER is empty"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("URL must start with http:// or https://"));
    }
    let mut config = toml::Table::new();
    config.insert("url".into(), toml::Value::String(url.to_owned()));
    Ok(PoolFile {
        id: id.to_owned(),
        engine: None,
        adapter: adapter.to_owned(),
        model_ref: None,
        ctx_max: None,
        health_interval_ms: default_health_interval(),
        queue_capacity: None,
        nominal_tokens_per_s: default_nominal_tps(),
        nominal_first_token_ms: default_nominal_ftt(),
        prefix_cache_tokens: None,
        replicas: vec![ReplicaFile {
            id: format!("{id}-0"),
            device_mask: None,
            config,
            launch: None,
        }],
    })
}

fn default_nominal_tps() -> f64 {
    10.0
}

fn default_nominal_ftt() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    pub id: String,
    #[serde(default)]
    pub device_mask: Option<String>,
    /// Opaque to the host: the adapter validates it in its constructor.
    #[serde(default)]
    pub config: toml::Table,
    /// The pool manager starts and supervises the engine process.
    #[serde(default)]
    pub launch: Option<LaunchFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchFile {
    /// The engine's executable.
    pub cmd: PathBuf,
    /// Arguments; `{model}` is replaced by the model file.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: toml::Table,
    /// The model file the engine starts on (`file:/abs`, or a path).
    pub model: String,
    /// How long a (re)started engine may take to become ready.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_ms: NonZeroU32,
}

fn default_ready_timeout() -> NonZeroU32 {
    NonZeroU32::new(60_000).expect("non-zero")
}

/// Parses TOML into the file shape; the error is one line with the line number.
pub(super) fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

/// Ids: 1–128 chars of `[A-Za-z0-9._:-]` (API.md §0).
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn table_to_json(table: &toml::Table) -> String {
    serde_json::to_string(table).expect("a TOML table is always valid JSON")
}

impl FileConfig {
    pub(super) fn into_settings(
        self,
        cli: &Cli,
        base: &Path,
        origin: String,
    ) -> Result<Settings, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let policies_dir = cli
            .policies_dir
            .clone()
            .unwrap_or_else(|| resolve(base, &self.paths.policies));
        if self.limits.max_body_bytes < 1024 {
            return Err(invalid(
                "limits.max_body_bytes must be at least 1024".into(),
            ));
        }
        // `--pool` adds pools; without a config file they replace the embedded default's.
        let mut file_pools = self.pools;
        if !cli.pools.is_empty() {
            let quick = cli
                .pools
                .iter()
                .map(|spec| quick_pool(spec))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            if cli.config.is_none() {
                file_pools = quick;
            } else {
                file_pools.extend(quick);
            }
        }
        if file_pools.is_empty() {
            return Err(invalid(
                "no pools configured: add at least one [[pools]]".into(),
            ));
        }
        let mut pool_ids = HashSet::new();
        let mut replica_ids = HashSet::new();
        let mut pools = Vec::with_capacity(file_pools.len());
        for pool in file_pools {
            pools.push(pool_settings(
                pool,
                base,
                self.queue.capacity,
                &mut pool_ids,
                &mut replica_ids,
            )?);
        }
        let addr = cli.addr.unwrap_or(self.server.addr);
        let api_keys = api_keys(
            &self.auth.keys,
            cli.api_keys.as_deref(),
            cli.api_keys_file.as_deref(),
        )?;
        for (name, group) in &self.rate_limits.groups {
            if !valid_id(name) {
                return Err(invalid(format!(
                    "rate_limits.groups: group name {name:?} must be 1-128 chars of [A-Za-z0-9._:-]"
                )));
            }
            if group.window_ms == 0 {
                return Err(invalid(format!(
                    "rate_limits.groups.{name}: window_ms must be at least 1"
                )));
            }
        }
        for k in &api_keys {
            if let Some(g) = &k.group
                && !self.rate_limits.groups.contains_key(g)
            {
                return Err(invalid(format!(
                    "auth.keys {:?}: group {g:?} is not defined; add [rate_limits.groups.{g}]",
                    k.name
                )));
            }
        }
        if api_keys.is_empty() && !addr.ip().is_loopback() {
            return Err(invalid(format!(
                "serving on non-loopback {addr} needs API keys ([[auth.keys]] or ORCHD_API_KEYS); open mode is loopback-only"
            )));
        }
        let cors = CorsSettings {
            allowed_origins: self
                .cors
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            allowed_methods: self.cors.allowed_methods.join(", "),
            allowed_headers: self.cors.allowed_headers.join(", "),
            max_age_s: self.cors.max_age_s,
        };
        if api_keys.is_empty()
            && cli.insecure_open_admin
            && cors.allowed_origins.iter().any(|o| o == "*")
        {
            return Err(invalid(
                "cors.allowed_origins = [\"*\"] with --insecure-open-admin would let any web page administer the daemon"
                    .to_owned(),
            ));
        }
        if let Some(url) = &self.telemetry.otlp_endpoint
            && !url.starts_with("http://")
        {
            return Err(invalid(format!(
                "telemetry.otlp_endpoint {url:?}: give an http:// URL of an OTLP/HTTP collector (e.g. a local OpenTelemetry Collector, which forwards over TLS)"
            )));
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name is empty".to_owned()));
        }
        Ok(Settings {
            addr,
            cors,
            telemetry: crate::trace::TelemetrySettings {
                otlp_endpoint: self.telemetry.otlp_endpoint.clone(),
                service_name: self.telemetry.service_name.clone(),
            },
            allowed_hosts: self
                .server
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            open_admin: cli.insecure_open_admin,
            api_keys,
            adapters_dir: cli
                .adapters_dir
                .clone()
                .unwrap_or_else(|| resolve(base, &self.paths.adapters)),
            cache_dir: cli
                .cache_dir
                .clone()
                .unwrap_or_else(|| resolve(base, &self.paths.cache)),
            max_body_bytes: self.limits.max_body_bytes,
            header_read_timeout: Duration::from_millis(
                self.limits.header_read_timeout_ms.get().into(),
            ),
            max_header_bytes: self.limits.max_header_bytes,
            idle_timeout: Duration::from_millis(self.limits.idle_timeout_ms.get().into()),
            body_read_timeout: Duration::from_millis(self.limits.body_read_timeout_ms.get().into()),
            max_connections: self.limits.max_connections.get() as usize,
            max_h2_streams: self.limits.max_h2_streams.get(),
            queue_capacity: self.queue.capacity,
            keep_alive: Duration::from_millis(self.stream.keep_alive_ms.get().into()),
            cancel_on_disconnect: self.stream.cancel_on_disconnect,
            reconnect_grace: Duration::from_millis(self.stream.reconnect_grace_ms.into()),
            stream_token_ttl: Duration::from_millis(self.stream.token_ttl_ms.get().into()),
            session_ttl: Duration::from_millis(self.sessions.ttl_ms.get().into()),
            session_max_turns: self.sessions.max_turns.get(),
            max_sessions: self.sessions.max_sessions.get() as usize,
            shutdown_grace: Duration::from_millis(self.stream.shutdown_grace_ms.into()),
            attach_timeout: Duration::from_millis(self.stream.attach_timeout_ms.get().into()),
            max_attempts: self.stream.max_attempts.get(),
            retention: Duration::from_millis(self.stream.retention_ms.into()),
            retained_max_bytes: self.stream.retained_max_mib.get() as usize * 1024 * 1024,
            replay_frames: self.stream.replay_frames.get().max(16) as usize,
            artifacts_dir: resolve(base, &self.paths.artifacts),
            catalog_path: resolve(base, &self.paths.catalog),
            artifact_max_bytes: self.artifacts.max_bytes.get() as usize,
            transcript_include_prompt: self.transcripts.include_prompt,
            transcript_retention: crate::artifacts::TranscriptRetention {
                max_age: Duration::from_secs(
                    u64::from(self.transcripts.retention_days.get()) * 86_400,
                ),
                max_bytes: u64::from(self.transcripts.max_mib.get()) * 1024 * 1024,
                queue: self.transcripts.queue.get() as usize,
            },
            decode_idle_timeout: Duration::from_millis(
                self.stream.decode_idle_timeout_ms.get().into(),
            ),
            policy_limits: PolicyLimits {
                timeout: Duration::from_millis(self.policies.timeout_ms.get().into()),
                memory_bytes: self.policies.memory_mib.get() as usize * 1024 * 1024,
            },
            policies: PolicySettingsSet {
                admission: self
                    .policies
                    .admission
                    .settings("admission", &policies_dir)?,
                budget: self.policies.budget.settings("budget", &policies_dir)?,
                placement: self
                    .policies
                    .placement
                    .settings("placement", &policies_dir)?,
                error_mapping: self
                    .policies
                    .error_mapping
                    .settings("error_mapping", &policies_dir)?,
            },
            outliers: crate::pool::OutlierSettings {
                consecutive_failures: self.outliers.consecutive_failures,
                error_rate: self.outliers.error_rate,
                min_requests: self.outliers.min_requests,
                window: Duration::from_millis(self.outliers.window_ms.get().into()),
                base_ejection: Duration::from_millis(self.outliers.base_ejection_ms.get().into()),
                max_ejection: Duration::from_millis(self.outliers.max_ejection_ms.get().into()),
            },
            rate_limits: self.rate_limits.per_key,
            rate_groups: self.rate_limits.groups.clone(),
            lease_margin: Duration::from_millis(self.state.lease_margin_ms),
            advertise: self
                .state
                .advertise
                .as_ref()
                .map(|a| a.trim_end_matches('/').to_owned()),
            state: match self.state.backend.as_str() {
                "sqlite" => StateBackend::Sqlite {
                    path: resolve(base, Path::new(&self.state.path)),
                },
                "redis" => StateBackend::Redis {
                    url: self.state.url.clone().ok_or_else(|| {
                        invalid(
                            "state.backend = \"redis\" needs state.url = \"redis://…\"".to_owned(),
                        )
                    })?,
                    prefix: self.state.prefix.clone(),
                },
                other => {
                    return Err(invalid(format!(
                        "state.backend {other:?}: expected \"sqlite\" or \"redis\""
                    )));
                }
            },
            budgets: BudgetSettings {
                per_key: self.budgets.per_key,
                per_session: self.budgets.per_session,
                per_key_model: self.budgets.per_key_model.clone(),
            },
            policies_dir,
            pools,
            origin,
        })
    }
}
