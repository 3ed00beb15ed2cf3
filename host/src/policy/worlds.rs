//! The four policy worlds: how to link, instantiate and self-test each, and the typed calls
//! the host makes (with the host-side validation of every output).

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::PolicyFailure;
use super::bindings::{
    BudgetLeft, ClassSnapshot, PolicyInfo, QueueSnapshot, WitPriority, admission, budget,
    error_mapping, placement, v1,
};
use super::component::{Loaded, World};
use super::legacy;
use super::runtime::PolicyState;

/// Longest retry hint a policy may give (1 hour).
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

/// A component of the current WIT version, or of the frozen 0.1.0 (converted at the
/// boundary by `legacy.rs`).
pub enum Versioned<Current, V1> {
    Current(Current),
    V1(V1),
}

impl<C, V> Versioned<C, V> {
    /// The `orchd:policy` version the component was built against.
    pub fn wit_version(&self) -> &'static str {
        match self {
            Self::Current(_) => "0.2.0",
            Self::V1(_) => "0.1.0",
        }
    }
}

macro_rules! world {
    ($name:ident, $kind:literal, $module:ident) => {
        pub struct $name;

        impl World for $name {
            const KIND: &'static str = $kind;
            type Pre = Versioned<$module::Pre<PolicyState>, v1::$module::Pre<PolicyState>>;
            type Bindings = Versioned<$module::Bindings, v1::$module::Bindings>;

            fn add_imports(linker: &mut Linker<PolicyState>) -> wasmtime::Result<()> {
                $module::Bindings::add_to_linker::<PolicyState, HasSelf<PolicyState>>(
                    linker,
                    |s| s,
                )?;
                v1::$module::Bindings::add_to_linker::<PolicyState, HasSelf<PolicyState>>(
                    linker,
                    |s| s,
                )
            }

            fn pre(pre: InstancePre<PolicyState>) -> Result<Self::Pre, String> {
                let current = match $module::Pre::new(pre.clone()) {
                    Ok(p) => return Ok(Versioned::Current(p)),
                    Err(e) => e,
                };
                match v1::$module::Pre::new(pre) {
                    Ok(p) => Ok(Versioned::V1(p)),
                    Err(old) => Err(format!(
                        "orchd:policy@0.2.0: {current:#}; orchd:policy@0.1.0: {old:#}"
                    )),
                }
            }

            fn wit_version(pre: &Self::Pre) -> &'static str {
                pre.wit_version()
            }

            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<PolicyState>,
            ) -> wasmtime::Result<Self::Bindings> {
                Ok(match pre {
                    Versioned::Current(p) => Versioned::Current(p.instantiate(store)?),
                    Versioned::V1(p) => Versioned::V1(p.instantiate(store)?),
                })
            }

            fn info(
                b: &Self::Bindings,
                store: &mut Store<PolicyState>,
            ) -> wasmtime::Result<PolicyInfo> {
                match b {
                    Versioned::Current(b) => b.orchd_policy_lifecycle().call_info(store),
                    Versioned::V1(b) => b.call_info(store).map(legacy::info),
                }
            }

            fn init(
                b: &Self::Bindings,
                store: &mut Store<PolicyState>,
                config: &str,
            ) -> wasmtime::Result<Result<(), String>> {
                match b {
                    Versioned::Current(b) => b.orchd_policy_lifecycle().call_init(store, config),
                    Versioned::V1(b) => b.call_init(store, config),
                }
            }

            fn self_test(loaded: &Loaded<Self>) -> Result<(), String> {
                self_test::$module(loaded)
            }
        }
    };
}

world!(Admission, "admission", admission);
world!(Budget, "budget", budget);
world!(Placement, "placement", placement);
world!(ErrorMapping, "error_mapping", error_mapping);

impl Loaded<Admission> {
    pub fn decide<T>(
        &self,
        snapshot: &admission::Snapshot,
        validate: impl FnOnce(admission::Decision) -> Result<T, String>,
    ) -> Result<T, PolicyFailure> {
        self.call(
            |b, s| match b {
                Versioned::Current(b) => b.orchd_policy_admission().call_decide(s, snapshot),
                Versioned::V1(b) => b
                    .orchd_policy_admission()
                    .call_decide(s, &legacy::admission_snapshot(snapshot))
                    .map(legacy::admission_decision),
            },
            validate,
        )
    }
}

