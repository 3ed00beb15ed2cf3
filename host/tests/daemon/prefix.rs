//! Prefix-aware placement through the real daemon: the host hashes each prompt in blocks,
//! remembers which replica it sent them to, and the default placement policy keeps
//! requests sharing a prefix on the replica holding it until that replica reaches its load
//! cap, then spreads them. A placement component built against the frozen WIT 0.1.0 keeps
//! loading and deciding.

use orchd_testkit::{Daemon, DaemonBuilder, config, default_admission, fixture_policy, task};
use serde_json::{Value, json};

/// One pool, two replicas of 4 slots each, slow enough that tasks overlap.
fn pool() -> String {
    r#"
[[pools]]
id = "px"
engine = "mock"
adapter = "mock"
model_ref = "px-model"
ctx_max = 8192

[[pools.replicas]]
id = "px-a"
config = { slots = 4, tokens_per_s = 20.0 }

[[pools.replicas]]
id = "px-b"
config = { slots = 4, tokens_per_s = 20.0 }
"#
    .to_owned()
}

/// A shared system prompt of about 2 KiB (8 blocks), then the question.
fn shared(question: &str) -> String {
    format!(
        "{}{question}",
        "You are the support assistant of a large shop. Be brief, be kind, cite the order. "
            .repeat(26)
    )
}

async fn replica_of(d: &Daemon, id: &str) -> String {
    let (_, body) = d.get_json(&format!("/v1/tasks/{id}")).await;
    body["replica_id"].as_str().unwrap_or_default().to_owned()
}

/// Submits a task and waits until it runs; returns its id.
async fn running(d: &Daemon, prompt: &str, max_tokens: u32) -> String {
    let id = d
        .submit_ok(&task(
            "px",
            json!({"prompt": prompt, "max_tokens": max_tokens, "ctx": 4096}),
        ))
        .await;
    d.wait_state(&id, "running").await;
    id
}

#[tokio::test]
async fn shared_prefix_requests_stay_on_the_replica_holding_it_until_its_load_cap() {
    let d = DaemonBuilder::new(config(&default_admission("reject"), 64, &[pool()])).start();
    // Both idle: the tie goes to px-a, which now holds the prefix.
    let first = d
        .submit_ok(&task(
            "px",
            json!({"prompt": shared("Where is order 1?"), "max_tokens": 2, "ctx": 4096}),
        ))
        .await;
    let frames = d.stream(&first).await;
    assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    assert_eq!(replica_of(&d, &first).await, "px-a");
    // An unrelated long task (a prompt too short to have blocks) loads px-a: least loaded
    // alone would now send everything to px-b.
    let unrelated = running(&d, "hello", 400).await;
    assert_eq!(replica_of(&d, &unrelated).await, "px-a");
    // Below the cap (0.75 × 4 slots: up to 3 running) the prefix holder wins.
    for n in 2..=3 {
        let id = running(&d, &shared(&format!("Where is order {n}?")), 400).await;
        assert_eq!(
            replica_of(&d, &id).await,
            "px-a",
            "task {n} follows its prefix"
        );
    }
    // px-a is at its cap: the next one spreads to px-b...
    let spread = running(&d, &shared("Where is order 4?"), 400).await;
    assert_eq!(
        replica_of(&d, &spread).await,
        "px-b",
        "past the cap, spread"
    );
    // ...which now holds the prefix too, under its cap.
    let next = running(&d, &shared("Where is order 5?"), 400).await;
    assert_eq!(replica_of(&d, &next).await, "px-b");
}

#[tokio::test]
async fn a_placement_component_built_against_wit_0_1_0_still_loads_and_decides() {
    let cfg = format!(
        "{}\n[policies.placement]\ncomponent = \"{}\"\n",
        config(&default_admission("reject"), 8, &[pool()]),
        fixture_policy("placement-v010.wasm")
    );
    let d = DaemonBuilder::new(cfg).start();
    let (_, body) = d.get_json("/v1/policies").await;
    let policies = body["policies"].as_array().unwrap();
    let of = |kind: &str| -> &Value { policies.iter().find(|p| p["kind"] == kind).unwrap() };
    assert_eq!(of("placement")["name"], "placement-v010");
    assert_eq!(of("placement")["wit_version"], "0.1.0");
    assert_eq!(of("admission")["wit_version"], "0.2.0");
    // It breaks ties by the last replica id, the default policy by the first: px-b proves
    // the 0.1.0 component decided.
    let id = d.submit_ok(&task("px", json!({"max_tokens": 2}))).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    assert_eq!(frames[0].data["replica_id"], "px-b", "{frames:?}");
    assert_eq!(of("placement")["errors"], 0);
    let (_, after) = d.get_json("/v1/policies").await;
    let placement = after["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "placement")
        .unwrap()
        .clone();
    assert_eq!(placement["calls"], 2, "admission and dispatch: {placement}");
    assert_eq!(placement["errors"], 0, "{placement}");
}
