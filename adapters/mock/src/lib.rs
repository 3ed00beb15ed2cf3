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

use orchd_adapter_abi::plugin::{Adapter, EngineClient, Sink};
use orchd_adapter_abi::{AdapterError, ErrorKind, Features, Health, Phase, Props, SubmitRequest};

pub use config::{Failure, MockConfig};
use job::MockJob;

const ENGINE_VERSION: &str = concat!("mock-", env!("CARGO_PKG_VERSION"));

pub struct MockAdapter;

impl Adapter for MockAdapter {
    const NAME: &'static str = "mock";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Client = MockClient;

    fn engines() -> Vec<String> {
        vec!["mock".to_owned()]
    }

    fn features() -> Features {
        Features {
            streaming: true,
            cancel: true,
            ..Features::default()
        }
    }

    fn new_client(config: &str) -> Result<MockClient, AdapterError> {
        let config = MockConfig::parse(config)
            .map_err(|e| AdapterError::new(ErrorKind::Config, Phase::Control, e))?;
        Ok(MockClient {
            config: Arc::new(config),
            active: Arc::new(AtomicU32::new(0)),
        })
    }
}

orchd_adapter_abi::export_adapter!(MockAdapter);

pub struct MockClient {
    config: Arc<MockConfig>,
    active: Arc<AtomicU32>,
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
            engine_version: ENGINE_VERSION.into(),
            model: self.config.model.as_str().into(),
        })
    }

    fn engine_version(&self) -> Result<String, AdapterError> {
        Ok(ENGINE_VERSION.to_owned())
    }

    fn submit(&self, req: SubmitRequest, sink: Sink) -> Result<MockJob, AdapterError> {
        match self.config.failure {
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
        Ok(MockJob::spawn(
            Arc::clone(&self.config),
            Arc::clone(&self.active),
            req,
            sink,
        ))
    }
}
