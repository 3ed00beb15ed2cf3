//! Adapter libraries: a mismatched ABI or a non-library is refused with one log line; the
//! mock's injected faults become the right error frames and the daemon keeps serving.

use orchd_testkit::{
    DaemonBuilder, config, default_admission, dist_dir, fixtures_dir, mock_pool, task,
};
use serde_json::json;

#[tokio::test]
async fn libraries_built_against_another_abi_or_not_libraries_are_refused() {
    let b = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 1")],
    ));
    let dir = b.scratch().join("adapters");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(dist_dir().join("adapters/mock.so"), dir.join("mock.so")).unwrap();
    std::fs::copy(
        fixtures_dir().join("adapters/abi-mismatch.so"),
        dir.join("old-vendor.so"),
    )
    .unwrap();
    // A compatible version whose types changed (as a crate with an added enum variant).
    std::fs::copy(
        fixtures_dir().join("adapters/abi-layout.so"),
        dir.join("changed-vendor.so"),
    )
    .unwrap();
    // A real library cut short (as by an interrupted copy), and a file that is no library.
    let real = std::fs::read(dist_dir().join("adapters/mock.so")).unwrap();
    std::fs::write(dir.join("truncated.so"), &real[..real.len() / 3]).unwrap();
    std::fs::write(dir.join("notes.so"), b"these are not machine instructions").unwrap();
    let d = b.adapters_dir(&dir).start();

    let abi = orchd_host::adapters::expected_abi_version();
    let refused: Vec<_> = d
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"].as_str().is_some_and(|m| {
                m.starts_with(&format!(
                    "adapter refused: ABI version mismatch: expected {abi} (compatible), found 0.0.1 ("
                )) && m.ends_with("old-vendor.so)")
            })
        })
        .collect();
    assert_eq!(refused.len(), 1, "{:#?}", d.logs());
    let line = &refused[0];
    assert!(line["path"].as_str().unwrap().ends_with("old-vendor.so"));
    assert_eq!(line["expected_abi_version"], abi);
    assert_eq!(line["level"], "ERROR");
    let layout: Vec<String> = d
        .logs()
        .into_iter()
        .filter(|l| {
            l.contains("adapter refused: ABI layout mismatch") && l.contains("changed-vendor.so")
        })
        .collect();
    assert_eq!(layout.len(), 1, "{:#?}", d.logs());
    for needle in [
        "expected AdapterMod, found ChangedAdapterMod".to_owned(),
        format!("ABI {abi}"),
        "the library declares ABI 0.1.3".to_owned(),
    ] {
        assert!(layout[0].contains(&needle), "{needle}: {}", layout[0]);
    }
    for file in ["truncated.so", "notes.so"] {
        let refused: Vec<_> = d
            .logs()
            .into_iter()
            .filter(|l| l.contains("adapter refused") && l.contains(file))
            .collect();
        assert_eq!(
            refused.len(),
            1,
            "{file} is refused with one line: {:#?}",
            d.logs()
                .into_iter()
                .filter(|l| l.contains("adapter"))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(d.log_events("adapter loaded").len(), 1);

    let id = d.submit_ok(&task("p", json!({}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
}

#[tokio::test]
async fn engine_faults_become_error_frames_and_the_daemon_keeps_serving() {
    let mut pools = vec![mock_pool("ok", "slots = 1")];
    for (id, fault) in [
        (
            "midstream",
            "failure = \"error_mid_stream\", fail_after_tokens = 2",
        ),
        ("early", "failure = \"error_before_first_token\""),
        ("rejects", "failure = \"reject_submit\""),
        ("panics", "failure = \"panic_on_submit\""),
        (
            "dies",
            "failure = \"panic_mid_stream\", fail_after_tokens = 1",
        ),
        ("stalls", "failure = \"stall\", fail_after_tokens = 1"),
    ] {
        pools.push(mock_pool(id, fault));
    }
    let cfg = format!(
        "[stream]\ndecode_idle_timeout_ms = 300\n\n{}",
        config(&default_admission("reject"), 8, &pools)
    );
    let d = DaemonBuilder::new(cfg).start();
    for (pool, code, tokens) in [
        ("midstream", "WORKER_RESET", 2),
        ("early", "WORKER_RESET", 0),
        ("rejects", "WORKER_RESET", 0),
        ("panics", "WORKER_RESET", 0),
        ("dies", "WORKER_RESET", 1),
        ("stalls", "DECODE_TIMEOUT", 1),
    ] {
        let id = d.submit_ok(&task(pool, json!({"max_tokens": 20}))).await;
        let frames = d.stream(&id).await;
        let last = frames.last().unwrap();
        assert_eq!(last.event, "error", "{pool}: {frames:?}");
        assert_eq!(last.data["code"], code, "{pool}: {}", last.data);
        assert_eq!(last.data["engine"], "mock");
        assert_eq!(last.data["pool_id"], pool);
        assert!(last.data["correlation_id"].is_string());
        assert_eq!(
            last.data["policy_label"], "error-mapping-default",
            "mapped by the policy"
        );
        let n = frames.iter().filter(|f| f.event == "token").count();
        assert_eq!(n, tokens, "{pool}");
        let (_, status) = d.get_json(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status["state"], "failed");

        let ok = d.submit_ok(&task("ok", json!({}))).await;
        assert_eq!(
            d.stream(&ok).await.last().unwrap().event,
            "end",
            "serving after {pool}"
        );
    }
}

/// A pool on the mock with its own health interval.
fn probed_pool(id: &str, mock: &str, interval_ms: u32) -> String {
    format!(
        "\n[[pools]]\nid = \"{id}\"\nadapter = \"mock\"\nmodel_ref = \"{id}-model\"\nctx_max = 4096\nhealth_interval_ms = {interval_ms}\n\n[[pools.replicas]]\nid = \"{id}-0\"\nconfig = {{ {mock} }}\n"
    )
}

#[tokio::test]
async fn a_panicking_adapter_takes_its_replica_out_until_a_probe_brings_it_back() {
    let cfg = config(
        &default_admission("reject"),
        8,
        &[
            mock_pool("ok", "slots = 1"),
            // Probed once a minute: it stays out for the whole test.
            probed_pool("stays-out", "failure = \"panic_on_submit\"", 60_000),
            // Probed every 200 ms: back almost at once (its health is fine).
            probed_pool("comes-back", "failure = \"panic_on_submit\"", 200),
        ],
    );
    let d = DaemonBuilder::new(cfg).start();
    let id = d.submit_ok(&task("stays-out", json!({}))).await;
    let last = d.stream(&id).await.pop().unwrap();
    assert_eq!(
        last.data["code"], "WORKER_RESET",
        "the error-mapping policy's answer"
    );
    // Out of placement now: the pool is not ready.
    let resp = d.submit(&task("stays-out", json!({}))).await;
    orchd_testkit::expect_error(resp, 503, "POOL_UNREADY", "ready").await;
    assert!(
        d.log_events("replica marked unhealthy until a health probe says it is ready")
            .iter()
            .any(|e| e["replica_id"] == "stays-out-0")
    );
    // The other panicking pool is probed again and serves (and panics) again.
    let id = d.submit_ok(&task("comes-back", json!({}))).await;
    assert_eq!(
        d.stream(&id).await.pop().unwrap().data["code"],
        "WORKER_RESET"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let resp = d.submit(&task("comes-back", json!({}))).await;
        if resp.status().as_u16() == 202 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        d.log_events("replica ready")
            .iter()
            .any(|e| e["replica_id"] == "comes-back-0")
    );
    // Everything else kept serving.
    let ok = d.submit_ok(&task("ok", json!({}))).await;
    assert_eq!(d.stream(&ok).await.last().unwrap().event, "end");
}

#[tokio::test]
async fn quick_start_pools_and_engines_that_are_not_up() {
    // `--pool` adds a pool of one replica; its engine is not running: the pool exists,
    // is not ready, and tasks for it get 503 POOL_UNREADY while the rest serves.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "")],
    ))
    .arg("--pool")
    .arg(format!("llama=llamacpp@http://127.0.0.1:{port}"))
    .start();
    let configured = d
        .log_events("replica configured")
        .into_iter()
        .find(|e| e["replica_id"] == "llama-0")
        .expect("the quick-start replica");
    assert_eq!(configured["pool_id"], "llama");
    assert_eq!(configured["engine"], "llamacpp");
    assert_eq!(configured["ready"], false);
    let resp = d
        .submit(&task(
            "p",
            json!({"engine": "llamacpp", "model_ref": "llama"}),
        ))
        .await;
    orchd_testkit::expect_error(resp, 503, "POOL_UNREADY", "ready").await;
    let id = d.submit_ok(&task("p", json!({}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");

    // Malformed --pool values stop start-up with one line, exit 64.
    for bad in [
        "llama",
        "llama=llamacpp",
        "bad id=llamacpp@http://x",
        "l=llamacpp@ftp://x",
    ] {
        let (code, stderr, _) = DaemonBuilder::new(config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "")],
        ))
        .arg("--pool")
        .arg(bad)
        .run_to_exit();
        assert_eq!(code, 64, "{bad}: {stderr}");
        assert!(stderr.contains("--pool"), "{bad}: {stderr}");
    }
}
