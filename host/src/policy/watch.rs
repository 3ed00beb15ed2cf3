//! Watches the policy directory (debounced) and reloads on change. Compilation runs on a
//! blocking thread, off the request path; unchanged content is skipped by hash.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::PolicySet;
use super::set::ReloadOutcome;

/// Writes within this window arrive as one reload. Short, because installs are
/// copy-then-rename (docs/policy-authoring.md): a rename is one event, and a file seen
/// half-written is refused and then reloaded whole on its next event.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Keeps the watcher alive; dropping it stops watching.
pub struct Watcher {
    _watch: crate::dirwatch::DirWatch,
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
    // Only the four configured component files matter; their names, since events name
    // paths under `dir` as it was given.
    let names: Vec<std::ffi::OsString> = policies
        .component_paths()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect();
    let relevant = move |p: &Path| p.file_name().is_some_and(|n| names.iter().any(|m| m == n));
    let (watch, mut changes) = crate::dirwatch::watch(dir, DEBOUNCE, "policy", relevant)?;
    tokio::spawn(async move {
        while changes.next_burst().await.is_some() {
            reload(&policies).await;
            // Counted once done, so a reader of the metric sees the reload's hashing too.
            crate::metrics::plugin_rescan("policy");
        }
    });
    Ok(Watcher { _watch: watch })
}
