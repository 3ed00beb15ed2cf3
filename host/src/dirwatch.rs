//! A debounced, non-recursive directory watcher: one signal per burst of changes. The policy
//! and adapter directories both use it.

use std::path::Path;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc::UnboundedReceiver;

/// Keeps a watch alive; dropping it stops watching.
pub struct DirWatch {
    _debouncer: Box<dyn std::any::Any + Send + Sync>,
}

/// Watches `dir`; each burst of changes within `debounce` sends one `()`. `what` names the
/// directory in log lines.
pub fn watch(
    dir: &Path,
    debounce: Duration,
    what: &'static str,
) -> Result<(DirWatch, UnboundedReceiver<()>), String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer =
        new_debouncer(
            debounce,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) if !events.is_empty() => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, directory = what, "directory watch error");
                    }
                }
            },
        )
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching the {what} directory");
    Ok((
        DirWatch {
            _debouncer: Box::new(debouncer),
        },
        rx,
    ))
}

/// Drops the signals already queued: one reload covers them all.
pub fn coalesce(rx: &mut UnboundedReceiver<()>) {
    while rx.try_recv().is_ok() {}
}
