//! The shared backend: Redis, for several daemons behind one address. Each reservation,
//! settle and reap is one Lua script, which Redis runs atomically: no two daemons can
//! spend the same budget or the same rate-limit window twice.
//!
//! Keys (under `prefix`, default `orchd:`): `u:<account>:<window>` a hash of spend (`t`,
//! `ms`, `c`; expiring a day after its window ends), `q:<kind>:<subject>:<window>` rate
//! counters, `r:<id>` a reservation, `leases` a sorted set of reservation ids by lease end.

use std::sync::Mutex;
use std::time::Duration;

use redis::Script;
use serde_json::{Value, json};

use super::{
    Amount, Budget, Decision, RateState, ReserveOp, SessionLimits, Store, StoreError, TaskRecord,
    Turn,
};

const RESERVE: &str = r#"
local op = cjson.decode(ARGV[1])
local p = op.prefix
local rkey = p .. 'r:' .. op.id
if redis.call('EXISTS', rkey) == 1 then return cjson.encode({d = 'dup'}) end
local function num(v) return tonumber(v) or 0 end
local spent = {}
for i, b in ipairs(op.budgets) do
  local v = redis.call('HMGET', b.k, 't', 'ms', 'c')
  local t, ms, c = num(v[1]), num(v[2]), num(v[3])
  spent[i] = {t, ms, c}
  local what = nil
  if b.t >= 0 and t + op.t > b.t then what = 'tokens'
  elseif b.ms >= 0 and ms + op.ms > b.ms then what = 'time'
  elseif b.c >= 0 and c + op.c > b.c + 1e-9 then what = 'cost' end
  if what then return cjson.encode({d = 'budget', i = i - 1, what = what}) end
end
-- Every rate limit (the key's, its tenant group's) is checked before any is charged.
local counts = {}
for i, r in ipairs(op.rates) do
  local req = num(redis.call('GET', r.rk))
  local tok = num(redis.call('GET', r.tk))
  local run = num(redis.call('GET', r.ck))
  counts[i] = {req, tok}
  local limit = nil
  if r.requests >= 0 and req + 1 > r.requests then limit = 'requests'
  elseif r.tokens >= 0 and tok + op.rt > r.tokens then limit = 'tokens'
  elseif r.concurrent >= 0 and run + 1 > r.concurrent then limit = 'concurrent' end
  if limit then return cjson.encode({d = 'rate', i = i - 1, limit = limit, req = req, tok = tok}) end
end
local charged = {}
for i, r in ipairs(op.rates) do
  if r.requests >= 0 then
    redis.call('INCR', r.rk)
    redis.call('PEXPIREAT', r.rk, r.reset + 60000)
  end
  if r.tokens >= 0 then
    redis.call('INCRBY', r.tk, op.rt)
    redis.call('PEXPIREAT', r.tk, r.reset + 60000)
  end
  if r.concurrent >= 0 then redis.call('INCR', r.ck) end
  local c = {}
  if r.tokens >= 0 then c.tk = r.tk; c.rt = op.rt end
  if r.concurrent >= 0 then c.ck = r.ck end
  charged[i] = c
end
local entries = {}
for i, b in ipairs(op.budgets) do
  redis.call('HINCRBY', b.k, 't', op.t)
  redis.call('HINCRBY', b.k, 'ms', op.ms)
  redis.call('HINCRBYFLOAT', b.k, 'c', string.format('%.17g', op.c))
  if b.e >= 0 then redis.call('PEXPIREAT', b.k, b.e + 86400000) end
  entries[i] = {k = b.k, t = op.t, ms = op.ms, c = op.c}
end
local rec = {e = entries, rs = charged}
redis.call('SET', rkey, cjson.encode(rec))
redis.call('ZADD', p .. 'leases', op.lease_until, op.id)
return cjson.encode({d = 'ok', spent = spent, counts = counts})
"#;

const SETTLE: &str = r#"
local p, id = ARGV[1], ARGV[2]
local t, ms, c, rt = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local rkey = p .. 'r:' .. id
local raw = redis.call('GET', rkey)
if not raw then return 0 end
local rec = cjson.decode(raw)
local function adjust(key, field, delta, float)
  local cur = tonumber(redis.call('HGET', key, field)) or 0
  local new = cur + delta
  if new < 0 then new = 0 end
  if float then
    redis.call('HSET', key, field, string.format('%.17g', new))
  else
    redis.call('HSET', key, field, string.format('%d', new))
  end
