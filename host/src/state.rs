//! What the HTTP handlers share: settings, loaded adapters and policies, pools, tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::adapters::AdapterRegistry;
use crate::artifacts::ArtifactStore;
use crate::auth::Keys;
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::decisions::Decisions;
use crate::dispatch;
use crate::policy::watch::Watcher;
use crate::pool::Pool;
use crate::sessions::Sessions;
use crate::task::{Recorder, Task, Tasks};

pub struct AppState {
    pub settings: Settings,
    pub keys: Keys,
    pub adapters: AdapterRegistry,
    /// The policies in force (each swapped whole on reload) and the budget ledger.
    pub decisions: Arc<Decisions>,
    pub tasks: Tasks,
    pub sessions: Sessions,
    pub artifacts: Arc<ArtifactStore>,
    pub catalog: Arc<Catalog>,
    /// Where tasks record their transcripts.
    pub recorder: Arc<Recorder>,
    /// Issues and checks the stream tokens of EventSource clients.
    pub stream_tokens: crate::streamtoken::StreamTokens,
    /// Relays requests for tasks another daemon runs (several daemons, one store).
    pub relay: reqwest::Client,
    /// The state store (pools created through the API are kept there).
    store: Arc<dyn crate::store::Store>,
    shutting_down: AtomicBool,
    watcher: std::sync::Mutex<Option<Watcher>>,
    adapter_watcher: std::sync::Mutex<Option<crate::adapters::watch::AdapterWatcher>>,
}

