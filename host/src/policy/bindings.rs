//! Generated bindings for the policy worlds. Nothing hand-written lives here; the rest of
//! the host uses the names re-exported below, which are those of the current version,
//! `orchd:policy@0.2.0`. The frozen 0.1.0 worlds are generated in [`v1`]; `legacy.rs`
//! converts between the two. In each version the shared `types` and `host` interfaces are
//! generated once (with the admission world) and reused by the others.

mod admission_world {
    wasmtime::component::bindgen!({
        world: "admission-policy",
        path: "../wit/0.2.0",
    });
}

mod budget_world {
    wasmtime::component::bindgen!({
        world: "budget-policy",
        path: "../wit/0.2.0",
        with: {
            "orchd:policy/types": super::admission_world::orchd::policy::types,
            "orchd:policy/host": super::admission_world::orchd::policy::host,
        },
    });
}

mod placement_world {
    wasmtime::component::bindgen!({
        world: "placement-policy",
        path: "../wit/0.2.0",
        with: {
            "orchd:policy/types": super::admission_world::orchd::policy::types,
            "orchd:policy/host": super::admission_world::orchd::policy::host,
        },
    });
}

mod error_mapping_world {
    wasmtime::component::bindgen!({
        world: "error-mapping-policy",
        path: "../wit/0.2.0",
        with: {
            "orchd:policy/types": super::admission_world::orchd::policy::types,
            "orchd:policy/host": super::admission_world::orchd::policy::host,
        },
    });
}

pub use admission_world::orchd::policy::host::{Host as HostImports, Level as LogLevel};
pub use admission_world::orchd::policy::types::{
    BudgetLeft, ClassSnapshot, Host as TypesHost, PolicyInfo, Priority as WitPriority,
    QueueSnapshot, QueuedEntry,
};

pub mod admission {
    pub use super::admission_world::exports::orchd::policy::admission::{
        Decision, Eviction, Rejection, Request, SessionInfo, Snapshot,
    };
    pub use super::admission_world::{AdmissionPolicy as Bindings, AdmissionPolicyPre as Pre};
}

pub mod budget {
    pub use super::budget_world::exports::orchd::policy::budget::{
        Charge, Denial, Reservation, ReserveRequest, SettleRequest, Usage,
    };
    pub use super::budget_world::{BudgetPolicy as Bindings, BudgetPolicyPre as Pre};
}

pub mod placement {
    pub use super::placement_world::exports::orchd::policy::placement::{
        Assignment, Decision, Job, Mode, Pool, Replica, Snapshot, Stage,
    };
    pub use super::placement_world::{PlacementPolicy as Bindings, PlacementPolicyPre as Pre};
}

pub mod error_mapping {
    pub use super::error_mapping_world::exports::orchd::policy::error_mapping::{
        Failure, Mapped, Phase,
    };
    pub use super::error_mapping_world::{
        ErrorMappingPolicy as Bindings, ErrorMappingPolicyPre as Pre,
    };
}

/// `orchd:policy@0.1.0`, frozen: components built against it keep loading.
pub mod v1 {
    mod admission_world {
        wasmtime::component::bindgen!({
            world: "admission-policy",
            path: "../wit/0.1.0",
        });
    }

    mod budget_world {
        wasmtime::component::bindgen!({
            world: "budget-policy",
            path: "../wit/0.1.0",
            with: {
                "orchd:policy/types": super::admission_world::orchd::policy::types,
                "orchd:policy/host": super::admission_world::orchd::policy::host,
            },
        });
    }

    mod placement_world {
        wasmtime::component::bindgen!({
            world: "placement-policy",
            path: "../wit/0.1.0",
            with: {
                "orchd:policy/types": super::admission_world::orchd::policy::types,
                "orchd:policy/host": super::admission_world::orchd::policy::host,
            },
        });
    }

    mod error_mapping_world {
        wasmtime::component::bindgen!({
            world: "error-mapping-policy",
            path: "../wit/0.1.0",
            with: {
                "orchd:policy/types": super::admission_world::orchd::policy::types,
                "orchd:policy/host": super::admission_world::orchd::policy::host,
            },
        });
    }

    pub use admission_world::orchd::policy::host::{Host as HostImports, Level as LogLevel};
    pub use admission_world::orchd::policy::types::{
        BudgetLeft, ClassSnapshot, Host as TypesHost, PolicyInfo, Priority as WitPriority,
        QueueSnapshot, QueuedEntry,
    };

    pub mod admission {
        pub use super::admission_world::exports::orchd::policy::admission::{
            Decision, Eviction, Rejection, Request, SessionInfo, Snapshot,
        };
        pub use super::admission_world::{AdmissionPolicy as Bindings, AdmissionPolicyPre as Pre};
    }

    pub mod budget {
        pub use super::budget_world::exports::orchd::policy::budget::{
            Denial, Reservation, ReserveRequest, SettleRequest, Usage,
        };
        pub use super::budget_world::{BudgetPolicy as Bindings, BudgetPolicyPre as Pre};
    }

    pub mod placement {
        pub use super::placement_world::exports::orchd::policy::placement::{
            Assignment, Decision, Job, Mode, Pool, Replica, Snapshot, Stage,
        };
        pub use super::placement_world::{PlacementPolicy as Bindings, PlacementPolicyPre as Pre};
    }

    pub mod error_mapping {
        pub use super::error_mapping_world::exports::orchd::policy::error_mapping::{
            Failure, Mapped, Phase,
        };
        pub use super::error_mapping_world::{
            ErrorMappingPolicy as Bindings, ErrorMappingPolicyPre as Pre,
        };
    }
}