end
for _, e in ipairs(rec.e) do
  adjust(e.k, 't', t - e.t, false)
  adjust(e.k, 'ms', ms - e.ms, false)
  adjust(e.k, 'c', c - e.c, true)
end
-- The rate limits charged: a list, or one (a reservation from before tenant groups).
local charged = rec.rs
if charged == nil or charged == cjson.null then charged = {{tk = rec.tk, rt = rec.rt, ck = rec.ck}} end
for _, c in ipairs(charged) do
  if c.tk and redis.call('EXISTS', c.tk) == 1 then
    local cur = tonumber(redis.call('GET', c.tk)) or 0
    local new = cur + rt - c.rt
    if new < 0 then new = 0 end
    redis.call('SET', c.tk, string.format('%d', new), 'KEEPTTL')
  end
  if c.ck then
    if (tonumber(redis.call('GET', c.ck)) or 0) > 0 then redis.call('DECR', c.ck) end
  end
end
redis.call('DEL', rkey)
redis.call('ZREM', p .. 'leases', id)
return 1
"#;

const REAP: &str = r#"
local p, now = ARGV[1], ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', '(' .. now, 'LIMIT', 0, 256)
for _, id in ipairs(ids) do
  local rkey = p .. 'r:' .. id
  local raw = redis.call('GET', rkey)
  if raw then
    local rec = cjson.decode(raw)
    local charged = rec.rs
    if charged == nil or charged == cjson.null then charged = {{ck = rec.ck}} end
    for _, c in ipairs(charged) do
      if c.ck and (tonumber(redis.call('GET', c.ck)) or 0) > 0 then redis.call('DECR', c.ck) end
    end
    redis.call('DEL', rkey)
  end
  redis.call('ZREM', p .. 'leases', id)
end
return #ids
"#;

/// A session's turn: `KEYS[1]` the session hash, `KEYS[2]` the set of sessions by last
/// use (to count live ones). ARGV: now, ttl, max turns, max sessions, member.
const TURN: &str = r#"
local now, ttl, max_turns, max_sessions = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))
local turns = tonumber(redis.call('HGET', KEYS[1], 'turns'))
if not turns then
  if redis.call('ZCARD', KEYS[2]) >= max_sessions then return {'full', max_sessions} end
  turns = 0
end
if turns >= max_turns then return {'cap', max_turns} end
redis.call('HSET', KEYS[1], 'turns', turns + 1, 'last', now)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, ARGV[5])
return {'ok', turns + 1}
"#;

/// Gives back a turn; removes a session left with none. KEYS as for TURN; ARGV: member.
const UNTAKE: &str = r#"
local turns = tonumber(redis.call('HGET', KEYS[1], 'turns'))
if not turns then return 0 end
if turns <= 1 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], 'turns', -1)
end
return 1
"#;

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    /// Idle connections, reused; one is taken per call (no call runs under this lock).
    idle: Mutex<Vec<redis::Connection>>,
    reserve: Script,
    settle: Script,
    reap: Script,
    turn: Script,
    untake: Script,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

const TIMEOUT: Duration = Duration::from_secs(2);

impl RedisStore {
    /// Checks the URL; connecting happens per call, so a Redis that is down at start is
    /// reported by `/readyz` and recovered from without a restart.
    pub fn open(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(err)?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            idle: Mutex::new(Vec::new()),
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            reap: Script::new(REAP),
            turn: Script::new(TURN),
            untake: Script::new(UNTAKE),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(TIMEOUT)
                    .map_err(err)?;
                c.set_read_timeout(Some(TIMEOUT)).map_err(err)?;
                c.set_write_timeout(Some(TIMEOUT)).map_err(err)?;
                c
            }
        };
        match f(&mut conn) {
            Ok(v) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < 32 {
                    idle.push(conn);
                }
                Ok(v)
            }
            // The connection may be broken: it is dropped, the next call opens another.
            Err(e) => Err(err(e)),
        }
    }

    fn usage_key(&self, b: &Budget, now_ms: u64) -> String {
        format!("{}u:{}:{}", self.prefix, b.account, b.window(now_ms).0)
    }
}

