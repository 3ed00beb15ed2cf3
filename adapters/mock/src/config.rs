//! The mock's configuration (the pool's adapter config, JSON).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Concurrent tasks one replica serves.
    pub slots: u32,
    pub ctx_max: u32,
    pub model: String,
    pub first_token_delay_ms: u64,
    pub tokens_per_s: f64,
    pub failure: Failure,
    /// For `error_mid_stream`, `panic_mid_stream` and `stall`: tokens produced before the fault.
    pub fail_after_tokens: u32,
    /// `false`: the engine reports itself live but not ready (a model still loading).
    pub ready: bool,
    /// `false`: the engine reports no token counts (as Triton and some OpenAI-compatible
    /// servers), so the host must count or estimate.
    pub report_usage: bool,
    /// With a `failure`: only this many tasks (the first ones) fail, later ones run
    /// normally, as an engine that recovers. 0: every task fails.
    pub failing_tasks: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            slots: 4,
            ctx_max: 8192,
            model: "mock".to_owned(),
            first_token_delay_ms: 20,
            tokens_per_s: 200.0,
            failure: Failure::None,
            fail_after_tokens: 0,
            ready: true,
            report_usage: true,
            failing_tasks: 0,
        }
    }
}

/// Faults the mock injects, on every task of the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    #[default]
    None,
    /// `submit` fails with an upstream error.
    RejectSubmit,
    /// An error event before the first token.
    ErrorBeforeFirstToken,
    /// An error event of kind `internal` (the adapter's own bug) before the first token.
    InternalError,
    /// A reset after `fail_after_tokens` tokens.
    ErrorMidStream,
    /// Stops producing after `fail_after_tokens` tokens and waits for cancel.
    Stall,
    /// `submit` panics (contained by the ABI guard).
    PanicOnSubmit,
    /// The generator thread panics after `fail_after_tokens` tokens: the sink is dropped
    /// without a terminal event, as when an engine process dies.
    PanicMidStream,
}

impl MockConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let config: Self = if text.is_empty() {
            Self::default()
        } else {
            serde_json::from_str(text).map_err(|e| format!("invalid mock adapter config: {e}"))?
        };
        if config.slots == 0 {
            return Err("invalid mock adapter config: slots must be at least 1".to_owned());
        }
        if !(config.tokens_per_s.is_finite() && config.tokens_per_s > 0.0) {
            return Err("invalid mock adapter config: tokens_per_s must be > 0".to_owned());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_default() {
        let c = MockConfig::parse("").unwrap();
        assert_eq!(c.slots, 4);
        assert_eq!(c.first_token_delay_ms, 20);
        assert_eq!(c.tokens_per_s, 200.0);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(
            MockConfig::parse(r#"{"slotz":1}"#)
                .unwrap_err()
                .contains("slotz")
        );
        assert!(MockConfig::parse(r#"{"slots":0}"#).is_err());
        assert!(MockConfig::parse(r#"{"tokens_per_s":0}"#).is_err());
        let c = MockConfig::parse(r#"{"failure":"stall","fail_after_tokens":2}"#).unwrap();
        assert_eq!(c.failure, Failure::Stall);
    }
}
