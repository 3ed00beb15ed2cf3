//! Retry elsewhere: a task that fails before its first output, where the error-mapping
//! policy says another replica may take it, runs on another replica of its pool. The
//! client sees one `started` frame, for the replica that served it; its budget is reserved
//! and settled once; the attempts are bounded.

use orchd_testkit::{Daemon, DaemonBuilder, config, default_admission, task};
use serde_json::{Value, json};

/// Pool `r`: replica `r-bad` fails every task before its first output (`failure`), with
/// more free slots than `r-good`, so placement picks it first.
fn pool(failure: &str, good: bool) -> String {
    let good_config = if good {
        "slots = 1, tokens_per_s = 500.0"
    } else {
        "slots = 1, tokens_per_s = 500.0, failure = \"reject_submit\""
    };
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
config = {{ slots = 8, failure = "{failure}" }}

[[pools.replicas]]
id = "r-good"
config = {{ {good_config} }}
"#
    )
}

fn start(failure: &str, good: bool, head: &str) -> Daemon {
    DaemonBuilder::new(format!(
        "{head}\n{}",
        config(&default_admission("reject"), 64, &[pool(failure, good)])
    ))
    .start()
}

const RETRY: &str = "failed before its first output; retrying on another replica";

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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, s) = d.get_json(&format!("/v1/sessions/{session}")).await;
            let used = 100_000 - s["tokens_budget_remaining"].as_u64().unwrap();
            if used == tokens_in + 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{failure}: charged {used}, not {}: {s}",
                tokens_in + 4
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
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