fn cap(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| v.min(i64::MAX as u64) as i64)
}

impl Store for RedisStore {
    fn spent(&self, budgets: &[Budget], now_ms: u64) -> Result<Vec<Amount>, StoreError> {
        self.with(|conn| {
            let mut pipe = redis::pipe();
            for b in budgets {
                pipe.cmd("HMGET")
                    .arg(self.usage_key(b, now_ms))
                    .arg("t")
                    .arg("ms")
                    .arg("c");
            }
            let rows: Vec<(Option<f64>, Option<f64>, Option<f64>)> = pipe.query(conn)?;
            Ok(rows
                .into_iter()
                .map(|(t, ms, c)| Amount {
                    tokens: t.unwrap_or(0.0) as u64,
                    time_ms: ms.unwrap_or(0.0) as u64,
                    cost: c.unwrap_or(0.0),
                })
                .collect())
        })
    }

    fn reserve(&self, op: &ReserveOp<'_>) -> Result<Decision, StoreError> {
        let budgets: Vec<Value> = op
            .budgets
            .iter()
            .map(|b| {
                json!({
                    "k": self.usage_key(b, op.now_ms),
                    "t": cap(b.tokens),
                    "ms": cap(b.time_ms),
                    "c": b.cost.unwrap_or(-1.0),
                    "e": b.window(op.now_ms).1.map_or(-1, |e| e as i64),
                })
            })
            .collect();
        // Each rate limit's window start and end.
        let windows: Vec<(u64, u64)> = op
            .rates
            .iter()
            .map(|r| {
                let window = r.window_ms.max(1);
                let start = op.now_ms - op.now_ms % window;
                (start, start + window)
            })
            .collect();
        let rates: Vec<Value> = op
            .rates
            .iter()
            .zip(&windows)
            .map(|(r, &(start, reset))| {
                let key = |kind: &str, w: u64| format!("{}q:{kind}:{}:{w}", self.prefix, r.subject);
                json!({
                    "rk": key("rpm", start),
                    "tk": key("tpm", start),
                    "ck": key("conc", 0),
                    "requests": cap(r.requests),
                    "tokens": cap(r.tokens),
                    "concurrent": cap(r.concurrent),
                    "reset": reset,
                })
            })
            .collect();
        let arg = json!({
            "prefix": self.prefix,
            "id": op.id,
            "budgets": budgets,
            "t": op.amount.tokens,
            "ms": op.amount.time_ms,
            "c": op.amount.cost,
            "rates": rates,
            "rt": op.rate_tokens,
            "lease_until": op.now_ms + op.lease_ms,
        });
        let out: String = self.with(|conn| self.reserve.arg(arg.to_string()).invoke(conn))?;
        let out: Value = serde_json::from_str(&out).map_err(err)?;
        let state = |i: usize, counts: &Value, charged: bool| {
            let c = |k: usize| counts[k].as_f64().unwrap_or(0.0) as u64;
            RateState::of(
                &op.rates[i],
                c(0),
                c(1),
                op.rate_tokens,
                charged,
                windows[i].1,
            )
        };
        let n = |k: &str| out[k].as_f64().unwrap_or(0.0) as u64;
        match out["d"].as_str() {
            Some("ok") => {
                let spent = out["spent"].as_array().cloned().unwrap_or_default();
                let left = spent
                    .iter()
                    .map(|s| Amount {
                        tokens: s[0].as_f64().unwrap_or(0.0) as u64 + op.amount.tokens,
                        time_ms: s[1].as_f64().unwrap_or(0.0) as u64 + op.amount.time_ms,
                        cost: s[2].as_f64().unwrap_or(0.0) + op.amount.cost,
                    })
                    .collect();
                let rate = (0..op.rates.len())
                    .map(|i| state(i, &out["counts"][i], true))
                    .reduce(RateState::tighter)
                    .unwrap_or_default();
                Ok(Decision::Reserved { left, rate })
            }
            Some("budget") => {
                let b = &op.budgets[n("i") as usize];
                Ok(Decision::OverBudget {
                    account: b.account.clone(),
                    what: match out["what"].as_str() {
                        Some("tokens") => "tokens",
                        Some("time") => "time",
                        _ => "cost",
                    },
                    retry_after_ms: b
                        .window(op.now_ms)
                        .1
                        .map(|end| end.saturating_sub(op.now_ms).max(1)),
                })
            }
            Some("rate") => {
                let limit = match out["limit"].as_str() {
                    Some("requests") => "requests",
                    Some("tokens") => "tokens",
                    _ => "concurrent",
                };
                let i = (n("i") as usize).min(op.rates.len().saturating_sub(1));
                Ok(Decision::OverRate {
                    subject: op.rates[i].subject.clone(),
                    limit,
                    retry_after_ms: if limit == "concurrent" {
                        1_000
                    } else {
                        windows[i].1.saturating_sub(op.now_ms).max(1)
                    },
                    rate: state(i, &json!([n("req"), n("tok")]), false),
                })
            }
            Some("dup") => Err(StoreError(format!("reservation {} exists", op.id))),
            _ => Err(StoreError(format!("unexpected reply {out}"))),
        }
    }

