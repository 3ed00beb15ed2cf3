//! Generated bindings for the policy worlds. Nothing hand-written lives here; the rest of
//! the host uses the re-exported names below.

mod generated {
    wasmtime::component::bindgen!({
        world: "admission-policy",
        path: "../wit",
    });
}

pub use generated::exports::orchd::policy::admission::{
    Decision as AdmissionDecision, Eviction, Rejection, Request as AdmissionRequest, SessionInfo,
    Snapshot as AdmissionSnapshot,
};
pub use generated::orchd::policy::host::{Host as HostImports, Level as LogLevel};
pub use generated::orchd::policy::types::{
    BudgetLeft, ClassSnapshot, Host as TypesHost, Priority as WitPriority, QueueSnapshot,
    QueuedEntry,
};
pub use generated::{AdmissionPolicy as AdmissionPolicyInstance, AdmissionPolicyPre};

/// Adds the host's imports (`orchd:policy/host`) to a linker.
pub fn add_admission_imports<T: HostImports + TypesHost + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    generated::AdmissionPolicy::add_to_linker::<T, wasmtime::component::HasSelf<T>>(
        linker,
        |state| state,
    )
}
