//! Building the daemon from settings: adapters, policies, pools, background tasks. Every
//! failure is one [`StartupError`] naming what to fix.

use std::sync::Arc;
use std::time::Duration;

use crate::adapters::{AdapterRegistry, LoadOutcome};
use crate::artifacts::ArtifactStore;
use crate::budget::Ledger;
use crate::config::{EXIT_CONFIG, Settings};
use crate::decisions::Decisions;
use crate::dispatch::{self, DispatchConfig};
use crate::health::{probe, spawn_health_poller};
use crate::policy::{PolicyRuntime, PolicySet, watch};
use crate::pool::{Pool, Replica};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration names something that does not exist or is refused.
    #[error("{0}")]
    Config(String),
    /// Something the configuration is right about failed at run time.
    #[error("{0}")]
    Runtime(String),
}

impl StartupError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::Runtime(_) => 1,
        }
    }
}

fn load_adapters(settings: &Settings) -> Result<AdapterRegistry, StartupError> {
    let dir = &settings.adapters_dir;
    let private = settings.cache_dir.join("adapters");
    let (registry, outcomes) = AdapterRegistry::load_dir(dir, &private).map_err(|e| {
        StartupError::Config(format!(
            "cannot load the adapter directory {} (private copies in {}): {e}",
            dir.display(),
            private.display()
        ))
    })?;
    log_outcomes(outcomes);
    Ok(registry)
}

/// One log line per library loaded or refused.
pub fn log_outcomes(outcomes: Vec<LoadOutcome>) {
    for outcome in outcomes {
        match outcome {
            LoadOutcome::Loaded {
                info,
                replaced: None,
            } => tracing::info!(
                adapter = %info.name, version = %info.version, abi_version = %info.abi_version,
                engines = ?info.engines, path = %info.path.display(), sha256 = %info.sha256,
                "adapter loaded"
            ),
            LoadOutcome::Loaded {
                info,
                replaced: Some(old),
            } => tracing::info!(
                adapter = %info.name, version = %info.version, replaced = %old,
                abi_version = %info.abi_version, path = %info.path.display(),
                sha256 = %info.sha256,
                "adapter loaded beside the version that served; new work goes to it, started work finishes on the old one (kept mapped until restart)"
            ),
            LoadOutcome::Refused { path, reason } => tracing::error!(
                path = %path.display(), expected_abi_version = crate::adapters::expected_abi_version(),
                reason = %reason, "adapter refused: {reason}"
            ),
        }
    }
}

fn load_policies(settings: &Settings) -> Result<PolicySet, StartupError> {
    let runtime = PolicyRuntime::new(settings.policy_limits, settings.cache_dir.clone())
        .map_err(StartupError::Runtime)?;
    PolicySet::load(runtime, &settings.policies)
        .map_err(|e| StartupError::Config(format!("policy refused: {e}")))
}

fn build_pools(
    settings: &Settings,
    adapters: &AdapterRegistry,
) -> Result<Vec<Arc<Pool>>, StartupError> {
    settings
        .pools
        .iter()
        .map(|ps| build_pool(settings, ps, adapters).map_err(StartupError::Config))
        .collect()
}

