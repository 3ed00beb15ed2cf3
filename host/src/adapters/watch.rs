//! Watches the adapter directory (debounced): a library dropped in, or a new version of
//! one, is loaded without a restart (`GET /v1/adapters` and `/v1/capabilities` show it;
//! new pools use it). Nothing is ever unloaded.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

use crate::state::AppState;

/// Copies within this window arrive as one rescan (and a half-written file is re-read).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Keeps the watcher alive; dropping it stops watching.
pub struct AdapterWatcher {
    _debouncer: Box<dyn std::any::Any + Send + Sync>,
}

pub fn spawn(state: Weak<AppState>, dir: &Path) -> Result<AdapterWatcher, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer =
        new_debouncer(
            DEBOUNCE,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) if !events.is_empty() => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "adapter directory watch error");
                    }
                }
            },
        )
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let watched: PathBuf = dir.to_path_buf();
    tokio::spawn(async move {
        let dir = watched;
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {} // coalesce
            let Some(state) = state.upgrade() else { return };
            let scan_dir = dir.clone();
            let outcomes =
                tokio::task::spawn_blocking(move || state.adapters.rescan(&scan_dir)).await;
            match outcomes {
                Ok(Ok(outcomes)) => crate::startup::log_outcomes(outcomes),
                Ok(Err(e)) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "adapter rescan failed")
                }
                Err(e) => tracing::error!(error = %e, "adapter rescan panicked"),
            }
        }
    });
    tracing::info!(dir = %dir.display(), "watching the adapter directory");
    Ok(AdapterWatcher {
        _debouncer: Box::new(debouncer),
    })
}
