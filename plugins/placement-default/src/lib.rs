//! The default placement policy (API.md): `pin` / `prefer` / `avoid_pools` / `auto`, then
//! feasibility (ready, not draining, ctx ≤ ctx_max, device mask), then least loaded, then
//! session affinity, then lexicographic id. Every decision carries a JSON decision log.

mod decide;

wit_bindgen::generate!({
    world: "placement-policy",
    path: "../../wit",
});

use exports::orchd::policy::placement::{Decision, Guest as PlacementGuest, Snapshot};

struct Policy;

impl Guest for Policy {
    fn info() -> PolicyInfo {
        PolicyInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        // No options yet; refuse anything but an empty table so typos are caught.
        match config.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("placement-default takes no options, got {other}")),
        }
    }
}

impl PlacementGuest for Policy {
    fn place(snapshot: Snapshot) -> Decision {
        decide::place(&snapshot)
    }
}

export!(Policy);