impl AppState {
    pub fn new(
        settings: Settings,
        adapters: AdapterRegistry,
        decisions: Arc<Decisions>,
        pools: Vec<Arc<Pool>>,
        artifacts: Arc<ArtifactStore>,
        catalog: Arc<Catalog>,
        store: Arc<dyn crate::store::Store>,
    ) -> Self {
        Self {
            catalog,
            recorder: Arc::new(Recorder {
                store: Arc::clone(&artifacts),
                include_prompt: settings.transcript_include_prompt,
            }),
            artifacts,
            keys: Keys::new(&settings.api_keys),
            stream_tokens: {
                let fresh = crate::streamtoken::fresh_secret();
                match crate::budget::blocking(|| store.shared_secret("stream-tokens", &fresh)) {
                    Ok(secret) => crate::streamtoken::StreamTokens::with_secret(
                        &secret,
                        settings.stream_token_ttl,
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "the state store is unreachable: stream tokens are this daemon's own until a restart finds it (EventSource clients behind a load balancer may get 401 from the other daemons)");
                        crate::streamtoken::StreamTokens::with_secret(
                            &fresh,
                            settings.stream_token_ttl,
                        )
                    }
                }
            },
            sessions: Sessions::new(
                settings.session_ttl,
                settings.session_max_turns,
                settings.max_sessions,
                Arc::clone(&store),
            ),
            store,
            settings,
            adapters,
            decisions: {
                decisions.pools.store(Arc::new(pools));
                decisions
            },
            tasks: Tasks::default(),
            relay: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(2))
                .tcp_nodelay(true)
                .build()
                .expect("an HTTP client"),
            shutting_down: AtomicBool::new(false),
            watcher: std::sync::Mutex::new(None),
            adapter_watcher: std::sync::Mutex::new(None),
        }
    }

    /// Keeps the adapter directory watcher alive as long as the state.
    pub fn keep_adapter_watcher(&self, watcher: crate::adapters::watch::AdapterWatcher) {
        *self
            .adapter_watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(watcher);
    }

    /// Keeps the policy directory watcher alive as long as the state.
    pub fn keep_watcher(&self, watcher: Watcher) {
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
    }

    pub fn pool(&self, id: &str) -> Option<Arc<Pool>> {
        self.decisions
            .pools
            .load()
            .iter()
            .find(|p| p.id == id)
            .cloned()
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn crate::store::Store> {
        &self.store
    }

    /// Every pool now (a snapshot).
    pub fn pools(&self) -> Arc<Vec<Arc<Pool>>> {
        self.decisions.pools.load_full()
    }

    /// Adds a pool; `false` if one with its id exists.
    pub fn add_pool(&self, pool: Arc<Pool>) -> bool {
        let mut added = false;
        self.decisions.pools.rcu(|pools| {
            added = !pools.iter().any(|p| p.id == pool.id);
            let mut next = (**pools).clone();
            if added {
                next.push(Arc::clone(&pool));
            }
            next
        });
        added
    }

    /// Puts `pool` in place of the pool with its id (or adds it); the one it replaced.
    pub fn replace_pool(&self, pool: Arc<Pool>) -> Option<Arc<Pool>> {
        let mut old = None;
        self.decisions.pools.rcu(|pools| {
            old = pools.iter().find(|p| p.id == pool.id).cloned();
            let mut next: Vec<Arc<Pool>> =
                pools.iter().filter(|p| p.id != pool.id).cloned().collect();
            next.push(Arc::clone(&pool));
            next
        });
        old
    }

    /// Retires a pool taken out of the set (removed, or replaced by a new definition): new
    /// work no longer finds it; what it queued dispatches on its own replicas and what runs
    /// finishes, within `grace`. Then what is still queued ends with `POOL_UNAVAILABLE`, and
    /// its dispatcher stops. Running tasks are canceled at the grace only when no pool has
    /// taken its id (a replaced pool's running tasks keep their replicas until they end).
    pub fn retire_pool(self: &Arc<Self>, pool: Arc<Pool>, grace: std::time::Duration) {
        pool.begin_drain(grace);
        pool.publish();
        let state = Arc::clone(self);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + grace;
            let busy = |p: &Pool| p.queue.depth() > 0 || p.replicas.iter().any(|r| r.leases() > 0);
            while tokio::time::Instant::now() < until && busy(&pool) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let mut ended = 0;
            while let Some((task, _)) = pool.queue.head() {
                if pool.queue.remove_task(&task) {
                    let mut envelope = *crate::errors::ApiError::new(
                        orchd_contracts::ErrorCode::PoolUnavailable,
                        format!("pool {} was removed before the task started", pool.id),
                    )
                    .pool(&pool.id)
                    .retry_after_ms(1000)
                    .envelope;
                    envelope.correlation_id = Some(task.spec.correlation_id.clone());
                    if task.fail(envelope).is_some() {
                        ended += 1;
                        state.decisions.settle(&task);
                    }
                }
            }
            if state.pool(&pool.id).is_none() {
                ended += state.end_pool_tasks(&pool, "drain").await;
            }
            pool.mark_removed();
            pool.publish();
            tracing::info!(pool_id = %pool.id, ended, "pool retired");
        });
    }

    /// Removes the pool `id` from the set (new work no longer finds it); the pool itself
    /// lives on while its tasks hold it.
    pub fn remove_pool(&self, id: &str) -> Option<Arc<Pool>> {
        let mut removed = None;
        self.decisions.pools.rcu(|pools| {
            removed = pools.iter().find(|p| p.id == id).cloned();
            pools
                .iter()
                .filter(|p| p.id != id)
                .cloned()
                .collect::<Vec<_>>()
        });
        removed
    }

    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire)
            && self.decisions.pools.load().iter().any(|p| p.is_ready())
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// New tasks are refused with 503 and a retry hint once shutdown has begun.
    pub fn accepting_tasks(&self) -> Result<(), crate::errors::ApiError> {
        if self.is_shutting_down() {
            return Err(crate::errors::ApiError::new(
                orchd_contracts::ErrorCode::PoolUnavailable,
                "shutting down; not accepting tasks",
            )
            .retry_after_ms(5000));
        }
        Ok(())
    }

    /// Ends every task still queued or running with a terminal `error` frame (shutdown
    /// past its grace period), canceling engine work.
    pub async fn abort_all(&self, code: orchd_contracts::ErrorCode, message: &str) -> usize {
        let mut aborted = 0;
        for task in self.tasks.live() {
            let pool = self.pool(&task.spec.pool_id);
            if let Some(pool) = &pool
                && pool.queue.remove_task(&task)
            {
                pool.publish();
            }
            let mut envelope = *crate::errors::ApiError::new(code, message).envelope;
            envelope.correlation_id = Some(task.spec.correlation_id.clone());
            if let Some(job) = task.fail(envelope) {
                aborted += 1;
                task.count_cancel(
                    &pool.map(|p| p.engine_version()).unwrap_or_default(),
                    "shutdown",
                );
                if let Some(job) = job {
                    dispatch::cancel_job(&task.id, job).await;
                }
                self.decisions.settle(&task);
            }
        }
        aborted
    }

    /// Ends every live task of `pool` with `POOL_UNAVAILABLE` (a drain's deadline):
    /// queued ones leave the queue, running ones have their engine job canceled.
    pub async fn end_pool_tasks(&self, pool: &Pool, reason: &str) -> usize {
        let mut ended = 0;
        for task in self
            .tasks
            .live()
            .into_iter()
            .filter(|t| t.on_pool(&pool.id))
        {
            if pool.queue.remove_task(&task) {
                pool.publish();
            }
            let mut envelope = *crate::errors::ApiError::new(
                orchd_contracts::ErrorCode::PoolUnavailable,
                format!("pool {} was drained before the task ended", pool.id),
            )
            .pool(&pool.id)
            .engine(&pool.engine)
            .retry_after_ms(1000)
            .envelope;
            envelope.correlation_id = Some(task.spec.correlation_id.clone());
            if let Some(job) = task.fail(envelope) {
                ended += 1;
                task.count_cancel(&pool.engine_version(), reason);
                if let Some(job) = job {
                    dispatch::cancel_job(&task.id, job).await;
                }
                self.decisions.settle(&task);
            }
        }
        ended
    }

    /// Moves the pools on adapter `name` to the version of it that serves now: each
    /// replica gets a client made from it (new work uses it; started work keeps the client
    /// it has). A replica whose config the new version refuses keeps its client, and the
    /// log says why. Blocking (FFI): call off the async workers.
    pub fn adopt_adapter(&self, name: &str) {
        let Some(adapter) = self.adapters.get(name) else {
            return;
        };
        let version = adapter.info().version.clone();
        for pool in self.pools().iter().filter(|p| p.adapter == name) {
            for replica in &pool.replicas {
                match adapter.new_client(&replica.adapter_config_json) {
                    Ok(client) => {
                        if let Ok(props) = client.props() {
                            replica.set_engine_version(props.engine_version);
                        }
                        replica.set_client(client);
                        tracing::info!(
                            adapter = name, version = %version, pool_id = %pool.id,
                            replica_id = %replica.id, "replica switched to the new adapter version"
                        );
                    }
                    Err(e) => tracing::error!(
                        adapter = name, version = %version, pool_id = %pool.id,
                        replica_id = %replica.id, error = %e.message,
                        "the new adapter version refused this replica's config; it stays on the old one"
                    ),
                }
            }
            pool.wake.notify_one();
        }
    }

    /// The live tasks of one session of one key.
    pub fn session_tasks(&self, owner: &str, session_id: &str) -> Vec<Arc<Task>> {
        self.tasks
            .live()
            .into_iter()
            .filter(|t| t.spec.owner == owner && t.spec.session_id == session_id)
            .collect()
    }

    /// Cancels a task wherever it is: a queued task is removed and never dispatched; a
    /// running one gets its `end {canceled}` frame now and its engine job canceled.
    /// Returns `false` if the task had already ended.
    pub async fn cancel(&self, task: &Task, reason: &str) -> bool {
        let pool = self.pool(&task.spec.pool_id);
        if let Some(pool) = &pool
            && pool.queue.remove(&task.id).is_some()
        {
            pool.publish();
        }
        match task.cancel() {
            None => false,
            Some(job) => {
                tracing::info!(task_id = %task.id, reason, "task canceled");
                task.count_cancel(
                    &pool.map(|p| p.engine_version()).unwrap_or_default(),
                    reason,
                );
                if let Some(job) = job {
                    dispatch::cancel_job(&task.id, job).await;
                }
                // Settled for what it produced; a running task's later settle is a no-op.
                self.decisions.settle(task);
                true
            }
        }
    }
}