    fn settle(&self, id: &str, actual: Amount, rate_tokens: u64) -> Result<bool, StoreError> {
        let done: i64 = self.with(|conn| {
            self.settle
                .arg(&self.prefix)
                .arg(id)
                .arg(actual.tokens)
                .arg(actual.time_ms)
                .arg(actual.cost)
                .arg(rate_tokens)
                .invoke(conn)
        })?;
        Ok(done == 1)
    }

    fn reap(&self, now_ms: u64) -> Result<usize, StoreError> {
        let n: i64 = self.with(|conn| self.reap.arg(&self.prefix).arg(now_ms).invoke(conn))?;
        Ok(n as usize)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.with(|conn| redis::cmd("PING").query::<String>(conn))
            .map(|_| ())
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn session_turn(
        &self,
        key: &str,
        limits: SessionLimits,
        now_ms: u64,
    ) -> Result<Turn, StoreError> {
        let (kind, n): (String, u64) = self.with(|conn| {
            self.turn
                .key(format!("{}s:{key}", self.prefix))
                .key(format!("{}sessions", self.prefix))
                .arg(now_ms)
                .arg(limits.ttl_ms.max(1))
                .arg(limits.max_turns)
                .arg(limits.max_sessions)
                .arg(key)
                .invoke(conn)
        })?;
        Ok(match kind.as_str() {
            "ok" => Turn::Counted(n as u32),
            "cap" => Turn::CapReached(n as u32),
            _ => Turn::TableFull(n),
        })
    }

    fn session_untake(&self, key: &str) -> Result<(), StoreError> {
        self.with(|conn| {
            self.untake
                .key(format!("{}s:{key}", self.prefix))
                .key(format!("{}sessions", self.prefix))
                .arg(key)
                .invoke::<i64>(conn)
        })
        .map(|_| ())
    }

    fn session_get(
        &self,
        key: &str,
        ttl_ms: u64,
        touch: bool,
        now_ms: u64,
    ) -> Result<Option<(u32, u64)>, StoreError> {
        let k = format!("{}s:{key}", self.prefix);
        let (turns, left): (Option<u32>, i64) = self.with(|conn| {
            redis::pipe()
                .cmd("HGET")
                .arg(&k)
                .arg("turns")
                .cmd("PTTL")
                .arg(&k)
                .query(conn)
        })?;
        let Some(turns) = turns else {
            return Ok(None);
        };
        if touch {
            self.with(|conn| {
                redis::pipe()
                    .cmd("PEXPIRE")
                    .arg(&k)
                    .arg(ttl_ms.max(1))
                    .cmd("ZADD")
                    .arg(format!("{}sessions", self.prefix))
                    .arg(now_ms)
                    .arg(key)
                    .query::<()>(conn)
            })?;
            return Ok(Some((turns, ttl_ms)));
        }
        Ok(Some((turns, left.max(0) as u64)))
    }

    fn session_remove(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = self.with(|conn| {
            redis::pipe()
                .cmd("DEL")
                .arg(format!("{}s:{key}", self.prefix))
                .cmd("ZREM")
                .arg(format!("{}sessions", self.prefix))
                .arg(key)
                .ignore()
                .query::<(i64,)>(conn)
                .map(|(n,)| n)
        })?;
        Ok(n > 0)
    }

    fn session_sweep(&self, _before_ms: u64) -> Result<usize, StoreError> {
        Ok(0) // keys expire by their TTL; the live set is trimmed by every turn
    }

    fn put_task(
        &self,
        rec: &TaskRecord,
        keep_ms: Option<u64>,
        _now_ms: u64,
    ) -> Result<(), StoreError> {
        let key = format!("{}t:{}", self.prefix, rec.id);
        let value = json!({
            "owner": rec.owner, "daemon": rec.daemon, "addr": rec.addr,
            "status": rec.status, "terminal": rec.terminal,
        })
        .to_string();
        self.with(|conn| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(&value);
            if let Some(ms) = keep_ms {
                cmd.arg("PX").arg(ms.max(1));
            }
            // A live record never replaces one (the end may be written first).
            if !rec.terminal {
                cmd.arg("NX");
            }
            cmd.query::<Option<String>>(conn).map(|_| ())
        })
    }

