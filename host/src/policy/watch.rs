//! Watches the policy directory (debounced) and reloads on change. Compilation runs on a
//! blocking thread, off the request path; unchanged content is skipped by hash.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

use super::PolicySet;
use super::set::ReloadOutcome;

/// Writes within this window arrive as one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the watcher alive; dropping it stops watching.
pub struct Watcher {
    _debouncer: Box<dyn std::any::Any + Send + Sync>,
}

/// Runs one reload of every slot on a blocking thread and logs what changed.
pub async fn reload(policies: &Arc<PolicySet>) -> Vec<ReloadOutcome> {
    let set = Arc::clone(policies);
    match tokio::task::spawn_blocking(move || set.reload_all()).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::error!(error = %e, "policy reload panicked");
            Vec::new()
        }
    }
}

pub fn spawn(policies: Arc<PolicySet>, dir: &Path) -> Result<Watcher, String> {
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
                        tracing::warn!(error = %e, "policy directory watch error");
                    }
                }
            },
        )
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {} // coalesce
            reload(&policies).await;
        }
    });
    tracing::info!(dir = %dir.display(), "watching the policy directory");
    Ok(Watcher {
        _debouncer: Box::new(debouncer),
    })
}
