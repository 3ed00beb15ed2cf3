//! Hardening: precompiled policies load only if this install sealed them; refused requests
//! store nothing; the session table is bounded; API keys can stay out of argv.

use std::os::unix::fs::PermissionsExt;

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool, task};
use serde_json::{Value, json};

fn pools() -> String {
    config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 2, tokens_per_s = 500.0")],
    )
}

fn cached_flags(d: &orchd_testkit::Daemon) -> Vec<bool> {
    d.log_events("policy loaded")
        .iter()
        .map(|e| e["cached"].as_bool().expect("cached is logged"))
        .collect()
}

#[tokio::test]
async fn precompiled_policies_load_only_if_this_install_sealed_them() {
    let state = tempfile::tempdir().unwrap();
    let cache = state.path().join("cache");
    let start = || DaemonBuilder::new(pools()).cache_dir(&cache).start();

    let mut d = start();
    assert_eq!(cached_flags(&d), [false; 4], "first start compiles");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache directory is private");
    let key = state.path().join("cache.key");
    assert_eq!(
        mode(&key),
        0o600,
        "the key lives beside the cache, not in it"
    );
    d.terminate();

    let d = start();
    assert_eq!(
        cached_flags(&d),
        [true; 4],
        "a restart loads what it sealed"
    );
    drop(d);

    // Someone with write access to the cache changes the compiled code: one byte of each
    // file, the seal left as it was.
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 4);
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(f, bytes).unwrap();
    }
    let d = start();
    assert_eq!(
        cached_flags(&d),
        [false; 4],
        "changed files are not loaded: every policy is compiled again"
    );
    let refused = d
        .logs()
        .iter()
        .filter(|l| l.contains("did not write"))
        .count();
    assert_eq!(refused, 4, "each refusal is logged");
    let id = d.submit_ok(&task("p", json!({"max_tokens": 3}))).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.last().unwrap().event, "end");
}

#[tokio::test]
async fn a_refused_request_creates_no_session_and_no_budget_account() {
    let cfg = format!("[budgets]\nper_session = {{ tokens = 10 }}\n\n{}", pools());
    let d = DaemonBuilder::new(cfg).start();
    // Malformed: refused before anything is stored.
    let resp = d
        .submit(&task(
            "p",
            json!({"session_id": "s-bad", "priority": "urgent"}),
        ))
        .await;
    assert_eq!(resp.status().as_u16(), 400);
    // Over the session's budget: refused by the budget policy.
    let resp = d
        .submit(&task("p", json!({"session_id": "s-poor", "max_tokens": 8})))
        .await;
    assert_eq!(resp.status().as_u16(), 429);
    // A 1 MB session id.
    let resp = d
        .submit(&task("p", json!({"session_id": "x".repeat(1 << 20)})))
        .await;
    assert!(
        [400, 413].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
    for id in ["s-bad", "s-poor"] {
        let (status, body) = d.get_json(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 404, "{id}: {body}");
    }
    // The refused session's budget is whole: a fitting request is admitted.
    let ok = d
        .submit_ok(&task("p", json!({"session_id": "s-poor", "max_tokens": 1})))
        .await;
    d.stream(&ok).await;
    let (status, s) = d.get_json("/v1/sessions/s-poor").await;
    assert_eq!(status, 200);
    assert_eq!(s["turns"], 1, "{s}");
}

#[tokio::test]
async fn the_session_table_is_bounded() {
    let cfg = format!("[sessions]\nmax_sessions = 2\n\n{}", pools());
    let d = DaemonBuilder::new(cfg).start();
    for s in ["a", "b"] {
        let id = d
            .submit_ok(&task("p", json!({"session_id": s, "max_tokens": 1})))
            .await;
        d.stream(&id).await;
    }
    let resp = d
        .submit(&task("p", json!({"session_id": "c", "max_tokens": 1})))
        .await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "ADMISSION_REJECT", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("max_sessions"),
        "{body}"
    );
    // An existing session is still served.
    let id = d
        .submit_ok(&task("p", json!({"session_id": "a", "max_tokens": 1})))
        .await;
    d.stream(&id).await;
    assert_eq!(
        d.metric_sum("bounded_evictions_total", &[("what", "sessions")])
            .await,
        0.0,
        "nothing expired: nothing was evicted"
    );
}

#[tokio::test]
async fn api_keys_come_from_a_file_and_keys_on_argv_are_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# keys\napp:data:file-secret\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = DaemonBuilder::new(pools())
        .arg("--api-keys-file")
        .arg(file.to_str().unwrap())
        .start();
    let post = |key: &'static str| {
        d.http
            .post(d.url("/v1/tasks"))
            .bearer_auth(key)
            .json(&task("p", json!({"max_tokens": 1})))
            .send()
    };
    assert_eq!(post("file-secret").await.unwrap().status().as_u16(), 202);
    assert_eq!(post("wrong").await.unwrap().status().as_u16(), 403);
    assert_eq!(
        d.log_events("the API keys file is readable by other users; make it 0600")
            .len(),
        1
    );
    assert!(d.logs().iter().all(|l| !l.contains("file-secret")));
    drop(d);

    let d = DaemonBuilder::new(pools())
        .arg("--api-keys")
        .arg("app:data:argv-secret")
        .start();
    assert_eq!(
        d.log_events(
            "API keys were given on the command line, where any local user can read them; use ORCHD_API_KEYS or --api-keys-file"
        )
        .len(),
        1
    );
}