    fn get_task(&self, id: &str, _now_ms: u64) -> Result<Option<TaskRecord>, StoreError> {
        let key = format!("{}t:{}", self.prefix, id);
        let raw: Option<String> = self.with(|conn| redis::cmd("GET").arg(&key).query(conn))?;
        let Some(raw) = raw else { return Ok(None) };
        let v: Value = serde_json::from_str(&raw).map_err(err)?;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Ok(Some(TaskRecord {
            id: id.to_owned(),
            owner: text("owner"),
            daemon: text("daemon"),
            addr: text("addr"),
            status: text("status"),
            terminal: v["terminal"].as_bool().unwrap_or(false),
        }))
    }

    fn shared_secret(&self, name: &str, fresh: &str) -> Result<String, StoreError> {
        let key = format!("{}secret:{name}", self.prefix);
        self.with(|conn| {
            redis::cmd("SET")
                .arg(&key)
                .arg(fresh)
                .arg("NX")
                .query::<()>(conn)?;
            redis::cmd("GET").arg(&key).query(conn)
        })
    }

    fn put_pool(&self, id: &str, definition: &str) -> Result<(), StoreError> {
        let key = format!("{}pools", self.prefix);
        self.with(|conn| {
            redis::cmd("HSET")
                .arg(&key)
                .arg(id)
                .arg(definition)
                .query::<()>(conn)
        })
    }

    fn delete_pool(&self, id: &str) -> Result<bool, StoreError> {
        let key = format!("{}pools", self.prefix);
        let n: i64 = self.with(|conn| redis::cmd("HDEL").arg(&key).arg(id).query(conn))?;
        Ok(n > 0)
    }

    fn list_pools(&self) -> Result<Vec<(String, String)>, StoreError> {
        let key = format!("{}pools", self.prefix);
        let mut all: Vec<(String, String)> =
            self.with(|conn| redis::cmd("HGETALL").arg(&key).query(conn))?;
        all.sort();
        Ok(all)
    }

    fn heartbeat(&self, id: &str, addr: &str, until_ms: u64) -> Result<(), StoreError> {
        let key = format!("{}d:{}", self.prefix, id);
        self.with(|conn| {
            redis::cmd("SET")
                .arg(&key)
                .arg(addr)
                .arg("PXAT")
                .arg(until_ms)
                .query::<()>(conn)
        })
    }

    fn daemon_alive(&self, id: &str, _now_ms: u64) -> Result<bool, StoreError> {
        let key = format!("{}d:{}", self.prefix, id);
        let n: i64 = self.with(|conn| redis::cmd("EXISTS").arg(&key).query(conn))?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Period, RateLimit};
    use super::*;

    fn budget(tokens: u64, period: Option<Period>) -> Budget {
        Budget {
            account: "key:a".into(),
            tokens: Some(tokens),
            time_ms: None,
            cost: Some(1.0),
            period,
        }
    }

    fn op<'a>(id: &'a str, budgets: &'a [Budget], tokens: u64, now_ms: u64) -> ReserveOp<'a> {
        ReserveOp {
            id,
            budgets,
            amount: Amount {
                tokens,
                time_ms: 5,
                cost: 0.25,
            },
            rates: &[],
            rate_tokens: 0,
            now_ms,
            lease_ms: 1_000,
        }
    }

