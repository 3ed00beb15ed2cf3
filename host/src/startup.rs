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
    let (registry, outcomes) = AdapterRegistry::load_dir(dir).map_err(|e| {
        StartupError::Config(format!(
            "cannot read adapter directory {}: {e}",
            dir.display()
        ))
    })?;
    for outcome in outcomes {
        match outcome {
            LoadOutcome::Loaded(info) => tracing::info!(
                adapter = %info.name, version = %info.version, abi_version = %info.abi_version,
                engines = ?info.engines, path = %info.path.display(), sha256 = %info.sha256,
                "adapter loaded"
            ),
            LoadOutcome::Refused { path, reason } => tracing::error!(
                path = %path.display(), expected_abi_version = crate::adapters::expected_abi_version(),
                reason = %reason, "adapter refused: {reason}"
            ),
        }
    }
    Ok(registry)
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
    let mut pools = Vec::with_capacity(settings.pools.len());
    for ps in &settings.pools {
        let adapter = adapters.get(&ps.adapter).ok_or_else(|| {
            let loaded: Vec<_> = adapters.names().collect();
            StartupError::Config(format!(
                "pool {:?} names adapter {:?}, which is not loaded from {} (loaded: {loaded:?})",
                ps.id,
                ps.adapter,
                settings.adapters_dir.display()
            ))
        })?;
        if !adapter.info().engines.iter().any(|e| e == &ps.engine) {
            return Err(StartupError::Config(format!(
                "pool {:?}: adapter {:?} does not serve engine {:?} (it serves {:?})",
                ps.id,
                ps.adapter,
                ps.engine,
                adapter.info().engines
            )));
        }
        let mut replicas = Vec::with_capacity(ps.replicas.len());
        for rs in &ps.replicas {
            let client = adapter.new_client(&rs.adapter_config_json).map_err(|e| {
                StartupError::Config(format!(
                    "pool {:?} replica {:?}: adapter {:?} refused its config: {}",
                    ps.id, rs.id, ps.adapter, e.message
                ))
            })?;
            let (healthy, version, slots) = match (client.health(), client.props()) {
                (Ok(h), Ok(p)) => (h.ready, p.engine_version, p.slots_total),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(pool_id = %ps.id, replica_id = %rs.id, error = %e, "replica not ready");
                    (false, String::new(), 0)
                }
            };
            tracing::info!(
                pool_id = %ps.id, replica_id = %rs.id, engine = %ps.engine, engine_version = %version,
                slots, ready = healthy, "replica configured"
            );
            replicas.push(
                Replica::new(rs.id.clone(), client, version, slots, healthy)
                    .with_device_mask(rs.device_mask.clone()),
            );
        }
        pools.push(Arc::new(Pool::new(ps, replicas)));
    }
    Ok(pools)
}

/// Loads everything and starts the background tasks (dispatchers, retention sweeper).
/// Must run inside the tokio runtime.
pub fn build(settings: Settings) -> Result<Arc<AppState>, StartupError> {
    let adapters = load_adapters(&settings)?;
    let policies = Arc::new(load_policies(&settings)?);
    let pools = build_pools(&settings, &adapters)?;
    let artifacts = ArtifactStore::open(&settings.artifacts_dir, settings.artifact_max_bytes)
        .map_err(|e| {
            StartupError::Config(format!(
                "cannot open the artifact store {}: {e}",
                settings.artifacts_dir.display()
            ))
        })?;
    let config = DispatchConfig {
        decode_idle_timeout: settings.decode_idle_timeout,
        attach_timeout: settings.attach_timeout,
    };
    let decisions = Arc::new(Decisions {
        policies: Arc::clone(&policies),
        ledger: Ledger::new(
            settings.budgets,
            settings
                .api_keys
                .iter()
                .filter_map(|k| k.budget.map(|b| (k.name.clone(), b)))
                .collect(),
        ),
    });
    let watcher = watch::spawn(policies, &settings.policies_dir).map_err(StartupError::Runtime)?;
    let state = Arc::new(AppState::new(
        settings,
        adapters,
        Arc::clone(&decisions),
        pools,
        artifacts,
    ));
    state.keep_watcher(watcher);
    for pool in &state.pools {
        pool.publish(&pool.queue());
        dispatch::spawn_dispatcher(Arc::clone(pool), Arc::clone(&decisions), config);
    }
    let sweeper = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(state) = sweeper.upgrade() else {
                return;
            };
            let n = state.tasks.sweep(state.settings.retention) + state.sessions.sweep();
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
