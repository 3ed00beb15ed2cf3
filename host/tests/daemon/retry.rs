//! Retry elsewhere: a task that fails before its first output, where the error-mapping
//! policy says another replica may take it, runs on another replica of its pool. The
//! client sees one `started` frame, for the replica that served it; its budget is reserved
//! and settled once; the attempts are bounded. Outlier ejection: a replica that keeps
//! failing leaves placement, then one probe task brings it back.

use orchd_testkit::{Daemon, DaemonBuilder, config, default_admission, task};
use serde_json::{Value, json};

/// Pool `r` of two mock replicas with these configs: `r-bad` (placement's first pick:
/// give it more free slots) and `r-good`.
fn pool(bad: &str, good: &str) -> String {
    format!(
        r#"
[[pools]]
id = "r"
engine = "mock"
adapter = "mock"
model_ref = "r-model"
ctx_max = 4096

[[pools.replicas]]
id = "r-bad"
config = {{ {bad} }}

[[pools.replicas]]
id = "r-good"
config = {{ {good} }}
"#
    )
}

/// Pool `r` where `r-bad` fails every task before its first output (`failure`), and
/// `r-good` works (or fails too, unless `good`).
fn failing_pool(failure: &str, good: bool) -> String {
    let good_config = if good {
        "slots = 1, tokens_per_s = 500.0"
    } else {
        "slots = 1, tokens_per_s = 500.0, failure = \"reject_submit\""
    };
    pool(&format!("slots = 8, failure = \"{failure}\""), good_config)
}

fn start(failure: &str, good: bool, head: &str) -> Daemon {
    DaemonBuilder::new(format!(
        "{head}\n{}",
        config(
            &default_admission("reject"),
            64,
            &[failing_pool(failure, good)]
        )
    ))
    .start()
}

const RETRY: &str = "failed before its first output; retrying on another replica";

/// Waits until session `session` (of a 100 000-token budget) has been charged exactly
/// `tokens` (settles land just after the end frame).
async fn charged(d: &Daemon, session: &str, tokens: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, s) = d.get_json(&format!("/v1/sessions/{session}")).await;
        let used = 100_000 - s["tokens_budget_remaining"].as_u64().unwrap();
        if used == tokens {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{session}: charged {used}, not {tokens}: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The retries logged, once `n` have arrived (log lines come late on a loaded machine).
async fn retries(d: &Daemon, n: usize) -> usize {
    d.log_events_at_least(RETRY, n).await.len()
}

#[tokio::test]
async fn a_task_failing_before_its_first_output_completes_on_another_replica() {
    for failure in ["reject_submit", "error_before_first_token"] {
        let d = start(
            failure,
            true,
            "[sessions]\nmax_turns = 100\n\n[budgets]\nper_session = { tokens = 100000 }\n",
        );
        let session = format!("retry-{failure}");
        let id = d
            .submit_ok(&task("r", json!({"max_tokens": 4, "session_id": session})))
            .await;
        let frames = d.stream(&id).await;
        let started: Vec<&Value> = frames
            .iter()
            .filter(|f| f.event == "started")
            .map(|f| &f.data)
            .collect();
        assert_eq!(started.len(), 1, "{failure}: one started frame: {frames:?}");
        assert_eq!(started[0]["replica_id"], "r-good", "{failure}");
        assert_eq!(frames[0].event, "started", "{failure}");
        let end = frames.last().unwrap();
        assert_eq!(end.event, "end", "{failure}: {frames:?}");
        assert_eq!(end.data["tokens_out"], 4);
        assert_eq!(retries(&d, 1).await, 1, "{failure}");
        let (_, status) = d.get_json(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status["replica_id"], "r-good");
        // Reserved once and settled once (just after the end frame), for what the serving
        // replica produced.
        let tokens_in = end.data["tokens_in"].as_u64().unwrap();
        charged(&d, &session, tokens_in + 4).await;
    }
}

#[tokio::test]
async fn attempts_are_bounded_and_the_last_error_is_the_clients() {
    // Both replicas fail: the task tries each once (max_attempts 3, two replicas), then
    // ends with the mapped error, after one started frame.
    let d = start("reject_submit", false, "");
    let id = d.submit_ok(&task("r", json!({"max_tokens": 4}))).await;
    let frames = d.stream(&id).await;
    let events: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(events, ["started", "error"], "{frames:?}");
    assert_eq!(frames[0].data["replica_id"], "r-good", "the last one tried");
    assert_eq!(retries(&d, 1).await, 1);
    // With retries off, the first failure is the client's.
    let d = start("reject_submit", true, "[stream]\nmax_attempts = 1\n");
    let id = d.submit_ok(&task("r", json!({"max_tokens": 4}))).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.last().unwrap().event, "error", "{frames:?}");
    assert_eq!(frames[0].data["replica_id"], "r-bad");
    assert_eq!(d.log_events(RETRY).len(), 0);
}

