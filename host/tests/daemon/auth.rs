//! API keys: 401 without, 403 unknown or role too low, ownership (404 for another key's
//! task), open mode loopback-only, and the secret never reaches a log line.

use orchd_testkit::{Daemon, DaemonBuilder, config, default_admission, mock_pool, task};
use serde_json::{Value, json};

const ALICE: &str = "alice-canary-7f3e9b2c1d";
const BOB: &str = "bob-canary-0a1b2c3d4e";
const ROOT: &str = "root-canary-99aa88bb77";

fn daemon() -> Daemon {
    // bob is given by digest only, root through the environment.
    let bob_sha = {
        use std::fmt::Write;
        let digest = sha256(BOB.as_bytes());
        digest.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let cfg = format!(
        "[[auth.keys]]\nname = \"alice\"\nrole = \"data\"\nkey = \"{ALICE}\"\n\n[[auth.keys]]\nname = \"bob\"\nrole = \"data\"\nsha256 = \"{bob_sha}\"\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "slots = 2")]
        )
    );
    DaemonBuilder::new(cfg)
        .env("ORCHD_API_KEYS", &format!("root:admin:{ROOT}"))
        .start()
}

/// SHA-256 of `data` (test-side, to configure a key by digest).
fn sha256(data: &[u8]) -> [u8; 32] {
    // The daemon's crate graph already has sha2; the test binary links it via orchd-host.
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    key: Option<(&str, &str)>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = d.http.request(method.parse().unwrap(), d.url(path));
    if let Some((header, value)) = key {
        req = req.header(header, value);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert!(resp.headers().contains_key("x-correlation-id"), "{path}");
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn keys_roles_and_ownership() {
    let d = daemon();
    let body = task("p", json!({"task_id": "alice-task"}));
    let (status, err) = call(&d, "POST", "/v1/tasks", None, Some(&body)).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    assert!(err["correlation_id"].is_string());
    let (status, err) = call(
        &d,
        "POST",
        "/v1/tasks",
        Some(("x-api-key", "nope")),
        Some(&body),
    )
    .await;
    assert_eq!((status, err["code"].as_str()), (403, Some("FORBIDDEN")));

    let alice = Some(("x-api-key", ALICE));
    let bearer_bob = format!("Bearer {BOB}");
    let bob = Some(("authorization", bearer_bob.as_str()));
    let root = Some(("x-api-key", ROOT));
    let (status, _) = call(&d, "POST", "/v1/tasks", alice, Some(&body)).await;
    assert_eq!(status, 202);

    // Another data key sees nothing of alice's task: the same 404 as an unknown id.
    for (method, path) in [
        ("GET", "/v1/tasks/alice-task"),
        ("GET", "/v1/tasks/alice-task/stream"),
        ("POST", "/v1/tasks/alice-task/cancel"),
    ] {
        let (status, err) = call(&d, method, path, bob, None).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{method} {path}"
        );
    }
    let (status, task) = call(&d, "GET", "/v1/tasks/alice-task", alice, None).await;
    assert_eq!(status, 200, "{task}");
    let (status, _) = call(&d, "GET", "/v1/tasks/alice-task", root, None).await;
    assert_eq!(status, 200, "admin sees everything");

    // The control plane needs the admin role.
    let (status, err) = call(&d, "GET", "/v1/policies", alice, None).await;
    assert_eq!((status, err["code"].as_str()), (403, Some("FORBIDDEN")));
    let (status, _) = call(&d, "GET", "/v1/policies", root, None).await;
    assert_eq!(status, 200);

    // Exempt routes.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(call(&d, "GET", path, None, None).await.0, 200, "{path}");
    }
    let metrics = d.http.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);

    // The canary: no secret ever reaches the log; fingerprints do.
    let logs = d.logs().join("\n");
    for secret in [ALICE, BOB, ROOT] {
        assert!(!logs.contains(secret), "{secret} leaked into the log");
    }
    assert!(
        logs.contains("\"key\":\""),
        "requests log the key fingerprint"
    );
}

#[test]
fn open_mode_is_loopback_only() {
    let cfg = config(&default_admission("reject"), 8, &[mock_pool("p", "")]);
    let (code, stderr, _) = DaemonBuilder::new(cfg.clone())
        .addr("0.0.0.0:0")
        .run_to_exit();
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("needs API keys"), "{stderr}");
    // With a key, a non-loopback bind is allowed.
    let d = DaemonBuilder::new(cfg)
        .addr("0.0.0.0:0")
        .env("ORCHD_API_KEYS", "k:data:secret-1")
        .start();
    assert!(
        d.log_events("no API keys configured: serving in open mode (loopback only)")
            .is_empty()
    );
}

#[test]
fn bad_key_configs_exit_64() {
    let cfg = config(&default_admission("reject"), 8, &[mock_pool("p", "")]);
    for (env, needle) in [
        ("k:root:secret", "role must be data or admin"),
        ("k:data", "must be name:role:key"),
        ("k:data:a,k:data:b", "declared twice"),
    ] {
        let (code, stderr, _) = DaemonBuilder::new(cfg.clone())
            .env("ORCHD_API_KEYS", env)
            .run_to_exit();
        assert_eq!(code, 64, "{env}: {stderr}");
        assert!(stderr.contains(needle), "{env}: {stderr}");
        assert!(!stderr.contains("secret"), "the key is not echoed");
    }
}
