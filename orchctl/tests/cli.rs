//! orchctl against the real daemon from `target/dist`: the commands an operator runs,
//! their tables and JSON, their errors, and `top --once`.

use std::process::{Command, Output};

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool};
use serde_json::Value;

/// orchctl with nothing from this environment: no URL, key or config file but the
/// test's own.
fn bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchctl"));
    cmd.env_remove("ORCHD_URL")
        .env_remove("ORCHD_KEY")
        .env_remove("ORCHCTL_CONFIG")
        .env("HOME", "/nonexistent");
    cmd
}

fn orchctl(base: &str, args: &[&str]) -> Output {
    bare()
        .args(args)
        .env("ORCHD_URL", base)
        .output()
        .expect("run orchctl")
}

fn ok(base: &str, args: &[&str]) -> String {
    let out = orchctl(base, args);
    assert!(
        out.status.success(),
        "orchctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn base(d: &orchd_testkit::Daemon) -> String {
    d.url("").trim_end_matches('/').to_owned()
}

#[test]
fn an_operator_watches_and_steers_the_daemon_without_curl() {
    let mut builder = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 2, tokens_per_s = 500.0")],
    ));
    // `policies replay` stages the candidate in the daemon's policy directory: a scratch
    // copy, not target/dist.
    builder.own_policies_dir();
    let d = builder.start();
    let url = base(&d);
    // Pools, as a table and as JSON.
    let table = ok(&url, &["pools", "list"]);
    assert!(table.starts_with("POOL"), "{table}");
    assert!(table.contains("p-model"), "{table}");
    let pools: Value = serde_json::from_str(&ok(&url, &["--json", "pools", "list"])).unwrap();
    assert_eq!(pools["pools"][0]["pool_id"], "p");
    // A task, streamed to the terminal.
    let out = orchctl(
        &url,
        &[
            "tasks",
            "submit",
            "--model",
            "p-model",
            "--prompt",
            "hello",
            "--max-tokens",
            "4",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("end: 4 tokens out"), "{stderr}");
    assert!(!out.stdout.is_empty());
    // Drain and undrain.
    ok(&url, &["pools", "drain", "p", "--deadline-ms", "60000"]);
    let pools: Value = serde_json::from_str(&ok(&url, &["--json", "pools", "list"])).unwrap();
    assert_eq!(pools["pools"][0]["draining"], true);
    ok(&url, &["pools", "undrain", "p"]);
    let pools: Value = serde_json::from_str(&ok(&url, &["--json", "pools", "list"])).unwrap();
    assert_eq!(pools["pools"][0]["draining"], false);
    // Policies, and a candidate replayed over the recorded decisions.
    let policies = ok(&url, &["policies", "list"]);
    assert!(policies.contains("admission-default"), "{policies}");
    let candidate = std::path::Path::new(&std::env::var("ORCHD_DIST").expect("ORCHD_DIST"))
        .join("policies/admission-default.wasm");
    let report = ok(
        &url,
        &[
            "policies",
            "replay",
            "admission",
            candidate.to_str().unwrap(),
        ],
    );
    assert!(
        report.starts_with("replay of admission with admission-default"),
        "{report}"
    );
    // The live view, one frame, with a task running.
    let id = ok(
        &url,
        &[
            "tasks",
            "submit",
            "--model",
            "p-model",
            "--prompt",
            "long",
            "--max-tokens",
            "5000",
            "--no-stream",
        ],
    )
    .trim()
    .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status: Value =
            serde_json::from_str(&ok(&url, &["--json", "tasks", "get", &id])).unwrap();
        if status["state"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let frame = ok(&url, &["top", "--once", "--interval-ms", "200"]);
    assert!(frame.contains("running tasks"), "{frame}");
    assert!(frame.contains(&id), "the running task shows: {frame}");
    ok(&url, &["tasks", "cancel", &id]);
    assert!(frame.contains("orchctl top"), "{frame}");
    assert!(frame.contains("POOL / REPLICA"), "{frame}");
    assert!(frame.contains("p-0"), "{frame}");
    assert!(frame.contains("admission-default"), "{frame}");
    // Errors are the daemon's, on stderr, with a failing exit status.
    let out = orchctl(&url, &["tasks", "get", "no-such-task"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("404"), "{stderr}");
}

#[test]
fn url_and_key_come_from_flags_then_environment_then_the_config_file() {
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 1")],
    ))
    .start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orchctl.toml");
    std::fs::write(&file, format!("url = \"{}\"\n", base(&d))).unwrap();
    // From the config file alone.
    let out = bare()
        .args(["pools", "list"])
        .env("ORCHCTL_CONFIG", &file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A flag wins over the file: a port nothing listens on fails.
    let out = bare()
        .args(["--url", "http://127.0.0.1:9", "pools", "list"])
        .env("ORCHCTL_CONFIG", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach http://127.0.0.1:9"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A config file that is named but missing is an error, not a silent default.
    let out = bare()
        .args(["--config", "/nonexistent/x.toml", "pools", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
