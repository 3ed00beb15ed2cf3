//! The four policy slots, each holding the version in force behind an `ArcSwap`: callers
//! `load()` a version and finish on it even if a reload swaps in another meanwhile.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::PolicyFailure;
use super::bindings::{admission, budget, error_mapping, placement};
use super::component::Loaded;
use super::observe::{Observed, Observer};
use super::runtime::PolicyRuntime;
use super::worlds::{Admission, Budget, ErrorMapping, Placement};
use super::{LoadError, PolicyMeta};
use crate::config::{PolicySettings, PolicySettingsSet};
use crate::filestamp::{HashCache, Stamp};
use crate::metrics;

/// One policy kind: the version in force, the last refusal, and what is observed of its
/// calls (the replay sample, a shadow candidate).
pub struct Slot<W: Observed> {
    current: ArcSwap<Loaded<W>>,
    settings: PolicySettings,
    /// The config in force: the config file's, until `POST /v1/policies/{kind}/config`
    /// sets another for the component in force. A new component file starts again from
    /// the config file's: a config set through the API belongs to the component it was
    /// set on, and a new version need not accept it.
    config_json: Mutex<String>,
    refusal: Mutex<Option<Refusal>>,
    /// A new file being compiled and tested, while the version in force serves.
    loading: Mutex<Option<Loading>>,
    observer: Observer<W>,
}

/// A component file being loaded in the background.
#[derive(Debug, Clone)]
pub struct Loading {
    pub sha256: String,
    pub since: SystemTime,
}

/// Clears a slot's `loading` when the load ends, however it ends.
struct LoadingGuard<'a>(&'a Mutex<Option<Loading>>);

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
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

impl<W: Observed> Slot<W> {
    /// The replay sample and the shadow of this slot.
    pub fn observer(&self) -> &Observer<W> {
        &self.observer
    }

    fn load(runtime: &Arc<PolicyRuntime>, settings: &PolicySettings) -> Result<Self, LoadError> {
        let loaded = Loaded::<W>::load(runtime, &settings.component, &settings.config_json)?;
        log_loaded(loaded.meta(), false);
        metrics::policy_reload(W::KIND, "loaded");
        Ok(Self {
            current: ArcSwap::from_pointee(loaded),
            settings: settings.clone(),
            config_json: Mutex::new(settings.config_json.clone()),
            refusal: Mutex::new(None),
            loading: Mutex::new(None),
            observer: Observer::default(),
        })
    }

