//! What an adapter author implements: plain Rust traits, no ABI types except the data in
//! [`crate::types`]. [`crate::export_adapter!`] turns an [`Adapter`] into a root module
//! whose every entry point is wrapped in `catch_unwind`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, RVec};

use crate::ffi::{
    AdapterMod, AdapterModRef, FfiClient, FfiClient_TO, FfiClientBox, FfiEventSinkBox, FfiJob,
    FfiJob_TO, FfiJobBox,
};
use crate::types::{
    AdapterError, AdapterInfo, ChatEvent, ChatRequest, ErrorKind, Event, Features, Health, Phase,
    Props, SinkStatus, SubmitRequest, TraceContext,
};

/// An adapter library: identity and a client constructor.
pub trait Adapter: 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    type Client: EngineClient;
    fn engines() -> Vec<String>;
    fn features() -> Features;
    /// Features added after [`Features`] was frozen, by name: list
    /// [`crate::FEATURE_CHAT`] when the client implements [`EngineClient::submit_chat`].
    fn more_features() -> Vec<&'static str> {
        Vec::new()
    }
    /// `config` is the pool's adapter configuration as JSON text.
    fn new_client(config: &str) -> Result<Self::Client, AdapterError>;
}

/// A connection to one engine replica. Methods are called from host threads, concurrently.
pub trait EngineClient: Send + Sync + 'static {
    type Job: EngineJob;
    fn health(&self) -> Result<Health, AdapterError>;
    fn props(&self) -> Result<Props, AdapterError>;
    fn engine_version(&self) -> Result<String, AdapterError>;
    /// Starts one task. Must return promptly: run the work on adapter-owned threads and
    /// deliver events through `sink`.
    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<Self::Job, AdapterError>;
    /// One embedding vector per input. Blocking. Adapters of engines without embeddings
    /// keep this default, an `InvalidRequest` failure.
    fn embed(&self, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, AdapterError> {
        let _ = inputs;
        Err(AdapterError::new(
            ErrorKind::InvalidRequest,
            Phase::BeforeFirstToken,
            "this engine adapter does not serve embeddings",
        ))
    }
    /// Starts one chat task on the engine's own chat endpoint, so the model's template and
    /// tool-call parser apply. Must return promptly, like [`EngineClient::submit`]. Adapters
    /// of engines without chat keep this default, an `InvalidRequest` failure (and do not
    /// list [`crate::FEATURE_CHAT`]).
    fn submit_chat(&self, req: ChatRequest, sink: ChatSink) -> Result<Self::Job, AdapterError> {
        let _ = (req, sink);
        Err(AdapterError::new(
            ErrorKind::InvalidRequest,
            Phase::BeforeFirstToken,
            "this engine adapter does not serve chat",
        ))
    }
    /// The engine's token ids for `text`. Blocking. Adapters of engines without a
    /// tokenizer endpoint keep this default, an `InvalidRequest` failure.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, AdapterError> {
        let _ = text;
        Err(AdapterError::new(
            ErrorKind::InvalidRequest,
            Phase::Control,
            "this engine adapter does not tokenize",
        ))
    }
}

/// A running task.
pub trait EngineJob: Send + Sync + 'static {
    /// Stops the engine work; must be idempotent and return promptly.
    fn cancel(&self);
}

/// The host's event sink, as an adapter sees it.
pub struct Sink(FfiEventSinkBox);

impl Sink {
    pub(crate) fn from_ffi(sink: FfiEventSinkBox) -> Self {
        Self(sink)
    }

    /// Delivers one event; blocks while the host's buffer is full. Returns `false` when the
    /// host wants no more events (the task was canceled or its consumer is gone).
    pub fn emit(&self, event: Event) -> bool {
        self.0.emit(event) == SinkStatus::Continue
    }

    /// The task's trace context: send its non-empty fields as the engine request's
    /// `traceparent` and `tracestate` headers. Empty from a host older than ABI 0.1.4.
    pub fn trace_context(&self) -> TraceContext {
        self.0.trace_context()
    }
}

/// The host's sink for a chat task's events, as an adapter sees it.
pub struct ChatSink(FfiEventSinkBox);

impl ChatSink {
    pub(crate) fn from_ffi(sink: FfiEventSinkBox) -> Self {
        Self(sink)
    }

    /// Delivers one event; blocks while the host's buffer is full. Returns `false` when the
    /// host wants no more events.
    pub fn emit(&self, event: ChatEvent) -> bool {
        self.0.emit_chat(event) == SinkStatus::Continue
    }

