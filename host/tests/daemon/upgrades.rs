//! Adapter upgrades without a restart or a crash: the daemon maps private copies, so a
//! plain `cp` over a loaded library cannot touch running code, and a new build (same name,
//! any file name) is loaded beside the old one and takes new work while started work
//! finishes on the old one.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchd_testkit::{
    Daemon, DaemonBuilder, config, default_admission, dist_dir, fixtures_dir, mock_pool, task,
};
use serde_json::json;

/// A daemon whose adapter directory holds only the mock (0.1.0), with one pool on it whose
/// streams last about a second.
fn daemon_with_mock() -> (Daemon, std::path::PathBuf) {
    let b = DaemonBuilder::new(config(
        &default_admission("reject"),
        256,
        &[mock_pool("p", "slots = 64, tokens_per_s = 20.0")],
    ));
    let dir = b.scratch().join("adapters");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(dist_dir().join("adapters/mock.so"), dir.join("mock.so")).unwrap();
    let d = b.adapters_dir(&dir).start();
    (d, dir)
}

/// `GET /v1/adapters`: (version, serving) of every loaded mock.
async fn mock_versions(d: &Daemon) -> Vec<(String, bool)> {
    let (status, body) = d.get_json("/v1/adapters").await;
    assert_eq!(status, 200);
    body["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "mock")
        .map(|a| {
            (
                a["version"].as_str().unwrap().to_owned(),
                a["serving"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Waits until the mock serving is `version` (the watcher debounces for 300 ms).
async fn wait_serving(d: &Daemon, version: &str) -> Vec<(String, bool)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let versions = mock_versions(d).await;
        if versions.iter().any(|(v, serving)| v == version && *serving) {
            return versions;
        }
        assert!(
            Instant::now() < deadline,
            "{version} never served: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Streams a task to its end; its `started` frame's engine version and its last event.
async fn run_one(d: &Daemon, max_tokens: u32) -> (String, String) {
    let id = d
        .submit_ok(&task("p", json!({"max_tokens": max_tokens})))
        .await;
    let frames = d.stream(&id).await;
    let started = frames
        .iter()
        .find(|f| f.event == "started")
        .map(|f| f.data["engine_version"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let last = frames.last().unwrap();
    let end = if last.event == "end" && last.data["canceled"] != true {
        "end".to_owned()
    } else {
        format!("{} {}", last.event, last.data)
    };
    (started, end)
}

#[tokio::test]
async fn a_cp_over_a_loaded_library_while_streams_run_crashes_nothing() {
    let (d, dir) = daemon_with_mock();
    let d = Arc::new(d);
    assert_eq!(mock_versions(&d).await, [("0.1.0".to_owned(), true)]);
    // 20 streams of about a second each, running while the file is overwritten in place.
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let d = Arc::clone(&d);
            tokio::spawn(async move { run_one(&d, 20).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What an operator's plain `cp` does: truncate the file and write the new build into
    // the same inode, while the daemon runs code from it.
    std::fs::copy(
        fixtures_dir().join("adapters/mock-0.1.1.so"),
        dir.join("mock.so"),
    )
    .unwrap();
    for s in streams {
        let (engine_version, end) = s.await.unwrap();
        assert_eq!(end, "end", "every stream completes");
        assert_eq!(engine_version, "mock-0.1.0", "started before the upgrade");
    }
    let versions = wait_serving(&d, "0.1.1").await;
    assert_eq!(
        versions,
        [("0.1.0".to_owned(), false), ("0.1.1".to_owned(), true)],
        "both versions are loaded; the new one serves"
    );
    // The new build serves the next task.
    let (engine_version, end) = run_one(&d, 2).await;
    assert_eq!(
        (engine_version.as_str(), end.as_str()),
        ("mock-0.1.1", "end")
    );
    // The daemon never mapped the file in the adapter directory.
    let (_, body) = d.get_json("/v1/adapters").await;
    for a in body["adapters"].as_array().unwrap() {
        let mapped = a["mapped_path"].as_str().unwrap();
        assert!(!mapped.starts_with(dir.to_str().unwrap()), "{a}");
        assert!(Path::new(mapped).exists());
    }
}

#[tokio::test]
async fn an_upgrade_under_load_under_another_file_name_fails_no_task() {
    let (d, dir) = daemon_with_mock();
    let d = Arc::new(d);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Eight clients in a closed loop, each running short tasks one after another.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (d, stop) = (Arc::clone(&d), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut seen: Vec<(String, String)> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seen.push(run_one(&d, 4).await);
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The recommended way: copy under a temporary name, rename into place.
    let tmp = dir.join(".mock-0.1.1.so.tmp");
    std::fs::copy(fixtures_dir().join("adapters/mock-0.1.1.so"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("mock-0.1.1.so")).unwrap();
    wait_serving(&d, "0.1.1").await;
    // Load goes on a while on the new version.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = std::collections::BTreeMap::<String, u32>::new();
    for c in clients {
        for (engine_version, end) in c.await.unwrap() {
            assert_eq!(end, "end", "no task fails across the upgrade");
            *versions.entry(engine_version).or_default() += 1;
        }
    }
    assert!(
        versions.get("mock-0.1.0").is_some_and(|&n| n > 0)
            && versions.get("mock-0.1.1").is_some_and(|&n| n > 0),
        "tasks ran on both versions: {versions:?}"
    );
    let lines = d.log_events(
        "adapter loaded beside the version that served; new work goes to it, started work finishes on the old one (kept mapped until restart)",
    );
    assert_eq!(lines.len(), 1, "{:#?}", d.logs());
    assert_eq!(lines[0]["replaced"], "0.1.0");
}
