//! The budget ledger: budgets per key and per session (each with an optional period), and
//! rate limits per key, kept in the state store ([`crate::store`]). The budget policy
//! decides how much a request reserves and what a finished task costs; the store decides,
//! atomically, whether the reservation fits, so concurrent requests (on one daemon or
//! several) can never spend the same budget twice.
//!
//! A store that cannot be reached fails closed: admission answers 503 (`StoreDown`), and
//! settles wait in a bounded queue retried by the background task; a reservation whose
//! daemon dies is settled at its reserved amount when its lease ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::config::{BudgetLimits, BudgetSettings, RateLimits};
use crate::policy::bindings::BudgetLeft;
use crate::store::{
    Budget, Decision, Pending, RateLimit, ReserveJob, Store, StoreError, left_of, now_ms,
};

pub use crate::store::{Amount, RateState};

/// A reservation held by an admitted task until it settles.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The store's id for it (the task id).
    pub id: String,
    pub key: String,
    pub session: String,
    pub amount: Amount,
    /// Tokens charged to the key's tokens-per-window limit (corrected at settle).
    pub rate_tokens: u64,
    /// Whether the store holds it (no budget and no rate limit applied: nothing to settle).
    pub stored: bool,
}

/// What is left of the tightest budgets after a reservation (for `X-Budget-*`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Headroom {
    pub tokens: Option<u64>,
    pub time_ms: Option<u64>,
    pub cost: Option<f64>,
}

/// Why a reservation was refused.
#[derive(Debug)]
pub enum Refused {
    OverBudget {
        account: String,
        what: &'static str,
        retry_after_ms: Option<u64>,
    },
    OverRate {
        /// `key:<name>` or `group:<name>`.
        subject: String,
        limit: &'static str,
        retry_after_ms: u64,
        rate: RateState,
    },
    StoreDown(StoreError),
}

/// Settles that failed because the store was unreachable, retried in order.
const MAX_PENDING_SETTLES: usize = 100_000;

pub struct Ledger {
    limits: BudgetSettings,
    /// Keys with their own budget instead of `limits.per_key`.
    key_limits: HashMap<String, BudgetLimits>,
    rate: RateLimits,
    key_rates: HashMap<String, RateLimits>,
    /// Tenant groups' limits, and each key's group.
    groups: BTreeMap<String, RateLimits>,
    key_groups: HashMap<String, String>,
    store: Arc<crate::store::Observed>,
    /// Settles the store refused; the ledger's own lock, never held across a store call.
    pending: Arc<Mutex<Vec<(Reservation, Amount)>>>,
}

/// Runs a blocking store call from anywhere: on a multi-threaded runtime's worker it
/// tells tokio the thread blocks (so other tasks move), elsewhere it just runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Queues a settle the store refused, for [`Ledger::maintain`] to retry.
fn defer(
    pending: &Mutex<Vec<(Reservation, Amount)>>,
    r: Reservation,
    actual: Amount,
    e: &StoreError,
) {
    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
    if pending.len() < MAX_PENDING_SETTLES {
        tracing::warn!(reservation = %r.id, error = %e, "settle deferred until the state store is back");
        pending.push((r, actual));
    } else {
        crate::metrics::bounded_eviction("pending_settles", 1);
        tracing::error!(reservation = %r.id, "settle dropped: too many deferred; its lease will settle it at the reserved amount");
    }
}

/// The key's and the session's left from the spend of [`Ledger::left_of_list`]'s budgets:
/// the key's is the tighter of its own and its budget on the model.
fn lefts(
    list: &[Budget],
    (has_key, has_session): (bool, bool),
    spent: &[Amount],
) -> (BudgetLeft, BudgetLeft) {
    let mut it = list.iter().zip(spent).map(|(b, s)| as_left(b, s));
    let key_left = if has_key { it.next() } else { None }.unwrap_or_else(unlimited);
    let session_left = if has_session { it.next() } else { None }.unwrap_or_else(unlimited);
    let key_left = match it.next() {
        Some(model_left) => BudgetLeft {
            tokens: min_opt(key_left.tokens, model_left.tokens),
            time_ms: min_opt(key_left.time_ms, model_left.time_ms),
            cost: match (key_left.cost, model_left.cost) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        },
        None => key_left,
    };
    (key_left, session_left)
}

fn as_left(b: &Budget, spent: &Amount) -> BudgetLeft {
    let (tokens, time_ms, cost) = left_of(b, spent);
    BudgetLeft {
        tokens,
        time_ms,
        cost,
    }
}

fn unlimited() -> BudgetLeft {
    BudgetLeft {
        tokens: None,
        time_ms: None,
        cost: None,
    }
}