    /// The same behaviour as the SQLite backend, on a real Redis.
    #[test]
    fn reserve_settle_reap_and_rate_limits_on_a_real_redis() {
        let redis = orchd_testkit::Redis::start();
        let s = RedisStore::open(&redis.url(), "t:").unwrap();
        s.ping().unwrap();
        // Real times: Redis expires keys by its own clock. `base` starts a 2 s window.
        let base = super::super::now_ms() / 2_000 * 2_000 + 4_000;
        let at = |ms: u64| base + ms - 10_000;
        let b = [budget(100, Some(Period::Every(2_000)))];
        assert!(matches!(
            s.reserve(&op("t1", &b, 60, at(10_500))).unwrap(),
            Decision::Reserved { .. }
        ));
        assert!(
            s.reserve(&op("t1", &b, 1, at(10_500))).is_err(),
            "a duplicate id is refused"
        );
        assert_eq!(
            s.reserve(&op("t2", &b, 60, at(10_700))).unwrap(),
            Decision::OverBudget {
                account: "key:a".into(),
                what: "tokens",
                retry_after_ms: Some(1_300)
            }
        );
        let actual = Amount {
            tokens: 10,
            time_ms: 2,
            cost: 0.125,
        };
        assert!(s.settle("t1", actual, 0).unwrap());
        assert!(!s.settle("t1", actual, 0).unwrap(), "exactly once");
        let spent = s.spent(&b, at(10_800)).unwrap()[0];
        assert_eq!((spent.tokens, spent.time_ms), (10, 2));
        assert!((spent.cost - 0.125).abs() < 1e-9, "{spent:?}");
        assert_eq!(
            s.spent(&b, at(12_000)).unwrap()[0].tokens,
            0,
            "a new window"
        );

        let rate = RateLimit {
            subject: "key:a".into(),
            requests: Some(2),
            tokens: None,
            concurrent: Some(2),
            window_ms: 1_000,
        };
        let none: [Budget; 0] = [];
        let reserve = |id: &str, now: u64| {
            let mut o = op(id, &none, 0, now);
            o.rates = std::slice::from_ref(&rate);
            s.reserve(&o).unwrap()
        };
        assert!(matches!(
            reserve("r1", at(20_100)),
            Decision::Reserved { .. }
        ));
        assert!(matches!(
            reserve("r2", at(20_200)),
            Decision::Reserved { .. }
        ));
        assert!(matches!(
            reserve("r3", at(20_300)),
            Decision::OverRate {
                limit: "requests",
                retry_after_ms: 700,
                ..
            }
        ));
        assert!(matches!(
            reserve("r4", at(21_000)),
            Decision::OverRate {
                limit: "concurrent",
                ..
            }
        ));
        // r1's daemon died: its lease ends, the slot comes back.
        assert_eq!(
            s.reap(at(21_150)).unwrap(),
            1,
            "r1's lease ended, r2's runs"
        );
        assert!(matches!(
            reserve("r5", at(21_200)),
            Decision::Reserved { .. }
        ));
        // A tenant group's limit is shared by its keys and checked with each key's own;
        // a refusal charges none of them.
        let limit = |subject: &str, requests: u64| RateLimit {
            subject: subject.into(),
            requests: Some(requests),
            tokens: None,
            concurrent: None,
            window_ms: 60_000,
        };
        let group = limit("group:team", 3);
        let (a, b) = (
            [limit("key:a", 10), group.clone()],
            [limit("key:b", 10), group],
        );
        let with = |id: &str, rates: &[RateLimit]| {
            let mut o = op(id, &none, 0, at(30_000));
            o.rates = rates;
            s.reserve(&o).unwrap()
        };
        for (id, rates) in [("g1", &a), ("g2", &b), ("g3", &a)] {
            match with(id, rates) {
                Decision::Reserved { rate, .. } => assert!(rate.requests_left.unwrap() < 3),
                other => panic!("{other:?}"),
            }
        }
        match with("g4", &b) {
            Decision::OverRate {
                subject,
                limit: "requests",
                rate,
                ..
            } => {
                assert_eq!(subject, "group:team");
                assert_eq!(rate.requests_left, Some(0));
            }
            other => panic!("{other:?}"),
        }
        for id in ["g1", "g2", "g3"] {
            assert!(s.settle(id, Amount::default(), 0).unwrap());
        }
    }
}