/// One pool: its adapter's clients for every replica (launching engines where the config
/// says), probed once. The error is one line for the log or the API.
pub fn build_pool(
    settings: &Settings,
    ps: &crate::config::PoolSettings,
    adapters: &AdapterRegistry,
) -> Result<Arc<Pool>, String> {
    let adapter = adapters.get(&ps.adapter).ok_or_else(|| {
        let loaded = adapters.names();
        format!(
            "pool {:?} names adapter {:?}, which is not loaded from {} (loaded: {loaded:?})",
            ps.id,
            ps.adapter,
            settings.adapters_dir.display()
        )
    })?;
    let served = &adapter.info().engines;
    let engine = match &ps.engine {
        Some(engine) if served.iter().any(|e| e == engine) => engine.clone(),
        Some(engine) => {
            return Err(format!(
                "pool {:?}: adapter {:?} does not serve engine {engine:?} (it serves {served:?})",
                ps.id, ps.adapter
            ));
        }
        None => served.first().cloned().ok_or_else(|| {
            format!(
                "pool {:?}: adapter {:?} declares no engine",
                ps.id, ps.adapter
            )
        })?,
    };
    let mut replicas = Vec::with_capacity(ps.replicas.len());
    let mut reported_ctx = 0;
    for rs in &ps.replicas {
        let client = adapter.new_client(&rs.adapter_config_json).map_err(|e| {
            format!(
                "pool {:?} replica {:?}: adapter {:?} refused its config: {}",
                ps.id, rs.id, ps.adapter, e.message
            )
        })?;
        // A launched engine is started here and becomes ready through the probes.
        let supervisor = rs.launch.clone().map(|launch| {
            let logs = settings
                .artifacts_dir
                .parent()
                .map(|p| p.join("logs"))
                .unwrap_or_else(|| std::path::PathBuf::from("logs"));
            let sup = crate::supervisor::Supervisor::new(&rs.id, launch, &logs);
            if let Err(e) = sup.start() {
                tracing::error!(replica_id = %sup.replica_id, error = %e, "engine launch failed");
            }
            sup
        });
        let probe = if supervisor.is_some() {
            crate::health::Probe {
                why: Some("starting the engine".to_owned()),
                ..Default::default()
            }
        } else {
            probe(client.as_ref())
        };
        reported_ctx = reported_ctx.max(probe.ctx_max.unwrap_or(0));
        tracing::info!(
            pool_id = %ps.id, replica_id = %rs.id, engine = %engine,
            engine_version = probe.engine_version.as_deref().unwrap_or(""),
            slots = probe.slots.unwrap_or(0), ready = probe.ready,
            reason = probe.why.as_deref().unwrap_or(""), "replica configured"
        );
        let replica = Replica::new(
            rs.id.clone(),
            client,
            probe.engine_version.clone().unwrap_or_default(),
            probe.slots.unwrap_or(0),
            probe.ready,
        )
        .with_device_mask(rs.device_mask.clone())
        .with_adapter_config(&rs.adapter_config_json);
        let replica = match supervisor {
            Some(sup) => replica.with_supervisor(sup),
            None => replica,
        };
        replica.set_live(probe.live);
        if !probe.ready {
            replica.observe(false, None, None, probe.why.clone());
        }
        replicas.push(replica);
    }
    let ctx_max = ps
        .ctx_max
        .unwrap_or(if reported_ctx > 0 { reported_ctx } else { 4096 });
    Ok(Arc::new(
        Pool::new(ps, engine, ctx_max, replicas)
            .with_features(&adapter.info().features)
            .with_outliers(settings.outliers),
    ))
}

/// Starts a pool's dispatcher and health poller (at start, and for a pool created through
/// the API).
pub fn start_pool(state: &AppState, pool: &Arc<Pool>) {
    pool.publish();
    dispatch::spawn_dispatcher(
        Arc::clone(pool),
        Arc::clone(&state.decisions),
        DispatchConfig::from(&state.settings),
    );
    spawn_health_poller(Arc::downgrade(pool), pool.health_interval);
}

/// The pools created through the API before this start, from the state store. One whose
/// id the config file now uses is left out (the file wins, and the log says so); one that
/// no longer builds (its adapter is gone) is reported and kept in the store.
fn restore_api_pools(state: &Arc<AppState>) {
    let stored = match crate::budget::blocking(|| state.store().list_pools()) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "the pools created through the API could not be read from the state store; they are not served until a restart finds it");
            return;
        }
    };
    for (id, definition) in stored {
        if state.pool(&id).is_some() {
            tracing::warn!(pool_id = %id, "a pool created through the API has the id of a pool in the config file; the config file's is served");
            continue;
        }
        match crate::api::pools::pool_of_definition(state, &definition, None) {
            Ok(pool) => {
                if state.add_pool(Arc::clone(&pool)) {
                    start_pool(state, &pool);
                    tracing::info!(pool_id = %id, adapter = %pool.adapter, "pool created through the API restored");
                }
            }
            Err(e) => {
                tracing::error!(pool_id = %id, error = %e.envelope.message, "a pool created through the API cannot be built now; it stays stored")
            }
        }
    }
}

/// Loads everything and starts the background tasks (dispatchers, retention sweeper).
/// Must run inside the tokio runtime.
/// The state store of `[state]`. SQLite opens here (a bad path fails the start); Redis
/// connects per call, so a Redis that is down at start is reported by `/readyz` and
/// recovered from without a restart.
fn open_store(
    backend: &crate::config::StateBackend,
) -> Result<Arc<crate::store::Observed>, StartupError> {
    use crate::config::StateBackend;
    let store: Box<dyn crate::store::Store> = match backend {
        StateBackend::Sqlite { path } => Box::new(
            crate::store::SqliteStore::open(path)
                .map_err(|e| StartupError::Config(format!("state store: {e}")))?,
        ),
        StateBackend::Redis { url, prefix } => Box::new(
            crate::store::RedisStore::open(url, prefix)
                .map_err(|e| StartupError::Config(format!("state store: {e}")))?,
        ),
    };
    tracing::info!(backend = store.name(), "state store");
    Ok(Arc::new(crate::store::Observed::new(store)))
}

