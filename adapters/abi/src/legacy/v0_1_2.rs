//! The boundary objects exactly as ABI 0.1.2 released them (frozen: never edit).
//!
//! abi_stable refuses a library whose prefix types have fewer fields than the loader's, so
//! a host that appended fields (0.1.3: `more_features`, `emit_chat`, `submit_chat`) checks
//! an older library against that library's own layout, kept here. The data types of
//! [`crate::types`] that 0.1.2 had are unchanged and shared, as is [`crate::ffi::FfiJob`].

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, sabi_trait};

use crate::ffi::FfiJobBox;
use crate::types::{AdapterError, AdapterInfo, Event, Health, Props, SinkStatus, SubmitRequest};

/// Implemented by the host: receives a task's events. `emit` may block when the host's
/// buffer is full (that is the backpressure), and returns [`SinkStatus::Stop`] once the
/// host no longer wants events.
#[sabi_trait]
pub trait FfiEventSink: Send + Sync {
    #[sabi(last_prefix_field)]
    fn emit(&self, event: Event) -> SinkStatus;
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
}

pub type FfiEventSinkBox = FfiEventSink_TO<'static, RBox<()>>;
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
}

impl RootModule for AdapterModRef {
    declare_root_module_statics! {AdapterModRef}
    const BASE_NAME: &'static str = "orchd_adapter";
    const NAME: &'static str = "orchd_adapter";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("0.1.2");
}
