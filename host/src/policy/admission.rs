//! The admission policy host: one loaded component version, a small pool of warm instances.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use wasmtime::Store;

use super::bindings::{AdmissionPolicyPre, add_admission_imports};
use super::runtime::{PolicyRuntime, PolicyState};
use super::{FailureKind, LoadError, PolicyFailure, PolicyMeta};

pub use super::bindings::{
    AdmissionDecision, AdmissionRequest, AdmissionSnapshot, BudgetLeft, ClassSnapshot, Eviction,
    QueueSnapshot, QueuedEntry, Rejection, SessionInfo, WitPriority,
};

const KIND: &str = "admission";
/// Warm instances kept between calls (one per concurrently deciding thread is enough).
const MAX_IDLE: usize = 8;

struct Warm {
    store: Store<PolicyState>,
    bindings: super::bindings::AdmissionPolicyInstance,
}

/// One loaded version of the admission policy.
pub struct AdmissionPolicy {
    meta: PolicyMeta,
    runtime: Arc<PolicyRuntime>,
    pre: AdmissionPolicyPre<PolicyState>,
    config_json: String,
    idle: Mutex<Vec<Warm>>,
}

impl AdmissionPolicy {
    /// Compiles, links, instantiates and initializes the component; refuses it if any step
    /// fails or `init` rejects `config_json`.
    pub fn load(
        runtime: &Arc<PolicyRuntime>,
        path: &Path,
        config_json: &str,
    ) -> Result<Self, LoadError> {
        let compiled = runtime.compile(path)?;
        let refuse = |message: String| LoadError::Component {
            path: path.to_path_buf(),
            message,
        };
        let linker = runtime.linker(&compiled.component, path, add_admission_imports)?;
        let pre = linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| refuse(format!("does not fit the admission-policy world: {e:#}")))?;
        let pre = AdmissionPolicyPre::new(pre)
            .map_err(|e| refuse(format!("does not export the admission-policy world: {e:#}")))?;
        let mut policy = Self {
            meta: PolicyMeta {
                kind: KIND,
                name: String::new(),
                version: String::new(),
                sha256: compiled.sha256,
                path: path.to_path_buf(),
                loaded_at: SystemTime::now(),
                cached: compiled.cached,
                load_ms: compiled.load_ms,
            },
            runtime: Arc::clone(runtime),
            pre,
            config_json: config_json.to_owned(),
            idle: Mutex::new(Vec::new()),
        };
        let mut warm = policy.instantiate().map_err(|f| refuse(f.message))?;
        let info = warm
            .bindings
            .call_info(&mut warm.store)
            .map_err(|e| refuse(format!("info() failed: {e:#}")))?;
        policy.meta.name = info.name;
        policy.meta.version = info.version;
        policy
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(warm);
        Ok(policy)
    }

    pub fn meta(&self) -> &PolicyMeta {
        &self.meta
    }

    /// A fresh instance with `init(config)` done.
    fn instantiate(&self) -> Result<Warm, PolicyFailure> {
        let mut store = self.runtime.new_store(KIND);
        store.set_epoch_deadline(self.runtime.deadline_ticks());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| failure(&e, "instantiate"))?;
        store.set_epoch_deadline(self.runtime.deadline_ticks());
        match bindings.call_init(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(Warm { store, bindings }),
            Ok(Err(msg)) => Err(PolicyFailure {
                policy: KIND,
                kind: FailureKind::Invalid,
                message: format!("init rejected its config: {msg}"),
            }),
            Err(e) => Err(failure(&e, "init")),
        }
    }

    /// Asks the policy. A trap or timeout discards the instance that produced it.
    pub fn decide(&self, snapshot: &AdmissionSnapshot) -> Result<AdmissionDecision, PolicyFailure> {
        let warm = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut warm = match warm {
            Some(w) => w,
            None => self.instantiate()?,
        };
        warm.store.set_epoch_deadline(self.runtime.deadline_ticks());
        let result = warm
            .bindings
            .orchd_policy_admission()
            .call_decide(&mut warm.store, snapshot);
        match result {
            Ok(decision) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(warm);
                }
                Ok(decision)
            }
            // The instance may be poisoned: drop it (the store goes with it).
            Err(e) => Err(failure(&e, "decide")),
        }
    }
}

fn failure(err: &wasmtime::Error, during: &str) -> PolicyFailure {
    let kind = match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) | Some(wasmtime::Trap::OutOfFuel) => FailureKind::Timeout,
        _ => FailureKind::Trap,
    };
    PolicyFailure {
        policy: KIND,
        kind,
        message: format!("{during}: {err:#}"),
    }
}
