//! The budget ledger: what each API key and each session has left. The budget policy
//! decides how much a request reserves and what a finished task costs; the ledger applies
//! those amounts atomically, so concurrent requests can never spend the same budget twice.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::config::{BudgetLimits, BudgetSettings};
use crate::policy::bindings::BudgetLeft;

/// An amount of budget (tokens, deadline time, cost).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amount {
    pub tokens: u64,
    pub time_ms: u64,
    pub cost: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Remaining {
    tokens: Option<u64>,
    time_ms: Option<u64>,
    cost: Option<f64>,
}

impl From<BudgetLimits> for Remaining {
    fn from(l: BudgetLimits) -> Self {
        Self {
            tokens: l.tokens,
            time_ms: l.time_ms,
            cost: l.cost,
        }
    }
}

impl Remaining {
    fn debit(&mut self, a: Amount) {
        if let Some(t) = &mut self.tokens {
            *t = t.saturating_sub(a.tokens);
        }
        if let Some(t) = &mut self.time_ms {
            *t = t.saturating_sub(a.time_ms);
        }
        if let Some(c) = &mut self.cost {
            *c = (*c - a.cost).max(0.0);
        }
    }

    fn credit(&mut self, a: Amount, cap: &BudgetLimits) {
        if let (Some(t), Some(max)) = (&mut self.tokens, cap.tokens) {
            *t = t.saturating_add(a.tokens).min(max);
        }
        if let (Some(t), Some(max)) = (&mut self.time_ms, cap.time_ms) {
            *t = t.saturating_add(a.time_ms).min(max);
        }
        if let (Some(c), Some(max)) = (&mut self.cost, cap.cost) {
            *c = (*c + a.cost).min(max);
        }
    }

    fn as_left(&self) -> BudgetLeft {
        BudgetLeft {
            tokens: self.tokens,
            time_ms: self.time_ms,
            cost: self.cost,
        }
    }
}

/// A reservation held by an admitted task until it settles.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub key: String,
    pub session: String,
    pub amount: Amount,
}

/// What a key and a session have left, as the budget headers report it (`None`:
/// unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub struct Headroom {
    pub tokens: Option<u64>,
    pub time_ms: Option<u64>,
    pub cost: Option<f64>,
}

#[derive(Default)]
struct Accounts {
    keys: HashMap<String, Remaining>,
    sessions: HashMap<String, Remaining>,
}

pub struct Ledger {
    limits: BudgetSettings,
    /// Keys with their own budget instead of `limits.per_key`.
    key_limits: HashMap<String, BudgetLimits>,
    accounts: Mutex<Accounts>,
}

/// The ledger locked for one reservation: read what is left, ask the policy, debit.
pub struct Locked<'a> {
    ledger: &'a Ledger,
    accounts: MutexGuard<'a, Accounts>,
    key: String,
    session: String,
}

impl Ledger {
    pub fn new(limits: BudgetSettings, key_limits: HashMap<String, BudgetLimits>) -> Self {
        Self {
            limits,
            key_limits,
            accounts: Mutex::new(Accounts::default()),
        }
    }

    pub fn lock(&self, key: &str, session: &str) -> Locked<'_> {
        Locked {
            ledger: self,
            accounts: self.accounts.lock().unwrap_or_else(|p| p.into_inner()),
            key: key.to_owned(),
            session: session.to_owned(),
        }
    }

    /// Returns the unused part of a reservation: `reserved - actual`, or charges the
    /// overrun when the task used more than it reserved.
    pub fn settle(&self, r: &Reservation, actual: Amount) {
        let mut guard = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let accounts = &mut *guard;
        let unused = Amount {
            tokens: r.amount.tokens.saturating_sub(actual.tokens),
            time_ms: r.amount.time_ms.saturating_sub(actual.time_ms),
            cost: (r.amount.cost - actual.cost).max(0.0),
        };
        let overrun = Amount {
            tokens: actual.tokens.saturating_sub(r.amount.tokens),
            time_ms: actual.time_ms.saturating_sub(r.amount.time_ms),
            cost: (actual.cost - r.amount.cost).max(0.0),
        };
        for (map, id, cap) in [
            (&mut accounts.keys, &r.key, self.key_limit(&r.key)),
            (&mut accounts.sessions, &r.session, self.limits.per_session),
        ] {
            if let Some(rem) = map.get_mut(id) {
                rem.credit(unused, &cap);
                rem.debit(overrun);
            }
        }
    }

    fn key_limit(&self, key: &str) -> BudgetLimits {
        self.key_limits
            .get(key)
            .copied()
            .unwrap_or(self.limits.per_key)
    }

    /// Returns a whole reservation (the request was refused after reserving).
    pub fn refund(&self, r: &Reservation) {
        self.settle(r, Amount::default());
    }
}

impl Locked<'_> {
    fn key_mut(&mut self) -> &mut Remaining {
        let limits = self.ledger.key_limit(&self.key);
        self.accounts
            .keys
            .entry(self.key.clone())
            .or_insert_with(|| limits.into())
    }

    fn session_mut(&mut self) -> &mut Remaining {
        let limits = self.ledger.limits.per_session;
        self.accounts
            .sessions
            .entry(self.session.clone())
            .or_insert_with(|| limits.into())
    }

    pub fn key_left(&mut self) -> BudgetLeft {
        self.key_mut().as_left()
    }

    pub fn session_left(&mut self) -> BudgetLeft {
        self.session_mut().as_left()
    }

    /// What is left for the key and the session together (the tighter of the two).
    pub fn headroom(&mut self) -> Headroom {
        let (k, s) = (*self.key_mut(), *self.session_mut());
        let min_u = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Headroom {
            tokens: min_u(k.tokens, s.tokens),
            time_ms: min_u(k.time_ms, s.time_ms),
            cost: match (k.cost, s.cost) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    pub fn debit(mut self, amount: Amount) -> (Reservation, Headroom) {
        self.key_mut().debit(amount);
        self.session_mut().debit(amount);
        let headroom = self.headroom();
        (
            Reservation {
                key: self.key.clone(),
                session: self.session.clone(),
                amount,
            },
            headroom,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tokens: u64) -> BudgetSettings {
        BudgetSettings {
            per_key: BudgetLimits {
                tokens: Some(tokens),
                time_ms: None,
                cost: None,
            },
            per_session: BudgetLimits::default(),
        }
    }

    fn amount(tokens: u64) -> Amount {
        Amount {
            tokens,
            ..Amount::default()
        }
    }

    #[test]
    fn reserve_settle_and_refund() {
        let ledger = Ledger::new(limits(100), HashMap::new());
        let mut l = ledger.lock("k", "s");
        assert_eq!(l.key_left().tokens, Some(100));
        assert_eq!(l.session_left().tokens, None);
        let (r, headroom) = l.debit(amount(60));
        assert_eq!(headroom.tokens, Some(40));
        ledger.settle(&r, amount(10));
        assert_eq!(ledger.lock("k", "s").key_left().tokens, Some(90));
        let (r, _) = ledger.lock("k", "s").debit(amount(90));
        ledger.refund(&r);
        assert_eq!(ledger.lock("k", "s").key_left().tokens, Some(90));
        // An overrun is charged, never below zero.
        let (r, _) = ledger.lock("k", "s").debit(amount(10));
        ledger.settle(&r, amount(500));
        assert_eq!(ledger.lock("k", "s").key_left().tokens, Some(0));
        // Other keys have their own budget.
        assert_eq!(ledger.lock("other", "s").key_left().tokens, Some(100));
    }
}
