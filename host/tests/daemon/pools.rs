//! The control plane: pools and their health, drain, adapters and capabilities, built
//! from what is loaded and configured now; admin role only.

use std::time::Duration;

use orchd_testkit::{
    Daemon, DaemonBuilder, config, default_admission, expect_error, mock_pool, task,
};
use serde_json::{Value, json};

const ADMIN: &str = "pools-admin-key";
const DATA: &str = "pools-data-key";

fn daemon() -> Daemon {
    DaemonBuilder::new(format!(
        "[[auth.keys]]\nname = \"ops\"\nrole = \"admin\"\nkey = \"{ADMIN}\"\n\n\
         [[auth.keys]]\nname = \"app\"\nrole = \"data\"\nkey = \"{DATA}\"\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[
                mock_pool("slow", "slots = 1, tokens_per_s = 20.0"),
                mock_pool("loading", "ready = false"),
            ]
        )
    ))
    .start()
}

async fn get(d: &Daemon, path: &str, key: &str) -> reqwest::Response {
    d.http
        .get(d.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

async fn submit(d: &Daemon, body: &Value) -> String {
    let resp = d
        .http
        .post(d.url("/v1/tasks"))
        .header("x-api-key", ADMIN)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    resp.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_state(d: &Daemon, id: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = get(d, &format!("/v1/tasks/{id}"), ADMIN)
            .await
            .json()
            .await
            .unwrap();
        if v["state"] == state {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never reached {state}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pools_and_their_health_are_reported_to_admins_only() {
    let d = daemon();
    let pools: Value = get(&d, "/v1/pools", ADMIN).await.json().await.unwrap();
    let list = pools["pools"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let slow = list.iter().find(|p| p["pool_id"] == "slow").unwrap();
    assert_eq!(slow["engine"], "mock");
    assert_eq!(slow["adapter"], "mock");
    assert_eq!(
        (
            slow["live"].as_bool(),
            slow["ready"].as_bool(),
            slow["draining"].as_bool()
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(slow["metrics"]["slots_total"], 1);
    assert_eq!(slow["metrics"]["replicas"][0]["replica_id"], "slow-0");

    let health: Value = get(&d, "/v1/pools/loading/health", ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["live"], true);
    assert_eq!(health["ready"], false);
    assert!(
        health["last_error"]
            .as_str()
            .unwrap()
            .contains("loading model"),
        "{health}"
    );

    expect_error(
        get(&d, "/v1/pools/nope/health", ADMIN).await,
        404,
        "NOT_FOUND",
        "nope",
    )
    .await;
    expect_error(get(&d, "/v1/pools", DATA).await, 403, "FORBIDDEN", "admin").await;
}

#[tokio::test]
async fn a_drain_stops_new_work_and_ends_what_is_left_at_its_deadline() {
    let d = daemon();
    let running = submit(
        &d,
        &task("slow", json!({"max_tokens": 1000, "expected_tokens": 5})),
    )
    .await;
    wait_state(&d, &running, "running").await;
    let queued = submit(&d, &task("slow", json!({"max_tokens": 5}))).await;

    let drain = |deadline: u64| {
        d.http
            .post(d.url("/v1/pools/slow/drain"))
            .header("x-api-key", ADMIN)
            .json(&json!({"deadline_ms": deadline}))
            .send()
    };
    let resp = drain(600).await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(accepted["in_flight"], 2);
    // A second drain while the first is on: 409.
    expect_error(drain(100).await.unwrap(), 409, "CONFLICT", "draining").await;
    // No new work for a draining pool.
    let resp = d
        .http
        .post(d.url("/v1/tasks"))
        .header("x-api-key", ADMIN)
        .json(&task("slow", json!({})))
        .send()
        .await
        .unwrap();
    expect_error(resp, 503, "POOL_UNAVAILABLE", "draining").await;
    let health: Value = get(&d, "/v1/pools/slow/health", ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["draining"], true);
    assert_eq!(health["ready"], false);

    // The queued task runs once the slot frees? No: the running one holds it until the
    // deadline, then both end with POOL_UNAVAILABLE.
    let frames = {
        let resp = get(&d, &format!("/v1/tasks/{running}/stream"), ADMIN).await;
        orchd_testkit::read_to_end(&running, orchd_testkit::SseReader::new(resp)).await
    };
    let last = frames.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "POOL_UNAVAILABLE");
    wait_state(&d, &queued, "failed").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d
        .metric_sum("tasks_canceled_total", &[("reason", "drain")])
        .await
        < 2.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "drain cancellations not counted"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    expect_error(
        d.http
            .post(d.url("/v1/pools/nope/drain"))
            .header("x-api-key", ADMIN)
            .json(&json!({"deadline_ms": 1}))
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
        "nope",
    )
    .await;
}

#[tokio::test]
async fn adapters_and_capabilities_reflect_what_is_loaded() {
    let d = daemon();
    let adapters: Value = get(&d, "/v1/adapters", ADMIN).await.json().await.unwrap();
    let list = adapters["adapters"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for name in ["llamacpp", "mock", "openai", "tgi", "triton"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let mock = list.iter().find(|a| a["name"] == "mock").unwrap();
    assert_eq!(
        mock["abi_version"],
        orchd_host::adapters::expected_abi_version()
    );
    assert_eq!(mock["sha256"].as_str().unwrap().len(), 64);
    assert!(mock["path"].as_str().unwrap().ends_with("mock.so"));
    assert!(
        mock["features"]
            .as_array()
            .unwrap()
            .contains(&json!("embeddings"))
    );

    let caps: Value = get(&d, "/v1/capabilities", ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(caps["api_version"], "1.0.0");
    let mock = caps["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["engine"] == "mock")
        .unwrap();
    assert_eq!(mock["pools"].as_array().unwrap().len(), 2);
    assert_eq!(mock["slots_total"], 1, "only ready replicas count");
    assert!(
        mock["engine_version"]
            .as_str()
            .unwrap()
            .starts_with("mock-")
    );
    assert_eq!(caps["policies"].as_array().unwrap().len(), 4);
    assert!(caps["adapters"].as_array().unwrap().len() >= 5);
}

#[tokio::test]
async fn gpu_telemetry_is_reported_where_nvml_answers_and_absent_in_one_line_otherwise() {
    let d = daemon();
    let off = d.log_events(
        "GPU telemetry off: NVML is not available (no NVIDIA driver); gpu_utilization and vram_used_bytes are not exported",
    );
    let on = d.log_events("GPU telemetry on (NVML)");
    assert_eq!(
        off.len() + on.len(),
        1,
        "exactly one line about GPU telemetry"
    );
    let metrics = d.metrics().await;
    if on.is_empty() {
        // This machine: no driver. The series do not exist; everything else works.
        assert!(!metrics.contains("gpu_utilization{"), "{metrics}");
        assert!(!metrics.contains("vram_used_bytes{"));
        let id = submit(&d, &task("slow", json!({"max_tokens": 2}))).await;
        wait_state(&d, &id, "succeeded").await;
    }
}

#[tokio::test]
async fn a_library_dropped_into_the_adapter_directory_is_loaded_without_a_restart() {
    let mut b = DaemonBuilder::new(format!(
        "[[auth.keys]]\nname = \"ops\"\nrole = \"admin\"\nkey = \"{ADMIN}\"\n\n{}",
        config(&default_admission("reject"), 8, &[mock_pool("p", "")])
    ));
    let dir = b.scratch().join("adapters");
    std::fs::create_dir_all(&dir).unwrap();
    let dist = orchd_testkit::dist_dir().join("adapters");
    std::fs::copy(dist.join("mock.so"), dir.join("mock.so")).unwrap();
    b = b.adapters_dir(&dir);
    let d = b.start();
    let names = |v: &Value| -> Vec<String> {
        v["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let before: Value = get(&d, "/v1/adapters", ADMIN).await.json().await.unwrap();
    assert_eq!(names(&before), ["mock"]);
    let unknown = d
        .http
        .post(d.url("/v1/tasks"))
        .header("x-api-key", ADMIN)
        .json(&task("p", json!({"engine": "llamacpp"})))
        .send()
        .await
        .unwrap();
    expect_error(unknown, 400, "INVALID_PARAMS", "engine").await;

    // An operator drops a library in (copied under a temporary name, then renamed).
    std::fs::copy(dist.join("llamacpp.so"), dir.join(".llamacpp.so.part")).unwrap();
    std::fs::rename(dir.join(".llamacpp.so.part"), dir.join("llamacpp.so")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: Value = get(&d, "/v1/adapters", ADMIN).await.json().await.unwrap();
        if names(&now).contains(&"llamacpp".to_owned()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never loaded: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps: Value = get(&d, "/v1/capabilities", ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        caps["engines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["engine"] == "llamacpp")
    );
    // The engine is known now; no pool serves it yet.
    let resp = d
        .http
        .post(d.url("/v1/tasks"))
        .header("x-api-key", ADMIN)
        .json(&task("p", json!({"engine": "llamacpp"})))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "NOT_FOUND", "no pool").await;
    // The first library keeps serving.
    let id = submit(&d, &task("p", json!({"max_tokens": 2}))).await;
    wait_state(&d, &id, "succeeded").await;
}

#[tokio::test]
async fn pools_are_created_and_removed_at_runtime_and_a_created_one_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[state]\npath = \"{}\"\n\n{}",
        dir.path().join("state.sqlite").display(),
        config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "slots = 1")]
        )
    );
    let mut d = DaemonBuilder::new(cfg.clone()).start();
    let create = |d: &Daemon, body: Value| {
        let req = d.http.post(d.url("/v1/pools")).json(&body);
        async move { req.send().await.unwrap() }
    };
    let extra = json!({
        "id": "extra",
        "adapter": "mock",
        "model_ref": "extra-model",
        "replicas": [{"id": "extra-0", "config": {"slots": 2, "tokens_per_s": 500.0}}]
    });
    // No pool serves the model yet: 404, not a retriable 503.
    let resp = d.submit(&task("extra", json!({}))).await;
    assert_eq!(resp.status().as_u16(), 404);
    let resp = create(&d, extra.clone()).await;
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["pool_id"], "extra");
    assert_eq!(body["ready"], true, "{body}");
    // Served at once, without a restart.
    let id = d.submit_ok(&task("extra", json!({"max_tokens": 2}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
    // What the API refuses, each with its reason.
    let resp = create(&d, extra.clone()).await;
    assert_eq!(resp.status().as_u16(), 409);
    for (body, needle) in [
        (
            json!({"id": "x1", "adapter": "nope", "replicas": [{"id": "x1-0"}]}),
            "not loaded",
        ),
        (
            json!({"id": "x2", "adapter": "mock", "replicas": [{"id": "p-0"}]}),
            "declared twice",
        ),
        (
            json!({"id": "x3", "adapter": "mock", "replicas": [{"id": "x3-0", "config": {"slots": 0}}]}),
            "slots",
        ),
        (
            json!({"id": "x4", "adapter": "mock", "replicas": [{"id": "x4-0", "launch": {"cmd": "/bin/true", "model": "m"}}]}),
            "config file only",
        ),
    ] {
        let resp = create(&d, body.clone()).await;
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert!(err["message"].as_str().unwrap().contains(needle), "{err}");
    }
    let (_, pools) = d.get_json("/v1/pools").await;
    assert_eq!(pools["pools"].as_array().unwrap().len(), 2, "{pools}");
    // A pool of the config file is removed there.
    let resp = d.http.delete(d.url("/v1/pools/p")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 409);

    // kill -9 and start again: the created pool is back, and serves.
    d.kill9();
    let d = DaemonBuilder::new(cfg.clone()).start();
    let (_, pools) = d.get_json("/v1/pools").await;
    let ids: Vec<&str> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pool_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"extra"), "{pools}");
    let id = d.submit_ok(&task("extra", json!({"max_tokens": 2}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");

    // Replicas added and removed; the definition replaced. Each change re-makes the pool:
    // new work goes to the new one, what runs finishes where it started.
    let put = |d: &Daemon, path: &str, body: Value| {
        let req = d.http.put(d.url(path)).json(&body);
        async move { req.send().await.unwrap() }
    };
    let replicas_of = |pools: &Value| -> Vec<String> {
        pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool_id"] == "extra")
            .map(|p| {
                p["metrics"]["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["replica_id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let resp = d
        .http
        .post(d.url("/v1/pools/extra/replicas"))
        .json(&json!({"id": "extra-1", "config": {"slots": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(
        replicas_of(&d.get_json("/v1/pools").await.1),
        ["extra-0", "extra-1"]
    );
    let resp = d
        .http
        .delete(d.url("/v1/pools/extra/replicas/extra-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(replicas_of(&d.get_json("/v1/pools").await.1), ["extra-1"]);
    let resp = d
        .http
        .delete(d.url("/v1/pools/extra/replicas/extra-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409, "a pool keeps a replica");
    assert_eq!(
        put(
            &d,
            "/v1/pools/p",
            json!({"adapter": "mock", "replicas": [{"id": "z"}]})
        )
        .await
        .status()
        .as_u16(),
        409,
        "a pool of the config file is changed there"
    );
    assert_eq!(
        put(
            &d,
            "/v1/pools/extra",
            json!({"id": "other", "adapter": "mock", "replicas": [{"id": "z"}]})
        )
        .await
        .status()
        .as_u16(),
        400
    );
    let slow = json!({"adapter": "mock", "model_ref": "extra-model",
        "replicas": [{"id": "extra-slow", "config": {"slots": 2, "tokens_per_s": 20.0}}]});
    assert_eq!(
        put(&d, "/v1/pools/extra", slow).await.status().as_u16(),
        200
    );
    let running = d.submit_ok(&task("extra", json!({"max_tokens": 20}))).await;
    d.wait_state(&running, "running").await;
    let fast = json!({"adapter": "mock", "model_ref": "extra-model",
        "replicas": [{"id": "extra-fast", "config": {"slots": 2, "tokens_per_s": 500.0}}]});
    assert_eq!(
        put(&d, "/v1/pools/extra", fast).await.status().as_u16(),
        200
    );
    let next = d.submit_ok(&task("extra", json!({"max_tokens": 2}))).await;
    let frames = d.stream(&next).await;
    assert_eq!(frames[0].data["replica_id"], "extra-fast");
    let frames = d.stream(&running).await;
    assert_eq!(frames[0].data["replica_id"], "extra-slow");
    let end = frames.last().unwrap();
    assert_eq!(
        (end.event.as_str(), end.data["tokens_out"].as_u64()),
        ("end", Some(20)),
        "the task running on the replaced pool finishes there"
    );

    // Removed: new work no longer finds it, and a restart does not bring it back.
    let resp = d
        .http
        .delete(d.url("/v1/pools/extra"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let resp = d.submit(&task("extra", json!({}))).await;
    assert_eq!(resp.status().as_u16(), 404);
    let resp = d
        .http
        .delete(d.url("/v1/pools/extra"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let mut d = d;
    d.kill9();
    let d = DaemonBuilder::new(cfg).start();
    let (_, pools) = d.get_json("/v1/pools").await;
    assert_eq!(pools["pools"].as_array().unwrap().len(), 1, "{pools}");
}
