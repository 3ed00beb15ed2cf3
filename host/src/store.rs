//! The state store: budget spend by window, rate-limit counters and the reservations that
//! hold them, behind one interface with two backends. Embedded SQLite (a WAL file under
//! the daemon's var directory) is the default: spend survives a restart. Redis
//! (`[state] backend = "redis"`) lets several daemons share one set of budgets and limits.
//!
//! Hard limits are decided inside the store, atomically: one `BEGIN IMMEDIATE` transaction
//! on SQLite, one Lua script on Redis, per reservation. Nothing is cached in front of it.
//!
//! A reservation debits every account it names (in the window current at reservation
//! time) and carries a lease. `settle` applies the actual amount exactly once (a second
//! settle finds nothing); a lease that expires (the daemon that reserved died) is reaped
//! by whichever daemon finds it: the reserved amount stays spent and the concurrency slot
//! is released. Nothing stays reserved forever.

mod redis_store;
mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

/// A budget's window: a fixed length, or the calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Every(u64),
    Month,
}

impl Period {
    /// `"2s"`, `"500ms"`, `"15m"`, `"1h"`, `"1d"`, `"30d"` or `"month"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("month") {
            return Ok(Self::Month);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| {
            format!("period {text:?}: expected e.g. \"1h\", \"1d\", \"30d\" or \"month\"")
        })?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "period {text:?}: unit must be ms, s, m, h, d or month"
                ));
            }
        };
        match n.checked_mul(ms) {
            Some(len) if len > 0 => Ok(Self::Every(len)),
            _ => Err(format!("period {text:?} must be positive")),
        }
    }

    /// The window `now_ms` falls in: `[start, end)`.
    pub fn window(self, now_ms: u64) -> (u64, u64) {
        match self {
            Self::Every(len) => {
                let start = now_ms - now_ms % len;
                (start, start + len)
            }
            Self::Month => month_window(now_ms),
        }
    }
}

/// The UTC calendar month holding `now_ms`.
fn month_window(now_ms: u64) -> (u64, u64) {
    let days = (now_ms / 86_400_000) as i64;
    let (y, m, _) = civil_from_days(days);
    let start = days_from_civil(y, m, 1);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = days_from_civil(ny, nm, 1);
    (start as u64 * 86_400_000, end as u64 * 86_400_000)
}

// Howard Hinnant's civil-date algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (year, month, day) of a day count since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An amount of budget.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amount {
    pub tokens: u64,
    pub time_ms: u64,
    pub cost: f64,
}

/// One budget a reservation must fit: an account (`key:<name>`, `session:<owner>/<id>`,
/// `model:<key>/<model>`) with its caps and window.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub account: String,
    pub tokens: Option<u64>,
    pub time_ms: Option<u64>,
    pub cost: Option<f64>,
    pub period: Option<Period>,
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.tokens.is_none() && self.time_ms.is_none() && self.cost.is_none()
    }

    /// The window the account's spend is counted in (`0` for a budget with no period).
    pub fn window(&self, now_ms: u64) -> (u64, Option<u64>) {
        match self.period {
            Some(p) => {
                let (start, end) = p.window(now_ms);
                (start, Some(end))
            }
            None => (0, None),
        }
    }
}

/// Per-key rate limits, counted in fixed windows of `window_ms` shared by every daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// The limited principal (`key:<name>` or `group:<name>`).
    pub subject: String,
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub concurrent: Option<u64>,
    pub window_ms: u64,
}

impl RateState {
    /// Of two limits' states, the one a client runs into first: fewer requests left, then
    /// fewer tokens left (what `X-RateLimit-*` report when several limits apply).
    pub fn tighter(self, other: RateState) -> RateState {
        let key = |s: &RateState| {
            (
                s.requests_left.unwrap_or(u64::MAX),
                s.tokens_left.unwrap_or(u64::MAX),
            )
        };
        if key(&other) < key(&self) {
            other
        } else {
            self
        }
    }

    /// `rate`'s state with `requests` and `tokens` counted in its window, plus this
    /// request's own if `charged`.
    pub fn of(
        rate: &RateLimit,
        requests: u64,
        tokens: u64,
        rate_tokens: u64,
        charged: bool,
        reset_ms: u64,
    ) -> Self {
        let (req, tok) = if charged {
            (requests + 1, tokens + rate_tokens)
        } else {
            (requests, tokens)
        };
        RateState {
            requests_limit: rate.requests,
            requests_left: rate.requests.map(|l| l.saturating_sub(req)),
            tokens_limit: rate.tokens,
            tokens_left: rate.tokens.map(|l| l.saturating_sub(tok)),
            reset_ms,
        }
    }
}