fn valid_charge(c: budget::Charge) -> Result<budget::Charge, String> {
    let u = &c.usage;
    if u.cost.is_finite() && u.cost >= 0.0 {
        Ok(c)
    } else {
        Err(format!("cost {} is negative or not a number", u.cost))
    }
}

impl Loaded<Budget> {
    pub fn reserve(
        &self,
        req: &budget::ReserveRequest,
    ) -> Result<budget::Reservation, PolicyFailure> {
        self.call(
            |b, s| match b {
                Versioned::Current(b) => b.orchd_policy_budget().call_reserve(s, req),
                Versioned::V1(b) => b
                    .orchd_policy_budget()
                    .call_reserve(s, &legacy::reserve_request(req))
                    .map(|r| legacy::reservation(r, legacy::rate_tokens_estimate(req))),
            },
            |r| match r {
                budget::Reservation::Reserve(c) => {
                    valid_charge(c).map(budget::Reservation::Reserve)
                }
                budget::Reservation::Deny(d)
                    if d.retry_after_ms.is_some_and(|ms| ms > MAX_RETRY_AFTER_MS) =>
                {
                    Err("deny retry-after-ms out of range".to_owned())
                }
                budget::Reservation::Deny(d) if d.message.len() > 1024 => {
                    Err("deny message too long".to_owned())
                }
                deny => Ok(deny),
            },
        )
    }

    pub fn settle(&self, req: &budget::SettleRequest) -> Result<budget::Charge, PolicyFailure> {
        self.call(
            |b, s| match b {
                Versioned::Current(b) => b.orchd_policy_budget().call_settle(s, req),
                Versioned::V1(b) => b
                    .orchd_policy_budget()
                    .call_settle(s, &legacy::settle_request(req))
                    .map(|u| legacy::settled(u, req)),
            },
            valid_charge,
        )
    }
}

impl Loaded<Placement> {
    pub fn place<T>(
        &self,
        snapshot: &placement::Snapshot,
        validate: impl FnOnce(placement::Decision) -> Result<T, String>,
    ) -> Result<T, PolicyFailure> {
        self.call(
            |b, s| match b {
                Versioned::Current(b) => b.orchd_policy_placement().call_place(s, snapshot),
                Versioned::V1(b) => b
                    .orchd_policy_placement()
                    .call_place(s, &legacy::placement_snapshot(snapshot))
                    .map(legacy::placement_decision),
            },
            validate,
        )
    }
}

impl Loaded<ErrorMapping> {
    pub fn map(
        &self,
        failure: &error_mapping::Failure,
    ) -> Result<error_mapping::Mapped, PolicyFailure> {
        self.call(
            |b, s| match b {
                Versioned::Current(b) => {
                    b.orchd_policy_error_mapping().call_map_failure(s, failure)
                }
                Versioned::V1(b) => b
                    .orchd_policy_error_mapping()
                    .call_map_failure(s, &legacy::failure(failure))
                    .map(legacy::mapped),
            },
            |m| {
                if orchd_contracts::ErrorCode::parse(&m.code).is_none() {
                    return Err(format!("code {:?} is not a public error code", m.code));
                }
                if !(400..=599).contains(&m.http_status) {
                    return Err(format!(
                        "http-status {} is not an error status",
                        m.http_status
                    ));
                }
                if m.retry_after_ms.is_some_and(|ms| ms > MAX_RETRY_AFTER_MS) {
                    return Err("retry-after-ms out of range".to_owned());
                }
                if m.message.is_empty() || m.message.len() > 4096 || m.policy_label.len() > 64 {
                    return Err("message or policy-label out of bounds".to_owned());
                }
                Ok(m)
            },
        )
    }
}

/// Canned snapshots: each policy must answer one well-formed call before it serves.
mod self_test {
    use super::*;

    fn queue() -> QueueSnapshot {
        QueueSnapshot {
            pool_id: "self-test".into(),
            capacity: 8,
            depth: 0,
            classes: [WitPriority::Interactive, WitPriority::Batch]
                .into_iter()
                .map(|priority| ClassSnapshot {
                    priority,
                    depth: 0,
                    oldest: Vec::new(),
                })
                .collect(),
            slots_total: 1,
            slots_free: 1,
            service_ms: 100,
        }
    }

    fn unlimited() -> BudgetLeft {
        BudgetLeft {
            tokens: None,
            time_ms: None,
            cost: None,
        }
    }

