//! Pools and replicas: where tasks run, how many at once, and how fast they have been
//! served (the measured rates behind every ETA and `retry_after_ms`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::adapters::EngineClient;
use crate::config::PoolSettings;
use crate::queue::PoolQueue;
use crate::task::RunTiming;

/// Weight of a new measurement in the moving averages.
const EWMA_ALPHA: f64 = 0.2;

/// When a replica that keeps failing is taken out of placement (outlier ejection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierSettings {
    /// Ejected after this many failures in a row (0: never, by this rule).
    pub consecutive_failures: u32,
    /// Ejected when at least `min_requests` ended within `window` and this share of them
    /// failed (above 1.0: never, by this rule).
    pub error_rate: f64,
    pub min_requests: u32,
    pub window: std::time::Duration,
    /// The first ejection's length; each ejection that follows a failed probe doubles it,
    /// up to `max_ejection`.
    pub base_ejection: std::time::Duration,
    pub max_ejection: std::time::Duration,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window: std::time::Duration::from_secs(30),
            base_ejection: std::time::Duration::from_secs(5),
            max_ejection: std::time::Duration::from_secs(300),
        }
    }
}

/// A replica's recent outcomes and its ejection state.
#[derive(Debug, Default)]
struct Outcomes {
    consecutive_failures: u32,
    /// Ends within the window: when, and whether it failed.
    recent: std::collections::VecDeque<(std::time::Instant, bool)>,
    /// Out of placement until then; once passed, one probe task at a time (half-open)
    /// until one succeeds.
    ejected_until: Option<std::time::Instant>,
    /// Ejections in a row (a failed probe ejects again, for twice as long).
    ejections: u32,
    total_ejections: u64,
}

/// What recording an outcome did to the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Nothing changed.
    None,
    /// Ejected (again) for this long; `why` says by which rule.
    Ejected { for_ms: u64, why: &'static str },
    /// Its half-open probe succeeded: back in placement.
    Restored,
}

pub struct Replica {
    pub id: String,
    /// Devices this replica runs on (comma-separated ids), for placement.
    pub device_mask: Option<String>,
    /// The engine client, from the adapter version serving now (an upgrade swaps it; a
    /// task keeps the client it started with).
    client: ArcSwap<Arc<dyn EngineClient>>,
    /// The replica's adapter config, to make a client from a new adapter version.
    pub adapter_config_json: String,
    /// What the engine last said it is (health polling refreshes it).
    engine_version: ArcSwap<String>,
    slots_total: AtomicU32,
    leases: AtomicU32,
    healthy: AtomicBool,
    /// The engine answered its last probe at all (it may still be loading).
    live: AtomicBool,
    /// Moving averages of this replica's own streams.
    stats: Mutex<ServiceStats>,
    /// The engine process, when the pool manager launched it.
    pub supervisor: Option<Arc<crate::supervisor::Supervisor>>,
    /// Free VRAM over the replica's devices (NVML), `u64::MAX` = unknown.
    vram_free: std::sync::atomic::AtomicU64,
    /// Why the replica is not ready, when it is not.
    last_error: Mutex<Option<String>>,
    /// Recent outcomes and ejection (outlier detection).
    outcomes: Mutex<Outcomes>,
    /// Prompt blocks this replica was sent recently (prefix-aware placement).
    prefix: Mutex<crate::prefix::PrefixCache>,
}

impl Replica {
    pub fn new(
        id: String,
        client: Arc<dyn EngineClient>,
        engine_version: String,
        slots_total: u32,
        healthy: bool,
    ) -> Self {
        Self {
            id,
            device_mask: None,
            client: ArcSwap::from_pointee(client),
            adapter_config_json: String::new(),
            engine_version: ArcSwap::from_pointee(engine_version),
            slots_total: AtomicU32::new(slots_total),
            leases: AtomicU32::new(0),
            healthy: AtomicBool::new(healthy),
            live: AtomicBool::new(healthy),
            vram_free: std::sync::atomic::AtomicU64::new(u64::MAX),
            supervisor: None,
            stats: Mutex::new(ServiceStats {
                tokens_per_s: 0.0,
                first_token_ms: 0.0,
                measured: false,
            }),
            last_error: Mutex::new(None),
            outcomes: Mutex::new(Outcomes::default()),
            prefix: Mutex::new(crate::prefix::PrefixCache::default()),
        }
    }

