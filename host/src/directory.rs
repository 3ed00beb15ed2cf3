//! The task directory: every task's owner, the daemon running it (with that daemon's
//! internal address) and its last status, in the state store. With it, any daemon sharing
//! the store answers for any task: a finished one from its record, a live one by relaying
//! the request to the daemon that runs it (the client is never redirected), one whose
//! daemon died as failed (`WORKER_RESET`). With SQLite, records outlive a restart: a
//! finished task keeps its status for the retention period and a task that was running
//! when the daemon was killed is reported failed, not unknown.
//!
//! Daemons say they are alive with a heartbeat every second, valid for [`ALIVE_FOR`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use orchd_contracts::{ErrorCode, TaskState, TaskStatus};

use crate::store::{Store, StoreError, TaskRecord, now_ms};
use crate::task::Task;

/// A daemon that has not renewed its heartbeat for this long is dead: its live tasks are
/// reported failed.
pub const ALIVE_FOR: Duration = Duration::from_secs(5);

pub struct Directory {
    store: Arc<dyn Store>,
    /// This daemon instance (new at every start).
    pub daemon: String,
    /// Where other daemons reach this one (`[state] advertise`, else the bound address).
    addr: OnceLock<String>,
    retention: Duration,
}

/// What the directory knows of a task this daemon does not hold.
pub enum Remote {
    /// Finished (or failed with its daemon): its status, and where its daemon still
    /// answers (it keeps the stream for the retention period) when asked for and alive.
    Ended(Box<TaskStatus>, Option<String>),
    /// Live on another daemon, which answers for it at `addr`.
    LiveAt { addr: String },
}

impl Directory {
    pub fn new(store: Arc<dyn Store>, retention: Duration) -> Self {
        Self {
            store,
            daemon: uuid::Uuid::new_v4().to_string(),
            addr: OnceLock::new(),
            retention,
        }
    }

    /// Sets where this daemon is reached (once, after binding).
    pub fn advertise(&self, addr: String) {
        let _ = self.addr.set(addr);
    }

    fn record(&self, task: &Task, terminal: bool) -> TaskRecord {
        TaskRecord {
            id: task.id.clone(),
            owner: task.spec.owner.clone(),
            daemon: self.daemon.clone(),
            addr: self.addr.get().cloned().unwrap_or_default(),
            status: serde_json::to_string(&task.status(None)).expect("status serializes"),
            terminal,
        }
    }

    /// Writes an admitted task's record: queued now (ahead of anything written about the
    /// task later), answered once committed.
    pub fn admitted(&self, task: &Task) -> crate::store::Pending<()> {
        let rec = self.record(task, false);
        crate::store::Pending::begin(|then| self.store.put_task_then(rec, None, now_ms(), then))
    }

    /// Writes a finished task's final status, kept for the retention period. Nobody waits
    /// for it (this daemon answers for its own tasks from memory): the store queues it
    /// where it can.
    pub fn ended(&self, task: &Task) {
        let rec = self.record(task, true);
        let keep = self.retention.as_millis() as u64;
        self.store.put_task_detached(rec, Some(keep), now_ms());
    }

    /// The task as other daemons know it, if `may_see` its owner. A live task whose daemon
    /// stopped is failed here (and written back so).
    pub fn lookup(
        &self,
        id: &str,
        may_see: impl FnOnce(&str) -> bool,
        want_owner: bool,
    ) -> Result<Option<Remote>, StoreError> {
        let now = now_ms();
        let Some(rec) = crate::budget::blocking(|| self.store.get_task(id, now))? else {
            return Ok(None);
        };
        if !may_see(&rec.owner) {
            return Ok(None);
        }
        let mut status: TaskStatus = serde_json::from_str(&rec.status)
            .map_err(|e| StoreError(format!("task record {id}: {e}")))?;
        if rec.terminal {
            let owner = if want_owner
                && rec.daemon != self.daemon
                && !rec.addr.is_empty()
                && crate::budget::blocking(|| self.store.daemon_alive(&rec.daemon, now))?
            {
                Some(rec.addr)
            } else {
                None
            };
            return Ok(Some(Remote::Ended(Box::new(status), owner)));
        }
        let alive = rec.daemon != self.daemon
            && crate::budget::blocking(|| self.store.daemon_alive(&rec.daemon, now))?;
        if alive && !rec.addr.is_empty() {
            return Ok(Some(Remote::LiveAt { addr: rec.addr }));
        }
        status.state = TaskState::Failed;
        status.queue_position = None;
        status.error = Some(
            *crate::errors::ApiError::new(
                ErrorCode::WorkerReset,
                "the daemon running this task stopped before it ended",
            )
            .envelope,
        );
        let failed = TaskRecord {
            status: serde_json::to_string(&status).expect("status serializes"),
            terminal: true,
            ..rec
        };
        let keep = self.retention.as_millis() as u64;
        let _ = crate::budget::blocking(|| self.store.put_task(&failed, Some(keep), now));
        Ok(Some(Remote::Ended(Box::new(status), None)))
    }

    /// Renews this daemon's heartbeat (the upkeep task's tick).
    pub fn heartbeat(&self) -> Result<(), StoreError> {
        let Some(addr) = self.addr.get() else {
            return Ok(());
        };
        self.store
            .heartbeat(&self.daemon, addr, now_ms() + ALIVE_FOR.as_millis() as u64)
    }
}
