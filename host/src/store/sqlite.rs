//! The embedded backend: one SQLite file in WAL mode, owned by one thread. Callers hand
//! it operations and wait for the answer; no request holds a lock while SQLite runs. The
//! thread takes every operation waiting and runs them in one `BEGIN IMMEDIATE`
//! transaction, each inside its own savepoint (a failing one is rolled back alone), and
//! answers after the commit (group commit: one commit for a burst of admissions). Daemons
//! sharing the file (one host) are as safe as operations of one daemon. A committed
//! transaction survives `kill -9` (`synchronous = NORMAL` loses at most the last commits
//! on power loss, never on a crash of the process).

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Amount, Budget, Decision, RateState, ReserveJob, ReserveOp, SessionLimits, Store, StoreError,
    TaskRecord, Then, Turn, over_budget,
};

pub struct SqliteStore {
    /// Where operations go to the thread that owns the connection.
    jobs: mpsc::Sender<Job>,
}

/// Operations one transaction takes at most.
const MAX_BATCH: usize = 256;

/// What the owning thread runs: the operation (given the connection, or why there is no
/// transaction), which hands back what to do once the transaction's fate is known.
type Job = Box<dyn FnOnce(Result<&Connection, StoreError>) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The owning thread: one transaction per burst of operations, answers after the commit.
fn serve(conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = run(&conn, "BEGIN IMMEDIATE", []).map(|_| ()).map_err(err);
        let answers: Vec<Answer> = batch
            .into_iter()
            .map(|job| job(begun.as_ref().map(|()| &conn).map_err(Clone::clone)))
            .collect();
        let committed = match begun {
            Err(e) => Err(e),
            Ok(()) => run(&conn, "COMMIT", []).map(|_| ()).map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                err(format!("commit: {e}"))
            }),
        };
        for answer in answers {
            answer(committed.clone());
        }
    }
}

/// Runs `f` inside a savepoint: its writes stay only if it succeeds.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run(conn, "SAVEPOINT op", []).map_err(err)?;
    let result = f(conn);
    if result.is_err() {
        run(conn, "ROLLBACK TO op", []).map_err(err)?;
    }
    run(conn, "RELEASE op", []).map_err(err)?;
    result
}