#[tokio::test]
async fn a_failing_replica_is_ejected_then_probed_back() {
    // r-bad fails its first two tasks (then recovers); two failures in a row eject it.
    let pools = pool(
        "slots = 8, failure = \"reject_submit\", failing_tasks = 2",
        "slots = 1, tokens_per_s = 40.0",
    );
    let d = DaemonBuilder::new(format!(
        "[outliers]\nconsecutive_failures = 2\nbase_ejection_ms = 1500\n\n{}",
        config(&default_admission("reject"), 64, &[pools])
    ))
    .start();
    let bad = |body: &Value| {
        body["pools"][0]["metrics"]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["replica_id"] == "r-bad")
            .cloned()
            .unwrap()
    };
    // Two tasks placed on r-bad (it has the most free slots) fail there and finish on r-good.
    for _ in 0..2 {
        let id = d.submit_ok(&task("r", json!({"max_tokens": 2}))).await;
        let frames = d.stream(&id).await;
        assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    }
    assert_eq!(retries(&d, 2).await, 2);
    let ejected = d
        .log_events_at_least(
            "replica ejected: out of placement for the back-off, then one probe task",
            1,
        )
        .await;
    assert_eq!(ejected.len(), 1, "{:#?}", d.logs());
    assert_eq!(ejected[0]["replica_id"], "r-bad");
    assert_eq!(ejected[0]["reason"], "consecutive failures");
    let (_, pools) = d.get_json("/v1/pools").await;
    assert_eq!(bad(&pools)["ejected"], true, "{pools}");
    assert_eq!(bad(&pools)["ejections"], 1);
    assert!(bad(&pools)["ejected_for_ms"].as_u64().unwrap() <= 1500);
    let metrics = d
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("replica_ejections_total{pool_id=\"r\",replica_id=\"r-bad\"} 1"),
        "{metrics}"
    );
    // While ejected, tasks go straight to r-good: no more retries.
    let id = d.submit_ok(&task("r", json!({"max_tokens": 2}))).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames[0].data["replica_id"], "r-good");
    assert_eq!(d.log_events(RETRY).len(), 2);
    // After the back-off, one probe task goes to r-bad (r-good's one slot is busy): it has
    // recovered, so it is back.
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let bodies: Vec<Value> = (0..3)
        .map(|_| task("r", json!({"max_tokens": 8})))
        .collect();
    let ids = futures_util::future::join_all(bodies.iter().map(|b| d.submit_ok(b))).await;
    for id in &ids {
        let frames = d.stream(id).await;
        assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    }
    let back = d
        .log_events_at_least("replica back in placement: its probe task succeeded", 1)
        .await;
    assert_eq!(back.len(), 1, "{:#?}", d.logs());
    let (_, pools) = d.get_json("/v1/pools").await;
    assert_eq!(bad(&pools)["ejected"], false, "{pools}");
}

#[tokio::test]
async fn when_its_pool_has_no_other_replica_the_task_moves_to_another_pool_of_its_model() {
    // Two pools serve model "shared": x1's only replica fails every task before its first
    // output, x2's works. Tasks pinned to x1 (with fallback allowed) move to x2.
    let pool = |id: &str, extra: &str| {
        format!(
            r#"
[[pools]]
id = "{id}"
engine = "mock"
adapter = "mock"
model_ref = "shared"
ctx_max = 4096

[[pools.replicas]]
id = "{id}-0"
config = {{ slots = 2, tokens_per_s = 500.0 {extra} }}
"#
        )
    };
    let d = DaemonBuilder::new(format!(
        "[sessions]\nmax_turns = 100\n\n[budgets]\nper_session = {{ tokens = 100000 }}\n\n{}",
        config(
            &default_admission("reject"),
            64,
            &[pool("x1", ", failure = \"reject_submit\""), pool("x2", ""),]
        )
    ))
    .start();
    let pinned = |fallback: bool, session: &str| {
        task(
            "x1",
            json!({
                "model_ref": "shared",
                "max_tokens": 4,
                "session_id": session,
                "placement": {"mode": "pin", "pin_pool_id": "x1", "allow_fallback": fallback},
            }),
        )
    };
    let id = d.submit_ok(&pinned(true, "moved")).await;
    let frames = d.stream(&id).await;
    let started: Vec<&Value> = frames
        .iter()
        .filter(|f| f.event == "started")
        .map(|f| &f.data)
        .collect();
    assert_eq!(started.len(), 1, "one started frame: {frames:?}");
    assert_eq!(started[0]["pool_id"], "x2", "{frames:?}");
    assert_eq!(started[0]["replica_id"], "x2-0", "{frames:?}");
    let end = frames.last().unwrap();
    assert_eq!(end.event, "end", "{frames:?}");
    let (_, status) = d.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status["pool_id"], "x2", "{status}");
    let moved = d.log_events_at_least(RETRY, 1).await;
    assert_eq!(moved[0]["to_pool"], "x2", "{moved:?}");
    // Charged once, for what x2 did.
    charged(&d, "moved", end.data["tokens_in"].as_u64().unwrap() + 4).await;
    // A pin without fallback keeps the task in its pool: the client gets the error.
    let id = d.submit_ok(&pinned(false, "stays")).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.last().unwrap().event, "error", "{frames:?}");
    assert_eq!(frames[0].data["pool_id"], "x1", "{frames:?}");
    assert_eq!(d.log_events(RETRY).len(), 1);
}
