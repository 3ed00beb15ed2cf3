//! The four policy slots, each holding the version in force behind an `ArcSwap`: callers
//! `load()` a version and finish on it even if a reload swaps in another meanwhile.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use super::component::{Loaded, World};
use super::runtime::PolicyRuntime;
use super::worlds::{Admission, Budget, ErrorMapping, Placement};
use super::{LoadError, PolicyMeta};
use crate::config::{PolicySettings, PolicySettingsSet};
use crate::metrics;

/// One policy kind: the version in force and the last refusal.
pub struct Slot<W: World> {
    current: ArcSwap<Loaded<W>>,
    settings: PolicySettings,
    refusal: Mutex<Option<Refusal>>,
}

#[derive(Debug, Clone)]
pub struct Refusal {
    pub sha256: String,
    pub at: SystemTime,
    pub reason: String,
}

/// What a reload did to one slot.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Unchanged {
        kind: &'static str,
    },
    Loaded {
        kind: &'static str,
        meta: Box<PolicyMeta>,
    },
    Refused {
        kind: &'static str,
        reason: String,
    },
}

fn log_loaded(meta: &PolicyMeta, reload: bool) {
    tracing::info!(
        policy = meta.kind, name = %meta.name, version = %meta.version, sha256 = %meta.sha256,
        path = %meta.path.display(), cached = meta.cached, load_ms = meta.load_ms,
        "{}", if reload { "policy reloaded" } else { "policy loaded" }
    );
}

fn sha256_of(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Sha256::digest(&b)))
}

impl<W: World> Slot<W> {
    fn load(runtime: &Arc<PolicyRuntime>, settings: &PolicySettings) -> Result<Self, LoadError> {
        let loaded = Loaded::<W>::load(runtime, &settings.component, &settings.config_json)?;
        log_loaded(loaded.meta(), false);
        metrics::policy_reload(W::KIND, "loaded");
        Ok(Self {
            current: ArcSwap::from_pointee(loaded),
            settings: settings.clone(),
            refusal: Mutex::new(None),
        })
    }

    /// The version in force; hold the `Arc` for the whole decision.
    pub fn get(&self) -> Arc<Loaded<W>> {
        self.current.load_full()
    }

    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }

    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the component file if its content changed: compile, init and self-test
    /// off the request path, then swap atomically. A refused file leaves the version in
    /// force serving. Blocking: call from a blocking thread.
    pub fn reload(&self, runtime: &Arc<PolicyRuntime>) -> ReloadOutcome {
        let path = &self.settings.component;
        let sha = sha256_of(path);
        if sha.as_deref() == Some(self.get().meta().sha256.as_str()) {
            return ReloadOutcome::Unchanged { kind: W::KIND };
        }
        let last_refused = self.refusal().map(|r| r.sha256);
        if sha.is_some() && sha == last_refused {
            return ReloadOutcome::Unchanged { kind: W::KIND };
        }
        match Loaded::<W>::load(runtime, path, &self.settings.config_json) {
            Ok(loaded) => {
                log_loaded(loaded.meta(), true);
                metrics::policy_reload(W::KIND, "loaded");
                let meta = Box::new(loaded.meta().clone());
                self.current.store(Arc::new(loaded));
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = None;
                ReloadOutcome::Loaded {
                    kind: W::KIND,
                    meta,
                }
            }
            Err(e) => {
                let reason = e.to_string();
                let serving = self.get();
                tracing::error!(
                    policy = W::KIND, path = %path.display(), reason = %reason,
                    serving_version = %serving.meta().version, serving_sha256 = %serving.meta().sha256,
                    "policy refused; the previous version keeps serving"
                );
                metrics::policy_reload(W::KIND, "refused");
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(Refusal {
                    sha256: sha.unwrap_or_default(),
                    at: SystemTime::now(),
                    reason: reason.clone(),
                });
                ReloadOutcome::Refused {
                    kind: W::KIND,
                    reason,
                }
            }
        }
    }
}

/// Every policy the daemon runs.
pub struct PolicySet {
    runtime: Arc<PolicyRuntime>,
    pub admission: Slot<Admission>,
    pub budget: Slot<Budget>,
    pub placement: Slot<Placement>,
    pub error_mapping: Slot<ErrorMapping>,
    /// Serializes reloads (watcher and API).
    reloading: Mutex<()>,
}

impl PolicySet {
    pub fn load(
        runtime: Arc<PolicyRuntime>,
        settings: &PolicySettingsSet,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            admission: Slot::load(&runtime, &settings.admission)?,
            budget: Slot::load(&runtime, &settings.budget)?,
            placement: Slot::load(&runtime, &settings.placement)?,
            error_mapping: Slot::load(&runtime, &settings.error_mapping)?,
            runtime,
            reloading: Mutex::new(()),
        })
    }

    /// Rescans every slot's file. Blocking (compiles): call from a blocking thread.
    pub fn reload_all(&self) -> Vec<ReloadOutcome> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        vec![
            self.admission.reload(&self.runtime),
            self.budget.reload(&self.runtime),
            self.placement.reload(&self.runtime),
            self.error_mapping.reload(&self.runtime),
        ]
    }
}
