//! The boundary objects exactly as ABI 0.1.3 released them (frozen: never edit).
//!
//! 0.1.4 appended `trace_context` to the event sink. abi_stable refuses a library whose
//! prefix types have fewer fields than the loader's, so a 0.1.3 library (chat, but no
//! trace context) is checked against this layout. The data types of [`crate::types`] that
//! 0.1.3 had are unchanged and shared, as is [`crate::ffi::FfiJob`].

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, sabi_trait};

use crate::ffi::FfiJobBox;
use crate::types::{
    AdapterError, AdapterInfo, ChatEvent, ChatRequest, ErrorKind, Event, Health, Phase, Props,
    SinkStatus, SubmitRequest,
};

/// Implemented by the host: receives a task's events.
#[sabi_trait]
pub trait FfiEventSink: Send + Sync {
    #[sabi(last_prefix_field)]
    fn emit(&self, event: Event) -> SinkStatus;
    /// Receives a chat task's events (appended in ABI 0.1.3).
    fn emit_chat(&self, event: ChatEvent) -> SinkStatus {
        let _ = event;
        SinkStatus::Stop
    }
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
    /// Starts one chat task on the engine's own chat endpoint (appended in ABI 0.1.3).
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
pub type FfiClientBox = FfiClient_TO<'static, RBox<()>>;

/// The root module of an ABI 0.1.3 library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = AdapterModRef)))]
#[sabi(missing_field(panic))]
pub struct AdapterMod {
    pub info: extern "C" fn() -> RResult<AdapterInfo, AdapterError>,
    /// Builds a client for one replica from the pool's adapter config (JSON text).
    #[sabi(last_prefix_field)]
    pub new_client: extern "C" fn(config: RStr<'_>) -> RResult<FfiClientBox, AdapterError>,
    /// Features named after 0.1.2's flags.
    #[sabi(missing_field(option))]
    pub more_features: extern "C" fn() -> RVec<RString>,
}

impl RootModule for AdapterModRef {
    declare_root_module_statics! {AdapterModRef}
    const BASE_NAME: &'static str = "orchd_adapter";
    const NAME: &'static str = "orchd_adapter";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("0.1.3");
}