impl Ledger {
    pub fn new(
        limits: BudgetSettings,
        key_limits: HashMap<String, BudgetLimits>,
        rate: RateLimits,
        key_rates: HashMap<String, RateLimits>,
        store: Arc<crate::store::Observed>,
    ) -> Self {
        Self {
            limits,
            key_limits,
            rate,
            key_rates,
            groups: BTreeMap::new(),
            key_groups: HashMap::new(),
            store,
            pending: Arc::default(),
        }
    }

    /// The tenant group of `key`, if it has one.
    pub fn group_of(&self, key: &str) -> Option<&str> {
        self.key_groups.get(key).map(String::as_str)
    }

    /// Tenant groups: `groups` by name, and the group of each key that has one. A key's
    /// requests count against its group's limits as well as its own.
    pub fn with_groups(
        mut self,
        groups: BTreeMap<String, RateLimits>,
        key_groups: HashMap<String, String>,
    ) -> Self {
        self.groups = groups;
        self.key_groups = key_groups;
        self
    }

    pub fn store_name(&self) -> &'static str {
        self.store.name()
    }

    fn key_limit(&self, key: &str) -> BudgetLimits {
        self.key_limits
            .get(key)
            .copied()
            .unwrap_or(self.limits.per_key)
    }

    fn budget(account: String, l: BudgetLimits) -> Budget {
        Budget {
            account,
            tokens: l.tokens,
            time_ms: l.time_ms,
            cost: l.cost,
            period: l.period,
        }
    }

    /// The budgets that apply to a key and a session, limited ones only (key first).
    fn budgets(&self, key: &str, session: &str) -> (Option<Budget>, Option<Budget>) {
        let k = Self::budget(format!("key:{key}"), self.key_limit(key));
        let s = Self::budget(format!("session:{session}"), self.limits.per_session);
        (
            (!k.is_unlimited()).then_some(k),
            (!s.is_unlimited()).then_some(s),
        )
    }

    /// The key's budget on `model`, if one is configured (the key's own entry first, then
    /// `"*"`).
    fn model_budget(&self, key: &str, model: &str) -> Option<Budget> {
        let entries = &self.limits.per_key_model;
        entries
            .iter()
            .find(|b| b.key == key && b.model == model)
            .or_else(|| entries.iter().find(|b| b.key == "*" && b.model == model))
            .map(|b| Self::budget(format!("model:{key}/{model}"), b.limits()))
            .filter(|b| !b.is_unlimited())
    }

    /// Every budget a request of `key` in `session` on `model` must fit.
    fn all_budgets(&self, key: &str, session: &str, model: &str) -> Vec<Budget> {
        let (k, s) = self.budgets(key, session);
        k.into_iter()
            .chain(s)
            .chain(self.model_budget(key, model))
            .collect()
    }

    /// The rate limits a request of `key` is charged against: the key's own, then its
    /// tenant group's.
    fn rate_limits(&self, key: &str) -> Vec<RateLimit> {
        let limit = |subject: String, r: RateLimits| {
            (!r.is_unlimited()).then_some(RateLimit {
                subject,
                requests: r.requests,
                tokens: r.tokens,
                concurrent: r.concurrent,
                window_ms: r.window_ms,
            })
        };
        let own = limit(
            format!("key:{key}"),
            self.key_rates.get(key).copied().unwrap_or(self.rate),
        );
        let group = self.key_groups.get(key).and_then(|g| {
            self.groups
                .get(g)
                .and_then(|r| limit(format!("group:{g}"), *r))
        });
        own.into_iter().chain(group).collect()
    }

    /// What the key and the session have left in their current windows (what the budget
    /// policy is told).
    /// The key's left is the tighter of its own budget and its budget on `model`.
    /// The store answers from its own thread where it has one: no worker waits.
    pub async fn left(
        &self,
        key: &str,
        session: &str,
        model: &str,
    ) -> Result<(BudgetLeft, BudgetLeft), StoreError> {
        let (list, has) = self.left_of_list(key, session, model);
        if list.is_empty() {
            return Ok((unlimited(), unlimited()));
        }
        let asked = list.clone();
        let spent = Pending::begin(|then| self.store.spent_then(asked, now_ms(), then))
            .wait()
            .await?;
        Ok(lefts(&list, has, &spent))
    }

    /// The budgets [`Self::left`] reads (key, session, key × model), and which of the
    /// first two are there.
    fn left_of_list(&self, key: &str, session: &str, model: &str) -> (Vec<Budget>, (bool, bool)) {
        let (k, s) = self.budgets(key, session);
        let m = self.model_budget(key, model);
        let has = (k.is_some(), s.is_some());
        let list: Vec<Budget> = k.into_iter().chain(s).chain(m).collect();
        (list, has)
    }

    /// Reserves `amount` against the key's and the session's budgets and the key's rate
    /// limits, in one atomic store operation. `rate_tokens`: the request's estimated
    /// tokens, for the tokens-per-window limit; `lease_ms`: how long the reservation may
    /// stay unsettled before another daemon settles it at its reserved amount.
    /// The store answers from its own thread where it has one: no worker waits.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve(
        &self,
        id: &str,
        key: &str,
        session: &str,
        model: &str,
        amount: Amount,
        rate_tokens: u64,
        lease_ms: u64,
    ) -> Result<(Reservation, Headroom, Option<RateState>), Refused> {
        let budgets = self.all_budgets(key, session, model);
        let rates = self.rate_limits(key);
        let reservation = Reservation {
            id: id.to_owned(),
            key: key.to_owned(),
            session: session.to_owned(),
            amount,
            rate_tokens,
            stored: false,
        };
        if budgets.is_empty() && rates.is_empty() {
            return Ok((reservation, Headroom::default(), None));
        }
        let job = ReserveJob {
            id: id.to_owned(),
            budgets,
            amount,
            rates,
            rate_tokens,
            now_ms: now_ms(),
            lease_ms,
        };
        let asked = job.clone();
        let decision = Pending::begin(|then| self.store.reserve_then(asked, then))
            .wait()
            .await
            .map_err(Refused::StoreDown)?;
        Self::reserved(reservation, &job, decision)
    }

    /// The store's decision on `job` as the caller's answer.
    fn reserved(
        mut reservation: Reservation,
        job: &ReserveJob,
        decision: Decision,
    ) -> Result<(Reservation, Headroom, Option<RateState>), Refused> {
        let (budgets, rates) = (&job.budgets, &job.rates);
        match decision {
            Decision::Reserved { left, rate: state } => {
                reservation.stored = true;
                let mut headroom = Headroom::default();
                for (b, spent) in budgets.iter().zip(&left) {
                    let (t, ms, c) = left_of(b, spent);
                    headroom.tokens = min_opt(headroom.tokens, t);
                    headroom.time_ms = min_opt(headroom.time_ms, ms);
                    headroom.cost = match (headroom.cost, c) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Ok((reservation, headroom, (!rates.is_empty()).then_some(state)))
            }
            Decision::OverBudget {
                account,
                what,
                retry_after_ms,
            } => Err(Refused::OverBudget {
                account,
                what,
                retry_after_ms,
            }),
            Decision::OverRate {
                subject,
                limit,
                retry_after_ms,
                rate,
            } => {
                crate::metrics::rate_limited(limit);
                Err(Refused::OverRate {
                    subject,
                    limit,
                    retry_after_ms,
                    rate,
                })
            }
        }
    }

    /// When a request needing `tokens` could fit again: the latest window end among the
    /// budgets it does not fit now (those out of tokens, or out of time or cost); `None`
    /// if one of them has no period (it never resets) or none is short.
    pub fn resets_in_ms(&self, key: &str, session: &str, model: &str, tokens: u64) -> Option<u64> {
        let list = self.all_budgets(key, session, model);
        let now = now_ms();
        let spent = blocking(|| self.store.spent(&list, now)).ok()?;
        let mut latest: Option<u64> = None;
        for (b, spent) in list.iter().zip(&spent) {
            let (t, ms, c) = left_of(b, spent);
            let short = t.is_some_and(|t| t < tokens)
                || ms.is_some_and(|ms| ms == 0)
                || c.is_some_and(|c| c <= 0.0);
            if short {
                let end = b.window(now).1?;
                latest = Some(latest.unwrap_or(0).max(end.saturating_sub(now).max(1)));
            }
        }
        latest
    }

    /// What is left for the key and the session together (the tighter of the two).
    /// Blocking (`block_in_place`): it serves the metrics frames of a running task.
    pub fn headroom(&self, key: &str, session: &str, model: &str) -> Headroom {
        let (list, has) = self.left_of_list(key, session, model);
        let (k, s) = if list.is_empty() {
            (unlimited(), unlimited())
        } else {
            match blocking(|| self.store.spent(&list, now_ms())) {
                Ok(spent) => lefts(&list, has, &spent),
                Err(_) => return Headroom::default(),
            }
        };
        Headroom {
            tokens: min_opt(k.tokens, s.tokens),
            time_ms: min_opt(k.time_ms, s.time_ms),
            cost: match (k.cost, s.cost) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Applies a finished task's actual amount (exactly once). A store that cannot be
    /// reached keeps it queued for [`Self::retry_pending`].
    pub fn settle(&self, r: &Reservation, actual: Amount, rate_tokens: u64) {
        if !r.stored {
            return;
        }
        // Nobody waits for a settle: the store's own thread answers where it has one, and
        // a refusal is queued for the next retry.
        let (pending, held) = (Arc::clone(&self.pending), r.clone());
        self.store.settle_then(
            r.id.clone(),
            actual,
            rate_tokens,
            Box::new(move |result| {
                if let Err(e) = result {
                    defer(&pending, held, actual, &e);
                }
            }),
        );
    }

    /// Returns a whole reservation (the request was refused after reserving).
    pub fn refund(&self, r: &Reservation) {
        self.settle(r, Amount::default(), 0);
    }

    /// Retries deferred settles, then reaps expired leases (the background task's tick).
    pub fn maintain(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut failed = Vec::new();
        for (r, actual) in pending {
            if self.store.settle(&r.id, actual, r.rate_tokens).is_err() {
                failed.push((r, actual));
            }
        }
        if !failed.is_empty() {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(failed);
        }
        let reaped = self.store.reap(now_ms());
        if let Ok(n) = reaped
            && n > 0
        {
            tracing::warn!(
                reaped = n,
                "reservations whose lease ended were settled at their reserved amount (their daemon stopped without settling)"
            );
        }
    }

    /// Asks the store whether it is reachable (the readiness probe's answer).
    pub fn check(&self) -> bool {
        self.store.ping().is_ok()
    }

    pub fn is_up(&self) -> bool {
        self.store.is_up()
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn ledger(per_key: u64, per_session: Option<u64>) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Observed::new(Box::new(
            SqliteStore::open(&dir.path().join("s.sqlite")).unwrap(),
        )));
        let limits = BudgetSettings {
            per_key: BudgetLimits {
                tokens: Some(per_key),
                ..BudgetLimits::default()
            },
            per_session: BudgetLimits {
                tokens: per_session,
                ..BudgetLimits::default()
            },
            per_key_model: Vec::new(),
        };
        let l = Ledger::new(
            limits,
            HashMap::new(),
            RateLimits::default(),
            HashMap::new(),
            store,
        );
        (dir, l)
    }

    fn amount(tokens: u64) -> Amount {
        Amount {
            tokens,
            ..Amount::default()
        }
    }

    #[tokio::test]
    async fn reserve_settle_and_refund() {
        let (_dir, ledger) = ledger(100, None);
        assert_eq!(
            ledger.left("k", "s", "m").await.unwrap().0.tokens,
            Some(100)
        );
        assert_eq!(ledger.left("k", "s", "m").await.unwrap().1.tokens, None);
        let (r, headroom, rate) = ledger
            .reserve("t1", "k", "s", "m", amount(60), 0, 60_000)
            .await
            .unwrap();
        assert!(rate.is_none());
        assert_eq!(headroom.tokens, Some(40));
        ledger.settle(&r, amount(10), 0);
        assert_eq!(ledger.left("k", "s", "m").await.unwrap().0.tokens, Some(90));
        let (r, _, _) = ledger
            .reserve("t2", "k", "s", "m", amount(90), 0, 60_000)
            .await
            .unwrap();
        assert!(matches!(
            ledger
                .reserve("t3", "k", "s", "m", amount(1), 0, 60_000)
                .await,
            Err(Refused::OverBudget {
                what: "tokens",
                retry_after_ms: None,
                ..
            })
        ));
        ledger.refund(&r);
        assert_eq!(ledger.left("k", "s", "m").await.unwrap().0.tokens, Some(90));
        // An overrun is charged, never below zero.
        let (r, _, _) = ledger
            .reserve("t4", "k", "s", "m", amount(10), 0, 60_000)
            .await
            .unwrap();
        ledger.settle(&r, amount(500), 0);
        assert_eq!(ledger.left("k", "s", "m").await.unwrap().0.tokens, Some(0));
        // Other keys have their own budget.
        assert_eq!(
            ledger.left("other", "s", "m").await.unwrap().0.tokens,
            Some(100)
        );
    }

    #[tokio::test]
    async fn unlimited_requests_never_touch_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Observed::new(Box::new(
            SqliteStore::open(&dir.path().join("s.sqlite")).unwrap(),
        )));
        let l = Ledger::new(
            BudgetSettings {
                per_key: BudgetLimits::default(),
                per_session: BudgetLimits::default(),
                per_key_model: Vec::new(),
            },
            HashMap::new(),
            RateLimits::default(),
            HashMap::new(),
            store,
        );
        let (r, _, _) = l
            .reserve("t", "k", "s", "m", amount(5), 0, 1_000)
            .await
            .unwrap();
        assert!(!r.stored);
        l.settle(&r, amount(5), 0);
    }
}
