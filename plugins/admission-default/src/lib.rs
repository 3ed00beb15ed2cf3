//! The default admission policy (POLICIES.md): two classes, interactive ahead of batch.
//!
//! While the pool's queue has room, a request is accepted into its own class. When it is
//! full, the configured `mode` decides:
//! - `reject`: the request gets `ADMISSION_REJECT`;
//! - `drop-lru`: the least recently enqueued task of the lowest class is evicted to make
//!   room (an interactive request may evict an interactive task only when no batch task is
//!   queued; a batch request never evicts interactive work); with nothing to evict the
//!   request gets `QUEUE_FULL_DROP_LRU`.
//!
//! `retry-after-ms` is derived from the snapshot: the work queued ahead of the request,
//! spread over the pool's slots, at the measured service time per task, clamped.

mod decide;

use std::cell::RefCell;

wit_bindgen::generate!({
    world: "admission-policy",
    path: "../../wit/0.2.0",
});

use exports::orchd::policy::admission::{Decision, Guest as AdmissionGuest, Snapshot};
use exports::orchd::policy::lifecycle::Guest as LifecycleGuest;
use orchd::policy::types::PolicyInfo;

pub use decide::{Config, Mode};

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Policy;

impl LifecycleGuest for Policy {
    fn info() -> PolicyInfo {
        PolicyInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        report_panics();
        let config = Config::parse(&config)?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }
}

impl AdmissionGuest for Policy {
    fn decide(snapshot: Snapshot) -> Decision {
        CONFIG.with(|c| decide::decide(&c.borrow(), &snapshot))
    }
}

/// Reports a panic through the host's log before the trap, so the host can say why the
/// call failed (in `last_error` and its own log) instead of showing a bare wasm trap.
fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        orchd::policy::host::log(orchd::policy::host::Level::Error, &info.to_string());
    }));
}

export!(Policy);
