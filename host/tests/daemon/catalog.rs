//! The model catalog: register, read, verify against the local file, retire (410 for new
//! tasks), strict trust, metrics; durable across restarts and `kill -9` under load.

use std::time::Duration;

use orchd_testkit::{
    Daemon, DaemonBuilder, config, default_admission, expect_error, mock_pool, task,
};
use serde_json::{Value, json};
use sha2::Digest;

fn cfg(extra: &str) -> String {
    format!(
        "{extra}\n{}",
        config(
            &default_admission("reject"),
            64,
            &[mock_pool("p", "slots = 4, tokens_per_s = 2000.0")]
        )
    )
}

async fn post(d: &Daemon, path: &str, body: Value) -> reqwest::Response {
    d.http.post(d.url(path)).json(&body).send().await.unwrap()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn verification(d: &Daemon, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = d.get_json(&format!("/v1/catalog/models/{id}")).await;
        if !m["verification"].is_null() {
            return m["verification"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no verification for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn register_verify_retire_and_trust() {
    let d = DaemonBuilder::new(cfg("")).start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.gguf");
    std::fs::write(&file, b"GGUF pretend weights").unwrap();
    let good = digest(b"GGUF pretend weights");

    let resp = post(
        &d,
        "/v1/catalog/models",
        json!({"id": "p-model", "digest": good,
        "source_url": format!("file:{}", file.display()), "tags": ["demo"]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["state"], "Active");
    expect_error(
        post(
            &d,
            "/v1/catalog/models",
            json!({"id": "p-model", "digest": good}),
        )
        .await,
        409,
        "CONFLICT",
        "p-model",
    )
    .await;
    expect_error(
        post(
            &d,
            "/v1/catalog/models",
            json!({"id": "x", "digest": "md5:abc"}),
        )
        .await,
        400,
        "INVALID_PARAMS",
        "digest",
    )
    .await;

    // Verify: pass against the file; then the file changes: fail, with the file's digest.
    let resp = post(&d, "/v1/catalog/models/p-model/verify", json!({})).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "started");
    let v = verification(&d, "p-model").await;
    assert_eq!(v["result"], "pass", "{v}");
    assert_eq!(v["digest"], good.as_str());
    let mismatch = post(
        &d,
        "/v1/catalog/models",
        json!({"id": "other", "digest": digest(b"x"),
        "source_url": file.display().to_string()}),
    )
    .await;
    assert_eq!(mismatch.status().as_u16(), 201);
    post(&d, "/v1/catalog/models/other/verify", json!({})).await;
    assert_eq!(verification(&d, "other").await["result"], "fail");
    post(
        &d,
        "/v1/catalog/models",
        json!({"id": "remote", "digest": digest(b"r"), "source_url": "hf:org/repo"}),
    )
    .await;
    post(&d, "/v1/catalog/models/remote/verify", json!({})).await;
    assert_eq!(verification(&d, "remote").await["result"], "warn");
    assert_eq!(
        d.metric_sum("catalog_verifications_total", &[("result", "pass")])
            .await,
        1.0
    );
    assert_eq!(
        d.metric_sum("catalog_verifications_total", &[("result", "fail")])
            .await,
        1.0
    );

    // Tasks for the model run while it is Active; once Retired: 410 MODEL_DEPRECATED.
    let id = d.submit_ok(&task("p", json!({"max_tokens": 2}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
    let resp = post(
        &d,
        "/v1/catalog/models/p-model/state",
        json!({"state": "Retired"}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 202);
    expect_error(
        d.submit(&task("p", json!({}))).await,
        410,
        "MODEL_DEPRECATED",
        "Retired",
    )
    .await;
    assert_eq!(
        d.metric_sum(
            "model_state",
            &[("model_id", "p-model"), ("state", "Retired")]
        )
        .await,
        1.0
    );
    post(
        &d,
        "/v1/catalog/models/p-model/state",
        json!({"state": "Active"}),
    )
    .await;
    d.submit_ok(&task("p", json!({}))).await;

    // Strict trust: unsigned entries and unknown models are refused.
    expect_error(
        post(
            &d,
            "/v1/catalog/models",
            json!({"id": "unsigned", "digest": good,
            "trust_policy": {"mode": "strict"}}),
        )
        .await,
        400,
        "UNTRUSTED_ARTIFACT",
        "signatures",
    )
    .await;
    let strict_task = |model: &str| {
        d.http
            .post(d.url("/v1/tasks"))
            .header("x-trust-policy", "strict")
            .json(&task("p", json!({"model_ref": model})))
            .send()
    };
    expect_error(
        strict_task("p-model").await.unwrap(),
        400,
        "UNTRUSTED_ARTIFACT",
        "not signed",
    )
    .await;
    post(
        &d,
        "/v1/catalog/models",
        json!({"id": "signed", "digest": good, "signatures": [{"sig": "…"}]}),
    )
    .await;
    expect_error(
        strict_task("nobody").await.unwrap(),
        400,
        "UNTRUSTED_ARTIFACT",
        "not in the catalog",
    )
    .await;

    // Delete; unknown ids are 404.
    let resp = d
        .http
        .delete(d.url("/v1/catalog/models/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let resp = d
        .http
        .delete(d.url("/v1/catalog/models/other"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "NOT_FOUND", "other").await;
}

#[tokio::test]
async fn catalog_and_artifacts_survive_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[paths]\ncatalog = \"{}\"\nartifacts = \"{}\"\n",
        dir.path().join("catalog.sqlite").display(),
        dir.path().join("artifacts").display()
    );
    let mut acknowledged_models: Vec<String> = Vec::new();
    let mut acknowledged_artifacts: Vec<(String, Value)> = Vec::new();
    for round in 0..3u64 {
        let mut d = DaemonBuilder::new(cfg(&extra)).start();
        // Everything acknowledged before is there, whole.
        for id in &acknowledged_models {
            let (status, m) = d.get_json(&format!("/v1/catalog/models/{id}")).await;
            assert_eq!(status, 200, "round {round}: model {id} lost");
            assert_eq!(m["id"], id.as_str());
        }
        for (id, content) in &acknowledged_artifacts {
            let (status, a) = d.get_json(&format!("/v1/artifacts/{id}")).await;
            assert_eq!(status, 200, "round {round}: artifact {id} lost");
            assert_eq!(&a["content"], content, "round {round}: artifact {id} torn");
        }
        // Writers run; the process is killed at a point that depends on the round.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, String, Value)>();
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let http = d.http.clone();
            let base = d.url("");
            let tx = tx.clone();
            writers.push(tokio::spawn(async move {
                for n in 0.. {
                    let name = format!("r{round}-w{w}-n{n}");
                    let content = json!({"writer": w, "n": n, "pad": "x".repeat(2000)});
                    let (is_model, path, body) = if n % 2 == 0 {
                        (
                            true,
                            "/v1/catalog/models",
                            json!({"id": name, "digest": format!("sha256:{}", "a".repeat(64))}),
                        )
                    } else {
                        (
                            false,
                            "/v1/artifacts",
                            json!({"kind": "other", "content": content}),
                        )
                    };
                    let Ok(resp) = http.post(format!("{base}{path}")).json(&body).send().await
                    else {
                        return;
                    };
                    if resp.status().as_u16() != 201 {
                        return;
                    }
                    let Ok(v) = resp.json::<Value>().await else {
                        return;
                    };
                    let key = if is_model {
                        name
                    } else {
                        v["id"].as_str().unwrap().to_owned()
                    };
                    let _ = tx.send((is_model, key, content));
                }
            }));
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        d.kill9();
        for w in writers {
            let _ = w.await;
        }
        while let Some((is_model, key, content)) = rx.recv().await {
            if is_model {
                acknowledged_models.push(key);
            } else {
                acknowledged_artifacts.push((key, content));
            }
        }
        assert!(!acknowledged_models.is_empty() && !acknowledged_artifacts.is_empty());
    }
    let d = DaemonBuilder::new(cfg(&extra)).start();
    for id in &acknowledged_models {
        let (status, _) = d.get_json(&format!("/v1/catalog/models/{id}")).await;
        assert_eq!(status, 200, "model {id} lost after the last kill");
    }
    for (id, content) in &acknowledged_artifacts {
        let (status, a) = d.get_json(&format!("/v1/artifacts/{id}")).await;
        assert_eq!(status, 200, "artifact {id} lost after the last kill");
        assert_eq!(&a["content"], content);
    }
    // No temp file was left visible as an object.
    for entry in std::fs::read_dir(dir.path().join("artifacts/objects")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        serde_json::from_slice::<Value>(&bytes).expect("every object is whole JSON");
    }
}
