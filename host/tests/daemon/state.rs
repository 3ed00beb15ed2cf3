//! State that lasts and is shared: budgets with windows survive `kill -9` (SQLite), several
//! daemons share one budget and one rate limit through a real Redis, a store outage fails
//! closed and recovers, and a dead daemon's reservations are reaped when their lease ends.

use std::time::{Duration, Instant};

use orchd_testkit::{Daemon, DaemonBuilder, Redis, config, default_admission, mock_pool, task};
use serde_json::{Value, json};

const KEY: &str = "team-key";

fn keys(extra: &str) -> String {
    format!("[[auth.keys]]\nname = \"team\"\nrole = \"data\"\nkey = \"{KEY}\"\n{extra}\n")
}

fn cfg(head: &str, mock: &str) -> String {
    format!(
        "{head}\n{}",
        config(&default_admission("reject"), 512, &[mock_pool("p", mock)])
    )
}

/// A request to `d` with the team's key.
fn keyed(d: &Daemon, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    d.http.request(method, d.url(path)).bearer_auth(KEY)
}

async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.unwrap()
}

/// A task's stream, after `Last-Event-ID` when given.
async fn open_stream_after(d: &Daemon, id: &str, after: Option<u64>) -> orchd_testkit::SseReader {
    let mut req = keyed(d, reqwest::Method::GET, &format!("/v1/tasks/{id}/stream"));
    if let Some(seen) = after {
        req = req.header("last-event-id", seen.to_string());
    }
    let resp = send(req).await;
    assert_eq!(resp.status().as_u16(), 200);
    orchd_testkit::SseReader::new(resp)
}

async fn open_stream(d: &Daemon, id: &str) -> orchd_testkit::SseReader {
    open_stream_after(d, id, None).await
}

async fn cancel(d: &Daemon, id: &str) -> u16 {
    send(keyed(
        d,
        reqwest::Method::POST,
        &format!("/v1/tasks/{id}/cancel"),
    ))
    .await
    .status()
    .as_u16()
}