    /// The version in force; hold the `Arc` for the whole decision.
    pub fn get(&self) -> Arc<Loaded<W>> {
        self.current.load_full()
    }

    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }

    /// The config in force (JSON).
    pub fn config(&self) -> String {
        self.config_json
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-initializes the component in force with `config_json`: a fresh load (init with
    /// the new config, self-test), swapped in atomically; the config then stays for later
    /// reloads. A config `init` refuses leaves the version in force, with its config,
    /// serving. Blocking: call from a blocking thread.
    pub fn reconfigure(
        &self,
        runtime: &Arc<PolicyRuntime>,
        config_json: &str,
    ) -> Result<PolicyMeta, String> {
        let path = self.get().meta().path.clone();
        match Loaded::<W>::load(runtime, &path, config_json) {
            Ok(loaded) => {
                let meta = loaded.meta().clone();
                self.current.store(Arc::new(loaded));
                *self.config_json.lock().unwrap_or_else(|p| p.into_inner()) =
                    config_json.to_owned();
                tracing::info!(
                    policy = W::KIND, name = %meta.name, version = %meta.version,
                    "policy config changed; the component was re-initialized with it"
                );
                metrics::policy_reload(W::KIND, "loaded");
                Ok(meta)
            }
            Err(e) => {
                tracing::warn!(policy = W::KIND, error = %e, "policy config refused; the config in force stays");
                metrics::policy_reload(W::KIND, "refused");
                Err(e.to_string())
            }
        }
    }

    /// The file being compiled and tested now, if any (the version in force serves
    /// meanwhile).
    pub fn loading(&self) -> Option<Loading> {
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the component file if its content changed: compile, init (with the config
    /// file's config) and self-test off the request path, then swap atomically. A refused
    /// file leaves the version in force serving, with its config. Blocking: call from a
    /// blocking thread.
    pub fn reload(&self, runtime: &Arc<PolicyRuntime>, hashes: &HashCache) -> ReloadOutcome {
        let path = &self.settings.component;
        let sha = hashes.sha256(path).ok();
        if sha.as_deref() == Some(self.get().meta().sha256.as_str()) {
            return ReloadOutcome::Unchanged { kind: W::KIND };
        }
        let last_refused = self.refusal().map(|r| r.sha256);
        if sha.is_some() && sha == last_refused {
            return ReloadOutcome::Unchanged { kind: W::KIND };
        }
        let config = self.settings.config_json.clone();
        *self.loading.lock().unwrap_or_else(|p| p.into_inner()) = Some(Loading {
            sha256: sha.clone().unwrap_or_default(),
            since: SystemTime::now(),
        });
        let _loaded = LoadingGuard(&self.loading);
        match Loaded::<W>::load(runtime, path, &config) {
            Ok(loaded) => {
                log_loaded(loaded.meta(), true);
                metrics::policy_reload(W::KIND, "loaded");
                let meta = Box::new(loaded.meta().clone());
                self.current.store(Arc::new(loaded));
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let previous = std::mem::replace(
                    &mut *self.config_json.lock().unwrap_or_else(|p| p.into_inner()),
                    config,
                );
                if previous != self.settings.config_json {
                    tracing::warn!(
                        policy = W::KIND, name = %meta.name, version = %meta.version,
                        "the new component runs with the config file's config; the config set through POST /v1/policies/{{kind}}/config belonged to the previous one"
                    );
                }
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

// The typed calls: each asks the version in force and notes the call for replay and for
// a shadow (the raw answer, before the caller's checks).

impl Slot<Admission> {
    pub fn decide<T>(
        &self,
        snapshot: &admission::Snapshot,
        validate: impl FnOnce(admission::Decision) -> Result<T, String>,
    ) -> Result<T, PolicyFailure> {
        self.get().decide(snapshot, |d| {
            self.observer.observe(snapshot, &d);
            validate(d)
        })
    }
}

impl Slot<Budget> {
    pub fn reserve(
        &self,
        req: &budget::ReserveRequest,
    ) -> Result<budget::Reservation, PolicyFailure> {
        let answer = self.get().reserve(req)?;
        self.observer.observe(req, &answer);
        Ok(answer)
    }
}

impl Slot<Placement> {
    pub fn place<T>(
        &self,
        snapshot: &placement::Snapshot,
        validate: impl FnOnce(placement::Decision) -> Result<T, String>,
    ) -> Result<T, PolicyFailure> {
        self.get().place(snapshot, |d| {
            self.observer.observe(snapshot, &d);
            validate(d)
        })
    }
}

impl Slot<ErrorMapping> {
    pub fn map(
        &self,
        failure: &error_mapping::Failure,
    ) -> Result<error_mapping::Mapped, PolicyFailure> {
        let answer = self.get().map(failure)?;
        self.observer.observe(failure, &answer);
        Ok(answer)
    }
}

/// Every policy the daemon runs.
pub struct PolicySet {
    runtime: Arc<PolicyRuntime>,
    pub admission: Slot<Admission>,
    pub budget: Slot<Budget>,
    pub placement: Slot<Placement>,
    pub error_mapping: Slot<ErrorMapping>,
    /// Serializes reloads (watcher and API); holds the files' last stamps and hashes, so a
    /// reload reads only the files that changed.
    reloading: Mutex<HashCache>,
}

impl PolicySet {
    pub fn load(
        runtime: Arc<PolicyRuntime>,
        settings: &PolicySettingsSet,
    ) -> Result<Self, LoadError> {
        // Each file's stamp, taken before its first read, with the hash that read gave: the
        // first rescan then reads only files that changed since.
        let hashes = HashCache::new("policy");
        fn load<W: Observed>(
            runtime: &Arc<PolicyRuntime>,
            settings: &PolicySettings,
            hashes: &HashCache,
        ) -> Result<Slot<W>, LoadError> {
            let stamp = Stamp::of(&settings.component).ok();
            let slot = Slot::<W>::load(runtime, settings)?;
            if let Some(stamp) = stamp {
                hashes.remember(&settings.component, stamp, slot.get().meta().sha256.clone());
            }
            Ok(slot)
        }
        Ok(Self {
            admission: load(&runtime, &settings.admission, &hashes)?,
            budget: load(&runtime, &settings.budget, &hashes)?,
            placement: load(&runtime, &settings.placement, &hashes)?,
            error_mapping: load(&runtime, &settings.error_mapping, &hashes)?,
            runtime,
            reloading: Mutex::new(hashes),
        })
    }

    /// The engine policies run on (to load a candidate beside the slots).
    pub fn runtime(&self) -> &Arc<PolicyRuntime> {
        &self.runtime
    }

    /// Rescans every slot's file. Blocking (compiles): call from a blocking thread.
    pub fn reload_all(&self) -> Vec<ReloadOutcome> {
        let hashes = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        vec![
            self.admission.reload(&self.runtime, &hashes),
            self.budget.reload(&self.runtime, &hashes),
            self.placement.reload(&self.runtime, &hashes),
            self.error_mapping.reload(&self.runtime, &hashes),
        ]
    }

    /// Sets the config of policy `kind` (see [`Slot::reconfigure`]); `None` for an
    /// unknown kind. Serialized with reloads. Blocking.
    pub fn reconfigure(&self, kind: &str, config_json: &str) -> Option<Result<PolicyMeta, String>> {
        let _reloads = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        Some(match kind {
            "admission" => self.admission.reconfigure(&self.runtime, config_json),
            "budget" => self.budget.reconfigure(&self.runtime, config_json),
            "placement" => self.placement.reconfigure(&self.runtime, config_json),
            "error_mapping" => self.error_mapping.reconfigure(&self.runtime, config_json),
            _ => return None,
        })
    }

    /// The four configured component files.
    pub fn component_paths(&self) -> [&Path; 4] {
        [
            &self.admission.settings().component,
            &self.budget.settings().component,
            &self.placement.settings().component,
            &self.error_mapping.settings().component,
        ]
    }
}
