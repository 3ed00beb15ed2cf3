//! What the HTTP handlers share: settings, loaded adapters and policies, pools, tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::adapters::AdapterRegistry;
use crate::config::Settings;
use crate::dispatch;
use crate::policy::admission::AdmissionPolicy;
use crate::pool::Pool;
use crate::task::{Task, Tasks};

pub struct AppState {
    pub settings: Settings,
    pub adapters: AdapterRegistry,
    /// The admission policy in force; swapped whole, in-flight calls keep their version.
    pub admission: ArcSwap<AdmissionPolicy>,
    pub pools: Vec<Arc<Pool>>,
    pub tasks: Tasks,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(
        settings: Settings,
        adapters: AdapterRegistry,
        admission: AdmissionPolicy,
        pools: Vec<Arc<Pool>>,
    ) -> Self {
        Self {
            settings,
            adapters,
            admission: ArcSwap::from_pointee(admission),
            pools,
            tasks: Tasks::default(),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn pool(&self, id: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.id == id)
    }

    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && self.pools.iter().any(|p| p.is_ready())
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Cancels a task wherever it is: a queued task is removed and never dispatched; a
    /// running one gets its `end {canceled}` frame now and its engine job canceled.
    /// Returns `false` if the task had already ended.
    pub async fn cancel(&self, task: &Task, reason: &str) -> bool {
        if let Some(pool) = self.pool(&task.spec.pool_id) {
            pool.queue().remove(&task.id);
        }
        match task.cancel() {
            None => false,
            Some(job) => {
                tracing::info!(task_id = %task.id, reason, "task canceled");
                if let Some(job) = job {
                    dispatch::cancel_job(&task.id, job).await;
                }
                true
            }
        }
    }
}
