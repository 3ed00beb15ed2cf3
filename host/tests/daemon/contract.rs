//! The router against the OpenAPI contract: every operation `contracts/openapi/openapi.yaml`
//! marks `served` is served by the real daemon, and the daemon serves nothing else.

use std::collections::BTreeSet;

use orchd_testkit::{DaemonBuilder, config, default_admission, mock_pool};

/// (METHOD, path) of every operation marked `x-orchd-status: served`.
fn served_in_contract() -> BTreeSet<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contracts/openapi/openapi.yaml"
    );
    let text = std::fs::read_to_string(path).expect("openapi.yaml");
    let mut in_paths = false;
    let (mut current_path, mut current_method) = (None::<String>, None::<String>);
    let mut served = BTreeSet::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if indent == 2 && trimmed.starts_with('/') && trimmed.ends_with(':') {
            current_path = Some(trimmed.trim_end_matches(':').to_owned());
            current_method = None;
        } else if indent == 4
            && let Some(m) = ["get:", "post:", "put:", "delete:", "patch:"]
                .iter()
                .find(|m| trimmed == **m)
        {
            current_method = Some(m.trim_end_matches(':').to_uppercase());
        } else if indent == 6 && trimmed == "x-orchd-status: served" {
            served.insert((
                current_method.clone().expect("status under a method"),
                current_path.clone().expect("method under a path"),
            ));
        }
    }
    served
}

#[test]
fn the_contract_marks_exactly_the_routes_the_router_is_built_from() {
    let contract = served_in_contract();
    let router: BTreeSet<(String, String)> = orchd_host::api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert!(contract.len() >= 13, "{contract:?}");
    assert_eq!(contract, router);
}

#[tokio::test]
async fn the_daemon_serves_every_documented_operation_and_nothing_else() {
    let d = DaemonBuilder::new(config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "")],
    ))
    .start();
    for (method, path) in served_in_contract() {
        let concrete = path.replace("{id}", "some-id");
        let resp = d
            .http
            .request(method.parse().unwrap(), d.url(&concrete))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(!body.contains("no route for"), "{method} {path}: {body}");
    }
    // Undocumented operations: unknown paths are 404 with an envelope, other methods 405.
    for (method, path, status) in [
        ("GET", "/v1/nothing/here", 404),
        ("GET", "/v2/tasks", 404),
        ("PUT", "/v1/tasks", 405),
        ("DELETE", "/v1/tasks/x", 405),
        ("POST", "/metrics", 405),
    ] {
        let resp = d
            .http
            .request(method.parse().unwrap(), d.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert!(resp.headers().contains_key("x-correlation-id"));
    }
}

/// Schemathesis (tools/schemathesis) against the served API with contracts/openapi as the
/// schema: every operation, its examples, coverage and fuzzed cases; no server error
/// besides documented 503s, no response that breaks the schema, no schema-valid request
/// refused or invalid one accepted.
#[tokio::test]
async fn schemathesis_finds_nothing_against_the_contract() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let cfg = std::fs::read_to_string(format!("{root}/tools/schemathesis/orchd.toml")).unwrap();
    let key = format!("k-{}", uuid::Uuid::new_v4().simple());
    let d = DaemonBuilder::new(cfg)
        .secure_open()
        .env("ORCHD_API_KEYS", &format!("fuzz:admin:{key}"))
        .start();
    let out = tokio::process::Command::new("bash")
        .arg(format!("{root}/tools/schemathesis/run.sh"))
        .arg(d.url(""))
        .arg(&key)
        .output()
        .await
        .expect("run tools/schemathesis/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
}
