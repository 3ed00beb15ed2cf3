//! The wasmtime engine shared by every policy, its epoch ticker, and component compilation
//! with a cache of precompiled artifacts.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};

use super::LoadError;
use super::bindings::{HostImports, LogLevel, TypesHost, v1};
use super::sealed::{SealedCache, Unsealed};
use crate::config::PolicyLimits;

/// One epoch tick. Deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(1);
/// Guest stack limit: deep recursion traps instead of growing.
const MAX_WASM_STACK: usize = 512 * 1024;

/// Identity of a loaded policy component (logged and shown by the API).
#[derive(Debug, Clone)]
pub struct PolicyMeta {
    /// Which policy slot it fills: `admission`, `budget`, `placement`, `error_mapping`.
    pub kind: &'static str,
    /// Name and version the component reports about itself.
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// The `orchd:policy` WIT version the component was built against.
    pub wit_version: &'static str,
    pub path: PathBuf,
    pub loaded_at: SystemTime,
    /// Whether the compiled code came from the precompiled cache.
    pub cached: bool,
    pub load_ms: u64,
}

/// The engine every policy component runs on.
pub struct PolicyRuntime {
    engine: Engine,
    ticker: Arc<Ticker>,
    limits: PolicyLimits,
    /// `None` when the cache directory or its key cannot be used: every load compiles.
    cache: Option<SealedCache>,
    /// Cache files this daemon loaded or wrote (never collected while it runs).
    in_use: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The epoch ticker's state: it ticks while guests run and for a short while after, then
/// parks, so an idle daemon has no thread waking every millisecond, and a daemon under
/// load does not pay a wake-up (a futex call and a context switch) per policy call.
struct Ticker {
    /// Guest executions in progress (calls, instantiation, `init`, `info`).
    calls: AtomicUsize,
    /// Guest executions ever started: the ticker parks once it sees no new one for
    /// [`LINGER_TICKS`].
    started: AtomicUsize,
    /// Set by the ticker before it parks; whoever clears it unparks it.
    parked: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

/// Ticks without a new guest execution before the ticker parks, when it was last woken
/// soon after it parked ([`BUSY_GAP`]): calls that close together keep it ticking instead
/// of paying a park and a wake-up (about two context switches; a tick costs one) each.
/// Otherwise it parks after the first tick without a call, so a daemon at a few requests
/// a second costs one wake-up and one tick per burst of calls.
const LINGER_TICKS: u32 = 3;
/// A park shorter than this means calls come close together.
const BUSY_GAP: Duration = Duration::from_millis(5);

impl Ticker {
    /// The ticker's loop.
    fn run(&self, engine: &Engine) {
        let mut seen = self.started.load(Ordering::Acquire);
        let (mut quiet, mut linger) = (0, LINGER_TICKS);
        loop {
            std::thread::sleep(TICK);
            engine.increment_epoch();
            let started = self.started.load(Ordering::Acquire);
            if started != seen || self.calls.load(Ordering::Acquire) != 0 {
                (seen, quiet) = (started, 0);
                continue;
            }
            quiet += 1;
            if quiet < linger {
                continue;
            }
            // At rest. Say so first, then look again: a guest that started in between
            // either is seen here or finds `parked` set and unparks.
            let parked_at = Instant::now();
            self.parked.store(true, Ordering::SeqCst);
            if self.started.load(Ordering::SeqCst) == seen {
                while self.parked.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            } else {
                self.parked.store(false, Ordering::SeqCst);
            }
            linger = if parked_at.elapsed() < BUSY_GAP {
                LINGER_TICKS
            } else {
                1
            };
            (seen, quiet) = (self.started.load(Ordering::Acquire), 0);
        }
    }
}

/// Keeps the epoch ticking while it lives: hold one around every guest execution, or its
/// deadline never fires.
pub struct Ticking(Arc<Ticker>);

impl Ticking {
    fn new(ticker: &Arc<Ticker>) -> Self {
        ticker.calls.fetch_add(1, Ordering::AcqRel);
        ticker.started.fetch_add(1, Ordering::SeqCst);
        // Only a parked ticker costs a wake-up.
        if ticker.parked.load(Ordering::SeqCst)
            && ticker.parked.swap(false, Ordering::SeqCst)
            && let Some(thread) = ticker.thread.get()
        {
            thread.unpark();
        }
        Self(Arc::clone(ticker))
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-store data: resource limits, the running call's deadline, and the attribution for
/// the guest's log lines.
pub struct PolicyState {
    limits: StoreLimits,
    kind: &'static str,
    deadline: Deadline,
    /// The last error-level line the guest logged during the current call: a guest that
    /// is about to trap (a Rust panic hook, a JavaScript catch) says why this way, and
    /// the host puts it on the failure.
    guest_error: Option<String>,
}

impl PolicyState {
    /// What the guest said before failing, if it said anything at error level.
    pub fn take_guest_error(&mut self) -> Option<String> {
        self.guest_error.take()
    }
}

/// Longest guest error kept for a failure (the rest is cut).
const MAX_GUEST_ERROR: usize = 1024;

/// A call's time limit, counted in CPU time of the thread running it. The epoch ticker
/// wakes the check: first one tick after the call starts (a call of a few µs never sees
/// it), then whenever the remaining budget would have passed in wall time. A call that
/// spins is stopped once it has used its budget, as with a plain wall deadline; a call
/// preempted by a busy machine is not failed for time it did not run, up to
/// [`WALL_BACKSTOP`] times its budget in wall time.
#[derive(Debug, Default)]
struct Deadline {
    budget: Duration,
    /// Wall time the call has been running, in ticks, as seen by the checks.
    wall_ticks: u64,
    /// Thread CPU time at the first check.
    cpu_base: Option<Duration>,
    /// Ticks the current epoch deadline was set to.
    armed: u64,
}

/// However little CPU a preempted call has used, it is stopped after this many budgets of
/// wall time.
const WALL_BACKSTOP: u64 = 20;

/// CPU time of the calling thread, where the platform says.
fn thread_cpu() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

impl Deadline {
    /// The check at an epoch deadline: extend by the ticks left, or stop the call.
    fn check(&mut self) -> UpdateDeadline {
        self.check_at(thread_cpu())
    }

    /// The check, given the thread's CPU time now.
    fn check_at(&mut self, now: Option<Duration>) -> UpdateDeadline {
        self.wall_ticks += self.armed;
        let budget_ticks = ticks(self.budget);
        if self.wall_ticks >= budget_ticks * WALL_BACKSTOP {
            return UpdateDeadline::Interrupt;
        }
        let used = match (self.cpu_base, now) {
            // Counted as if the whole first tick was spent running.
            (Some(base), Some(now)) => now.saturating_sub(base) + TICK,
            (None, Some(now)) => {
                self.cpu_base = Some(now);
                TICK
            }
            // No thread clock: wall time.
            (_, None) => TICK * self.wall_ticks as u32,
        };
        if used >= self.budget {
            return UpdateDeadline::Interrupt;
        }
        self.armed = ticks(self.budget - used);
        UpdateDeadline::Continue(self.armed)
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1)
}

/// Starts a call's deadline of `budget_ticks` ticks on `store`.
pub fn arm_deadline(store: &mut Store<PolicyState>, budget_ticks: u64) {
    store.data_mut().guest_error = None;
    store.data_mut().deadline = Deadline {
        budget: TICK * budget_ticks as u32,
        wall_ticks: 0,
        cpu_base: None,
        armed: 1,
    };
    store.set_epoch_deadline(1);
}

impl HostImports for PolicyState {
    fn log(&mut self, level: LogLevel, message: String) {
        let policy = self.kind;
        match level {
            LogLevel::Debug => tracing::debug!(policy, guest = true, "{message}"),
            LogLevel::Info => tracing::info!(policy, guest = true, "{message}"),
            LogLevel::Warn => tracing::warn!(policy, guest = true, "{message}"),
            LogLevel::Error => {
                tracing::error!(policy, guest = true, "{message}");
                let mut kept = message;
                if kept.len() > MAX_GUEST_ERROR {
                    let mut end = MAX_GUEST_ERROR;
                    while !kept.is_char_boundary(end) {
                        end -= 1;
                    }
                    kept.truncate(end);
                    kept.push('…');
                }
                self.guest_error = Some(kept);
            }
        }
    }
}

impl TypesHost for PolicyState {}

/// Components built against 0.1.0 log through the same host.
impl v1::HostImports for PolicyState {
    fn log(&mut self, level: v1::LogLevel, message: String) {
        let level = match level {
            v1::LogLevel::Debug => LogLevel::Debug,
            v1::LogLevel::Info => LogLevel::Info,
            v1::LogLevel::Warn => LogLevel::Warn,
            v1::LogLevel::Error => LogLevel::Error,
        };
        HostImports::log(self, level, message);
    }
}

impl v1::TypesHost for PolicyState {}

impl PolicyRuntime {
    /// Builds the engine and starts the epoch ticker (a thread that lives as long as the
    /// process; one tick per millisecond while guests run, and for 3 ms after when calls come close together; parked otherwise).
    pub fn new(limits: PolicyLimits, cache_dir: PathBuf) -> Result<Arc<Self>, String> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK);
        let engine = Engine::new(&config).map_err(|e| format!("wasmtime engine: {e:#}"))?;
        let ticker = Arc::new(Ticker {
            calls: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let epoch = engine.clone();
        let ticking = Arc::clone(&ticker);
        let thread = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || ticking.run(&epoch))
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        let _ = ticker.thread.set(thread.thread().clone());
        let cache = match SealedCache::open(&cache_dir) {
            Ok(cache) => Some(cache),
            Err(reason) => {
                tracing::warn!(dir = %cache_dir.display(), %reason, "the precompiled-policy cache is off; policies are compiled at every load");
                None
            }
        };
        Ok(Arc::new(Self {
            engine,
            ticker,
            limits,
            cache,
            in_use: std::sync::Mutex::new(std::collections::HashSet::new()),
        }))
    }

    /// Starts the epoch ticking for one guest execution (see [`Ticking`]).
    pub fn ticking(&self) -> Ticking {
        Ticking::new(&self.ticker)
    }

    /// Deadline of one call, in ticks (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        (self.limits.timeout.as_millis() as u64 / TICK.as_millis() as u64).max(1)
    }