async fn post(d: &Daemon, body: &Value) -> reqwest::Response {
    send(keyed(d, reqwest::Method::POST, "/v1/tasks").json(body)).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `done` every 200 ms until it holds; fails saying `what` after 15 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tokens one `task("p", {max_tokens: N})` reserves (the default budget policy: prompt
/// estimate plus max_tokens), read from `X-Budget-Tokens-Remaining` on a probe daemon.
async fn reserved_per_task(max_tokens: u32) -> u64 {
    let d = DaemonBuilder::new(cfg(
        &format!("{}[budgets]\nper_key = {{ tokens = 1000000 }}\n", keys("")),
        "",
    ))
    .start();
    let resp = post(&d, &task("p", json!({"max_tokens": max_tokens}))).await;
    assert_eq!(resp.status().as_u16(), 202);
    let left: u64 = resp.headers()["x-budget-tokens-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    1_000_000 - left
}

/// 20 rounds of `kill -9` under load, each followed by a restart: every settled spend is
/// kept (what the key has left only ever falls), and no reservation outlives its lease.
#[tokio::test]
async fn spend_survives_twenty_kill_9s_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.sqlite");
    let head = format!(
        "{}[budgets]\nper_key = {{ tokens = 100000000 }}\n\n[state]\npath = \"{}\"\nlease_margin_ms = 200\n",
        keys(""),
        db.display()
    );
    let start = || DaemonBuilder::new(cfg(&head, "slots = 8, tokens_per_s = 200.0")).start();
    let mut lefts = Vec::new();
    for round in 0..20 {
        let mut d = start();
        // Load: eight tasks at once, some finished and settled, some running at the kill.
        // The deadline leaves room for a loaded machine (an infeasible one is a 400); the
        // lease it sets still ends within the wait below.
        let bodies: Vec<Value> = (0..8)
            .map(|i| task("p", json!({"max_tokens": 2 + 10 * i, "deadline_ms": 5000})))
            .collect();
        let responses = futures_util::future::join_all(bodies.iter().map(|b| post(&d, b))).await;
        let mut round_lefts = Vec::new();
        for r in responses {
            let status = r.status().as_u16();
            if status != 202 {
                panic!("round {round}: {status} {}", r.text().await.unwrap());
            }
            round_lefts.push(
                r.headers()["x-budget-tokens-remaining"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        lefts.push(*round_lefts.iter().min().unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        d.kill9();
    }
    assert!(
        lefts.windows(2).all(|w| w[1] < w[0]),
        "spend survived every kill -9: {lefts:?}"
    );
    // Every killed round left reservations behind; a daemon reaps them once their lease
    // (deadline 5 s + 0.2 s) ends.
    let _d = start();
    let conn = rusqlite::Connection::open(&db).unwrap();
    until("reservations outlived their lease", || {
        conn.query_row("SELECT count(*) FROM reservations", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
            == 0
    })
    .await;
}

#[tokio::test]
async fn a_budget_window_resets_and_retry_after_says_when() {
    let per_task = reserved_per_task(4).await;
    let head = format!(
        "{}[budgets]\nper_key = {{ tokens = {}, period = \"2s\" }}\n",
        keys(""),
        per_task
    );
    let d = DaemonBuilder::new(cfg(&head, "tokens_per_s = 2000.0")).start();
    // Start just after a window boundary, so both requests fall in one window.
    while now_ms() % 2000 > 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        post(&d, &task("p", json!({"max_tokens": 4})))
            .await
            .status()
            .as_u16(),
        202
    );
    let sent = now_ms();
    let resp = post(&d, &task("p", json!({"max_tokens": 4}))).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "BUDGET_EXCEEDED");
    assert_eq!(body["retriable"], true);
    let left_ms = 2000 - sent % 2000;
    assert_eq!(
        retry,
        left_ms.div_ceil(1000),
        "Retry-After is the time left in the window"
    );
    assert!(
        body["retry_after_ms"].as_u64().unwrap() <= left_ms,
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(
        body["retry_after_ms"].as_u64().unwrap() + 50,
    ))
    .await;
    assert_eq!(
        post(&d, &task("p", json!({"max_tokens": 4})))
            .await
            .status()
            .as_u16(),
        202,
        "the window reset"
    );
}

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn three_daemons_on_one_redis_never_overspend_one_budget() {
    let redis = Redis::start();
    let per_task = reserved_per_task(4).await;
    let head = format!(
        "{}[budgets]\nper_key = {{ tokens = {} }}\n\n[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        keys(""),
        per_task * 10,
        redis.url()
    );
    // Slow streams: nothing settles (and gives tokens back) while the race runs.
    let daemons: Vec<Daemon> = (0..3)
        .map(|_| DaemonBuilder::new(cfg(&head, "slots = 512, tokens_per_s = 1.0")).start())
        .collect();
    let bodies: Vec<Value> = (0..300)
        .map(|_| task("p", json!({"max_tokens": 4})))
        .collect();
    let requests: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| post(&daemons[i % 3], body))
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted, 10, "exactly the budget's 10 tasks: {statuses:?}");
    assert_eq!(refused, 290);
    let spent: u64 = redis_cli(&redis, &["HGET", "orchd:u:key:team:0", "t"])
        .parse()
        .unwrap();
    assert!(spent <= per_task * 10, "spent {spent} of {}", per_task * 10);
}

#[tokio::test]
async fn a_rate_limit_is_shared_by_three_daemons() {
    let redis = Redis::start();
    let head = format!(
        "{}[rate_limits]\nper_key = {{ requests = 6, window_ms = 3000 }}\n\n[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        keys(""),
        redis.url()
    );
    let daemons: Vec<Daemon> = (0..3)
        .map(|_| DaemonBuilder::new(cfg(&head, "slots = 64, tokens_per_s = 2000.0")).start())
        .collect();
    // The burst starts at a window's beginning and ends well inside it.
    while now_ms() % 3000 > 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window_end = now_ms() - now_ms() % 3000 + 3000;
    let mut admitted = 0;
    let mut first_ok = None;
    for i in 0..18 {
        let resp = post(&daemons[i % 3], &task("p", json!({"max_tokens": 1}))).await;
        match resp.status().as_u16() {
            202 => {
                admitted += 1;
                let h = resp.headers();
                assert_eq!(h["x-ratelimit-limit-requests"], "6");
                first_ok.get_or_insert(
                    h["x-ratelimit-remaining-requests"]
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            429 => {
                let sent = now_ms();
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["code"], "ADMISSION_REJECT", "{body}");
                let ms = body["retry_after_ms"].as_u64().unwrap();
                assert!(
                    ms <= window_end - sent + 50 && ms + 200 >= window_end - sent,
                    "{ms} vs {}",
                    window_end - sent
                );
                assert_eq!(retry, ms.div_ceil(1000));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(now_ms() < window_end, "the burst stayed in one window");
    assert_eq!(admitted, 6, "the limit holds across daemons");
    assert_eq!(first_ok.as_deref(), Some("5"));
    assert!(
        daemons[0]
            .metric_sum("rate_limited_total", &[("limit", "requests")])
            .await
            + daemons[1]
                .metric_sum("rate_limited_total", &[("limit", "requests")])
                .await
            + daemons[2]
                .metric_sum("rate_limited_total", &[("limit", "requests")])
                .await
            == 12.0
    );
    // The next window admits again.
    tokio::time::sleep(Duration::from_millis(
        window_end.saturating_sub(now_ms()) + 50,
    ))
    .await;
    assert_eq!(
        post(&daemons[0], &task("p", json!({"max_tokens": 1})))
            .await
            .status()
            .as_u16(),
        202
    );
}

#[tokio::test]
async fn a_redis_outage_fails_closed_and_recovers_without_a_restart() {
    let mut redis = Redis::start();
    let head = format!(
        "{}[budgets]\nper_key = {{ tokens = 100000 }}\n\n[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        keys(""),
        redis.url()
    );
    let d = DaemonBuilder::new(cfg(&head, "tokens_per_s = 2000.0")).start();
    assert_eq!(
        post(&d, &task("p", json!({"max_tokens": 2})))
            .await
            .status()
            .as_u16(),
        202
    );
    assert_eq!(d.get_json("/readyz").await.0, 200);
    redis.stop();
    let resp = post(&d, &task("p", json!({"max_tokens": 2}))).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("state store"),
        "{body}"
    );
    assert_eq!(body["retriable"], true);
    assert_eq!(d.get_json("/readyz").await.0, 503);
    assert_eq!(
        d.log_events_at_least(
            "state store unreachable: admissions that need it are refused (503) until it is back",
            1
        )
        .await
        .len(),
        1,
        "said once, not per request"
    );
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.get_json("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(&d, &task("p", json!({"max_tokens": 2})))
            .await
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        d.log_events_at_least("state store reachable again", 1)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_dead_daemons_reservation_is_reaped_when_its_lease_ends() {
    let redis = Redis::start();
    let head = format!(
        "{}[rate_limits]\nper_key = {{ concurrent = 1 }}\n\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nlease_margin_ms = 500\n",
        keys(""),
        redis.url()
    );
    let mut a = DaemonBuilder::new(cfg(&head, "tokens_per_s = 5.0")).start();
    let b = DaemonBuilder::new(cfg(&head, "tokens_per_s = 2000.0")).start();
    // A long task on A (deadline 3 s), then A dies mid-stream.
    let resp = post(
        &a,
        &task("p", json!({"max_tokens": 100, "deadline_ms": 3000})),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut reader = open_stream(&a, &id).await;
    reader.next_frame().await.expect("started");
    a.kill9();
    let killed = Instant::now();
    // B sees the slot taken while A's lease runs …
    let resp = post(&b, &task("p", json!({"max_tokens": 1}))).await;
    assert_eq!(
        resp.status().as_u16(),
        429,
        "A's task still holds the key's one slot"
    );
    // … and free once it ended (deadline 3 s + margin 0.5 s; B's upkeep runs every second).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = post(&b, &task("p", json!({"max_tokens": 1}))).await;
        if resp.status().as_u16() == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead daemon's reservation was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        killed.elapsed() >= Duration::from_millis(3000),
        "not before the lease ended"
    );
    assert!(
        b.logs()
            .iter()
            .any(|l| l.contains("reservations whose lease ended were settled"))
    );
}

async fn get_status(d: &Daemon, id: &str) -> (u16, Value) {
    let resp = send(keyed(d, reqwest::Method::GET, &format!("/v1/tasks/{id}"))).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn admit(d: &Daemon, body: Value) -> String {
    let resp = post(d, &body).await;
    assert_eq!(resp.status().as_u16(), 202);
    resp.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls a task's status on `d` until `state` (at most 15 s).
async fn wait_for(d: &Daemon, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, s) = get_status(d, id).await;
        if code == 200 && s["state"] == state {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {state}: {code} {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restart_keeps_finished_tasks_and_reports_running_ones_failed() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!(
        "{}[state]\npath = \"{}\"\n",
        keys(""),
        dir.path().join("state.sqlite").display()
    );
    let mut d = DaemonBuilder::new(cfg(&head, "slots = 2, tokens_per_s = 5.0")).start();
    let done = admit(
        &d,
        task("p", json!({"max_tokens": 2, "session_id": "kept"})),
    )
    .await;
    let finished = wait_for(&d, &done, "succeeded").await;
    let running = admit(&d, task("p", json!({"max_tokens": 500}))).await;
    wait_for(&d, &running, "running").await;
    d.kill9();

    let d = DaemonBuilder::new(cfg(&head, "slots = 2, tokens_per_s = 5.0")).start();
    let (code, after) = get_status(&d, &done).await;
    assert_eq!(
        code, 200,
        "a finished task is still known after kill -9: {after}"
    );
    assert_eq!(after["state"], "succeeded");
    assert_eq!(after["tokens_out"], finished["tokens_out"]);
    assert_eq!(after["artifact_id"], finished["artifact_id"]);
    // The task that was running when the daemon died: failed, not unknown (once the dead
    // daemon's heartbeat has run out).
    let failed = wait_for(&d, &running, "failed").await;
    assert_eq!(failed["error"]["code"], "WORKER_RESET", "{failed}");
    // Its stream says so too, and cancel is idempotent.
    let frames = orchd_testkit::read_to_end(&running, open_stream(&d, &running).await).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].event, "error");
    assert_eq!(frames[0].data["code"], "WORKER_RESET");
    assert_eq!(cancel(&d, &running).await, 204);
    // Another key does not see them (the same 404 as an unknown id).
    assert_eq!(get_status(&d, "no-such-task").await.0, 404);
}

#[tokio::test]
async fn any_daemon_answers_for_any_task_and_a_dead_daemons_tasks_fail() {
    let redis = Redis::start();
    let head = format!(
        "{}[budgets]\nper_key = {{ tokens = 1000000 }}\n\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nlease_margin_ms = 500\n",
        keys(""),
        redis.url()
    );
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|_| DaemonBuilder::new(cfg(&head, "slots = 4, tokens_per_s = 20.0")).start())
        .collect();
    let id = admit(
        &daemons[0],
        task(
            "p",
            json!({"max_tokens": 40, "session_id": "shared-session"}),
        ),
    )
    .await;
    // The session is in the store: every daemon sees it, and counts its turns together.
    let session = |d: &Daemon| {
        send(keyed(
            d,
            reqwest::Method::GET,
            "/v1/sessions/shared-session",
        ))
    };
    let resp = session(&daemons[2]).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["turns"], 1);
    let other = admit(
        &daemons[1],
        task(
            "p",
            json!({"max_tokens": 1, "session_id": "shared-session"}),
        ),
    )
    .await;
    let resp = session(&daemons[0]).await;
    assert_eq!(resp.json::<Value>().await.unwrap()["turns"], 2);
    wait_for(&daemons[0], &other, "succeeded").await;
    // Status from another daemon: relayed to the one running it.
    let (code, s) = get_status(&daemons[1], &id).await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["task_id"], id.as_str());
    // The stream through the second daemon: the first three frames, then the connection
    // drops (the task waits out the reconnect grace) …
    let mut early = open_stream(&daemons[1], &id).await;
    for want in 0..3 {
        assert_eq!(early.next_frame().await.unwrap().id, Some(want));
    }
    drop(early);
    // … and resumes through the third, after frame 2: every later frame exactly once.
    let mut reader = open_stream_after(&daemons[2], &id, Some(2)).await;
    let first = reader.next_frame().await.unwrap();
    assert_eq!(first.id, Some(3), "{first:?}");
    // Cancel through the second daemon.
    assert_eq!(cancel(&daemons[1], &id).await, 204);
    let rest = orchd_testkit::read_to_end(&id, reader).await;
    let end = rest.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["canceled"], true);
    let mut ids: Vec<u64> = std::iter::once(&first)
        .chain(&rest)
        .filter_map(|f| f.id)
        .collect();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "no frame twice");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "no gap: {ids:?}");
    assert_eq!(
        wait_for(&daemons[2], &id, "canceled").await["state"],
        "canceled"
    );

    // A daemon dies mid-stream: the others report its task failed, and its reservation
    // is settled when the lease (deadline 3 s + 0.5 s) ends.
    let doomed = admit(
        &daemons[0],
        task("p", json!({"max_tokens": 500, "deadline_ms": 3000})),
    )
    .await;
    wait_for(&daemons[1], &doomed, "running").await;
    daemons[0].kill9();
    let failed = wait_for(&daemons[1], &doomed, "failed").await;
    assert_eq!(failed["error"]["code"], "WORKER_RESET");
    assert_eq!(
        wait_for(&daemons[2], &doomed, "failed").await["state"],
        "failed"
    );
    // Reaped by the others' upkeep (every second) once the lease ends; on a loaded machine
    // the upkeep may lag, hence the wait, and the failure says what is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis_cli(&redis, &["ZCARD", "orchd:leases"]) != "0" {
        assert!(
            Instant::now() < deadline,
            "a reservation outlived its lease: {} (now {})",
            redis_cli(&redis, &["ZRANGE", "orchd:leases", "0", "-1", "WITHSCORES"]),
            now_ms()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_keys_budget_on_one_model_leaves_its_other_models_alone() {
    let per_task = reserved_per_task(4).await;
    let head = format!(
        "{}[budgets]\n[[budgets.per_key_model]]\nkey = \"*\"\nmodel = \"p-model\"\ntokens = {per_task}\nperiod = \"1h\"\n",
        keys("")
    );
    let d = DaemonBuilder::new(format!(
        "{head}\n{}",
        config(
            &default_admission("reject"),
            64,
            &[
                mock_pool("p", "tokens_per_s = 2000.0"),
                mock_pool("q", "tokens_per_s = 2000.0"),
            ]
        )
    ))
    .start();
    assert_eq!(
        post(&d, &task("p", json!({"max_tokens": 4})))
            .await
            .status()
            .as_u16(),
        202
    );
    let resp = post(&d, &task("p", json!({"max_tokens": 4}))).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert!(
        resp.headers().get("retry-after").is_some(),
        "the hour's window resets"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "BUDGET_EXCEEDED", "{body}");
    // The same key on another model is not limited by that budget.
    assert_eq!(
        post(&d, &task("q", json!({"max_tokens": 4})))
            .await
            .status()
            .as_u16(),
        202
    );
}

#[tokio::test]
async fn a_tenant_groups_rate_limit_is_shared_by_its_keys_across_daemons() {
    let redis = Redis::start();
    // Two keys of one tenant group, each with room of its own for 5 requests a minute; the
    // group has room for 4 in all.
    let head = format!(
        "[[auth.keys]]\nname = \"alice\"\nrole = \"data\"\nkey = \"{KEY}\"\ngroup = \"team\"\n\n\
         [[auth.keys]]\nname = \"bob\"\nrole = \"data\"\nkey = \"{KEY}-bob\"\ngroup = \"team\"\n\n\
         [rate_limits]\nper_key = {{ requests = 5, window_ms = 60000 }}\n\n\
         [rate_limits.groups.team]\nrequests = 4\nwindow_ms = 60000\n\n\
         [state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    );
    let daemons: Vec<Daemon> = (0..2)
        .map(|_| DaemonBuilder::new(cfg(&head, "slots = 64, tokens_per_s = 2000.0")).start())
        .collect();
    let mut admitted = 0;
    let mut refusals = Vec::new();
    for i in 0..6 {
        let key = if i % 2 == 0 {
            KEY.to_owned()
        } else {
            format!("{KEY}-bob")
        };
        let resp = daemons[i % 2]
            .http
            .post(daemons[i % 2].url("/v1/tasks"))
            .bearer_auth(key)
            .json(&task("p", json!({"max_tokens": 1})))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            202 => admitted += 1,
            429 => {
                assert!(resp.headers().get("retry-after").is_some());
                refusals.push(resp.json::<Value>().await.unwrap());
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        admitted, 4,
        "the group's 4, shared by both keys and both daemons"
    );
    assert_eq!(refusals.len(), 2);
    for body in &refusals {
        assert_eq!(body["code"], "ADMISSION_REJECT", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("tenant group \"team\"'s requests per window"),
            "{body}"
        );
    }
    // A key outside any group is limited by its own limit only.
    let solo = format!(
        "[[auth.keys]]\nname = \"carol\"\nrole = \"data\"\nkey = \"{KEY}\"\n\n\
         [rate_limits]\nper_key = {{ requests = 5, window_ms = 60000 }}\n\n\
         [rate_limits.groups.team]\nrequests = 4\nwindow_ms = 60000\n\n\
         [state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    );
    let d = DaemonBuilder::new(cfg(&solo, "slots = 64, tokens_per_s = 2000.0")).start();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            post(&d, &task("p", json!({"max_tokens": 1})))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [202, 202, 202, 202, 202, 429]);
}

#[tokio::test]
async fn a_stream_token_works_on_any_daemon_of_the_store() {
    // An EventSource behind a load balancer: the token from one daemon's 202, the stream
    // asked of another, which relays it to the daemon running the task.
    let redis = Redis::start();
    let head = format!(
        "{}[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        keys(""),
        redis.url()
    );
    let a = DaemonBuilder::new(cfg(&head, "tokens_per_s = 200.0")).start();
    let b = DaemonBuilder::new(cfg(&head, "tokens_per_s = 200.0")).start();
    let resp = post(&a, &task("p", json!({"max_tokens": 4}))).await;
    assert_eq!(resp.status().as_u16(), 202);
    let accepted: Value = resp.json().await.unwrap();
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let token = accepted["streams"]["token"].as_str().unwrap().to_owned();
    // No key at all: the token alone, on the other daemon.
    let resp = b
        .http
        .get(b.url(&format!("/v1/tasks/{id}/stream?token={token}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains("event: started"), "{body}");
    assert!(body.contains("event: end"), "{body}");
    // Bound to its task: not a key for anything else.
    let resp = b
        .http
        .get(b.url(&format!("/v1/tasks/other/stream?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}
