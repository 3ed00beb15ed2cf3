//! Shadow runs and decision replay: how a policy author tries a candidate component on
//! real traffic before it decides anything.
//!
//! Each slot keeps a bounded sample of the decisions it made ([`RECORD_EVERY`]th call,
//! the last [`RECORD_CAP`]): the snapshot and the live answer. A *replay* runs a candidate
//! component over that sample, off the request path, and reports where it would have
//! decided differently. A *shadow* runs a candidate beside the live component on every
//! call from now on: the live decision is applied, the candidate's is only compared,
//! counted and logged. The candidate runs on its own thread, fed through a bounded
//! channel; when it falls behind, calls are dropped from the comparison (counted), never
//! delayed.
//!
//! Two answers agree when their [`Observed::verdict`]s are equal: the decision itself
//! (accept and its class, the evicted task, a rejection's code; the pool and replica; the
//! amounts reserved; the code, status and retry flags), not the wording of messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use super::PolicyFailure;
use super::bindings::{admission, budget, error_mapping, placement};
use super::component::{Loaded, World};
use super::worlds::{Admission, Budget, ErrorMapping, Placement};

/// One call in this many is recorded for replay.
pub const RECORD_EVERY: u64 = 4;
/// Recorded calls kept per policy (the oldest go first).
pub const RECORD_CAP: usize = 512;
/// Calls waiting for the shadow candidate; past this, calls are dropped from the shadow.
const SHADOW_QUEUE: usize = 256;
/// Disagreements kept for the report (the most recent).
const KEEP_DISAGREEMENTS: usize = 20;

/// A world whose calls can be recorded, replayed and shadowed.
pub trait Observed: World + Sized {
    /// What the policy is asked (a snapshot, a request, a failure).
    type Input: Clone + Send + 'static;
    /// What it answers.
    type Output: Clone + Send + 'static;
    /// Asks `loaded` (a candidate): the raw answer, before the host's checks that depend
    /// on live state.
    fn call(loaded: &Loaded<Self>, input: &Self::Input) -> Result<Self::Output, PolicyFailure>;
    /// The part of an answer two components must agree on, as text.
    fn verdict(output: &Self::Output) -> String;
}

impl Observed for Admission {
    type Input = admission::Snapshot;
    type Output = admission::Decision;

    fn call(loaded: &Loaded<Self>, input: &Self::Input) -> Result<Self::Output, PolicyFailure> {
        loaded.decide(input, Ok)
    }

    fn verdict(output: &Self::Output) -> String {
        match output {
            admission::Decision::Accept(class) => format!("accept {}", class_name(*class)),
            admission::Decision::AcceptEvicting(e) => {
                format!("accept {} evicting {}", class_name(e.class), e.evict)
            }
            admission::Decision::Reject(r) => format!("reject {}", r.code),
        }
    }
}

fn class_name(p: super::bindings::WitPriority) -> &'static str {
    match p {
        super::bindings::WitPriority::Interactive => "interactive",
        super::bindings::WitPriority::Batch => "batch",
    }
}

impl Observed for Budget {
    type Input = budget::ReserveRequest;
    type Output = budget::Reservation;

    fn call(loaded: &Loaded<Self>, input: &Self::Input) -> Result<Self::Output, PolicyFailure> {
        loaded.reserve(input)
    }

    fn verdict(output: &Self::Output) -> String {
        match output {
            budget::Reservation::Reserve(c) => format!(
                "reserve {} tokens, {} ms, {:.6} cost, {} rate tokens",
                c.usage.tokens, c.usage.time_ms, c.usage.cost, c.rate_tokens
            ),
            budget::Reservation::Deny(_) => "deny".to_owned(),
        }
    }
}

impl Observed for Placement {
    type Input = placement::Snapshot;
    type Output = placement::Decision;

    fn call(loaded: &Loaded<Self>, input: &Self::Input) -> Result<Self::Output, PolicyFailure> {
        loaded.place(input, Ok)
    }

    fn verdict(output: &Self::Output) -> String {
        match output {
            placement::Decision::Assign(a) => format!("assign {}/{}", a.pool_id, a.replica_id),
            placement::Decision::Wait => "wait".to_owned(),
            placement::Decision::NoCapacity(_) => "no-capacity".to_owned(),
        }
    }
}

impl Observed for ErrorMapping {
    type Input = error_mapping::Failure;
    type Output = error_mapping::Mapped;

    fn call(loaded: &Loaded<Self>, input: &Self::Input) -> Result<Self::Output, PolicyFailure> {
        loaded.map(input)
    }

    fn verdict(m: &Self::Output) -> String {
        format!(
            "{} {} retriable={} retry-elsewhere={}",
            m.code, m.http_status, m.retriable, m.retry_elsewhere
        )
    }
}

/// One observed call.
struct Record<W: Observed> {
    at: SystemTime,
    input: W::Input,
    live: W::Output,
}

impl<W: Observed> Clone for Record<W> {
    fn clone(&self) -> Self {
        Self {
            at: self.at,
            input: self.input.clone(),
            live: self.live.clone(),
        }
    }
}

/// A live decision a candidate disagreed with.
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub at: SystemTime,
    pub live: String,
    /// The candidate's verdict, or its failure.
    pub candidate: String,
}