    /// The task's trace context, as [`Sink::trace_context`].
    pub fn trace_context(&self) -> TraceContext {
        self.0.trace_context()
    }
}

/// Runs `f`, turning a panic into an [`ErrorKind::Panic`] error.
pub fn guard<T>(
    phase: Phase,
    f: impl FnOnce() -> Result<T, AdapterError>,
) -> RResult<T, AdapterError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            RResult::RErr(AdapterError::new(
                ErrorKind::Panic,
                phase,
                format!("adapter panicked: {msg}"),
            ))
        }
    }
}

struct ClientWrapper<C>(C);

impl<C: EngineClient> FfiClient for ClientWrapper<C> {
    fn health(&self) -> RResult<Health, AdapterError> {
        guard(Phase::Control, || self.0.health())
    }

    fn props(&self) -> RResult<Props, AdapterError> {
        guard(Phase::Control, || self.0.props())
    }

    fn engine_version(&self) -> RResult<RString, AdapterError> {
        guard(Phase::Control, || {
            self.0.engine_version().map(RString::from)
        })
    }

    fn submit(
        &self,
        req: SubmitRequest,
        sink: FfiEventSinkBox,
    ) -> RResult<FfiJobBox, AdapterError> {
        guard(Phase::BeforeFirstToken, || {
            self.0
                .submit(req, Sink(sink))
                .map(|job| FfiJob_TO::from_value(JobWrapper(job), TD_Opaque))
        })
    }

    fn embed(&self, inputs: RVec<RString>) -> RResult<RVec<RVec<f32>>, AdapterError> {
        guard(Phase::BeforeFirstToken, || self.embed_vectors(inputs))
    }

    fn submit_chat(
        &self,
        req: ChatRequest,
        sink: FfiEventSinkBox,
    ) -> RResult<FfiJobBox, AdapterError> {
        guard(Phase::BeforeFirstToken, || {
            self.0
                .submit_chat(req, ChatSink(sink))
                .map(|job| FfiJob_TO::from_value(JobWrapper(job), TD_Opaque))
        })
    }

    fn tokenize(&self, text: RString) -> RResult<RVec<u32>, AdapterError> {
        guard(Phase::Control, || {
            self.0.tokenize(text.as_str()).map(RVec::from)
        })
    }
}

impl<C: EngineClient> ClientWrapper<C> {
    fn embed_vectors(&self, inputs: RVec<RString>) -> Result<RVec<RVec<f32>>, AdapterError> {
        let inputs = inputs.into_iter().map(String::from).collect();
        let vectors = self.0.embed(inputs)?;
        Ok(vectors.into_iter().map(RVec::from).collect())
    }
}

struct JobWrapper<J>(J);

impl<J: EngineJob> FfiJob for JobWrapper<J> {
    fn cancel(&self) -> RResult<(), AdapterError> {
        guard(Phase::MidStream, || {
            self.0.cancel();
            Ok(())
        })
    }
}

extern "C" fn info<A: Adapter>() -> RResult<AdapterInfo, AdapterError> {
    guard(Phase::Control, || {
        Ok(AdapterInfo {
            name: A::NAME.into(),
            version: A::VERSION.into(),
            abi_version: crate::ABI_VERSION.into(),
            engines: A::engines()
                .into_iter()
                .map(RString::from)
                .collect::<RVec<_>>(),
            features: A::features(),
        })
    })
}

extern "C" fn new_client<A: Adapter>(config: RStr<'_>) -> RResult<FfiClientBox, AdapterError> {
    guard(Phase::Control, || {
        A::new_client(config.as_str())
            .map(|c| FfiClient_TO::from_value(ClientWrapper(c), TD_Opaque))
    })
}

extern "C" fn more_features<A: Adapter>() -> RVec<RString> {
    // A panic here must not unwind into the host: no features beyond 0.1.2's, then.
    catch_unwind(A::more_features)
        .unwrap_or_default()
        .into_iter()
        .map(RString::from)
        .collect()
}

/// The root module for adapter `A`; called by [`crate::export_adapter!`].
pub fn root_module<A: Adapter>() -> AdapterModRef {
    AdapterMod {
        info: info::<A>,
        new_client: new_client::<A>,
        more_features: more_features::<A>,
    }
    .leak_into_prefix()
}

/// Exports `$adapter` (a type implementing [`Adapter`]) as this library's root module.
/// The crate must be a `cdylib` and depend on `abi_stable` directly.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[::abi_stable::export_root_module]
        pub fn orchd_adapter_root_module() -> $crate::AdapterModRef {
            $crate::plugin::root_module::<$adapter>()
        }
    };
}