    pub fn admission(loaded: &Loaded<Admission>) -> Result<(), String> {
        let snapshot = admission::Snapshot {
            now_ms: 0,
            request: admission::Request {
                task_id: "self-test".into(),
                session_id: "self-test".into(),
                tenant: "self-test".into(),
                group: None,
                priority: WitPriority::Interactive,
                engine: "mock".into(),
                model_ref: "mock".into(),
                ctx: 16,
                max_tokens: 16,
                expected_tokens: None,
                deadline_ms: 60_000,
                expected_service_ms: 100,
            },
            queue: queue(),
            session: admission::SessionInfo {
                turns: 0,
                budget: unlimited(),
            },
        };
        loaded
            .decide(&snapshot, |d| match d {
                admission::Decision::Accept(_) => Ok(()),
                other => Err(format!("an empty queue must accept, got {other:?}")),
            })
            .map_err(|f| f.message)
    }

    pub fn budget(loaded: &Loaded<Budget>) -> Result<(), String> {
        let req = budget::ReserveRequest {
            now_ms: 0,
            task_id: "self-test".into(),
            tenant: "self-test".into(),
            group: None,
            session_id: "self-test".into(),
            priority: WitPriority::Interactive,
            engine: "mock".into(),
            model_ref: "mock".into(),
            prompt_tokens_estimate: 4,
            max_tokens: 16,
            deadline_ms: 60_000,
            expected_service_ms: 100,
            key_left: unlimited(),
            session_left: unlimited(),
        };
        let reserved = match loaded.reserve(&req).map_err(|f| f.message)? {
            budget::Reservation::Reserve(u) => u,
            budget::Reservation::Deny(d) => {
                return Err(format!(
                    "an unlimited budget must reserve, got deny: {}",
                    d.message
                ));
            }
        };
        let settle = budget::SettleRequest {
            task_id: "self-test".into(),
            engine: "mock".into(),
            model_ref: "mock".into(),
            reserved,
            tokens_in: 4,
            tokens_out: 16,
            time_ms: 100,
        };
        loaded.settle(&settle).map(|_| ()).map_err(|f| f.message)
    }

    pub fn placement(loaded: &Loaded<Placement>) -> Result<(), String> {
        let snapshot = placement::Snapshot {
            now_ms: 0,
            stage: placement::Stage::Admission,
            job: placement::Job {
                task_id: "self-test".into(),
                session_id: "self-test".into(),
                engine: "mock".into(),
                model_ref: "mock".into(),
                ctx: 16,
                priority: WitPriority::Interactive,
                mode: placement::Mode::Auto,
                pin_pool_id: None,
                prefer_pools: Vec::new(),
                avoid_pools: Vec::new(),
                require_device_mask: None,
                allow_fallback: true,
                prompt_blocks: 1,
            },
            candidates: vec![placement::Pool {
                pool_id: "self-test".into(),
                engine: "mock".into(),
                model_ref: "mock".into(),
                ready: true,
                draining: false,
                ctx_max: 1024,
                queue_depth: 0,
                replicas: vec![placement::Replica {
                    replica_id: "self-test-0".into(),
                    ready: true,
                    slots_total: 1,
                    slots_free: 1,
                    active_leases: 0,
                    tokens_per_s: 100.0,
                    first_token_ms: 50,
                    vram_free_bytes: None,
                    device_mask: None,
                    session_affinity: false,
                    prefix_blocks: 0,
                    ejected: false,
                }],
            }],
        };
        loaded
            .place(&snapshot, |d| match d {
                placement::Decision::Assign(a)
                    if a.pool_id == "self-test" && a.replica_id == "self-test-0" =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "the only feasible replica must be assigned, got {other:?}"
                )),
            })
            .map_err(|f| f.message)
    }

    pub fn error_mapping(loaded: &Loaded<ErrorMapping>) -> Result<(), String> {
        let failure = error_mapping::Failure {
            kind: "transport".into(),
            upstream_status: None,
            message: "connection reset".into(),
            engine: "mock".into(),
            pool_id: "self-test".into(),
            replica_id: "self-test-0".into(),
            phase: error_mapping::Phase::MidStream,
            attempt: 1,
            attempts_left: 0,
        };
        loaded.map(&failure).map(|_| ()).map_err(|f| f.message)
    }
}