    fn outcomes(&self) -> std::sync::MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leading blocks of `blocks` this replica was sent recently.
    pub fn prefix_matched(&self, blocks: &crate::prefix::Blocks) -> u32 {
        if blocks.is_empty() {
            return 0;
        }
        self.prefix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .matched(blocks)
    }

    /// Remembers that this replica was sent a prompt of `blocks`, keeping at most
    /// `capacity` blocks (see [`Pool::remember_prefix`]).
    fn remember_prefix(&self, blocks: &crate::prefix::Blocks, capacity: usize) {
        if !blocks.is_empty() {
            self.prefix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remember(blocks, capacity);
        }
    }

    /// Out of placement now (ejected, its back-off not over).
    pub fn is_ejected(&self) -> bool {
        self.outcomes()
            .ejected_until
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    /// When the current ejection ends (or ended, while its probe runs).
    pub fn ejected_until(&self) -> Option<std::time::Instant> {
        self.outcomes().ejected_until
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u64 {
        self.outcomes().total_ejections
    }

    /// Slots placement may use: none while ejected, one probe at a time once the ejection
    /// is over and until a probe succeeds.
    pub fn placeable_free(&self) -> u32 {
        if !self.is_healthy() {
            return 0;
        }
        let free = self.slots_total().saturating_sub(self.leases());
        match self.outcomes().ejected_until {
            Some(t) if std::time::Instant::now() < t => 0,
            Some(_) => u32::from(self.leases() == 0).min(free),
            None => free,
        }
    }

    /// Records how a task's run on this replica ended (`failed`: the replica's fault, not
    /// the request's) and ejects it, or brings it back, per `settings`.
    pub fn record_outcome(&self, failed: bool, settings: &OutlierSettings) -> Ejection {
        let now = std::time::Instant::now();
        let mut o = self.outcomes();
        if let Some(until) = o.ejected_until {
            if now < until {
                // A task that started before the ejection: it says nothing new.
                return Ejection::None;
            }
            // The half-open probe's outcome.
            if failed {
                o.ejections += 1;
                return Self::eject(&mut o, now, settings, "its probe failed");
            }
            *o = Outcomes {
                total_ejections: o.total_ejections,
                ..Outcomes::default()
            };
            return Ejection::Restored;
        }
        o.recent.push_back((now, failed));
        while o
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > settings.window)
            || o.recent.len() > 10_000
        {
            o.recent.pop_front();
        }
        if !failed {
            o.consecutive_failures = 0;
            return Ejection::None;
        }
        o.consecutive_failures += 1;
        let failures = o.recent.iter().filter(|(_, f)| *f).count();
        if settings.consecutive_failures > 0
            && o.consecutive_failures >= settings.consecutive_failures
        {
            o.ejections = 1;
            return Self::eject(&mut o, now, settings, "consecutive failures");
        }
        if o.recent.len() >= settings.min_requests.max(1) as usize
            && failures as f64 / o.recent.len() as f64 >= settings.error_rate
        {
            o.ejections = 1;
            return Self::eject(&mut o, now, settings, "error rate over the window");
        }
        Ejection::None
    }

    fn eject(
        o: &mut Outcomes,
        now: std::time::Instant,
        settings: &OutlierSettings,
        why: &'static str,
    ) -> Ejection {
        let factor = 1u32 << o.ejections.saturating_sub(1).min(16);
        let length = settings
            .base_ejection
            .saturating_mul(factor)
            .min(settings.max_ejection);
        o.ejected_until = Some(now + length);
        o.consecutive_failures = 0;
        o.recent.clear();
        o.total_ejections += 1;
        Ejection::Ejected {
            for_ms: length.as_millis() as u64,
            why,
        }
    }

    /// The engine client new work uses.
    pub fn client(&self) -> Arc<dyn EngineClient> {
        Arc::clone(&self.client.load())
    }

    /// Switches new work to `client` (a new version of the adapter); work already started
    /// keeps the client it has.
    pub fn set_client(&self, client: Arc<dyn EngineClient>) {
        self.client.store(Arc::new(client));
    }

    pub fn with_adapter_config(mut self, config_json: &str) -> Self {
        self.adapter_config_json = config_json.to_owned();
        self
    }

    pub fn leases(&self) -> u32 {
        self.leases.load(Ordering::Acquire)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn engine_version(&self) -> Arc<String> {
        self.engine_version.load_full()
    }

    pub fn set_engine_version(&self, version: String) {
        if !version.is_empty() && **self.engine_version.load() != version {
            self.engine_version.store(Arc::new(version));
        }
    }

    /// Free VRAM over the replica's devices, when NVML reports it.
    pub fn vram_free(&self) -> Option<u64> {
        Some(self.vram_free.load(Ordering::Acquire)).filter(|&v| v != u64::MAX)
    }

    pub fn set_vram_free(&self, bytes: Option<u64>) {
        self.vram_free
            .store(bytes.unwrap_or(u64::MAX), Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Records whether the engine answered its probe at all.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    pub fn slots_total(&self) -> u32 {
        self.slots_total.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the replica out of placement (a panicking adapter, a dead engine) until a
    /// health probe says it is ready again. Returns whether it was healthy before.
    pub fn mark_unhealthy(&self, why: &str) -> bool {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
        self.healthy.swap(false, Ordering::AcqRel)
    }

    /// Records a health probe: ready or not, and what the engine reports. Returns whether
    /// readiness changed.
    pub fn observe(
        &self,
        ready: bool,
        engine_version: Option<String>,
        slots: Option<u32>,
        why: Option<String>,
    ) -> bool {
        if let Some(v) =
            engine_version.filter(|v| !v.is_empty() && **self.engine_version.load() != *v)
        {
            self.engine_version.store(Arc::new(v));
        }
        if let Some(n) = slots {
            self.slots_total.store(n, Ordering::Release);
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why;
        self.healthy.swap(ready, Ordering::AcqRel) != ready
    }

    pub fn with_supervisor(mut self, supervisor: Arc<crate::supervisor::Supervisor>) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    pub fn with_device_mask(mut self, mask: Option<String>) -> Self {
        self.device_mask = mask;
        self
    }

    fn try_lease(&self) -> bool {
        if self.placeable_free() == 0 {
            return false;
        }
        let total = self.slots_total();
        self.leases
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < total).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Moving averages of what the pool's streams actually did.
#[derive(Debug, Clone, Copy)]
struct ServiceStats {
    tokens_per_s: f64,
    first_token_ms: f64,
    measured: bool,
}

pub struct Pool {
    pub id: String,
    pub engine: String,
    /// The adapter library the pool's replicas use.
    pub adapter: String,
    /// What that library said it can do when the replicas' clients were made.
    pub features: Vec<String>,
    /// No new placements while draining (`POST /v1/pools/{id}/drain`).
    draining: AtomicBool,
    /// When the current drain's deadline passes.
    drain_until: Mutex<Option<std::time::Instant>>,
    /// A reload is in progress.
    reloading: AtomicBool,
    pub model_ref: String,
    pub ctx_max: u32,
    pub replicas: Vec<Replica>,
    /// The pool's queue; its lock is its own (`queue.rs`).
    pub queue: PoolQueue,
    /// Wakes the pool's dispatcher: a task was enqueued or a slot was freed.
    pub wake: Notify,
    stats: Mutex<ServiceStats>,
    /// Which replica each session last ran on (bounded), for session affinity.
    affinity: Mutex<HashMap<String, usize>>,
    /// Prompt token counts from the engine's tokenizer, by prompt hash (bounded), for
    /// billing engines that report no counts.
    token_counts: Mutex<HashMap<u64, u32>>,
    /// When a replica that keeps failing is ejected.
    pub outliers: OutlierSettings,
    /// How often every replica is probed.
    pub health_interval: std::time::Duration,
    /// Prompt tokens each replica's engine caches, when configured.
    prefix_cache_tokens: Option<u32>,
    /// Removed from the daemon (`DELETE /v1/pools/{id}`): its dispatcher stops.
    removed: AtomicBool,
    /// Its definition (JSON), when it was created through the API.
    pub definition: std::sync::OnceLock<String>,
}

/// Prompt token counts remembered per pool; the map is cleared when it is full.
const TOKEN_COUNTS_CAP: usize = 4096;

/// Sessions remembered for affinity per pool; the map is cleared when it is full.
const AFFINITY_CAP: usize = 65_536;

impl Pool {
    /// A pool of `replicas` serving `engine` with contexts up to `ctx_max` (both resolved
    /// from the adapter and the engines where the settings leave them open).
    pub fn new(
        settings: &PoolSettings,
        engine: String,
        ctx_max: u32,
        replicas: Vec<Replica>,
    ) -> Self {
        Self {
            id: settings.id.clone(),
            engine,
            adapter: settings.adapter.clone(),
            features: Vec::new(),
            draining: AtomicBool::new(false),
            drain_until: Mutex::new(None),
            reloading: AtomicBool::new(false),
            model_ref: settings.model_ref.clone(),
            ctx_max,
            replicas,
            queue: PoolQueue::new(settings.queue_capacity.get()),
            wake: Notify::new(),
            affinity: Mutex::new(HashMap::new()),
            token_counts: Mutex::new(HashMap::new()),
            outliers: OutlierSettings::default(),
            health_interval: settings.health_interval,
            prefix_cache_tokens: settings.prefix_cache_tokens,
            removed: AtomicBool::new(false),
            definition: std::sync::OnceLock::new(),
            stats: Mutex::new(ServiceStats {
                tokens_per_s: settings.nominal_tokens_per_s,
                first_token_ms: settings.nominal_first_token_ms as f64,
                measured: false,
            }),
        }
    }

    /// Remembers that replica `idx` was sent a prompt of `blocks`, within what its engine
    /// caches: `prefix_cache_tokens`, else its slots × `ctx_max` (a prompt's text is about
    /// 4 bytes a token).
    pub fn remember_prefix(&self, idx: usize, blocks: &crate::prefix::Blocks) {
        let replica = &self.replicas[idx];
        let tokens = u64::from(
            self.prefix_cache_tokens
                .unwrap_or_else(|| replica.slots_total().max(1).saturating_mul(self.ctx_max)),
        );
        let capacity = (tokens * 4 / crate::prefix::BLOCK_BYTES as u64)
            .clamp(1, crate::prefix::MAX_CACHE_BLOCKS as u64) as usize;
        replica.remember_prefix(blocks, capacity);
    }

    /// Marks the pool removed and wakes its dispatcher, which then stops.
    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn with_outliers(mut self, outliers: OutlierSettings) -> Self {
        self.outliers = outliers;
        self
    }

    /// The features of the pool's adapter library (`streaming`, `tokenize`, `chat`, …).
    pub fn with_features(mut self, features: &[String]) -> Self {
        self.features = features.to_vec();
        self
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// The remembered token count of a prompt (by its hash), if any.
    pub fn token_count(&self, prompt_hash: u64) -> Option<u32> {
        self.token_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&prompt_hash)
            .copied()
    }

    pub fn remember_token_count(&self, prompt_hash: u64, count: u32) {
        let mut counts = self.token_counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= TOKEN_COUNTS_CAP {
            counts.clear();
        }
        counts.insert(prompt_hash, count);
    }

    pub fn is_ready(&self) -> bool {
        self.replicas.iter().any(Replica::is_healthy)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining until `deadline`; `None` if the pool already was, or is reloading.
    /// The answer names this drain: its end at the deadline applies only while it is still
    /// the drain in force (not after an undrain, nor to a later drain).
    pub fn begin_drain(&self, deadline: std::time::Duration) -> Option<std::time::Instant> {
        if self.is_reloading() || self.draining.swap(true, Ordering::AcqRel) {
            return None;
        }
        let until = std::time::Instant::now() + deadline;
        *self.drain_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        Some(until)
    }

    /// Whether the drain that `begin_drain` named `until` is still in force.
    pub fn is_drain(&self, until: std::time::Instant) -> bool {
        self.is_draining()
            && *self.drain_until.lock().unwrap_or_else(|p| p.into_inner()) == Some(until)
    }

    /// A drain whose deadline has not passed yet.
    pub fn drain_in_progress(&self) -> bool {
        self.is_draining()
            && self
                .drain_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| std::time::Instant::now() < t)
    }

    /// The pool takes work again (after a reload).
    pub fn end_drain(&self) {
        self.draining.store(false, Ordering::Release);
        *self.drain_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn is_reloading(&self) -> bool {
        self.reloading.load(Ordering::Acquire)
    }

    /// Claims the pool for a reload; `false` if a reload or a drain is in progress.
    pub fn begin_reload(&self) -> bool {
        !self.drain_in_progress() && !self.reloading.swap(true, Ordering::AcqRel)
    }

    pub fn end_reload(&self) {
        self.reloading.store(false, Ordering::Release);
    }

    pub fn slots_total(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| r.is_healthy())
            .map(Replica::slots_total)
            .sum()
    }

    /// Slots placement may use now (healthy replicas, not ejected).
    pub fn slots_free(&self) -> u32 {
        self.replicas.iter().map(Replica::placeable_free).sum()
    }

    /// The engine version metrics report for the pool (its first replica's).
    pub fn engine_version(&self) -> Arc<String> {
        self.replicas
            .first()
            .map(Replica::engine_version)
            .unwrap_or_default()
    }

    /// Publishes the queue's depth per class and the pool's readiness and leases.
    pub fn publish(&self) {
        let depths = self.queue.depths();
        let version = self.engine_version();
        for (p, depth) in [
            orchd_contracts::Priority::Interactive,
            orchd_contracts::Priority::Batch,
        ]
        .into_iter()
        .zip(depths)
        {
            crate::metrics::queue_depth(&self.engine, &version, &self.id, p.as_str(), depth);
        }
        let leases = self.replicas.iter().map(Replica::leases).sum();
        crate::metrics::pool_state(&self.id, self.is_ready(), leases);
    }

    pub fn queue_depth(&self) -> u32 {
        self.queue.depth()
    }

    /// Work per slot: queued and running tasks over healthy slots.
    pub fn load(&self) -> f64 {
        let busy: u32 = self.replicas.iter().map(Replica::leases).sum();
        f64::from(self.queue_depth() + busy) / f64::from(self.slots_total().max(1))
    }

    /// Measured (or nominal) tokens/s and first-token ms.
    pub fn rates(&self) -> (f64, u64) {
        let s = self.stats();
        (s.tokens_per_s, s.first_token_ms.round() as u64)
    }

    pub fn affinity(&self, session: &str) -> Option<usize> {
        self.affinity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .copied()
    }

    pub fn remember_affinity(&self, session: &str, replica: usize) {
        let mut map = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= AFFINITY_CAP && !map.contains_key(session) {
            map.clear();
        }
        map.insert(session.to_owned(), replica);
    }

    /// Leases a slot on replica `idx` if it is healthy and has one free.
    pub fn try_lease(&self, idx: usize) -> bool {
        self.replicas
            .get(idx)
            .is_some_and(|r| r.is_healthy() && r.try_lease())
    }

    /// The host's own choice (the documented placement fallback): the healthy replica with
    /// the most free slots, if any has one. Does not lease.
    pub fn least_loaded_replica(&self) -> Option<usize> {
        (0..self.replicas.len())
            .map(|i| (i, self.replicas[i].placeable_free()))
            .filter(|&(_, free)| free > 0)
            .max_by_key(|&(i, free)| (free, std::cmp::Reverse(i)))
            .map(|(i, _)| i)
    }

    /// Leases a slot on the healthy replica with the most free slots that is not in
    /// `tried` (a retry elsewhere).
    pub fn lease_untried(&self, tried: &[usize]) -> Option<usize> {
        let mut order: Vec<usize> = (0..self.replicas.len())
            .filter(|i| !tried.contains(i) && self.replicas[*i].placeable_free() > 0)
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.replicas[i].placeable_free()));
        order.into_iter().find(|&i| self.replicas[i].try_lease())
    }

    /// Leases a slot on the healthy replica with the most free slots.
    #[cfg(test)]
    fn least_loaded_free(&self) -> Option<usize> {
        self.lease_untried(&[])
    }

    /// Frees a slot and wakes the dispatcher.
    pub fn release(&self, replica: usize) {
        self.release_quiet(replica);
        self.wake.notify_one();
    }

    /// Frees a slot the dispatcher leased but did not use.
    pub fn release_quiet(&self, replica: usize) {
        self.replicas[replica].leases.fetch_sub(1, Ordering::AcqRel);
    }

    fn stats(&self) -> ServiceStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds a finished run on replica `replica` into the pool's and the replica's moving
    /// averages.
    pub fn record_on(&self, replica: usize, run: RunTiming) {
        self.record(run);
        if let Some(r) = self.replicas.get(replica) {
            blend_into(&mut r.stats.lock().unwrap_or_else(|p| p.into_inner()), run);
        }
    }

    /// Feeds a failed run into the measured first-token time (pool and replica): the time
    /// it took to fail counts as a first token that never came, so ETAs do not stay
    /// optimistic while an engine degrades into errors and timeouts.
    pub fn record_failure_on(&self, replica: usize, waited_ms: f64) {
        let blend = |s: &mut ServiceStats| {
            s.first_token_ms = if s.measured {
                s.first_token_ms * (1.0 - EWMA_ALPHA) + waited_ms * EWMA_ALPHA
            } else {
                s.first_token_ms.max(waited_ms)
            };
        };
        blend(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(r) = self.replicas.get(replica) {
            blend(&mut r.stats.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Feeds a finished run into the pool's moving averages.
    pub fn record(&self, run: RunTiming) {
        blend_into(
            &mut self.stats.lock().unwrap_or_else(|p| p.into_inner()),
            run,
        );
    }

    /// A replica's measured tokens/s and first-token ms, the pool's until it has its own.
    pub fn replica_rates(&self, replica: usize) -> (f64, u64) {
        let own = self
            .replicas
            .get(replica)
            .map(|r| *r.stats.lock().unwrap_or_else(|p| p.into_inner()))
            .filter(|s| s.measured);
        match own {
            Some(s) => (s.tokens_per_s, s.first_token_ms.round() as u64),
            None => self.rates(),
        }
    }
}

fn blend_into(s: &mut ServiceStats, run: RunTiming) {
    {
        let measured = s.measured;
        let blend = |old: f64, new: f64| {
            if measured {
                old + EWMA_ALPHA * (new - old)
            } else {
                new
            }
        };
        if let Some(ftt) = run.first_token_ms {
            s.first_token_ms = blend(s.first_token_ms, ftt);
        }
        // A rate needs a span: n tokens take n-1 intervals after the first.
        if run.tokens_out > 1 && run.decode_ms > 0.0 {
            let tps = f64::from(run.tokens_out - 1) * 1000.0 / run.decode_ms;
            s.tokens_per_s = blend(s.tokens_per_s, tps);
        }
        s.measured = true;
    }
}

impl Pool {
    /// Expected time one task of `tokens` output tokens holds a slot, in ms.
    pub fn service_ms(&self, tokens: u32) -> u64 {
        let s = self.stats();
        (s.first_token_ms + f64::from(tokens) * 1000.0 / s.tokens_per_s).ceil() as u64
    }

    /// When a task with `ahead` tasks before it can expect to start, in ms: the waves of
    /// work ahead of it beyond the free slots, at the measured service time.
    pub fn predicted_start_ms(&self, ahead: u32, tokens: u32) -> u64 {
        let free = self.slots_free();
        if ahead < free {
            return 0;
        }
        let slots = self.slots_total().max(1);
        let waves = u64::from((ahead + 1 - free).div_ceil(slots));
        waves * self.service_ms(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::{EngineFailure, EngineHealth, EngineJob, EngineProps, JobSpec};
    use std::num::NonZeroU32;

    struct NoEngine;

    impl EngineClient for NoEngine {
        fn health(&self) -> Result<EngineHealth, EngineFailure> {
            unreachable!("not used by these tests")
        }
        fn props(&self) -> Result<EngineProps, EngineFailure> {
            unreachable!("not used by these tests")
        }
        fn submit(
            &self,
            _: JobSpec,
            _: tokio::sync::mpsc::Sender<crate::adapters::EngineEvent>,
        ) -> Result<Box<dyn EngineJob>, EngineFailure> {
            unreachable!("not used by these tests")
        }
    }

    fn pool(slots: &[u32]) -> Pool {
        let settings = PoolSettings {
            id: "p".into(),
            engine: None,
            adapter: "mock".into(),
            model_ref: "m".into(),
            ctx_max: None,
            health_interval: std::time::Duration::from_secs(2),
            queue_capacity: NonZeroU32::new(8).unwrap(),
            nominal_tokens_per_s: 100.0,
            nominal_first_token_ms: 50,
            prefix_cache_tokens: None,
            replicas: Vec::new(),
        };
        let replicas = slots
            .iter()
            .enumerate()
            .map(|(i, &n)| Replica::new(format!("r{i}"), Arc::new(NoEngine), "v".into(), n, true))
            .collect();
        Pool::new(&settings, "mock".into(), 100, replicas)
    }

    #[test]
    fn a_failing_replica_is_ejected_probed_once_and_ejected_longer_or_restored() {
        let p = pool(&[4, 4]);
        let settings = OutlierSettings {
            consecutive_failures: 3,
            error_rate: 2.0,
            min_requests: 1,
            window: std::time::Duration::from_secs(60),
            base_ejection: std::time::Duration::from_millis(40),
            max_ejection: std::time::Duration::from_millis(100),
        };
        let r = &p.replicas[0];
        assert_eq!(r.record_outcome(true, &settings), Ejection::None);
        assert_eq!(
            r.record_outcome(false, &settings),
            Ejection::None,
            "a success resets"
        );
        assert_eq!(r.record_outcome(true, &settings), Ejection::None);
        assert_eq!(r.record_outcome(true, &settings), Ejection::None);
        assert_eq!(
            r.record_outcome(true, &settings),
            Ejection::Ejected {
                for_ms: 40,
                why: "consecutive failures"
            }
        );
        assert!(r.is_ejected());
        assert_eq!(r.placeable_free(), 0);
        assert_eq!(p.slots_free(), 4, "only the other replica's");
        assert!(!p.try_lease(0));
        // A task that started before the ejection says nothing new.
        assert_eq!(r.record_outcome(true, &settings), Ejection::None);
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Half-open: one probe at a time.
        assert_eq!(r.placeable_free(), 1);
        assert!(p.try_lease(0));
        assert!(!p.try_lease(0), "one probe at a time");
        // The probe fails: ejected again, for twice as long.
        assert_eq!(
            r.record_outcome(true, &settings),
            Ejection::Ejected {
                for_ms: 80,
                why: "its probe failed"
            }
        );
        p.release_quiet(0);
        std::thread::sleep(std::time::Duration::from_millis(90));
        assert!(p.try_lease(0));
        assert_eq!(r.record_outcome(false, &settings), Ejection::Restored);
        assert!(!r.is_ejected());
        assert_eq!(r.placeable_free(), 3, "all its slots again");
        assert_eq!(r.ejections(), 2);
        // The error-rate rule: half of the runs in the window failed.
        let rate = OutlierSettings {
            consecutive_failures: 0,
            error_rate: 0.5,
            min_requests: 4,
            ..settings
        };
        let r1 = &p.replicas[1];
        assert_eq!(r1.record_outcome(true, &rate), Ejection::None);
        assert_eq!(r1.record_outcome(false, &rate), Ejection::None);
        assert_eq!(r1.record_outcome(false, &rate), Ejection::None);
        assert_eq!(
            r1.record_outcome(true, &rate),
            Ejection::Ejected {
                for_ms: 40,
                why: "error rate over the window"
            }
        );
    }

    #[test]
    fn leases_go_to_the_least_loaded_replica_and_stop_at_capacity() {
        let p = pool(&[1, 2]);
        assert_eq!(p.least_loaded_free(), Some(1), "r1 has the most free slots");
        assert_eq!(p.least_loaded_free(), Some(0), "tie: first replica");
        assert_eq!(p.least_loaded_free(), Some(1));
        assert_eq!(p.least_loaded_free(), None);
        assert_eq!(p.slots_free(), 0);
        assert!(!p.try_lease(0));
        p.release(0);
        assert_eq!(p.slots_free(), 1);
        assert!(p.try_lease(0));
        assert_eq!(p.least_loaded_replica(), None);
        p.release(1);
        assert_eq!(p.least_loaded_replica(), Some(1), "choosing does not lease");
        assert_eq!(p.least_loaded_replica(), Some(1));
    }

    #[test]
    fn affinity_is_remembered_per_session() {
        let p = pool(&[1, 1]);
        assert_eq!(p.affinity("s"), None);
        p.remember_affinity("s", 1);
        assert_eq!(p.affinity("s"), Some(1));
    }

    #[test]
    fn estimates_start_nominal_then_follow_measurements() {
        let p = pool(&[2]);
        assert_eq!(p.service_ms(100), 50 + 1000);
        assert_eq!(p.predicted_start_ms(1, 100), 0, "a free slot remains");
        assert_eq!(p.predicted_start_ms(2, 100), 1050);
        assert_eq!(p.predicted_start_ms(4, 100), 2 * 1050);
        p.record(RunTiming {
            first_token_ms: Some(10.0),
            decode_ms: 99.0,
            tokens_out: 100,
        });
        assert_eq!(p.service_ms(100), 10 + 100);
    }

    #[test]
    fn replicas_keep_their_own_rates_and_fall_back_to_the_pools() {
        let p = pool(&[1, 1]);
        let run = RunTiming {
            first_token_ms: Some(40.0),
            decode_ms: 900.0,
            tokens_out: 10,
        };
        p.record_on(0, run);
        let (tps0, ftt0) = p.replica_rates(0);
        assert!((tps0 - 10.0).abs() < 1e-9 && ftt0 == 40);
        // Replica 1 has no stream of its own yet: the pool's (now measured) rates.
        assert_eq!(p.replica_rates(1), p.rates());
    }
}