/// One atomic reservation.
#[derive(Debug, Clone)]
pub struct ReserveOp<'a> {
    /// The reservation's id (the task id): what `settle` names.
    pub id: &'a str,
    pub budgets: &'a [Budget],
    pub amount: Amount,
    /// The rate limits that apply (the key's, its tenant group's); each is charged.
    pub rates: &'a [RateLimit],
    /// Tokens charged against the tokens-per-window limits (corrected at settle).
    pub rate_tokens: u64,
    pub now_ms: u64,
    /// The reservation is reaped (settled at its reserved amount) after this long.
    pub lease_ms: u64,
}

/// What a rate limit looked like at this admission (for `X-RateLimit-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateState {
    pub requests_limit: Option<u64>,
    pub requests_left: Option<u64>,
    pub tokens_limit: Option<u64>,
    pub tokens_left: Option<u64>,
    /// When the current window ends.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Reserved; what each budget has left afterwards (in `budgets` order), and the rate
    /// limit's state.
    Reserved { left: Vec<Amount>, rate: RateState },
    /// A budget would be overdrawn: `retry_after_ms` is the time to its window's end (`None`
    /// for a budget without a period, which never resets).
    OverBudget {
        account: String,
        what: &'static str,
        retry_after_ms: Option<u64>,
    },
    /// A rate limit: `limit` is `requests`, `tokens` or `concurrent`, of `subject`
    /// (`key:<name>` or `group:<name>`).
    OverRate {
        subject: String,
        limit: &'static str,
        retry_after_ms: u64,
        rate: RateState,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

/// What bounds sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub ttl_ms: u64,
    pub max_turns: u32,
    pub max_sessions: u64,
}

/// The outcome of counting a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The turn's number (1 for a new session).
    Counted(u32),
    CapReached(u32),
    TableFull(u64),
}

/// A task in the directory every daemon sharing the store reads: who owns it (its key and
/// the daemon running it, with that daemon's internal address) and its last status.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    /// The API key (principal name) that created it.
    pub owner: String,
    /// The daemon instance running it, and where other daemons relay its requests.
    pub daemon: String,
    pub addr: String,
    /// `TaskStatus` as JSON (the last one written: at admission, then at its end).
    pub status: String,
    pub terminal: bool,
}

/// Where the answer to a call handed over without waiting goes (see the `*_then` methods).
pub type Then<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// A call handed to the store and not yet answered: await [`Pending::wait`]. The call is
/// queued when the `Pending` is made, so its place in the store's order is fixed then.
pub struct Pending<T>(tokio::sync::oneshot::Receiver<Result<T, StoreError>>);

impl<T: Send + 'static> Pending<T> {
    /// Starts a call: `start` hands the store its [`Then`].
    pub fn begin(start: impl FnOnce(Then<T>)) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        start(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        Self(rx)
    }

    /// The answer, without blocking the thread (a tokio worker stays free meanwhile).
    pub async fn wait(self) -> Result<T, StoreError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(StoreError("the state store dropped the call".into())))
    }
}

/// A [`ReserveOp`] that owns its parts: for a call answered later ([`Store::reserve_then`]).
#[derive(Debug, Clone)]
pub struct ReserveJob {
    pub id: String,
    pub budgets: Vec<Budget>,
    pub amount: Amount,
    pub rates: Vec<RateLimit>,
    pub rate_tokens: u64,
    pub now_ms: u64,
    pub lease_ms: u64,
}

impl ReserveJob {
    pub fn op(&self) -> ReserveOp<'_> {
        ReserveOp {
            id: &self.id,
            budgets: &self.budgets,
            amount: self.amount,
            rates: &self.rates,
            rate_tokens: self.rate_tokens,
            now_ms: self.now_ms,
            lease_ms: self.lease_ms,
        }
    }
}

