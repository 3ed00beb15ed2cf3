//! SIGTERM: /readyz turns 503, new tasks get 503 with Retry-After, running streams get
//! the grace period and then a terminal frame, and the process exits 0.

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool, task};
use serde_json::{Value, json};

#[tokio::test]
async fn sigterm_drains_then_ends_streams_and_exits_zero() {
    let cfg = format!(
        "[stream]\nshutdown_grace_ms = 1500\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "slots = 2, tokens_per_s = 50.0")]
        )
    );
    let mut d = DaemonBuilder::new(cfg).start();
    let long = d.submit_ok(&task("p", json!({"max_tokens": 100000}))).await;
    let short = d.submit_ok(&task("p", json!({"max_tokens": 20}))).await;
    let mut reader = d.open_stream(&long).await;
    while reader.next_frame().await.expect("open").event != "token" {}

    d.signal_term();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = d.get_json("/readyz").await;
    assert_eq!(status, 503);
    let resp = d.submit(&task("p", json!({}))).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "POOL_UNAVAILABLE");

    // The short task finishes within the grace period; the long one is ended after it.
    assert_eq!(d.stream(&short).await.last().unwrap().event, "end");
    let mut last = None;
    while let Some(f) = reader.next_frame().await {
        last = Some(f);
    }
    let last = last.expect("a terminal frame");
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "POOL_UNAVAILABLE");
    let code = tokio::task::spawn_blocking(move || d.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