    /// Deadline of instantiating and `init` (and the load-time `info`), in ticks: setup
    /// parses config and warms up, and must not fail because a busy machine preempted it
    /// for a few milliseconds, yet a looping `init` is still stopped (20 call deadlines,
    /// at least 250 ms).
    pub fn setup_deadline_ticks(&self) -> u64 {
        (self.deadline_ticks() * 20).max(250 / TICK.as_millis().max(1) as u64)
    }

    /// A fresh store with the memory cap.
    pub fn new_store(&self, kind: &'static str) -> Store<PolicyState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(64)
            .tables(64)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            PolicyState {
                limits,
                kind,
                deadline: Deadline::default(),
                guest_error: None,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().deadline.check()));
        store
    }

    /// A linker with the host's imports; WASI imports of the component are defined as
    /// traps (policies get no I/O, clock or randomness), anything else refuses the load.
    pub fn linker(
        &self,
        component: &Component,
        path: &Path,
        add_imports: impl FnOnce(&mut Linker<PolicyState>) -> wasmtime::Result<()>,
    ) -> Result<Linker<PolicyState>, LoadError> {
        let refuse = |message: String| LoadError::Component {
            path: path.to_path_buf(),
            message,
        };
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if !(name.starts_with("wasi:") || name.starts_with("orchd:policy/")) {
                return Err(refuse(format!(
                    "imports {name:?}, which the host does not provide (policies may import \
                     only orchd:policy/host)"
                )));
            }
        }
        let mut linker = Linker::new(&self.engine);
        add_imports(&mut linker).map_err(|e| refuse(format!("linking host imports: {e:#}")))?;
        linker
            .define_unknown_imports_as_traps(component)
            .map_err(|e| refuse(format!("stubbing WASI imports: {e:#}")))?;
        Ok(linker)
    }