/// The backends' common interface. Calls block (SQLite on disk, Redis on the network):
/// callers on async workers wrap them in `block_in_place`, or use the `*_then` forms of
/// the calls on the request path, which a backend with its own thread (SQLite) answers
/// from there, so no worker waits.
pub trait Store: Send + Sync {
    /// Spend so far in each budget's current window (`budgets` order).
    fn spent(&self, budgets: &[Budget], now_ms: u64) -> Result<Vec<Amount>, StoreError>;
    fn reserve(&self, op: &ReserveOp<'_>) -> Result<Decision, StoreError>;
    /// Applies the actual amount in place of the reserved one and releases the
    /// concurrency slot; `false` if there was no such reservation (already settled or
    /// reaped): exactly once.
    fn settle(&self, id: &str, actual: Amount, rate_tokens: u64) -> Result<bool, StoreError>;
    /// Reaps reservations whose lease expired: their reserved amount stays spent.
    fn reap(&self, now_ms: u64) -> Result<usize, StoreError>;
    fn ping(&self) -> Result<(), StoreError>;
    fn name(&self) -> &'static str;

    /// Counts one more turn of session `key` (`<owner>/<id>`), creating it (or restarting
    /// an expired one); refused past `max_turns`, or for a new session past
    /// `max_sessions` live ones.
    fn session_turn(
        &self,
        key: &str,
        limits: SessionLimits,
        now_ms: u64,
    ) -> Result<Turn, StoreError>;
    /// Gives back a turn; a session left with none is removed (a refused first request
    /// leaves nothing).
    fn session_untake(&self, key: &str) -> Result<(), StoreError>;
    /// `(turns, ms of TTL left)` of a live session; `touch` renews its TTL.
    fn session_get(
        &self,
        key: &str,
        ttl_ms: u64,
        touch: bool,
        now_ms: u64,
    ) -> Result<Option<(u32, u64)>, StoreError>;
    fn session_remove(&self, key: &str) -> Result<bool, StoreError>;
    /// Forgets sessions not used since `before_ms` (Redis expires its own).
    fn session_sweep(&self, before_ms: u64) -> Result<usize, StoreError>;

    /// Writes a task's record: a terminal one replaces any and is kept `keep_ms` (the
    /// retention period); a live one is written only if there is none.
    fn put_task(
        &self,
        rec: &TaskRecord,
        keep_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError>;

    /// Waits until every write queued without waiting (`*_then`, `*_detached`) is done.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`session_turn`](Self::session_turn), answered through `then`. The default blocks
    /// (`block_in_place` on a worker) and answers before returning.
    fn session_turn_then(&self, key: String, limits: SessionLimits, now_ms: u64, then: Then<Turn>) {
        then(crate::budget::blocking(|| {
            self.session_turn(&key, limits, now_ms)
        }));
    }

    /// [`spent`](Self::spent), answered through `then` (the default blocks).
    fn spent_then(&self, budgets: Vec<Budget>, now_ms: u64, then: Then<Vec<Amount>>) {
        then(crate::budget::blocking(|| self.spent(&budgets, now_ms)));
    }

    /// [`reserve`](Self::reserve), answered through `then` (the default blocks).
    fn reserve_then(&self, job: ReserveJob, then: Then<Decision>) {
        then(crate::budget::blocking(|| self.reserve(&job.op())));
    }

    /// [`put_task`](Self::put_task), answered through `then` (the default blocks).
    fn put_task_then(&self, rec: TaskRecord, keep_ms: Option<u64>, now_ms: u64, then: Then<()>) {
        then(crate::budget::blocking(|| {
            self.put_task(&rec, keep_ms, now_ms)
        }));
    }

    /// [`settle`](Self::settle), answered through `then` (the default blocks).
    fn settle_then(&self, id: String, actual: Amount, rate_tokens: u64, then: Then<bool>) {
        then(crate::budget::blocking(|| {
            self.settle(&id, actual, rate_tokens)
        }));
    }

    /// [`put_task`](Self::put_task) that nobody waits for (a failure is logged).
    fn put_task_detached(&self, rec: TaskRecord, keep_ms: Option<u64>, now_ms: u64) {
        let id = rec.id.clone();
        self.put_task_then(
            rec,
            keep_ms,
            now_ms,
            Box::new(move |r| {
                if let Err(e) = r {
                    tracing::warn!(task_id = %id, error = %e, "a task record was not written to the state store");
                }
            }),
        );
    }
    fn get_task(&self, id: &str, now_ms: u64) -> Result<Option<TaskRecord>, StoreError>;
    /// Says daemon `id` (at `addr`) is alive until `until_ms`.
    /// A secret every daemon sharing the store uses (`name`): the stored one, or `fresh`
    /// stored now if there is none (the first daemon's wins).
    fn shared_secret(&self, name: &str, fresh: &str) -> Result<String, StoreError>;
    /// Pools created through the API: their definitions (JSON), by id.
    fn put_pool(&self, id: &str, definition: &str) -> Result<(), StoreError>;
    fn delete_pool(&self, id: &str) -> Result<bool, StoreError>;
    fn list_pools(&self) -> Result<Vec<(String, String)>, StoreError>;
    fn heartbeat(&self, id: &str, addr: &str, until_ms: u64) -> Result<(), StoreError>;
    /// Whether daemon `id` has said it is alive past `now_ms`.
    fn daemon_alive(&self, id: &str, now_ms: u64) -> Result<bool, StoreError>;
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a budget has left after `spent` (`None` fields: unlimited).
pub fn left_of(b: &Budget, spent: &Amount) -> (Option<u64>, Option<u64>, Option<f64>) {
    (
        b.tokens.map(|t| t.saturating_sub(spent.tokens)),
        b.time_ms.map(|t| t.saturating_sub(spent.time_ms)),
        b.cost.map(|c| (c - spent.cost).max(0.0)),
    )
}

/// The check both backends apply (SQLite in Rust, Redis in the same order in Lua): the
/// first budget or limit the reservation would overdraw.
pub(crate) fn over_budget(
    budgets: &[Budget],
    spent: &[Amount],
    amount: &Amount,
    now_ms: u64,
) -> Option<Decision> {
    for (b, s) in budgets.iter().zip(spent) {
        let what = if b.tokens.is_some_and(|cap| s.tokens + amount.tokens > cap) {
            "tokens"
        } else if b
            .time_ms
            .is_some_and(|cap| s.time_ms + amount.time_ms > cap)
        {
            "time"
        } else if b.cost.is_some_and(|cap| s.cost + amount.cost > cap + 1e-9) {
            "cost"
        } else {
            continue;
        };
        return Some(Decision::OverBudget {
            account: b.account.clone(),
            what,
            retry_after_ms: b
                .window(now_ms)
                .1
                .map(|end| end.saturating_sub(now_ms).max(1)),
        });
    }
    None
}

/// A store that says whether its last call reached the backend: `/readyz` reads it, and
/// the log and `state_store_up` say when that changes (once, not per call).
pub struct Observed {
    inner: Box<dyn Store>,
    up: Arc<AtomicBool>,
}

/// Notes whether a call reached the backend: logs and `state_store_up` change only when
/// that changes.
fn note<T>(
    up: &AtomicBool,
    store: &'static str,
    r: Result<T, StoreError>,
) -> Result<T, StoreError> {
    let ok = r.is_ok();
    let was = up.swap(ok, Ordering::AcqRel);
    match (&r, was) {
        (Err(e), true) => {
            tracing::error!(store, error = %e, "state store unreachable: admissions that need it are refused (503) until it is back");
        }
        (Ok(_), false) => {
            tracing::info!(store, "state store reachable again");
        }
        _ => {}
    }
    if ok != was {
        crate::metrics::state_store_up(store, ok);
    }
    r
}

impl Observed {
    pub fn new(inner: Box<dyn Store>) -> Self {
        crate::metrics::state_store_up(inner.name(), true);
        Self {
            inner,
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn seen<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        note(&self.up, self.inner.name(), r)
    }

    /// `then`, noting on the way whether the call reached the backend.
    fn seeing<T: 'static>(&self, then: Then<T>) -> Then<T> {
        let (up, name) = (Arc::clone(&self.up), self.inner.name());
        Box::new(move |r| then(note(&up, name, r)))
    }
}

impl Store for Observed {
    fn spent(&self, budgets: &[Budget], now_ms: u64) -> Result<Vec<Amount>, StoreError> {
        self.seen(self.inner.spent(budgets, now_ms))
    }
    fn reserve(&self, op: &ReserveOp<'_>) -> Result<Decision, StoreError> {
        self.seen(self.inner.reserve(op))
    }
    fn settle(&self, id: &str, actual: Amount, rate_tokens: u64) -> Result<bool, StoreError> {
        self.seen(self.inner.settle(id, actual, rate_tokens))
    }
    fn reap(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.seen(self.inner.reap(now_ms))
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.seen(self.inner.ping())
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn session_turn(
        &self,
        key: &str,
        limits: SessionLimits,
        now_ms: u64,
    ) -> Result<Turn, StoreError> {
        self.seen(self.inner.session_turn(key, limits, now_ms))
    }
    fn session_untake(&self, key: &str) -> Result<(), StoreError> {
        self.seen(self.inner.session_untake(key))
    }
    fn session_get(
        &self,
        key: &str,
        ttl_ms: u64,
        touch: bool,
        now_ms: u64,
    ) -> Result<Option<(u32, u64)>, StoreError> {
        self.seen(self.inner.session_get(key, ttl_ms, touch, now_ms))
    }
    fn session_remove(&self, key: &str) -> Result<bool, StoreError> {
        self.seen(self.inner.session_remove(key))
    }
    fn session_sweep(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.seen(self.inner.session_sweep(before_ms))
    }
    fn put_task(
        &self,
        rec: &TaskRecord,
        keep_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.seen(self.inner.put_task(rec, keep_ms, now_ms))
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn session_turn_then(&self, key: String, limits: SessionLimits, now_ms: u64, then: Then<Turn>) {
        self.inner
            .session_turn_then(key, limits, now_ms, self.seeing(then));
    }
    fn spent_then(&self, budgets: Vec<Budget>, now_ms: u64, then: Then<Vec<Amount>>) {
        self.inner.spent_then(budgets, now_ms, self.seeing(then));
    }
    fn reserve_then(&self, job: ReserveJob, then: Then<Decision>) {
        self.inner.reserve_then(job, self.seeing(then));
    }
    fn put_task_then(&self, rec: TaskRecord, keep_ms: Option<u64>, now_ms: u64, then: Then<()>) {
        self.inner
            .put_task_then(rec, keep_ms, now_ms, self.seeing(then));
    }
    fn settle_then(&self, id: String, actual: Amount, rate_tokens: u64, then: Then<bool>) {
        self.inner
            .settle_then(id, actual, rate_tokens, self.seeing(then));
    }

    fn get_task(&self, id: &str, now_ms: u64) -> Result<Option<TaskRecord>, StoreError> {
        self.seen(self.inner.get_task(id, now_ms))
    }
    fn shared_secret(&self, name: &str, fresh: &str) -> Result<String, StoreError> {
        self.seen(self.inner.shared_secret(name, fresh))
    }

    fn put_pool(&self, id: &str, definition: &str) -> Result<(), StoreError> {
        self.seen(self.inner.put_pool(id, definition))
    }

    fn delete_pool(&self, id: &str) -> Result<bool, StoreError> {
        self.seen(self.inner.delete_pool(id))
    }

    fn list_pools(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.seen(self.inner.list_pools())
    }

    fn heartbeat(&self, id: &str, addr: &str, until_ms: u64) -> Result<(), StoreError> {
        self.seen(self.inner.heartbeat(id, addr, until_ms))
    }
    fn daemon_alive(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.seen(self.inner.daemon_alive(id, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_windows_align() {
        assert_eq!(Period::parse("1h"), Ok(Period::Every(3_600_000)));
        assert_eq!(Period::parse("30d"), Ok(Period::Every(30 * 86_400_000)));
        assert_eq!(Period::parse("2s"), Ok(Period::Every(2_000)));
        assert_eq!(Period::parse("month"), Ok(Period::Month));
        assert!(Period::parse("0s").is_err());
        assert!(Period::parse("1y").is_err());
        assert!(Period::parse("h").is_err());
        assert_eq!(Period::Every(1000).window(12_345), (12_000, 13_000));
        // 2026-12-01T03:00:00Z lies in December 2026; the next window is January 2027.
        let now = 1_796_094_000_000;
        let (start, end) = Period::Month.window(now);
        assert_eq!(start, 1_796_083_200_000, "2026-12-01T00:00:00Z");
        assert_eq!(end, 1_798_761_600_000, "2027-01-01T00:00:00Z");
        // February of a leap year.
        let (s, e) = Period::Month.window(1_709_251_200_000 - 1);
        assert_eq!((e - s) / 86_400_000, 29, "February 2024");
    }
}
