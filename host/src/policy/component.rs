//! One loaded version of a policy component, generic over its world: compile (through the
//! runtime's cache), link, `InstancePre`, `init(config)`, `info()`, a self-test, then calls
//! on a small pool of warm instances under an epoch deadline.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};

use super::bindings::PolicyInfo;
use super::runtime::{PolicyRuntime, PolicyState, arm_deadline};
use super::{FailureKind, LoadError, PolicyFailure, PolicyMeta};
use crate::metrics;

/// Warm instances kept between calls (one per concurrently calling thread is enough).
const MAX_IDLE: usize = 8;

/// What the host needs to know about one policy world.
pub trait World: Send + Sync + 'static {
    /// `admission`, `budget`, `placement` or `error_mapping` (the metrics label).
    const KIND: &'static str;
    type Pre: Send + Sync;
    type Bindings: Send;

    fn add_imports(linker: &mut Linker<PolicyState>) -> wasmtime::Result<()>;
    /// The typed pre-instance for whichever `orchd:policy` version the component exports;
    /// `Err` says what each version found missing.
    fn pre(pre: InstancePre<PolicyState>) -> Result<Self::Pre, String>;
    /// The `orchd:policy` version `pre` was built against.
    fn wit_version(pre: &Self::Pre) -> &'static str;
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<PolicyState>,
    ) -> wasmtime::Result<Self::Bindings>;
    fn info(b: &Self::Bindings, store: &mut Store<PolicyState>) -> wasmtime::Result<PolicyInfo>;
    fn init(
        b: &Self::Bindings,
        store: &mut Store<PolicyState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>>;
    /// Calls the policy once on a canned snapshot; `Err` refuses the component.
    fn self_test(loaded: &Loaded<Self>) -> Result<(), String>
    where
        Self: Sized;
}

struct Warm<W: World> {
    store: Store<PolicyState>,
    bindings: W::Bindings,
}

/// Counters of one loaded version, shown by `GET /v1/policies`.
#[derive(Default)]
pub struct CallStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub struct Loaded<W: World> {
    meta: PolicyMeta,
    runtime: Arc<PolicyRuntime>,
    pre: W::Pre,
    config_json: String,
    idle: Mutex<Vec<Warm<W>>>,
    pub stats: CallStats,
    /// False while loading: self-test calls are not traffic and are not counted.
    live: bool,
}