    /// Reads and compiles a component, through the precompiled cache.
    pub fn compile(&self, path: &Path) -> Result<Compiled, LoadError> {
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let cache_name = self.cache_name(&sha256);
        self.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cache_name.clone());
        if let Some(component) = self.load_cached(&cache_name) {
            if let Some(cache) = &self.cache {
                cache.touch(&cache_name);
            }
            return Ok(Compiled {
                component,
                sha256,
                cached: true,
                load_ms: started.elapsed().as_millis() as u64,
            });
        }
        let refuse = |message: String| LoadError::Component {
            path: path.to_path_buf(),
            message,
        };
        let artifact = self
            .engine
            .precompile_component(&bytes)
            .map_err(|e| refuse(format!("not a valid component: {e:#}")))?;
        if let Some(cache) = &self.cache
            && let Err(e) = cache.write(&cache_name, &artifact)
        {
            tracing::warn!(path = %cache.path(&cache_name).display(), error = %e, "cannot cache a compiled policy; it will be compiled again next start");
        }
        self.collect_cache();
        let component = deserialize(&self.engine, &artifact)
            .map_err(|e| refuse(format!("loading compiled code: {e:#}")))?;
        Ok(Compiled {
            component,
            sha256,
            cached: false,
            load_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Keeps the precompiled cache bounded: after it grew, files no component of this
    /// daemon uses go once unused for [`CACHE_MAX_AGE`], and the least recently used go
    /// while the cache holds more than [`CACHE_MAX_BYTES`].
    fn collect_cache(&self) {
        let Some(cache) = &self.cache else { return };
        let keep = self
            .in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (files, bytes) = cache.collect(&keep, CACHE_MAX_BYTES, CACHE_MAX_AGE);
        if files > 0 {
            tracing::info!(files, bytes, "precompiled-policy cache collected");
        }
    }

    /// Cache key: content hash plus the engine's compatibility hash (wasmtime version,
    /// target and settings), so a changed engine never loads stale code.
    fn cache_name(&self, sha256: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{sha256}-{:016x}.cwasm", h.finish())
    }

    /// Precompiled code from the cache, only if its seal shows this install wrote it.
    fn load_cached(&self, name: &str) -> Option<Component> {
        let cache = self.cache.as_ref()?;
        let path = cache.path(name);
        let bytes = match cache.read(name) {
            Ok(bytes) => bytes,
            Err(Unsealed::Missing) => return None,
            Err(Unsealed::BadSeal) => {
                tracing::warn!(path = %path.display(), "ignoring a precompiled policy this daemon did not write (its seal does not match); compiling the component again");
                return None;
            }
        };
        match deserialize(&self.engine, &bytes) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable precompiled policy");
                None
            }
        }
    }
}