/// How a candidate compared with the live decisions.
#[derive(Default)]
pub struct Comparison {
    pub decisions: AtomicU64,
    pub agreed: AtomicU64,
    pub disagreed: AtomicU64,
    /// The candidate failed (trap, timeout, invalid answer).
    pub errors: AtomicU64,
    /// Calls the shadow could not keep up with (not compared).
    pub dropped: AtomicU64,
    recent: Mutex<VecDeque<Disagreement>>,
}

impl Comparison {
    /// Compares one call; `decisions` counts it last, so a reader that sees it counted
    /// sees its outcome too.
    fn compare<W: Observed>(&self, kind: &str, candidate: &Loaded<W>, record: &Record<W>) {
        self.outcome(kind, candidate, record);
        self.decisions.fetch_add(1, Ordering::SeqCst);
    }

    fn outcome<W: Observed>(&self, kind: &str, candidate: &Loaded<W>, record: &Record<W>) {
        let live = W::verdict(&record.live);
        let theirs = match W::call(candidate, &record.input) {
            Ok(out) => W::verdict(&out),
            Err(failure) => {
                self.errors.fetch_add(1, Ordering::SeqCst);
                format!("failed: {}", failure.message)
            }
        };
        if theirs == live {
            self.agreed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        tracing::info!(
            policy = kind, candidate = %candidate.meta().name,
            candidate_version = %candidate.meta().version, live = %live, candidate_said = %theirs,
            "policy candidate disagreed"
        );
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEEP_DISAGREEMENTS {
            recent.pop_front();
        }
        recent.push_back(Disagreement {
            at: record.at,
            live,
            candidate: theirs,
        });
        drop(recent);
        self.disagreed.fetch_add(1, Ordering::SeqCst);
    }

    /// The most recent disagreements, oldest first.
    pub fn recent(&self) -> Vec<Disagreement> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// A candidate running beside the live component.
pub struct Shadow<W: Observed> {
    pub candidate: Arc<Loaded<W>>,
    pub comparison: Arc<Comparison>,
    pub started: SystemTime,
    tx: SyncSender<Record<W>>,
}

/// A slot's recorded sample and its shadow, if one runs. Owned by the slot; its locks
/// guard only the sample ring and the disagreement list (no guest call runs under them).
pub struct Observer<W: Observed> {
    calls: AtomicU64,
    recorded: Mutex<VecDeque<Record<W>>>,
    shadow: ArcSwapOption<Shadow<W>>,
}

impl<W: Observed> Default for Observer<W> {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            recorded: Mutex::new(VecDeque::new()),
            shadow: ArcSwapOption::empty(),
        }
    }
}

impl<W: Observed> Observer<W> {
    /// Notes a live call: records it when its turn comes, and hands it to the shadow. An
    /// atomic increment when neither applies.
    pub fn observe(&self, input: &W::Input, live: &W::Output) {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let record_it = n.is_multiple_of(RECORD_EVERY);
        let shadow = self.shadow.load();
        if !record_it && shadow.is_none() {
            return;
        }
        let record = Record::<W> {
            at: SystemTime::now(),
            input: input.clone(),
            live: live.clone(),
        };
        if let Some(shadow) = shadow.as_ref() {
            match shadow.tx.try_send(record.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    shadow.comparison.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if record_it {
            let mut ring = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() == RECORD_CAP {
                ring.pop_front();
            }
            ring.push_back(record);
        }
    }

    /// Starts shadowing with `candidate` (replacing any shadow running); its thread ends
    /// when the shadow is stopped or replaced.
    pub fn start_shadow(&self, candidate: Loaded<W>) -> Result<Arc<Shadow<W>>, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Record<W>>(SHADOW_QUEUE);
        let candidate = Arc::new(candidate);
        let comparison = Arc::new(Comparison::default());
        let (c, cmp) = (Arc::clone(&candidate), Arc::clone(&comparison));
        std::thread::Builder::new()
            .name(format!("shadow-{}", W::KIND))
            .spawn(move || {
                for record in rx {
                    cmp.compare(W::KIND, &c, &record);
                }
            })
            .map_err(|e| format!("cannot start the shadow thread: {e}"))?;
        let shadow = Arc::new(Shadow {
            candidate,
            comparison,
            started: SystemTime::now(),
            tx,
        });
        self.shadow.store(Some(Arc::clone(&shadow)));
        Ok(shadow)
    }

    /// The shadow running, if any.
    pub fn shadow(&self) -> Option<Arc<Shadow<W>>> {
        self.shadow.load_full()
    }

    /// Stops the shadow (its thread ends once the calls queued for it are compared).
    pub fn stop_shadow(&self) -> Option<Arc<Shadow<W>>> {
        self.shadow.swap(None)
    }

    /// Runs `candidate` over the recorded sample, on the calling thread (blocking).
    pub fn replay(&self, candidate: &Loaded<W>) -> (Comparison, usize) {
        let sample: Vec<Record<W>> = self
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let comparison = Comparison::default();
        for record in &sample {
            comparison.compare(W::KIND, candidate, record);
        }
        (comparison, sample.len())
    }

    /// Calls recorded now.
    pub fn recorded(&self) -> usize {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
