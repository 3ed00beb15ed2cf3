//! The shipped adapters against the kit, through their `.so` in `target/dist/adapters`:
//! the mock fully (it can be made to panic), and the HTTP adapters' classified failures
//! against an address where no engine listens. Against real engines they run in the
//! real-engine tier (`cargo xtask e2e`).

use orchd_adapter_conformance::{Plan, run};
use orchd_testkit::dist_dir;

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn the_mock_adapter_is_conformant() {
    let mut plan = Plan::new(r#"{"slots": 2, "first_token_delay_ms": 5, "tokens_per_s": 500.0}"#);
    plan.panic_config = Some(r#"{"failure": "panic_on_submit"}"#.into());
    plan.panic_mid_stream_config = Some(
        r#"{"failure": "panic_mid_stream", "fail_after_tokens": 2, "tokens_per_s": 500.0}"#.into(),
    );
    let report = run(&dist_dir().join("adapters/mock.so"), &plan).await;
    print!("{}", report.render());
    assert!(report.passed());
    for check in [
        "contained panic",
        "panic mid-stream",
        "cancel before the first token",
        "cancel after the end",
    ] {
        let c = report.checks.iter().find(|c| c.name == check).unwrap();
        assert_eq!(c.passed, Some(true), "{check}");
    }
}

#[tokio::test]
async fn the_kit_fails_what_is_not_an_adapter() {
    let dir = tempfile_dir();
    let fake = dir.join("fake.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let report = run(&fake, &Plan::new("{}")).await;
    assert!(!report.passed());
    assert_eq!(report.checks[0].name, "load");
}

#[tokio::test]
async fn http_adapters_classify_an_engine_that_is_not_there() {
    let port = closed_port();
    for (lib, config) in [
        (
            "llamacpp.so",
            format!(r#"{{"url": "http://127.0.0.1:{port}", "http": {{"max_attempts": 2}}}}"#),
        ),
        (
            "openai.so",
            format!(
                r#"{{"url": "http://127.0.0.1:{port}", "model": "m", "http": {{"max_attempts": 2}}}}"#
            ),
        ),
    ] {
        // The serving checks fail without an engine; the failure checks must pass.
        let mut plan = Plan::new(config.clone());
        plan.unreachable_config = Some(config);
        plan.timeout = std::time::Duration::from_secs(10);
        let report = run(&dist_dir().join("adapters").join(lib), &plan).await;
        print!("{lib}:\n{}", report.render());
        for name in ["load", "bad config refused", "classified errors"] {
            let check = report.checks.iter().find(|c| c.name == name).unwrap();
            assert_eq!(check.passed, Some(true), "{lib}: {name}: {}", check.detail);
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orchd-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
