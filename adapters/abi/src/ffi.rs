//! The objects that cross the boundary: `#[sabi_trait]` trait objects and the root module.
//!
//! Adapters never implement these directly: [`crate::export_adapter!`] wraps the plain traits
//! of [`crate::plugin`] so that every entry point catches panics.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings, sabi_trait};

use crate::types::{
    AdapterError, AdapterInfo, ChatEvent, ChatRequest, ErrorKind, Event, Health, Phase, Props,
    SinkStatus, SubmitRequest, TraceContext,
};

/// Implemented by the host: receives a task's events. `emit` may block when the host's
/// buffer is full (that is the backpressure), and returns [`SinkStatus::Stop`] once the
/// host no longer wants events.
#[sabi_trait]
pub trait FfiEventSink: Send + Sync {
    #[sabi(last_prefix_field)]
    fn emit(&self, event: Event) -> SinkStatus;
    /// Receives a chat task's events (appended in ABI 0.1.3). A host older than 0.1.3
    /// never starts a chat task; were it asked, this default stops the adapter's work.
    fn emit_chat(&self, event: ChatEvent) -> SinkStatus {
        let _ = event;
        SinkStatus::Stop
    }
    /// The task's trace context, for the engine request (appended in ABI 0.1.4). A host
    /// older than 0.1.4 has no entry: this default says the task is not traced.
    fn trace_context(&self) -> TraceContext {
        TraceContext::default()
    }
}

/// A running task inside an adapter.
#[sabi_trait]
pub trait FfiJob: Send + Sync {
    /// Stops the engine work. Idempotent.
    #[sabi(last_prefix_field)]
    fn cancel(&self) -> RResult<(), AdapterError>;
}

/// A connection to one engine replica.
#[sabi_trait]
pub trait FfiClient: Send + Sync {
    fn health(&self) -> RResult<Health, AdapterError>;
    fn props(&self) -> RResult<Props, AdapterError>;
    fn engine_version(&self) -> RResult<RString, AdapterError>;
    /// Starts one task; events arrive on `sink` from adapter-owned threads.
    #[sabi(last_prefix_field)]
    fn submit(&self, req: SubmitRequest, sink: FfiEventSinkBox)
    -> RResult<FfiJobBox, AdapterError>;
    /// One embedding vector per input (appended in ABI 0.1.1; blocking).
    fn embed(&self, inputs: RVec<RString>) -> RResult<RVec<RVec<f32>>, AdapterError>;
    /// The engine's token ids for `text` (appended in ABI 0.1.2; blocking).
    fn tokenize(&self, text: RString) -> RResult<RVec<u32>, AdapterError>;
    /// Starts one chat task on the engine's own chat endpoint (appended in ABI 0.1.3);
    /// events arrive through `sink`'s `emit_chat`. A library built before 0.1.3 has no
    /// entry: this default refuses clearly.
    fn submit_chat(
        &self,
        req: ChatRequest,
        sink: FfiEventSinkBox,
    ) -> RResult<FfiJobBox, AdapterError> {
        let _ = (req, sink);
        RResult::RErr(AdapterError::new(
            ErrorKind::InvalidRequest,
            Phase::BeforeFirstToken,
            "this adapter was built without chat (ABI before 0.1.3)",
        ))
    }
}

pub type FfiEventSinkBox = FfiEventSink_TO<'static, RBox<()>>;
pub type FfiJobBox = FfiJob_TO<'static, RBox<()>>;
pub type FfiClientBox = FfiClient_TO<'static, RBox<()>>;

/// The root module every adapter library exports. Later versions append fields after
/// `new_client` (prefix type), so older hosts keep loading newer adapters.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = AdapterModRef)))]
#[sabi(missing_field(panic))]
pub struct AdapterMod {
    pub info: extern "C" fn() -> RResult<AdapterInfo, AdapterError>,
    /// Builds a client for one replica from the pool's adapter config (JSON text).
    #[sabi(last_prefix_field)]
    pub new_client: extern "C" fn(config: RStr<'_>) -> RResult<FfiClientBox, AdapterError>,
    /// Features named after 0.1.2's [`crate::Features`] (e.g. [`crate::FEATURE_CHAT`]).
    /// Appended in ABI 0.1.3: `None` in libraries built before.
    #[sabi(missing_field(option))]
    pub more_features: extern "C" fn() -> RVec<RString>,
}

impl RootModule for AdapterModRef {
    declare_root_module_statics! {AdapterModRef}
    const BASE_NAME: &'static str = "orchd_adapter";
    const NAME: &'static str = "orchd_adapter";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
