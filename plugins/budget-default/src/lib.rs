//! The default budget policy (API.md, POLICIES.md): reserve-then-settle.
//!
//! At admission a request reserves `tokens = prompt estimate + max_tokens`, `time = its
//! expected service time` (measured first-token time plus `max_tokens` at the measured
//! rate, as the host computes it; not the deadline, which would let one request hold a
//! whole session's time budget) and `cost = tokens × price`; it is denied when the key's
//! or the session's remaining budget cannot cover any of the three. The same tokens count
//! against the tokens-per-minute rate limits. At task end the charge is the actual usage
//! (`tokens in + tokens out`, elapsed time, their cost), and the rate limits are corrected
//! to the tokens used; the host returns the rest of the reservation. A denial carries no
//! retry hint: the host adds the budget window's reset when it has one.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({
    world: "budget-policy",
    path: "../../wit/0.2.0",
});

use exports::orchd::policy::budget::{
    Charge, Denial, Guest as BudgetGuest, Reservation, ReserveRequest, SettleRequest, Usage,
};
use exports::orchd::policy::lifecycle::Guest as LifecycleGuest;
use orchd::policy::types::BudgetLeft;
use orchd::policy::types::PolicyInfo;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Cost of one token (prompt or output), in the operator's currency unit.
    pub price_per_token: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            price_per_token: 0.000_002,
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let c: Config = if text.is_empty() {
            Config::default()
        } else {
            serde_json::from_str(text).map_err(|e| format!("budget-default config: {e}"))?
        };
        if !(c.price_per_token.is_finite() && c.price_per_token >= 0.0) {
            return Err("budget-default config: price_per_token must be a number >= 0".into());
        }
        Ok(c)
    }
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

/// The first dimension `left` cannot cover, as a message.
fn shortfall(who: &str, need: &Usage, left: &BudgetLeft) -> Option<String> {
    if let Some(t) = left.tokens
        && need.tokens > t
    {
        return Some(format!(
            "{who} budget has {t} tokens left; the request needs {}",
            need.tokens
        ));
    }
    if let Some(ms) = left.time_ms
        && need.time_ms > ms
    {
        return Some(format!(
            "{who} budget has {ms} ms left; the request is expected to need {}",
            need.time_ms
        ));
    }
    if let Some(c) = left.cost
        && need.cost > c
    {
        return Some(format!(
            "{who} budget has {c:.6} cost left; the request needs {:.6}",
            need.cost
        ));
    }
    None
}

pub fn reserve(config: &Config, req: &ReserveRequest) -> Reservation {
    let tokens = u64::from(req.prompt_tokens_estimate) + u64::from(req.max_tokens);
    let need = Usage {
        tokens,
        time_ms: req.expected_service_ms.min(req.deadline_ms),
        cost: tokens as f64 * config.price_per_token,
    };
    match shortfall("key", &need, &req.key_left)
        .or_else(|| shortfall("session", &need, &req.session_left))
    {
        Some(message) => Reservation::Deny(Denial {
            message,
            retry_after_ms: None,
        }),
        None => Reservation::Reserve(Charge {
            usage: need,
            rate_tokens: tokens,
        }),
    }
}

pub fn settle(config: &Config, req: &SettleRequest) -> Charge {
    let tokens = u64::from(req.tokens_in) + u64::from(req.tokens_out);
    Charge {
        usage: Usage {
            tokens,
            time_ms: req.time_ms,
            cost: tokens as f64 * config.price_per_token,
        },
        rate_tokens: tokens,
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
        let config = Config::parse(&config)?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }
}

impl BudgetGuest for Policy {
    fn reserve(request: ReserveRequest) -> Reservation {
        CONFIG.with(|c| reserve(&c.borrow(), &request))
    }

    fn settle(request: SettleRequest) -> Charge {
        CONFIG.with(|c| settle(&c.borrow(), &request))
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
    use orchd::policy::types::Priority;

    fn left(tokens: Option<u64>, time_ms: Option<u64>, cost: Option<f64>) -> BudgetLeft {
        BudgetLeft {
            tokens,
            time_ms,
            cost,
        }
    }

    fn request(key: BudgetLeft, session: BudgetLeft) -> ReserveRequest {
        ReserveRequest {
            now_ms: 0,
            task_id: "t".into(),
            tenant: "open".into(),
            group: None,
            session_id: "s".into(),
            priority: Priority::Interactive,
            engine: "mock".into(),
            model_ref: "m".into(),
            prompt_tokens_estimate: 10,
            max_tokens: 90,
            deadline_ms: 5000,
            expected_service_ms: 1200,
            key_left: key,
            session_left: session,
        }
    }

    fn check(key: BudgetLeft, session: BudgetLeft, expected: &str) {
        let config = Config {
            price_per_token: 0.01,
        };
        let got = match reserve(&config, &request(key, session)) {
            Reservation::Reserve(c) => {
                let u = c.usage;
                assert_eq!(c.rate_tokens, u.tokens);
                format!("reserve {} {} {:.2}", u.tokens, u.time_ms, u.cost)
            }
            Reservation::Deny(d) => format!("deny {}", d.message),
        };
        assert!(
            got.starts_with(expected),
            "{got:?} should start with {expected:?}"
        );
    }

    #[test]
    fn reservations_and_denials() {
        let none = left(None, None, None);
        // Time is the expected service time, not the deadline.
        check(none.clone(), none.clone(), "reserve 100 1200 1.00");
        check(left(Some(100), None, None), none.clone(), "reserve 100");
        check(
            left(Some(99), None, None),
            none.clone(),
            "deny key budget has 99 tokens left",
        );
        check(
            none.clone(),
            left(None, Some(1199), None),
            "deny session budget has 1199 ms left",
        );
        check(
            none.clone(),
            left(None, None, Some(0.5)),
            "deny session budget has 0.500000 cost left",
        );
    }

    #[test]
    fn settle_charges_actual_usage() {
        let config = Config {
            price_per_token: 0.5,
        };
        let u = settle(
            &config,
            &SettleRequest {
                task_id: "t".into(),
                engine: "mock".into(),
                model_ref: "m".into(),
                reserved: Charge {
                    usage: Usage {
                        tokens: 100,
                        time_ms: 1200,
                        cost: 50.0,
                    },
                    rate_tokens: 100,
                },
                tokens_in: 3,
                tokens_out: 4,
                time_ms: 120,
            },
        );
        assert_eq!(
            (u.usage.tokens, u.usage.time_ms, u.usage.cost, u.rate_tokens),
            (7, 120, 3.5, 7)
        );
        assert!(Config::parse(r#"{"price_per_token":-1}"#).is_err());
        assert!(Config::parse(r#"{"price":1}"#).is_err());
    }
}
