//! The default placement policy (API.md): `pin` / `prefer` / `avoid_pools` / `auto`, then
//! feasibility (ready, not draining, ctx ≤ ctx_max, device mask), then prefix-cache
//! affinity below a load cap, then least loaded, then session affinity, then lexicographic
//! id. Every decision carries a JSON decision log.
//!
//! Prefix affinity: a replica that was recently sent the leading blocks of this prompt
//! likely holds them in its KV cache and evaluates only the rest. Such a replica is
//! preferred (the longest match first) while its load is under `prefix_load_cap` (busy
//! slots over slots, 0.75 unless configured); past the cap, requests spread by load, so a
//! hot prefix cannot pile every request onto one replica.

mod decide;

wit_bindgen::generate!({
    world: "placement-policy",
    path: "../../wit/0.2.0",
});

use exports::orchd::policy::lifecycle::Guest as LifecycleGuest;
use orchd::policy::types::PolicyInfo;
use std::cell::RefCell;

use exports::orchd::policy::placement::{Decision, Guest as PlacementGuest, Snapshot};

pub use decide::Config;

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

impl PlacementGuest for Policy {
    fn place(snapshot: Snapshot) -> Decision {
        CONFIG.with(|c| decide::place(&c.borrow(), &snapshot))
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
