//! Mock engine adapter: an in-process, deterministic token generator behind the real ABI.
//!
//! It is the embedded default (`pool mock`, engine `mock`, model `mock`) and the test double:
//! output depends only on `seed` and the prompt, timing on `first_token_delay_ms` and
//! `tokens_per_s`, and `failure` injects the faults the host must survive.

mod config;
mod generator;
mod job;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use orchd_adapter_abi::plugin::{Adapter, ChatSink, EngineClient, Sink};
use orchd_adapter_abi::{
    AdapterError, ChatRequest, ErrorKind, Features, Health, Phase, Props, SubmitRequest,
};

pub use config::{Failure, MockConfig};
use job::MockJob;

/// The version the library reports: the package's, unless the build sets
/// `ORCHD_MOCK_VERSION` (the test fixtures build a "newer" mock to upgrade to).
const VERSION: &str = match option_env!("ORCHD_MOCK_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

fn engine_version() -> String {
    format!("mock-{VERSION}")
}

pub struct MockAdapter;

impl Adapter for MockAdapter {
    const NAME: &'static str = "mock";
    const VERSION: &'static str = VERSION;
    type Client = MockClient;

    fn engines() -> Vec<String> {
        vec!["mock".to_owned()]
    }

    fn more_features() -> Vec<&'static str> {
        vec![orchd_adapter_abi::FEATURE_CHAT]
    }

    fn features() -> Features {
        Features {
            streaming: true,
            cancel: true,
            embeddings: true,
            tokenize: true,
            ..Features::default()
        }
    }

    fn new_client(config: &str) -> Result<MockClient, AdapterError> {
        let config = MockConfig::parse(config)
            .map_err(|e| AdapterError::new(ErrorKind::Config, Phase::Control, e))?;
        Ok(MockClient {
            config: Arc::new(config),
            active: Arc::new(AtomicU32::new(0)),
            submitted: AtomicU32::new(0),
        })
    }
}

orchd_adapter_abi::export_adapter!(MockAdapter);

pub struct MockClient {
    config: Arc<MockConfig>,
    active: Arc<AtomicU32>,
    /// Tasks submitted so far (for `failing_tasks`).
    submitted: AtomicU32,
}

impl MockClient {
    /// The config this task runs with: without its failure once `failing_tasks` failed.
    fn for_next_task(&self) -> Arc<MockConfig> {
        let n = self.submitted.fetch_add(1, Ordering::Relaxed);
        if self.config.failing_tasks == 0 || n < self.config.failing_tasks {
            Arc::clone(&self.config)
        } else {
            Arc::new(MockConfig {
                failure: Failure::None,
                ..(*self.config).clone()
            })
        }
    }
}

/// Dimensions of the mock's embeddings.
pub const EMBEDDING_DIM: usize = 16;

/// A deterministic unit vector for `text` (FNV-1a per dimension).
pub fn mock_embedding(text: &str) -> Vec<f32> {
    let raw: Vec<f32> = (0..EMBEDDING_DIM as u64)
        .map(|d| {
            let h = text.bytes().fold(0xcbf2_9ce4_8422_2325 ^ d, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

impl EngineClient for MockClient {
    type Job = MockJob;

    fn health(&self) -> Result<Health, AdapterError> {
        Ok(Health {
            live: true,
            ready: self.config.ready,
            message: if self.config.ready {
                "ok"
            } else {
                "loading model"
            }
            .into(),
        })
    }

    fn props(&self) -> Result<Props, AdapterError> {
        let active = self.active.load(Ordering::Relaxed);
        Ok(Props {
            slots_total: self.config.slots,
            slots_free: self.config.slots.saturating_sub(active),
            ctx_max: self.config.ctx_max,
            engine_version: engine_version().into(),
            model: self.config.model.as_str().into(),
        })
    }

    fn engine_version(&self) -> Result<String, AdapterError> {
        Ok(engine_version())
    }

    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<MockJob, AdapterError> {
        let config = self.for_next_task();
        match config.failure {
            Failure::PanicOnSubmit => panic!("injected panic in submit"),
            Failure::RejectSubmit => {
                return Err(AdapterError::new(
                    ErrorKind::Upstream,
                    Phase::BeforeFirstToken,
                    "injected submit rejection",
                ));
            }
            _ => {}
        }
        Ok(MockJob::spawn(config, Arc::clone(&self.active), req, sink))
    }

    fn submit_chat(&self, req: ChatRequest, sink: ChatSink) -> Result<MockJob, AdapterError> {
        Ok(MockJob::spawn_chat(
            self.for_next_task(),
            Arc::clone(&self.active),
            req,
            sink,
        ))
    }

    /// One id per whitespace-separated word (a stable hash of it).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, AdapterError> {
        Ok(text
            .split_whitespace()
            .map(|w| {
                w.bytes().fold(2_166_136_261_u32, |h, b| {
                    (h ^ u32::from(b)).wrapping_mul(16_777_619)
                })
            })
            .collect())
    }

    fn embed(&self, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, AdapterError> {
        if let Failure::InternalError = self.config.failure {
            return Err(AdapterError::new(
                ErrorKind::Internal,
                Phase::BeforeFirstToken,
                "injected internal adapter error",
            ));
        }
        Ok(inputs.iter().map(|t| mock_embedding(t)).collect())
    }
}