impl<W: World> Loaded<W> {
    /// Compiles, links, instantiates, initializes and self-tests the component; refuses it
    /// if any step fails or `init` rejects `config_json`.
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
        let linker = runtime.linker(&compiled.component, path, W::add_imports)?;
        let pre = linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| refuse(format!("does not fit the {} world: {e:#}", W::KIND)))?;
        let pre = W::pre(pre)
            .map_err(|e| refuse(format!("does not export the {} world: {e}", W::KIND)))?;
        let mut loaded = Self {
            meta: PolicyMeta {
                kind: W::KIND,
                name: String::new(),
                version: String::new(),
                sha256: compiled.sha256,
                wit_version: W::wit_version(&pre),
                path: path.to_path_buf(),
                loaded_at: SystemTime::now(),
                cached: compiled.cached,
                load_ms: compiled.load_ms,
            },
            runtime: Arc::clone(runtime),
            pre,
            config_json: config_json.to_owned(),
            idle: Mutex::new(Vec::new()),
            stats: CallStats::default(),
            live: false,
        };
        let _ticking = runtime.ticking();
        let mut warm = loaded.instantiate().map_err(|f| refuse(f.message))?;
        arm_deadline(&mut warm.store, loaded.runtime.setup_deadline_ticks());
        let info = W::info(&warm.bindings, &mut warm.store)
            .map_err(|e| refuse(format!("info() failed: {e:#}")))?;
        if info.name.is_empty() || info.name.len() > 128 || info.version.len() > 64 {
            return Err(refuse(
                "info() returned an empty or oversized name/version".to_owned(),
            ));
        }
        loaded.meta.name = info.name;
        loaded.meta.version = info.version;
        loaded
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(warm);
        W::self_test(&loaded).map_err(|m| refuse(format!("self-test failed: {m}")))?;
        loaded.live = true;
        Ok(loaded)
    }

    pub fn meta(&self) -> &PolicyMeta {
        &self.meta
    }

    /// Drops the warm instances: the next call instantiates afresh (benchmarks measure
    /// the cold path with it).
    pub fn clear_warm(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A fresh instance with `init(config)` done.
    fn instantiate(&self) -> Result<Warm<W>, PolicyFailure> {
        let mut store = self.runtime.new_store(W::KIND);
        arm_deadline(&mut store, self.runtime.setup_deadline_ticks());
        let bindings = W::instantiate(&self.pre, &mut store)
            .map_err(|e| failure::<W>(&e, "instantiate", &mut store))?;
        arm_deadline(&mut store, self.runtime.setup_deadline_ticks());
        match W::init(&bindings, &mut store, &self.config_json) {
            Ok(Ok(())) => Ok(Warm { store, bindings }),
            Ok(Err(msg)) => Err(PolicyFailure {
                policy: W::KIND,
                kind: FailureKind::Invalid,
                message: format!("init rejected its config: {msg}"),
            }),
            Err(e) => Err(failure::<W>(&e, "init", &mut store)),
        }
    }

    /// Calls the policy and validates its output. A trap or timeout discards the instance
    /// that produced it; an output `validate` refuses is an `Invalid` failure. Every call is
    /// counted and timed.
    pub fn call<R, T>(
        &self,
        f: impl FnOnce(&W::Bindings, &mut Store<PolicyState>) -> wasmtime::Result<R>,
        validate: impl FnOnce(R) -> Result<T, String>,
    ) -> Result<T, PolicyFailure> {
        let started = Instant::now();
        let result = self.call_raw(f).and_then(|r| {
            validate(r).map_err(|message| PolicyFailure {
                policy: W::KIND,
                kind: FailureKind::Invalid,
                message,
            })
        });
        if !self.live {
            return result;
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(failure) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if failure.kind == FailureKind::Timeout {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(failure.message.clone());
                failure.kind.as_str()
            }
        };
        let took = started.elapsed();
        metrics::policy_call(W::KIND, &self.meta.name, &self.meta.version, outcome, took);
        // An event of the task's current span (admission, queue, dispatch or engine).
        tracing::info!(
            target: crate::trace::TARGET,
            policy = W::KIND, name = %self.meta.name, version = %self.meta.version,
            outcome, duration_us = took.as_micros() as u64,
            "policy decision"
        );
        result
    }

    fn call_raw<R>(
        &self,
        f: impl FnOnce(&W::Bindings, &mut Store<PolicyState>) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyFailure> {
        let _ticking = self.runtime.ticking();
        let warm = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut warm = match warm {
            Some(w) => w,
            None => self.instantiate()?,
        };
        // The self-test at load runs before the version serves: it gets the setup deadline,
        // so a busy machine cannot refuse a good component.
        let budget = if self.live {
            self.runtime.deadline_ticks()
        } else {
            self.runtime.setup_deadline_ticks()
        };
        arm_deadline(&mut warm.store, budget);
        match f(&warm.bindings, &mut warm.store) {
            Ok(r) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(warm);
                }
                Ok(r)
            }
            // The instance may be poisoned: drop it (the store goes with it).
            Err(e) => Err(failure::<W>(&e, "call", &mut warm.store)),
        }
    }
}

/// A failed guest execution, with what the guest said before it failed (its last
/// error-level log line of the call, if any) ahead of wasmtime's account.
fn failure<W: World>(
    err: &wasmtime::Error,
    during: &str,
    store: &mut Store<PolicyState>,
) -> PolicyFailure {
    let trap = err.downcast_ref::<wasmtime::Trap>();
    let kind = match trap {
        Some(wasmtime::Trap::Interrupt) | Some(wasmtime::Trap::OutOfFuel) => FailureKind::Timeout,
        _ => FailureKind::Trap,
    };
    let message = match store.data_mut().take_guest_error() {
        Some(said) => match trap {
            Some(trap) => format!("{during}: {said} (wasm trap: {trap})"),
            None => format!("{during}: {said} ({err:#})"),
        },
        None => format!("{during}: {err:#}"),
    };
    PolicyFailure {
        policy: W::KIND,
        kind,
        message,
    }
}
