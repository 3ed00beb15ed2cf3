//! The browser edge and secure defaults: a page on another site cannot reach the daemon
//! (not with a "simple" text/plain POST either), DNS rebinding is refused in open mode,
//! open mode is data-only unless `--insecure-open-admin`, CORS preflights are answered for
//! configured origins, bodies must be JSON, and a drain can be undone.

use std::time::Duration;

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool, task};
use serde_json::{Value, json};

fn pools() -> String {
    config(
        &default_admission("reject"),
        8,
        &[mock_pool(
            "p",
            "slots = 2, first_token_delay_ms = 5, tokens_per_s = 50.0",
        )],
    )
}

#[tokio::test]
async fn a_cross_site_simple_request_is_refused_and_drains_nothing() {
    let d = DaemonBuilder::new(pools()).start();
    for (path, body) in [
        ("/v1/tasks", task("p", json!({})).to_string()),
        ("/v1/pools/p/drain", r#"{"deadline_ms": 1000}"#.to_owned()),
        (
            "/v1/chat/completions",
            r#"{"model": "p-model", "messages": [{"role": "user", "content": "x"}]}"#.to_owned(),
        ),
    ] {
        let resp = d
            .http
            .post(d.url(path))
            .header("origin", "http://evil.example")
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{path}");
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }
    let (_, pools) = d.get_json("/v1/pools").await;
    assert_eq!(pools["pools"][0]["draining"], false, "{pools}");
}

#[tokio::test]
async fn bodies_must_be_json() {
    let d = DaemonBuilder::new(pools()).start();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = d
            .http
            .post(d.url("/v1/tasks"))
            .body(task("p", json!({})).to_string());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 415, "{content_type:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], "INVALID_PARAMS");
    }
    let resp = d
        .http
        .post(d.url("/v1/tasks"))
        .header("content-type", "application/json; charset=utf-8")
        .body(task("p", json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn open_mode_is_data_only_and_refuses_rebound_hosts() {
    let d = DaemonBuilder::new(pools()).secure_open().start();
    let resp = d.http.get(d.url("/v1/pools")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("--insecure-open-admin"),
        "{v}"
    );
    let (status, _) = d
        .post_json("/v1/pools/p/drain", &json!({"deadline_ms": 1000}))
        .await;
    assert_eq!(status, 403);
    // Data endpoints work.
    let id = d.submit_ok(&task("p", json!({"max_tokens": 2}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
    assert!(
        d.logs()
            .iter()
            .any(|l| l.contains("open mode (no API keys)"))
    );
    // A page whose name was rebound to 127.0.0.1 still sends its own Host.
    let resp = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}")))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}")))
        .header("host", "localhost:1234")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn configured_origins_get_cors_and_preflights() {
    let d = DaemonBuilder::new(format!(
        "[cors]\nallowed_origins = [\"http://app.example:3000\"]\n\n{}",
        pools()
    ))
    .start();
    let resp = d
        .http
        .request(reqwest::Method::OPTIONS, d.url("/v1/tasks"))
        .header("origin", "http://app.example:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "http://app.example:3000");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    let resp = d
        .http
        .post(d.url("/v1/tasks"))
        .header("origin", "http://app.example:3000")
        .json(&task("p", json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://app.example:3000"
    );
    assert!(
        resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-correlation-id")
    );
    let resp = d
        .http
        .request(reqwest::Method::OPTIONS, d.url("/v1/tasks"))
        .header("origin", "http://other.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

#[tokio::test]
async fn a_drain_can_be_undone_and_its_deadline_then_ends_nothing() {
    let d = DaemonBuilder::new(pools()).start();
    let (status, _) = d
        .post_json("/v1/pools/p/drain", &json!({"deadline_ms": 400}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(d.submit(&task("p", json!({}))).await.status().as_u16(), 503);
    let resp = d
        .http
        .post(d.url("/v1/pools/p/undrain"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"pool_id": "p", "draining": false}));
    let id = d.submit_ok(&task("p", json!({"max_tokens": 10000}))).await;
    d.wait_state(&id, "running").await;
    // The undone drain's deadline passes: the new task keeps running.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, status) = d.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status["state"], "running", "{status}");
    let resp = d
        .http
        .post(d.url("/v1/pools/p/undrain"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
}

#[tokio::test]
async fn eventsource_reads_its_stream_with_the_stream_token_and_nothing_else() {
    let keys = "[[auth.keys]]\nname = \"web\"\nrole = \"data\"\nkey = \"web-key-1\"\n\n";
    let d = DaemonBuilder::new(format!("{keys}{}", pools())).start();
    let post = |body: Value| {
        d.http
            .post(d.url("/v1/tasks"))
            .header("x-api-key", "web-key-1")
            .json(&body)
            .send()
    };
    let accepted: Value = post(task("p", json!({"max_tokens": 3})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let token = accepted["streams"]["token"].as_str().unwrap().to_owned();
    assert!(accepted["streams"]["token_expires_ms"].as_u64().unwrap() > 0);
    // No key, just the token on the stream URL: the whole stream.
    let resp = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}/stream?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("event: started") && text.contains("event: end"),
        "{text}"
    );
    // Not the task's status, not a cancel, not another task's stream, not a forged token.
    let other: Value = post(task("p", json!({"max_tokens": 3})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_id = other["task_id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/v1/tasks/{id}?token={token}")),
        ("POST", format!("/v1/tasks/{id}/cancel?token={token}")),
        ("GET", format!("/v1/tasks/{other_id}/stream?token={token}")),
        (
            "GET",
            format!("/v1/tasks/{id}/stream?token=1.{}", "0".repeat(40)),
        ),
        ("GET", format!("/v1/tasks/{id}/stream")),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = d.http.request(method, d.url(&path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path}");
    }
    // The key's GET of the task hands out a fresh token.
    let status: Value = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}")))
        .header("x-api-key", "web-key-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh = status["stream_token"].as_str().unwrap();
    let resp = d
        .http
        .get(d.url(&format!("/v1/tasks/{id}/stream?token={fresh}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// A free loopback port, for the page's origin (which the daemon's CORS list must name
/// before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example page (examples/browser) in headless Chromium, driven by
/// host/tests/browser/page_check.mjs: through a proxy that cuts the stream twice, every
/// token arrives exactly once and the task succeeds; the Cancel button cancels; a no-cors
/// text/plain POST from a page on another origin creates nothing.
async fn run_page_check(keys: &str, key_args: &[&str]) {
    let browser = std::env::var("ORCHD_BROWSER").expect(
        "ORCHD_BROWSER (the folder tools/browser/setup.sh prints, with playwright-core) is set by `cargo xtask test`",
    );
    let page_port = free_port();
    let cfg = format!(
        "{keys}[cors]\nallowed_origins = [\"http://127.0.0.1:{page_port}\"]\n\n[stream]\nreconnect_grace_ms = 5000\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool(
                "p",
                "slots = 2, first_token_delay_ms = 5, tokens_per_s = 20.0"
            )],
        )
    );
    let d = DaemonBuilder::new(cfg).secure_open().start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/page_check.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args(["--pw-dir", &browser, "--daemon", d.url("").as_str()])
        .args(["--page-port", &page_port.to_string()])
        .args(key_args)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // The daemon saw the blips as reconnects, not as reasons to cancel.
    assert_eq!(
        d.metric_sum("tasks_canceled_total", &[("reason", "disconnect")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_real_browser_streams_through_blips_cancels_and_is_refused_cross_site() {
    run_page_check("", &[]).await;
}

#[tokio::test]
async fn a_real_browser_streams_with_a_stream_token_from_a_daemon_with_keys() {
    run_page_check(
        "[[auth.keys]]\nname = \"web\"\nrole = \"data\"\nkey = \"web-key-1\"\n\n",
        &["--key", "web-key-1"],
    )
    .await;
}

/// The status page (/ui) in headless Chromium, driven by host/tests/browser/ui_check.mjs:
/// the admin key entered once (never in a URL), pools, replicas and policies shown, a
/// task streaming with its tokens/s and its placement decision, the charts fed by the
/// daemon's metrics, and the Drain and Undrain buttons.
#[tokio::test]
async fn the_status_page_shows_a_task_streaming_and_its_drain_button_works() {
    let browser = std::env::var("ORCHD_BROWSER").expect(
        "ORCHD_BROWSER (the folder tools/browser/setup.sh prints, with playwright-core) is set by `cargo xtask test`",
    );
    let key = "ui-admin-key-1";
    let cfg = format!(
        "[[auth.keys]]\nname = \"ops\"\nrole = \"admin\"\nkey = \"{key}\"\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool(
                "p",
                "slots = 2, first_token_delay_ms = 5, tokens_per_s = 20.0"
            )],
        )
    );
    let d = DaemonBuilder::new(cfg).start();
    // Served without a key, as HTML with a strict content security policy.
    let resp = d.http.get(d.url("/ui")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("<title>orchestratord</title>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/ui_check.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args(["--pw-dir", &browser, "--daemon", d.url("").as_str()])
        .args(["--key", key])
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