pub fn build(settings: Settings) -> Result<Arc<AppState>, StartupError> {
    let adapters = load_adapters(&settings)?;
    let policies = Arc::new(load_policies(&settings)?);
    let pools = build_pools(&settings, &adapters)?;
    let artifacts = ArtifactStore::open_with(
        &settings.artifacts_dir,
        settings.artifact_max_bytes,
        settings.transcript_retention,
    )
    .map_err(|e| {
        StartupError::Config(format!(
            "cannot open the artifact store {}: {e}",
            settings.artifacts_dir.display()
        ))
    })?;
    let catalog = crate::catalog::Catalog::open(&settings.catalog_path).map_err(|e| {
        StartupError::Config(format!(
            "cannot open the model catalog {}: {e}",
            settings.catalog_path.display()
        ))
    })?;
    for (id, state) in catalog.states() {
        crate::metrics::model_state(&id, Some(state.as_str()));
    }
    let store = open_store(&settings.state)?;
    let decisions = Arc::new(Decisions {
        policies: Arc::clone(&policies),
        ledger: Ledger::new(
            settings.budgets.clone(),
            settings
                .api_keys
                .iter()
                .filter_map(|k| k.budget.map(|b| (k.name.clone(), b)))
                .collect(),
            settings.rate_limits,
            settings
                .api_keys
                .iter()
                .filter_map(|k| k.rate.map(|r| (k.name.clone(), r)))
                .collect(),
            Arc::clone(&store),
        )
        .with_groups(
            settings.rate_groups.clone(),
            settings
                .api_keys
                .iter()
                .filter_map(|k| k.group.clone().map(|g| (k.name.clone(), g)))
                .collect(),
        ),
        directory: crate::directory::Directory::new(
            Arc::clone(&store) as Arc<dyn crate::store::Store>,
            settings.retention,
        ),
        pools: arc_swap::ArcSwap::from_pointee(Vec::new()),
        recent_placements: std::sync::Mutex::new(std::collections::VecDeque::new()),
    });
    // Reported now (and on /readyz); a Redis that is down does not stop the start.
    decisions.ledger.check();
    let watcher = watch::spawn(policies, &settings.policies_dir).map_err(StartupError::Runtime)?;
    let state = Arc::new(AppState::new(
        settings,
        adapters,
        Arc::clone(&decisions),
        pools,
        artifacts,
        Arc::new(catalog),
        store,
    ));
    state.keep_watcher(watcher);
    match crate::adapters::watch::spawn(Arc::downgrade(&state), &state.settings.adapters_dir) {
        Ok(w) => state.keep_adapter_watcher(w),
        Err(e) => {
            tracing::warn!(error = %e, "new adapter libraries will not be picked up without a restart")
        }
    }
    for pool in state.pools().iter() {
        start_pool(&state, pool);
    }
    restore_api_pools(&state);
    if let Some(gpus) = crate::gpu::Gpus::init() {
        crate::gpu::spawn_poller(gpus, state.pools().iter().map(Arc::downgrade).collect());
    }
    // The state store's upkeep: deferred settles, expired leases, reachability.
    let keeper = Arc::downgrade(&decisions);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(decisions) = keeper.upgrade() else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                decisions.ledger.maintain();
                if let Err(e) = decisions.directory.heartbeat() {
                    tracing::debug!(error = %e, "heartbeat not written");
                }
            })
            .await;
        }
    });
    let sweeper = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(state) = sweeper.upgrade() else {
                return;
            };
            let expired = {
                let state = Arc::clone(&state);
                tokio::task::spawn_blocking(move || state.sessions.sweep())
                    .await
                    .unwrap_or(0)
            };
            let n = state
                .tasks
                .sweep(state.settings.retention, state.settings.retained_max_bytes)
                + expired;
            if n > 0 {
                tracing::debug!(
                    forgotten = n,
                    "finished tasks and expired sessions forgotten"
                );
            }
        }
    });
    Ok(state)
}
