//! Watches the adapter directory (debounced): a library dropped in, or a new build of
//! one, is loaded without a restart (`GET /v1/adapters` and `/v1/capabilities` show it).
//! A new build of an adapter that pools use takes their new work at once
//! (`AppState::adopt_adapter`); started work finishes on the old build. Nothing is ever
//! unloaded.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use crate::state::AppState;

/// Copies within this window arrive as one rescan (and a half-written file is re-read).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Keeps the watcher alive; dropping it stops watching.
pub struct AdapterWatcher {
    _watch: crate::dirwatch::DirWatch,
}

pub fn spawn(state: Weak<AppState>, dir: &Path) -> Result<AdapterWatcher, String> {
    let (watch, mut changes) = crate::dirwatch::watch(dir, DEBOUNCE, "adapter", |p| {
        p.extension().is_some_and(|x| x == "so")
    })?;
    let dir: PathBuf = dir.to_path_buf();
    tokio::spawn(async move {
        while changes.next_burst().await.is_some() {
            let Some(state) = state.upgrade() else { return };
            let scan_dir = dir.clone();
            let scanning = std::sync::Arc::clone(&state);
            let outcomes =
                tokio::task::spawn_blocking(move || scanning.adapters.rescan(&scan_dir)).await;
            // Counted once done, so a reader of the metric sees the rescan's hashing too.
            crate::metrics::plugin_rescan("adapter");
            match outcomes {
                Ok(Ok(outcomes)) => {
                    let upgraded: Vec<String> = outcomes
                        .iter()
                        .filter_map(|o| match o {
                            crate::adapters::LoadOutcome::Loaded {
                                info,
                                replaced: Some(_),
                            } => Some(info.name.clone()),
                            _ => None,
                        })
                        .collect();
                    crate::startup::log_outcomes(outcomes);
                    for name in upgraded {
                        let state = std::sync::Arc::clone(&state);
                        // New clients are made (and probed) through blocking FFI calls.
                        let _ =
                            tokio::task::spawn_blocking(move || state.adopt_adapter(&name)).await;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "adapter rescan failed")
                }
                Err(e) => tracing::error!(error = %e, "adapter rescan panicked"),
            }
        }
    });
    Ok(AdapterWatcher { _watch: watch })
}