/// The precompiled cache is collected down to this size (least recently used first).
pub const CACHE_MAX_BYTES: u64 = 512 << 20;
/// A precompiled file unused this long is collected.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);

pub struct Compiled {
    pub component: Component,
    pub sha256: String,
    pub cached: bool,
    pub load_ms: u64,
}

/// Loads precompiled code.
///
/// This is the host's one `unsafe` block. SAFETY: wasmtime requires the bytes to come from
/// `Engine::precompile_component` of a compatible engine. They do: bytes are either fresh
/// from `precompile_component` or read from the sealed cache, whose files pass an
/// HMAC under this install's key (kept outside the cache directory, 0600) that only
/// [`PolicyRuntime::compile`] applies, after writing atomically; the file name carries the
/// engine's compatibility hash, and wasmtime itself re-checks the version and settings
/// recorded in the artifact and refuses a mismatch.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    unsafe { Component::deserialize(engine, bytes) }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    fn armed(budget_ticks: u64) -> Deadline {
        Deadline {
            budget: TICK * budget_ticks as u32,
            wall_ticks: 0,
            cpu_base: None,
            armed: 1,
        }
    }

    /// Runs checks until the call is stopped, advancing the thread's CPU time by
    /// `cpu_per_tick` for every wall tick; returns the wall ticks it ran.
    fn run(mut d: Deadline, cpu_per_tick: Duration) -> u64 {
        let mut cpu = Duration::from_secs(7);
        loop {
            cpu += cpu_per_tick * d.armed as u32;
            match d.check_at(Some(cpu)) {
                UpdateDeadline::Continue(n) => assert!(n >= 1),
                UpdateDeadline::Interrupt => return d.wall_ticks,
                #[allow(unreachable_patterns)]
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn a_spinning_call_is_stopped_at_its_budget() {
        let ran = run(armed(5), TICK);
        assert!((5..=6).contains(&ran), "stopped after {ran} ticks");
    }

    #[test]
    fn a_preempted_call_runs_until_its_cpu_budget_is_used() {
        // A quarter of each tick on the CPU: the budget lasts about four times longer.
        let ran = run(armed(5), TICK / 4);
        assert!((16..=22).contains(&ran), "stopped after {ran} ticks");
    }

    #[test]
    fn a_call_that_never_runs_is_stopped_by_the_wall_backstop() {
        let ran = run(armed(5), Duration::ZERO);
        assert!(
            (5 * WALL_BACKSTOP..5 * WALL_BACKSTOP + 5).contains(&ran),
            "{ran}"
        );
    }

    #[test]
    fn without_a_thread_clock_the_deadline_is_wall_time() {
        let mut d = armed(5);
        let mut ticks_run = 0;
        while let UpdateDeadline::Continue(_) = d.check_at(None) {
            ticks_run = d.wall_ticks;
            assert!(ticks_run < 10);
        }
        assert!(d.wall_ticks >= 5, "{ticks_run}");
    }
}
