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

    fn is_full(&self, cap: &BudgetLimits) -> bool {
        self.tokens == cap.tokens && self.time_ms == cap.time_ms && self.cost == cap.cost
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
        // A session account back at its full budget says nothing: forget it (a refused
        // request leaves no account behind).
        if accounts
            .sessions
            .get(&r.session)
            .is_some_and(|rem| rem.is_full(&self.limits.per_session))
        {
            accounts.sessions.remove(&r.session);
        }
    }

    /// Forgets the accounts of sessions that expired (their budget went with them).
    pub fn forget_sessions(&self, accounts: &[String]) {
        if accounts.is_empty() {
            return;
        }
        let mut guard = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        for a in accounts {
            guard.sessions.remove(a);
        }
    }

    /// Session accounts held (for tests and metrics).
    pub fn session_accounts(&self) -> usize {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .len()
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

    /// What the key has left; reading creates no account (only a debit does).
    fn key_now(&self) -> Remaining {
        self.accounts
            .keys
            .get(&self.key)
            .copied()
            .unwrap_or_else(|| self.ledger.key_limit(&self.key).into())
    }

    fn session_now(&self) -> Remaining {
        self.accounts
            .sessions
            .get(&self.session)
            .copied()
            .unwrap_or_else(|| self.ledger.limits.per_session.into())
    }

    pub fn key_left(&self) -> BudgetLeft {
        self.key_now().as_left()
    }

    pub fn session_left(&self) -> BudgetLeft {
        self.session_now().as_left()
    }

    /// What is left for the key and the session together (the tighter of the two).
    pub fn headroom(&self) -> Headroom {
        let (k, s) = (self.key_now(), self.session_now());
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
        let l = ledger.lock("k", "s");
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

    #[test]
    fn session_accounts_exist_only_while_they_hold_something() {
        let mut settings = limits(100);
        settings.per_session = BudgetLimits {
            tokens: Some(50),
            ..BudgetLimits::default()
        };
        let ledger = Ledger::new(settings, HashMap::new());
        // Reading what is left creates nothing.
        assert_eq!(ledger.lock("k", "k/a").session_left().tokens, Some(50));
        assert_eq!(ledger.session_accounts(), 0);
        // A refunded reservation (a refused request) leaves nothing behind.
        let (r, _) = ledger.lock("k", "k/a").debit(amount(20));
        assert_eq!(ledger.session_accounts(), 1);
        ledger.refund(&r);
        assert_eq!(ledger.session_accounts(), 0);
        // Spent budget stays until the session expires.
        let (r, _) = ledger.lock("k", "k/a").debit(amount(20));
        ledger.settle(&r, amount(5));
        assert_eq!(ledger.lock("k", "k/a").session_left().tokens, Some(45));
        ledger.forget_sessions(&["k/a".to_owned()]);
        assert_eq!(ledger.session_accounts(), 0);
    }
}
