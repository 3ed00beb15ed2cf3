//! A debounced, non-recursive directory watcher (inotify through `notify`): one signal per
//! burst of relevant changes.
//! The policy and adapter directories both use it.
//!
//! Only a change to a relevant file counts: one created, written (or closed after writing),
//! renamed, removed or re-stamped (`touch`, `chmod`). Opening or reading a file does not:
//! a backup, a checksum, a `cp` out of the directory or a second daemon loading the same
//! plugins must never set off a rescan (they did, and two daemons sharing a directory kept
//! each other busy forever).

use std::path::Path;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{Event, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedReceiver;

/// Whether an event of this kind can change what a rescan finds.
pub fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // The end of a write: the moment an in-place copy is whole.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Whether `event` is a change to a file `relevant` accepts (a rename names both paths).
pub fn is_relevant(event: &Event, relevant: &dyn Fn(&Path) -> bool) -> bool {
    // A rescan request from the backend (its queue overflowed) may have lost a change.
    event.need_rescan() || (is_change(&event.kind) && event.paths.iter().any(|p| relevant(p)))
}

/// Keeps a watch alive; dropping it stops watching.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Relevant changes to a watched directory, as bursts.
pub struct Changes {
    rx: UnboundedReceiver<()>,
    debounce: Duration,
}

impl Changes {
    /// Waits for a relevant change, then until none came for the debounce window: one
    /// wake-up per burst. `None` once the watch is gone. Nothing runs while no file changes
    /// (no polling thread, no timer).
    pub async fn next_burst(&mut self) -> Option<()> {
        self.rx.recv().await?;
        loop {
            match tokio::time::timeout(self.debounce, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) | Err(_) => return Some(()),
            }
        }
    }
}

/// Watches `dir`; each burst of relevant changes, once quiet for `debounce`, is one
/// [`Changes::next_burst`]. `relevant` says which files matter (by path); `what` names the
/// directory in log lines.
pub fn watch(
    dir: &Path,
    debounce: Duration,
    what: &'static str,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
) -> Result<(DirWatch, Changes), String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            Ok(event) => {
                if is_relevant(&event, &relevant) {
                    let _ = tx.send(());
                }
            }
            Err(e) => tracing::warn!(error = %e, directory = what, "directory watch error"),
        })
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching the {what} directory");
    Ok((DirWatch { _watcher: watcher }, Changes { rx, debounce }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
    use std::path::PathBuf;

    fn so(p: &Path) -> bool {
        p.extension().is_some_and(|x| x == "so")
    }

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn reads_are_not_changes() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!is_relevant(&event(kind, &["/d/a.so"]), &so), "{kind:?}");
        }
    }

    #[test]
    fn writes_renames_and_removals_are() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(is_relevant(&event(kind, &["/d/a.so"]), &so), "{kind:?}");
        }
        // copy-then-rename: the temporary name is irrelevant, the target is not
        let rename = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/d/.a.so.tmp", "/d/a.so"],
        );
        assert!(is_relevant(&rename, &so));
    }

    #[test]
    fn other_files_are_not_relevant() {
        let e = event(EventKind::Create(CreateKind::File), &["/d/notes.txt"]);
        assert!(!is_relevant(&e, &so));
    }
}
