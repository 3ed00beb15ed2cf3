//! The default error-mapping policy: adapter and engine failures to the public codes of
//! API.md, with `retriable`, a retry hint, and whether a failure before the first token
//! may be retried on another replica.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({
    world: "error-mapping-policy",
    path: "../../wit/0.2.0",
});

use exports::orchd::policy::error_mapping::{Failure, Guest as ErrorMappingGuest, Mapped, Phase};
use exports::orchd::policy::lifecycle::Guest as LifecycleGuest;
use orchd::policy::types::PolicyInfo;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Hint for retriable failures, in ms.
    pub retry_after_ms: u64,
    /// Whether failures before the first token may be retried on another replica.
    pub retry_elsewhere: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retry_after_ms: 1000,
            retry_elsewhere: true,
        }
    }
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

const LABEL: &str = "error-mapping-default";

pub fn map(config: &Config, f: &Failure) -> Mapped {
    let (code, status, retriable) = match (f.kind.as_str(), f.upstream_status) {
        ("transport" | "protocol" | "panic", _) => ("WORKER_RESET", 502, true),
        ("timeout" | "stall", _) => ("DECODE_TIMEOUT", 500, true),
        ("invalid-request", _) => ("INVALID_PARAMS", 400, false),
        ("upstream", Some(400..=422)) => ("INVALID_PARAMS", 400, false),
        ("upstream", Some(429 | 503)) => ("POOL_UNAVAILABLE", 503, true),
        ("upstream", _) => ("WORKER_RESET", 502, true),
        _ => ("INTERNAL", 500, false),
    };
    let before_first_token = matches!(f.phase, Phase::BeforeDispatch | Phase::BeforeFirstToken);
    Mapped {
        code: code.to_owned(),
        http_status: status,
        retriable,
        retry_after_ms: retriable.then_some(config.retry_after_ms),
        message: format!("engine {}: {}", f.engine, f.message),
        policy_label: LABEL.to_owned(),
        retry_elsewhere: config.retry_elsewhere
            && retriable
            && before_first_token
            && code != "POOL_UNAVAILABLE",
    }
}

struct Policy;

impl LifecycleGuest for Policy {
    fn info() -> PolicyInfo {
        PolicyInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        report_panics();
        let text = config.trim();
        let config: Config = if text.is_empty() {
            Config::default()
        } else {
            serde_json::from_str(text).map_err(|e| format!("error-mapping-default config: {e}"))?
        };
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }
}

impl ErrorMappingGuest for Policy {
    fn map_failure(failure: Failure) -> Mapped {
        CONFIG.with(|c| map(&c.borrow(), &failure))
    }
}

/// Reports a panic through the host's log before the trap, so the host can say why the
/// call failed (in `last_error` and its own log) instead of showing a bare wasm trap.
fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        orchd::policy::host::log(orchd::policy::host::Level::Error, &info.to_string());
    }));
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: &str, status: Option<u16>, phase: Phase, expected: &str) {
        let f = Failure {
            kind: kind.into(),
            upstream_status: status,
            message: "boom".into(),
            engine: "llamacpp".into(),
            pool_id: "p".into(),
            replica_id: "p-0".into(),
            phase,
            attempt: 1,
            attempts_left: 2,
        };
        let m = map(&Config::default(), &f);
        let got = format!(
            "{} {} {} {}",
            m.code, m.http_status, m.retriable, m.retry_elsewhere
        );
        assert_eq!(got, expected, "{kind} {status:?}");
    }

    #[test]
    fn the_table_of_api_md() {
        check(
            "transport",
            None,
            Phase::MidStream,
            "WORKER_RESET 502 true false",
        );
        check(
            "transport",
            None,
            Phase::BeforeFirstToken,
            "WORKER_RESET 502 true true",
        );
        check(
            "timeout",
            None,
            Phase::MidStream,
            "DECODE_TIMEOUT 500 true false",
        );
        check(
            "upstream",
            Some(400),
            Phase::BeforeFirstToken,
            "INVALID_PARAMS 400 false false",
        );
        check(
            "upstream",
            Some(503),
            Phase::BeforeFirstToken,
            "POOL_UNAVAILABLE 503 true false",
        );
        check(
            "upstream",
            Some(500),
            Phase::BeforeFirstToken,
            "WORKER_RESET 502 true true",
        );
        check(
            "panic",
            None,
            Phase::BeforeDispatch,
            "WORKER_RESET 502 true true",
        );
        check(
            "config",
            None,
            Phase::BeforeDispatch,
            "INTERNAL 500 false false",
        );
    }
}