/// Runs a statement from the connection's cache of prepared statements (each is parsed
/// once per connection, not once per call).
fn run(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// One row of a cached statement.
fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// A session's `(turns, last_used)`, if it has a row.
fn session_row(conn: &Connection, key: &str) -> Result<Option<(i64, i64)>, StoreError> {
    one(
        conn,
        "SELECT turns, last_used FROM sessions WHERE key = ?1",
        params![key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(err)
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// A usage row's key: the counters of rate limits live beside the budgets.
fn rate_account(kind: &str, subject: &str) -> String {
    format!("{kind}:{subject}")
}

/// A rate limit a reservation charged: subject, window, tokens charged, and whether it
/// counts a running task.
#[derive(serde::Serialize, serde::Deserialize)]
struct RateEntry {
    s: String,
    w: u64,
    t: u64,
    c: bool,
}

/// The rate limits of a reservation row: the `rates` list, or the one limit of a row
/// written before tenant groups (`rate_subject`, `rate_window`, `rate_tokens`,
/// `concurrent`).
fn rate_entries(
    rates: Option<String>,
    subject: Option<String>,
    window: i64,
    tokens: i64,
    concurrent: i64,
) -> Result<Vec<RateEntry>, StoreError> {
    match (rates, subject) {
        (Some(list), _) => serde_json::from_str(&list).map_err(err),
        (None, Some(s)) => Ok(vec![RateEntry {
            s,
            w: window as u64,
            t: tokens as u64,
            c: concurrent != 0,
        }]),
        (None, None) => Ok(Vec::new()),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    a: String,
    w: u64,
    t: u64,
    ms: u64,
    c: f64,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|()| conn.busy_timeout(std::time::Duration::from_secs(5)))
            .and_then(|()| {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS usage (
                         account TEXT NOT NULL, window INTEGER NOT NULL,
                         tokens INTEGER NOT NULL DEFAULT 0, time_ms INTEGER NOT NULL DEFAULT 0,
                         cost REAL NOT NULL DEFAULT 0, expires INTEGER,
                         PRIMARY KEY (account, window)) WITHOUT ROWID;
                     CREATE TABLE IF NOT EXISTS reservations (
                         id TEXT PRIMARY KEY, entries TEXT NOT NULL,
                         rate_subject TEXT, rate_window INTEGER NOT NULL DEFAULT 0,
                         rate_tokens INTEGER NOT NULL DEFAULT 0,
                         concurrent INTEGER NOT NULL DEFAULT 0,
                         lease_until INTEGER NOT NULL);
                     CREATE INDEX IF NOT EXISTS reservations_by_lease
                         ON reservations (lease_until);
                     CREATE TABLE IF NOT EXISTS tasks (
                         id TEXT PRIMARY KEY, owner TEXT NOT NULL, daemon TEXT NOT NULL,
                         addr TEXT NOT NULL, status TEXT NOT NULL,
                         terminal INTEGER NOT NULL, expires INTEGER);
                     CREATE INDEX IF NOT EXISTS tasks_by_expiry ON tasks (expires);
                     CREATE TABLE IF NOT EXISTS sessions (
                         key TEXT PRIMARY KEY, turns INTEGER NOT NULL,
                         last_used INTEGER NOT NULL);
                     CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions (last_used);
                     -- Rows in `sessions` (live or expired and not yet swept), kept by
                     -- triggers: the cap is checked by counting only when this reaches it.
                     CREATE TABLE IF NOT EXISTS session_rows (n INTEGER NOT NULL);
                     INSERT INTO session_rows (n) SELECT count(*) FROM sessions
                         WHERE NOT EXISTS (SELECT 1 FROM session_rows);
                     CREATE TRIGGER IF NOT EXISTS session_added AFTER INSERT ON sessions
                         BEGIN UPDATE session_rows SET n = n + 1; END;
                     CREATE TRIGGER IF NOT EXISTS session_gone AFTER DELETE ON sessions
                         BEGIN UPDATE session_rows SET n = n - 1; END;
                     CREATE TABLE IF NOT EXISTS secrets (
                         name TEXT PRIMARY KEY, value TEXT NOT NULL);
                     CREATE TABLE IF NOT EXISTS pools (
                         id TEXT PRIMARY KEY, definition TEXT NOT NULL);
                     CREATE TABLE IF NOT EXISTS daemons (
                         id TEXT PRIMARY KEY, addr TEXT NOT NULL,
                         alive_until INTEGER NOT NULL);",
                )
            })
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        // Files from before tenant groups: reservations charged one rate limit, in the
        // columns above; now a list of them.
        if conn
            .prepare("SELECT rates FROM reservations LIMIT 0")
            .is_err()
        {
            conn.execute_batch("ALTER TABLE reservations ADD COLUMN rates TEXT")
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
        }
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("orchd-state-sqlite".into())
            .spawn(move || serve(conn, queue))
            .map_err(|e| err(format!("start the store's thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the store's thread, in the next transaction, and waits for its answer
    /// (given only once that transaction committed).
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.call_then(
            f,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| err("the store's thread has ended"))?
    }

    /// Queues `f` for the next transaction and returns at once: the store's thread hands
    /// `then` the answer once that transaction committed (or failed).
    fn call_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        then: Then<T>,
    ) {
        let job: Job = Box::new(move |conn| {
            let result = conn.and_then(|c| in_savepoint(c, f));
            Box::new(move |committed| then(committed.and(result)))
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // The thread is gone: the job's answer says so.
            job(Err(err("the store's thread has ended")))(Err(err("the store's thread has ended")));
        }
    }
}

fn read(conn: &Connection, account: &str, window: u64) -> rusqlite::Result<Amount> {
    Ok(one(
        conn,
        "SELECT tokens, time_ms, cost FROM usage WHERE account = ?1 AND window = ?2",
        params![account, window as i64],
        |r| {
            Ok(Amount {
                tokens: r.get::<_, i64>(0)? as u64,
                time_ms: r.get::<_, i64>(1)? as u64,
                cost: r.get(2)?,
            })
        },
    )
    .optional()?
    .unwrap_or_default())
}

/// Adds a signed delta to a usage row, never below zero.
fn add(
    conn: &Connection,
    account: &str,
    window: u64,
    expires: Option<u64>,
    tokens: i64,
    time_ms: i64,
    cost: f64,
) -> rusqlite::Result<()> {
    run(
        conn,
        "INSERT INTO usage (account, window, tokens, time_ms, cost, expires)
         VALUES (?1, ?2, MAX(0, ?3), MAX(0, ?4), MAX(0.0, ?5), ?6)
         ON CONFLICT (account, window) DO UPDATE SET
             tokens = MAX(0, tokens + ?3), time_ms = MAX(0, time_ms + ?4),
             cost = MAX(0.0, cost + ?5)",
        params![
            account,
            window as i64,
            tokens,
            time_ms,
            cost,
            expires.map(|e| e as i64)
        ],
    )?;
    Ok(())
}

impl Store for SqliteStore {
    fn spent(&self, budgets: &[Budget], now_ms: u64) -> Result<Vec<Amount>, StoreError> {
        let windows: Vec<(String, u64)> = budgets
            .iter()
            .map(|b| (b.account.clone(), b.window(now_ms).0))
            .collect();
        self.call(move |conn| {
            windows
                .iter()
                .map(|(account, window)| read(conn, account, *window).map_err(err))
                .collect()
        })
    }

    fn reserve(&self, op: &ReserveOp<'_>) -> Result<Decision, StoreError> {
        let id = op.id.to_owned();
        let budgets = op.budgets.to_vec();
        let rates = op.rates.to_vec();
        let (amount, rate_tokens, now_ms, lease_ms) =
            (op.amount, op.rate_tokens, op.now_ms, op.lease_ms);
        self.call(move |tx| {
            reserve_in(
                tx,
                &ReserveOp {
                    id: &id,
                    budgets: &budgets,
                    amount,
                    rates: &rates,
                    rate_tokens,
                    now_ms,
                    lease_ms,
                },
            )
        })
    }

    fn settle(&self, id: &str, actual: Amount, rate_tokens: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |tx| settle_in(tx, &id, actual, rate_tokens))
    }

    fn reap(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.call(move |tx| reap_in(tx, now_ms))
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.call(|conn| one(conn, "SELECT 1", [], |_| Ok(())).map_err(err))
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn session_turn(
        &self,
        key: &str,
        limits: SessionLimits,
        now_ms: u64,
    ) -> Result<Turn, StoreError> {
        let key = key.to_owned();
        self.call(move |tx| session_turn_in(tx, &key, limits, now_ms))
    }

    fn session_untake(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.call(move |conn| {
            let key = key.as_str();
            run(
                conn,
                "UPDATE sessions SET turns = turns - 1 WHERE key = ?1 AND turns > 0",
                params![key],
            )
            .and_then(|_| {
                run(
                    conn,
                    "DELETE FROM sessions WHERE key = ?1 AND turns <= 0",
                    params![key],
                )
            })
            .map(|_| ())
            .map_err(err)
        })
    }

    fn session_get(
        &self,
        key: &str,
        ttl_ms: u64,
        touch: bool,
        now_ms: u64,
    ) -> Result<Option<(u32, u64)>, StoreError> {
        let key = key.to_owned();
        self.call(move |conn| {
            let key = key.as_str();
            let row: Option<(i64, i64)> = session_row(conn, key)?;
            let Some((turns, last_used)) = row else {
                return Ok(None);
            };
            let age = now_ms.saturating_sub(last_used as u64);
            if age > ttl_ms {
                return Ok(None);
            }
            if touch {
                run(
                    conn,
                    "UPDATE sessions SET last_used = ?2 WHERE key = ?1",
                    params![key, now_ms as i64],
                )
                .map_err(err)?;
                return Ok(Some((turns as u32, ttl_ms)));
            }
            Ok(Some((turns as u32, ttl_ms - age)))
        })
    }

    fn session_remove(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.call(move |conn| {
            run(conn, "DELETE FROM sessions WHERE key = ?1", params![key])
                .map(|n| n > 0)
                .map_err(err)
        })
    }

    fn session_sweep(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.call(move |conn| {
            run(
                conn,
                "DELETE FROM sessions WHERE last_used < ?1",
                params![before_ms as i64],
            )
            .map_err(err)
        })
    }

    fn put_task(
        &self,
        rec: &TaskRecord,
        keep_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.call(move |conn| put_task_in(conn, &rec, keep_ms, now_ms))
    }

    /// The store's thread takes operations in order: an empty one answered means every
    /// one queued before it is committed.
    fn flush(&self) -> Result<(), StoreError> {
        self.call(|_| Ok(()))
    }

    fn spent_then(&self, budgets: Vec<Budget>, now_ms: u64, then: Then<Vec<Amount>>) {
        self.call_then(
            move |conn| {
                budgets
                    .iter()
                    .map(|b| read(conn, &b.account, b.window(now_ms).0).map_err(err))
                    .collect()
            },
            then,
        );
    }

    fn reserve_then(&self, job: ReserveJob, then: Then<Decision>) {
        self.call_then(move |tx| reserve_in(tx, &job.op()), then);
    }

    fn session_turn_then(&self, key: String, limits: SessionLimits, now_ms: u64, then: Then<Turn>) {
        self.call_then(move |tx| session_turn_in(tx, &key, limits, now_ms), then);
    }

    fn put_task_then(&self, rec: TaskRecord, keep_ms: Option<u64>, now_ms: u64, then: Then<()>) {
        self.call_then(move |conn| put_task_in(conn, &rec, keep_ms, now_ms), then);
    }

    fn settle_then(&self, id: String, actual: Amount, rate_tokens: u64, then: Then<bool>) {
        self.call_then(move |tx| settle_in(tx, &id, actual, rate_tokens), then);
    }

    fn get_task(&self, id: &str, now_ms: u64) -> Result<Option<TaskRecord>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            one(
                conn,
                "SELECT owner, daemon, addr, status, terminal FROM tasks
                 WHERE id = ?1 AND (expires IS NULL OR expires >= ?2)",
                params![id, now_ms as i64],
                |r| {
                    Ok(TaskRecord {
                        id: id.clone(),
                        owner: r.get(0)?,
                        daemon: r.get(1)?,
                        addr: r.get(2)?,
                        status: r.get(3)?,
                        terminal: r.get::<_, i64>(4)? != 0,
                    })
                },
            )
            .optional()
            .map_err(err)
        })
    }

    fn shared_secret(&self, name: &str, fresh: &str) -> Result<String, StoreError> {
        let (name, fresh) = (name.to_owned(), fresh.to_owned());
        self.call(move |conn| {
            run(
                conn,
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                params![name, fresh],
            )
            .map_err(err)?;
            one(
                conn,
                "SELECT value FROM secrets WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(err)
        })
    }

    fn put_pool(&self, id: &str, definition: &str) -> Result<(), StoreError> {
        let (id, definition) = (id.to_owned(), definition.to_owned());
        self.call(move |conn| {
            run(
                conn,
                "INSERT OR REPLACE INTO pools (id, definition) VALUES (?1, ?2)",
                params![id, definition],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn delete_pool(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            run(conn, "DELETE FROM pools WHERE id = ?1", params![id])
                .map(|n| n > 0)
                .map_err(err)
        })
    }

    fn list_pools(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.call(|conn| {
            let mut q = conn
                .prepare("SELECT id, definition FROM pools ORDER BY id")
                .map_err(err)?;
            let rows = q
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(err)
        })
    }

    fn heartbeat(&self, id: &str, addr: &str, until_ms: u64) -> Result<(), StoreError> {
        let (id, addr) = (id.to_owned(), addr.to_owned());
        self.call(move |conn| {
            run(
                conn,
                "INSERT OR REPLACE INTO daemons (id, addr, alive_until) VALUES (?1, ?2, ?3)",
                params![id, addr, until_ms as i64],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn daemon_alive(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            one(
                conn,
                "SELECT alive_until >= ?2 FROM daemons WHERE id = ?1",
                params![id, now_ms as i64],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .map(|alive| alive.unwrap_or(false))
            .map_err(err)
        })
    }
}

fn reserve_in(tx: &Connection, op: &ReserveOp<'_>) -> Result<Decision, StoreError> {
    let spent: Vec<Amount> = op
        .budgets
        .iter()
        .map(|b| read(tx, &b.account, b.window(op.now_ms).0))
        .collect::<rusqlite::Result<_>>()
        .map_err(err)?;
    if let Some(denied) = over_budget(op.budgets, &spent, &op.amount, op.now_ms) {
        return Ok(denied);
    }
    // Every limit is checked before any is charged.
    let mut rate_state: Option<RateState> = None;
    let mut charged = Vec::with_capacity(op.rates.len());
    for rate in op.rates {
        let window = rate.window_ms.max(1);
        let rate_window = op.now_ms - op.now_ms % window;
        let reset = rate_window + window;
        let requests = read(tx, &rate_account("rpm", &rate.subject), rate_window)
            .map_err(err)?
            .tokens;
        let tokens = read(tx, &rate_account("tpm", &rate.subject), rate_window)
            .map_err(err)?
            .tokens;
        let running = read(tx, &rate_account("conc", &rate.subject), 0)
            .map_err(err)?
            .tokens;
        let to_reset = reset.saturating_sub(op.now_ms).max(1);
        let over = if rate.requests.is_some_and(|l| requests + 1 > l) {
            Some(("requests", to_reset))
        } else if rate.tokens.is_some_and(|l| tokens + op.rate_tokens > l) {
            Some(("tokens", to_reset))
        } else if rate.concurrent.is_some_and(|l| running + 1 > l) {
            Some(("concurrent", 1_000))
        } else {
            None
        };
        if let Some((limit, retry_after_ms)) = over {
            return Ok(Decision::OverRate {
                subject: rate.subject.clone(),
                limit,
                retry_after_ms,
                rate: RateState::of(rate, requests, tokens, op.rate_tokens, false, reset),
            });
        }
        let state = RateState::of(rate, requests, tokens, op.rate_tokens, true, reset);
        rate_state = Some(rate_state.map_or(state, |s| s.tighter(state)));
        charged.push((rate, rate_window, reset));
    }
    let mut rate_entries = Vec::with_capacity(charged.len());
    for (rate, rate_window, reset) in charged {
        let expires = Some(reset);
        if rate.requests.is_some() {
            add(
                tx,
                &rate_account("rpm", &rate.subject),
                rate_window,
                expires,
                1,
                0,
                0.0,
            )
            .map_err(err)?;
        }
        if rate.tokens.is_some() {
            add(
                tx,
                &rate_account("tpm", &rate.subject),
                rate_window,
                expires,
                op.rate_tokens as i64,
                0,
                0.0,
            )
            .map_err(err)?;
        }
        if rate.concurrent.is_some() {
            add(tx, &rate_account("conc", &rate.subject), 0, None, 1, 0, 0.0).map_err(err)?;
        }
        rate_entries.push(RateEntry {
            s: rate.subject.clone(),
            w: rate_window,
            t: if rate.tokens.is_some() {
                op.rate_tokens
            } else {
                0
            },
            c: rate.concurrent.is_some(),
        });
    }
    let mut entries = Vec::with_capacity(op.budgets.len());
    let mut left = Vec::with_capacity(op.budgets.len());
    for (b, s) in op.budgets.iter().zip(&spent) {
        let (window, end) = b.window(op.now_ms);
        add(
            tx,
            &b.account,
            window,
            end,
            op.amount.tokens as i64,
            op.amount.time_ms as i64,
            op.amount.cost,
        )
        .map_err(err)?;
        entries.push(Entry {
            a: b.account.clone(),
            w: window,
            t: op.amount.tokens,
            ms: op.amount.time_ms,
            c: op.amount.cost,
        });
        left.push(Amount {
            tokens: s.tokens + op.amount.tokens,
            time_ms: s.time_ms + op.amount.time_ms,
            cost: s.cost + op.amount.cost,
        });
    }
    run(
        tx,
        "INSERT INTO reservations (id, entries, rates, lease_until) VALUES (?1, ?2, ?3, ?4)",
        params![
            op.id,
            serde_json::to_string(&entries).expect("entries serialize"),
            serde_json::to_string(&rate_entries).expect("rate entries serialize"),
            (op.now_ms + op.lease_ms) as i64,
        ],
    )
    .map_err(|e| err(format!("reservation {}: {e}", op.id)))?;
    Ok(Decision::Reserved {
        left,
        rate: rate_state.unwrap_or_default(),
    })
}

fn settle_in(
    tx: &Connection,
    id: &str,
    actual: Amount,
    rate_tokens: u64,
) -> Result<bool, StoreError> {
    let row = one(
        tx,
        "SELECT entries, rate_subject, rate_window, rate_tokens, concurrent, rates
                 FROM reservations WHERE id = ?1",
        params![id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        },
    )
    .optional()
    .map_err(err)?;
    let Some((entries, subject, window, tokens, concurrent, rates)) = row else {
        return Ok(false);
    };
    let entries: Vec<Entry> = serde_json::from_str(&entries).map_err(err)?;
    for e in &entries {
        add(
            tx,
            &e.a,
            e.w,
            None,
            actual.tokens as i64 - e.t as i64,
            actual.time_ms as i64 - e.ms as i64,
            actual.cost - e.c,
        )
        .map_err(err)?;
    }
    for r in rate_entries(rates, subject, window, tokens, concurrent)? {
        if r.t > 0 {
            add(
                tx,
                &rate_account("tpm", &r.s),
                r.w,
                None,
                rate_tokens as i64 - r.t as i64,
                0,
                0.0,
            )
            .map_err(err)?;
        }
        if r.c {
            add(tx, &rate_account("conc", &r.s), 0, None, -1, 0, 0.0).map_err(err)?;
        }
    }
    run(tx, "DELETE FROM reservations WHERE id = ?1", params![id]).map_err(err)?;
    Ok(true)
}

fn reap_in(tx: &Connection, now_ms: u64) -> Result<usize, StoreError> {
    type Row = (String, Option<String>, i64, Option<String>);
    let expired: Vec<Row> = {
        let mut q = tx
            .prepare(
                "SELECT id, rate_subject, concurrent, rates FROM reservations WHERE lease_until < ?1",
            )
            .map_err(err)?;
        let rows = q
            .query_map(params![now_ms as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)?
    };
    // Spend stays at the reserved amount; only running-task counts are given back.
    for (id, subject, concurrent, rates) in expired.iter().cloned() {
        for r in rate_entries(rates, subject, 0, 0, concurrent)? {
            if r.c {
                add(tx, &rate_account("conc", &r.s), 0, None, -1, 0, 0.0).map_err(err)?;
            }
        }
        run(tx, "DELETE FROM reservations WHERE id = ?1", params![id]).map_err(err)?;
    }
    run(
        tx,
        "DELETE FROM tasks WHERE expires IS NOT NULL AND expires < ?1",
        params![now_ms as i64],
    )
    .map_err(err)?;
    run(
        tx,
        "DELETE FROM daemons WHERE alive_until < ?1",
        params![now_ms.saturating_sub(86_400_000) as i64],
    )
    .map_err(err)?;
    // Windows that ended a day ago are history nobody reads.
    run(
        tx,
        "DELETE FROM usage WHERE expires IS NOT NULL AND expires < ?1",
        params![now_ms.saturating_sub(86_400_000) as i64],
    )
    .map_err(err)?;
    Ok(expired.len())
}

fn session_turn_in(
    tx: &Connection,
    key: &str,
    limits: SessionLimits,
    now_ms: u64,
) -> Result<Turn, StoreError> {
    let oldest_live = now_ms.saturating_sub(limits.ttl_ms) as i64;
    let row: Option<(i64, i64)> = session_row(tx, key)?;
    let turns = match row {
        Some((turns, last_used)) if last_used >= oldest_live => turns as u32,
        Some(_) => 0,
        None => {
            let rows: i64 = one(tx, "SELECT n FROM session_rows", [], |r| r.get(0)).map_err(err)?;
            // Counting the live ones costs a scan: only when the rows could be too many.
            if rows as u64 >= limits.max_sessions {
                let live: i64 = one(
                    tx,
                    "SELECT count(*) FROM sessions WHERE last_used >= ?1",
                    params![oldest_live],
                    |r| r.get(0),
                )
                .map_err(err)?;
                if live as u64 >= limits.max_sessions {
                    return Ok(Turn::TableFull(limits.max_sessions));
                }
            }
            0
        }
    };
    if turns >= limits.max_turns {
        return Ok(Turn::CapReached(limits.max_turns));
    }
    run(
        tx,
        "INSERT INTO sessions (key, turns, last_used) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET turns = ?2, last_used = ?3",
        params![key, i64::from(turns + 1), now_ms as i64],
    )
    .map_err(err)?;
    Ok(Turn::Counted(turns + 1))
}

fn put_task_in(
    conn: &Connection,
    rec: &TaskRecord,
    keep_ms: Option<u64>,
    now_ms: u64,
) -> Result<(), StoreError> {
    run(
        conn,
        // A live record never replaces one (the end may be written first).
        if rec.terminal {
            "INSERT OR REPLACE INTO tasks (id, owner, daemon, addr, status, terminal, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        } else {
            "INSERT OR IGNORE INTO tasks (id, owner, daemon, addr, status, terminal, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        },
        params![
            rec.id,
            rec.owner,
            rec.daemon,
            rec.addr,
            rec.status,
            i64::from(rec.terminal),
            keep_ms.map(|k| (now_ms + k) as i64)
        ],
    )
    .map(|_| ())
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::super::{Period, RateLimit};
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.sqlite")).unwrap();
        (dir, s)
    }

    fn budget(tokens: u64, period: Option<Period>) -> Budget {
        Budget {
            account: "key:a".into(),
            tokens: Some(tokens),
            time_ms: None,
            cost: None,
            period,
        }
    }

    fn op<'a>(id: &'a str, budgets: &'a [Budget], tokens: u64, now_ms: u64) -> ReserveOp<'a> {
        ReserveOp {
            id,
            budgets,
            amount: Amount {
                tokens,
                ..Amount::default()
            },
            rates: &[],
            rate_tokens: 0,
            now_ms,
            lease_ms: 1_000,
        }
    }

    #[test]
    fn concurrent_reservations_share_transactions_and_stay_exact() {
        let (_dir, s) = store();
        let s = std::sync::Arc::new(s);
        let b = [budget(100, None)];
        let reserved: usize = (0..8)
            .map(|t| {
                let (s, b) = (std::sync::Arc::clone(&s), b.clone());
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|i| {
                            matches!(
                                s.reserve(&op(&format!("t{t}-{i}"), &b, 1, 10_000)).unwrap(),
                                Decision::Reserved { .. }
                            )
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(reserved, 100, "exactly the budget, across every batch");
        assert_eq!(s.spent(&b, 10_000).unwrap()[0].tokens, 100);
        // A failing operation is rolled back alone: a second reservation under a taken id
        // fails and leaves the first (and the spend) as they were.
        let roomy = [Budget {
            account: "key:b".into(),
            ..budget(10, None)
        }];
        assert!(s.reserve(&op("dup", &roomy, 3, 10_000)).is_ok());
        assert!(s.reserve(&op("dup", &roomy, 3, 10_000)).is_err());
        assert_eq!(s.spent(&roomy, 10_000).unwrap()[0].tokens, 3);
        assert!(s.settle("dup", Amount::default(), 0).unwrap());
        assert_eq!(s.spent(&roomy, 10_000).unwrap()[0].tokens, 0);
    }

    #[test]
    fn reserve_settle_exactly_once_and_deny_with_the_time_to_reset() {
        let (_dir, s) = store();
        let b = [budget(100, Some(Period::Every(2_000)))];
        assert!(matches!(
            s.reserve(&op("t1", &b, 60, 10_500)).unwrap(),
            Decision::Reserved { .. }
        ));
        let denied = s.reserve(&op("t2", &b, 60, 10_700)).unwrap();
        assert_eq!(
            denied,
            Decision::OverBudget {
                account: "key:a".into(),
                what: "tokens",
                retry_after_ms: Some(1_300)
            }
        );
        // The actual was 10: 50 come back; a second settle changes nothing.
        let actual = Amount {
            tokens: 10,
            ..Amount::default()
        };
        assert!(s.settle("t1", actual, 0).unwrap());
        assert!(!s.settle("t1", actual, 0).unwrap());
        assert_eq!(s.spent(&b, 10_800).unwrap()[0].tokens, 10);
        // The next window starts from zero.
        assert_eq!(s.spent(&b, 12_000).unwrap()[0].tokens, 0);
        // A budget without a period never resets, and says so.
        let forever = [budget(5, None)];
        assert!(matches!(
            s.reserve(&op("t3", &forever, 6, 10_000)).unwrap(),
            Decision::OverBudget {
                retry_after_ms: None,
                ..
            }
        ));
    }

    #[test]
    fn an_expired_lease_stays_spent_and_frees_its_slot() {
        let (_dir, s) = store();
        let b = [budget(100, None)];
        let rate = RateLimit {
            subject: "key:a".into(),
            requests: None,
            tokens: None,
            concurrent: Some(1),
            window_ms: 60_000,
        };
        let mut first = op("t1", &b, 40, 1_000);
        first.rates = std::slice::from_ref(&rate);
        assert!(matches!(
            s.reserve(&first).unwrap(),
            Decision::Reserved { .. }
        ));
        let mut second = op("t2", &b, 1, 1_100);
        second.rates = std::slice::from_ref(&rate);
        assert!(matches!(
            s.reserve(&second).unwrap(),
            Decision::OverRate {
                limit: "concurrent",
                ..
            }
        ));
        assert_eq!(s.reap(1_500).unwrap(), 0, "the lease still runs");
        assert_eq!(s.reap(2_500).unwrap(), 1);
        assert!(
            !s.settle("t1", Amount::default(), 0).unwrap(),
            "reaped: nothing to settle"
        );
        assert_eq!(
            s.spent(&b, 3_000).unwrap()[0].tokens,
            40,
            "settled at its reserved amount"
        );
        second.now_ms = 3_000;
        assert!(matches!(
            s.reserve(&second).unwrap(),
            Decision::Reserved { .. }
        ));
    }

    #[test]
    fn requests_per_window_are_limited_with_an_honest_retry_after() {
        let (_dir, s) = store();
        let rate = RateLimit {
            subject: "key:a".into(),
            requests: Some(2),
            tokens: Some(100),
            concurrent: None,
            window_ms: 1_000,
        };
        let b: [Budget; 0] = [];
        let reserve = |id: &str, now: u64, tokens: u64| {
            let mut o = op(id, &b, 0, now);
            o.rates = std::slice::from_ref(&rate);
            o.rate_tokens = tokens;
            s.reserve(&o).unwrap()
        };
        assert!(matches!(reserve("a", 5_100, 10), Decision::Reserved { .. }));
        assert!(matches!(reserve("b", 5_200, 10), Decision::Reserved { .. }));
        match reserve("c", 5_250, 10) {
            Decision::OverRate {
                limit: "requests",
                retry_after_ms,
                ..
            } => assert_eq!(retry_after_ms, 750),
            other => panic!("{other:?}"),
        }
        match reserve("d", 6_000, 95) {
            Decision::Reserved { rate, .. } => {
                assert_eq!(rate.requests_left, Some(1));
                assert_eq!(rate.tokens_left, Some(5));
            }
            other => panic!("{other:?}"),
        }
        // Settled at 20 tokens instead of 95: 75 come back to the window.
        assert!(s.settle("d", Amount::default(), 20).unwrap());
        assert!(matches!(reserve("e", 6_100, 70), Decision::Reserved { .. }));
    }

    #[test]
    fn a_tenant_groups_limit_is_shared_by_its_keys_and_checked_with_each_keys_own() {
        let (_dir, s) = store();
        let limit = |subject: &str, requests: u64| RateLimit {
            subject: subject.into(),
            requests: Some(requests),
            tokens: None,
            concurrent: Some(2),
            window_ms: 1_000,
        };
        let group = limit("group:team", 3);
        let (a, b) = (
            [limit("key:a", 2), group.clone()],
            [limit("key:b", 5), group],
        );
        let none: [Budget; 0] = [];
        let reserve = |id: &str, rates: &[RateLimit], now: u64| {
            let mut o = op(id, &none, 0, now);
            o.rates = rates;
            s.reserve(&o).unwrap()
        };
        match reserve("a1", &a, 5_100) {
            // The headers report the limit the client meets first: the key's, 1 left.
            Decision::Reserved { rate, .. } => assert_eq!(rate.requests_left, Some(1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reserve("b1", &b, 5_200),
            Decision::Reserved { .. }
        ));
        // Two running tasks in the group: the group's concurrency refuses b, not b's own.
        match reserve("b2", &b, 5_300) {
            Decision::OverRate {
                subject,
                limit: "concurrent",
                ..
            } => assert_eq!(subject, "group:team"),
            other => panic!("{other:?}"),
        }
        assert!(s.settle("a1", Amount::default(), 0).unwrap());
        assert!(matches!(
            reserve("b3", &b, 5_400),
            Decision::Reserved { .. }
        ));
        // Three requests in the group's window: a's next is over the group's limit, and
        // a refusal charges nothing (b's own count is unchanged).
        match reserve("a2", &a, 5_500) {
            Decision::OverRate {
                subject,
                limit: "requests",
                retry_after_ms,
                ..
            } => assert_eq!((subject.as_str(), retry_after_ms), ("group:team", 500)),
            other => panic!("{other:?}"),
        }
        assert!(s.settle("b1", Amount::default(), 0).unwrap());
        assert!(s.settle("b3", Amount::default(), 0).unwrap());
        // The next window starts from zero for everyone.
        assert!(matches!(
            reserve("a3", &a, 6_000),
            Decision::Reserved { .. }
        ));
    }
}
