//! orchestratord → adapter `.so` → a real llama-server, through the real binary.

use std::time::{Duration, Instant};

use orchd_e2e::{ALIAS, LlamaServer, free_port, model_a};
use orchd_testkit::{Daemon, DaemonBuilder, SseFrame, default_admission, mock_pool, task};
use serde_json::{Value, json};

/// Config: policies with room for a busy CI machine, a mock pool `p`, and `pools`.
fn config(pools: &str) -> String {
    format!(
        "[policies]\ntimeout_ms = 200\n\n[policies.admission]\n{}\n{}\n{pools}",
        default_admission("reject"),
        mock_pool("p", "slots = 2")
    )
}

fn llama_pool(id: &str, url: &str, extra: &str) -> String {
    format!(
        "\n[[pools]]\nid = \"{id}\"\nadapter = \"llamacpp\"\nmodel_ref = \"{ALIAS}\"\nhealth_interval_ms = 200\nnominal_tokens_per_s = 100.0\nnominal_first_token_ms = 100\n\n[[pools.replicas]]\nid = \"{id}-0\"\nconfig = {{ url = \"{url}\" {extra} }}\n"
    )
}

fn openai_pool(id: &str, url: &str, mode: &str) -> String {
    format!(
        "\n[[pools]]\nid = \"{id}\"\nadapter = \"openai\"\nengine = \"openai\"\nmodel_ref = \"{id}\"\nctx_max = 4096\nhealth_interval_ms = 200\n\n[[pools.replicas]]\nid = \"{id}-0\"\nconfig = {{ url = \"{url}\", model = \"{ALIAS}\", mode = \"{mode}\", slots = 2 }}\n"
    )
}

fn llama_task(extra: Value) -> Value {
    let mut body = task(
        "unused",
        json!({"engine": "llamacpp", "model_ref": ALIAS, "prompt": "Once upon a time"}),
    );
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn tokens(frames: &[SseFrame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["t"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_until_ready(d: &Daemon, body: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = d.submit(body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        if status == 202 {
            let v: Value = serde_json::from_str(&text).unwrap();
            return v["task_id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "never admitted: {status} {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn real_tokens_stream_in_order_and_the_same_seed_gives_the_same_tokens() {
    let engine = LlamaServer::start(&model_a(), 2);
    let d = DaemonBuilder::new(config(&llama_pool("llama", &engine.url(), ""))).start();
    let mut runs = Vec::new();
    for seed in [42, 42] {
        let id = d
            .submit_ok(&llama_task(json!({"max_tokens": 16, "seed": seed})))
            .await;
        let frames = d.stream(&id).await;
        let started = &frames[0];
        assert_eq!(started.event, "started", "{frames:?}");
        assert_eq!(started.data["engine"], "llamacpp");
        assert!(
            started.data["engine_version"]
                .as_str()
                .unwrap()
                .starts_with("llama.cpp-"),
            "{}",
            started.data
        );
        let end = frames.last().unwrap();
        assert_eq!(end.event, "end", "{frames:?}");
        let indices: Vec<u64> = frames
            .iter()
            .filter(|f| f.event == "token")
            .map(|f| f.data["i"].as_u64().unwrap())
            .collect();
        assert!(!indices.is_empty() && indices.len() <= 16);
        assert_eq!(indices, (0..indices.len() as u64).collect::<Vec<_>>());
        assert_eq!(
            end.data["tokens_out"].as_u64().unwrap(),
            indices.len() as u64
        );
        assert!(
            end.data["tokens_in"].as_u64().unwrap() > 0,
            "the engine counts the prompt"
        );
        runs.push(tokens(&frames));
    }
    assert_eq!(runs[0], runs[1], "same seed, same tokens");
}

#[tokio::test]
async fn cancel_mid_stream_frees_the_engine_slot_within_a_second() {
    let engine = LlamaServer::start(&model_a(), 1);
    let d = DaemonBuilder::new(config(&llama_pool("llama", &engine.url(), ""))).start();
    let id = d
        .submit_ok(&llama_task(
            json!({"max_tokens": 3500, "expected_tokens": 50}),
        ))
        .await;
    let mut reader = d.open_stream(&id).await;
    let mut seen = 0;
    while seen < 3 {
        let f = reader.next_frame().await.expect("stream open");
        if f.event == "token" {
            seen += 1;
        }
    }
    assert_eq!(engine.busy_slots().await, 1, "generating");
    assert_eq!(d.cancel(&id).await.status().as_u16(), 204);
    let canceled_at = Instant::now();
    let mut last = None;
    while let Some(f) = reader.next_frame().await {
        last = Some(f);
    }
    assert_eq!(last.unwrap().data["canceled"], true);
    loop {
        if engine.busy_slots().await == 0 {
            break;
        }
        assert!(
            canceled_at.elapsed() < Duration::from_secs(1),
            "the slot is still busy a second after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The freed slot serves the next task.
    let id = d.submit_ok(&llama_task(json!({"max_tokens": 4}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
}

#[tokio::test]
async fn a_killed_engine_gives_worker_reset_and_the_daemon_keeps_serving() {
    let mut engine = LlamaServer::start(&model_a(), 1);
    let d = DaemonBuilder::new(config(&llama_pool("llama", &engine.url(), ""))).start();
    let id = d
        .submit_ok(&llama_task(
            json!({"max_tokens": 3500, "expected_tokens": 50}),
        ))
        .await;
    let mut reader = d.open_stream(&id).await;
    while reader.next_frame().await.expect("stream open").event != "token" {}
    engine.kill();
    let mut last = None;
    while let Some(f) = reader.next_frame().await {
        last = Some(f);
    }
    let last = last.unwrap();
    assert_eq!(last.event, "error", "{last:?}");
    assert_eq!(last.data["code"], "WORKER_RESET", "{}", last.data);
    // The pool goes unready (health polling) while everything else serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = d.submit(&llama_task(json!({"max_tokens": 4}))).await;
        if resp.status().as_u16() == 503 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "POOL_UNREADY");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead engine's pool stayed ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = d.submit_ok(&task("p", json!({}))).await;
    assert_eq!(d.stream(&ok).await.last().unwrap().event, "end");
}

/// A pool of two llama-server replicas, `duo-a` and `duo-b`, probed rarely: a replica
/// killed after its last probe still looks ready to placement.
fn duo_pool(a: &str, b: &str) -> String {
    format!(
        "\n[[pools]]\nid = \"duo\"\nadapter = \"llamacpp\"\nmodel_ref = \"{ALIAS}\"\nhealth_interval_ms = 600000\nnominal_tokens_per_s = 100.0\nnominal_first_token_ms = 100\n\n[[pools.replicas]]\nid = \"duo-a\"\nconfig = {{ url = \"{a}\" }}\n\n[[pools.replicas]]\nid = \"duo-b\"\nconfig = {{ url = \"{b}\" }}\n"
    )
}

#[tokio::test]
async fn a_replica_killed_before_the_first_token_hands_its_task_to_the_other_charged_once() {
    let mut a = LlamaServer::start(&model_a(), 2);
    let b = LlamaServer::start(&model_a(), 2);
    let d = DaemonBuilder::new(format!(
        "[sessions]\nmax_turns = 100\n\n[budgets]\nper_session = {{ tokens = 100000 }}\n\n{}",
        config(&duo_pool(&a.url(), &b.url()))
    ))
    .start();
    let session = "duo-kill";
    let body = llama_task(json!({"max_tokens": 8, "session_id": session}));
    // Both replicas up: with both idle, placement takes duo-a (lexicographic tie-break).
    let warm = wait_until_ready(&d, &body).await;
    let frames = d.stream(&warm).await;
    assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    assert_eq!(frames[0].data["replica_id"], "duo-a", "{frames:?}");
    // Its settle lands just after its end frame: until then the session shows its
    // reservation, not its charge.
    let end = frames.last().unwrap();
    let warm_charge =
        end.data["tokens_in"].as_u64().unwrap() + end.data["tokens_out"].as_u64().unwrap();
    charged(&d, session, warm_charge).await;
    let used_before = warm_charge;
    // duo-a dies (SIGKILL) after its last probe: the next task is placed on it, fails
    // before its first token, and completes on duo-b.
    a.kill();
    let id = d.submit_ok(&body).await;
    let frames = d.stream(&id).await;
    let started: Vec<&SseFrame> = frames.iter().filter(|f| f.event == "started").collect();
    assert_eq!(started.len(), 1, "one started frame: {frames:?}");
    assert_eq!(started[0].data["replica_id"], "duo-b", "{frames:?}");
    let end = frames.last().unwrap();
    assert_eq!(end.event, "end", "{frames:?}");
    assert!(!tokens(&frames).is_empty());
    assert_eq!(
        d.log_events_at_least(
            "failed before its first output; retrying on another replica",
            1
        )
        .await
        .len(),
        1
    );
    // Charged once, for what duo-b did.
    let charge = end.data["tokens_in"].as_u64().unwrap() + end.data["tokens_out"].as_u64().unwrap();
    charged(&d, session, used_before + charge).await;
    drop(b);
}

/// Waits until the session has spent exactly `tokens` of its 100 000.
async fn charged(d: &Daemon, session: &str, tokens: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spent = used(d, session).await;
        if spent == tokens {
            return;
        }
        assert!(Instant::now() < deadline, "charged {spent}, not {tokens}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tokens the session has spent of its 100 000.
async fn used(d: &Daemon, session: &str) -> u64 {
    let (_, s) = d.get_json(&format!("/v1/sessions/{session}")).await;
    100_000
        - s["tokens_budget_remaining"]
            .as_u64()
            .expect("a token budget")
}

#[tokio::test]
async fn an_engine_that_is_not_up_leaves_its_pool_unready_until_it_comes_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let d = DaemonBuilder::new(config(&llama_pool("llama", &url, ""))).start();
    let resp = d.submit(&llama_task(json!({"max_tokens": 4}))).await;
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "POOL_UNREADY", "{body}");
    // The engine comes up: the next probes find it and the pool serves.
    let _engine = LlamaServer::start_on(port, &model_a(), 1);
    let id = wait_until_ready(&d, &llama_task(json!({"max_tokens": 4}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
}

#[tokio::test]
async fn the_openai_adapter_streams_completions_and_chat_from_the_same_server() {
    let engine = LlamaServer::start(&model_a(), 2);
    let pools = format!(
        "{}{}",
        openai_pool("oai-completions", &engine.url(), "completions"),
        openai_pool("oai-chat", &engine.url(), "chat")
    );
    let d = DaemonBuilder::new(config(&pools)).start();
    for pool in ["oai-completions", "oai-chat"] {
        let mut body = task(
            pool,
            json!({"engine": "openai", "model_ref": pool, "max_tokens": 8}),
        );
        body["prompt"] = json!("Tell me a story");
        let id = d.submit_ok(&body).await;
        let frames = d.stream(&id).await;
        assert_eq!(
            frames[0].data["engine_version"], "openai-compatible-llamacpp",
            "{pool}"
        );
        let end = frames.last().unwrap();
        assert_eq!(end.event, "end", "{pool}: {frames:?}");
        let n = tokens(&frames).len() as u64;
        assert!(n >= 1, "{pool}");
        assert!(
            end.data["tokens_out"].as_u64().unwrap() >= n,
            "{pool}: {}",
            end.data
        );
    }
}

#[tokio::test]
async fn quick_start_with_pool_flag_streams_real_tokens() {
    let engine = LlamaServer::start(&model_a(), 1);
    let d = DaemonBuilder::new(config(""))
        .arg("--pool")
        .arg(format!("llama={}@{}", "llamacpp", engine.url()))
        .start();
    let mut body = llama_task(json!({"max_tokens": 6}));
    body["model_ref"] = json!("llama");
    let id = d.submit_ok(&body).await;
    let frames = d.stream(&id).await;
    assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    assert!(!tokens(&frames).is_empty());
}

#[tokio::test]
async fn the_shipped_http_adapters_pass_the_conformance_kit_against_llama_server() {
    use orchd_adapter_conformance::{Plan, run};
    let engine = LlamaServer::start(&model_a(), 2);
    let dead = format!("http://127.0.0.1:{}", free_port());
    for (lib, config, unreachable) in [
        (
            "llamacpp.so",
            format!(r#"{{"url": "{}"}}"#, engine.url()),
            format!(r#"{{"url": "{dead}", "http": {{"max_attempts": 2}}}}"#),
        ),
        (
            "openai.so",
            format!(r#"{{"url": "{}", "model": "{ALIAS}"}}"#, engine.url()),
            format!(r#"{{"url": "{dead}", "model": "{ALIAS}", "http": {{"max_attempts": 2}}}}"#),
        ),
    ] {
        let mut plan = Plan::new(config);
        plan.unreachable_config = Some(unreachable);
        let report = run(&orchd_testkit::dist_dir().join("adapters").join(lib), &plan).await;
        print!("{lib}:\n{}", report.render());
        assert!(report.passed(), "{lib} is not conformant");
        if lib == "llamacpp.so" {
            let tokenize = report.checks.iter().find(|c| c.name == "tokenize").unwrap();
            assert_eq!(
                tokenize.passed,
                Some(true),
                "llama-server's /tokenize: {}",
                tokenize.detail
            );
        }
    }
}

#[tokio::test]
async fn embeddings_through_the_llamacpp_and_openai_adapters() {
    let engine = LlamaServer::start(&model_a(), 2);
    let pools = format!(
        "{}{}",
        llama_pool("llama", &engine.url(), ""),
        openai_pool("oai", &engine.url(), "completions")
    );
    let d = DaemonBuilder::new(config(&pools)).start();
    // A task of workload `embedding` on the llamacpp adapter: the vectors ride on `end`.
    let mut body =
        llama_task(json!({"workload": "embedding", "inputs": ["hello", "world"], "max_tokens": 1}));
    body.as_object_mut().unwrap().remove("prompt");
    let id = d.submit_ok(&body).await;
    let frames = d.stream(&id).await;
    let end = frames.last().unwrap();
    assert_eq!(end.event, "end", "{frames:?}");
    let vectors = end.data["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    let dim = vectors[0].as_array().unwrap().len();
    assert!(dim > 1 && vectors[1].as_array().unwrap().len() == dim);
    assert_ne!(vectors[0], vectors[1]);
    // The OpenAI front door on the openai adapter (llama-server's /v1/embeddings).
    let resp = d
        .http
        .post(d.url("/v1/embeddings"))
        .json(&json!({"model": "oai", "input": ["hello", "world"], "encoding_format": "float"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let emb: Value = resp.json().await.unwrap();
    assert_eq!(emb["data"].as_array().unwrap().len(), 2);
    assert_eq!(emb["data"][0]["embedding"].as_array().unwrap().len(), dim);
}

#[tokio::test]
async fn the_official_python_client_works_against_llama_server() {
    let python = std::env::var("ORCHD_OPENAI_PYTHON")
        .expect("ORCHD_OPENAI_PYTHON is set by `cargo xtask e2e`");
    let engine = LlamaServer::start(&model_a(), 2);
    let keys = "[[auth.keys]]\nname = \"app\"\nrole = \"data\"\nkey = \"e2e-key\"\n\n\
                [[auth.keys]]\nname = \"poor\"\nrole = \"data\"\nkey = \"e2e-poor\"\nbudget = { tokens = 10 }\n\n";
    let d = DaemonBuilder::new(format!(
        "{keys}{}",
        config(&llama_pool("llama", &engine.url(), ""))
    ))
    .start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../host/tests/openai/client_check.py"
    );
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([
            "--base-url",
            &d.url("/v1"),
            "--key",
            "e2e-key",
            "--model",
            ALIAS,
        ])
        .args([
            "--budget-key",
            "e2e-poor",
            "--embeddings",
            "--deterministic",
        ])
        .args(["--long-tokens", "400"])
        .output()
        .await
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

/// A pool whose replica the daemon launches itself (on `model`), on `port`.
fn launched_pool(port: u16, model: &std::path::Path) -> String {
    let server = std::env::var("ORCHD_LLAMA_SERVER").expect("ORCHD_LLAMA_SERVER");
    format!(
        "\n[[pools]]\nid = \"tiny\"\nadapter = \"llamacpp\"\nmodel_ref = \"{ALIAS}\"\nhealth_interval_ms = 200\nnominal_tokens_per_s = 50.0\nnominal_first_token_ms = 100\n\n\
         [[pools.replicas]]\nid = \"tiny-0\"\nconfig = {{ url = \"http://127.0.0.1:{port}\" }}\n\
         launch = {{ cmd = \"{server}\", args = [\"-m\", \"{{model}}\", \"--host\", \"127.0.0.1\", \"--port\", \"{port}\", \"-c\", \"1024\", \"-np\", \"1\", \"-t\", \"2\", \"--alias\", \"{ALIAS}\", \"--no-webui\"], model = \"{}\", ready_timeout_ms = 30000 }}\n",
        model.display()
    )
}

async fn served_model(port: u16) -> String {
    let props: Value = reqwest::get(format!("http://127.0.0.1:{port}/props"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    props["model_path"].as_str().unwrap_or_default().to_owned()
}

async fn reload(d: &Daemon, model: &str) -> (u16, Value) {
    let resp = d
        .http
        .post(d.url("/v1/pools/tiny/reload"))
        .json(&json!({"new_model_ref": model}))
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn launched_engines_drain_reload_roll_back_and_restart() {
    let port = free_port();
    let (a, b) = (model_a(), orchd_e2e::model_b());
    let d = DaemonBuilder::new(config(&launched_pool(port, &a))).start();
    // The daemon started the engine; the probes make the pool ready.
    let id = wait_until_ready(&d, &llama_task(json!({"max_tokens": 4}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
    assert_eq!(served_model(port).await, a.display().to_string());

    // Drain while a task runs: it finishes (nothing dropped); then reload onto model b.
    let running = d.submit_ok(&llama_task(json!({"max_tokens": 30}))).await;
    let resp = d
        .http
        .post(d.url("/v1/pools/tiny/drain"))
        .json(&json!({"deadline_ms": 1500}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let (status, body) = reload(&d, &b.display().to_string()).await;
    assert_eq!(status, 409, "a reload during the drain conflicts: {body}");
    let frames = d.stream(&running).await;
    assert_eq!(
        frames.last().unwrap().event,
        "end",
        "the drained task finished: {frames:?}"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = reload(&d, &b.display().to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_model(port).await, b.display().to_string());
    let id = d.submit_ok(&llama_task(json!({"max_tokens": 4}))).await;
    assert_eq!(
        d.stream(&id).await.last().unwrap().event,
        "end",
        "serving again after the reload"
    );

    // A broken model file: the engine never gets ready; the pool goes back to model b: 409.
    let broken = std::env::temp_dir().join(format!("orchd-broken-{port}.gguf"));
    std::fs::write(&broken, b"GGUF but not really a model").unwrap();
    let (status, body) = reload(&d, &broken.display().to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "CONFLICT");
    assert!(
        body["message"].as_str().unwrap().contains("rolled back"),
        "{body}"
    );
    assert_eq!(served_model(port).await, b.display().to_string());
    let id = wait_until_ready(&d, &llama_task(json!({"max_tokens": 4}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");

    // The engine dies: the pool manager restarts it.
    let killed = std::process::Command::new("pkill")
        .args(["-9", "-f", &format!("port {port} ")])
        .status()
        .unwrap();
    assert!(killed.success());
    // The probes see it down, then (after the restart) up again.
    let mut seen_down = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, health) = d.get_json("/v1/pools/tiny/health").await;
        let ready = health["ready"].as_bool().unwrap_or(false);
        seen_down |= !ready;
        if seen_down && ready {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = d.submit_ok(&llama_task(json!({"max_tokens": 4}))).await;
    assert_eq!(d.stream(&id).await.last().unwrap().event, "end");
    assert!(
        d.log_events("engine exited; restarting")
            .iter()
            .any(|e| e["replica_id"] == "tiny-0")
    );
}

/// Runs `program script args…` and asserts it exits 0; returns its stdout.
async fn run_client(program: &str, script: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .arg(script)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {program} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}:\n{stdout}\n{stderr}");
    stdout
}

/// Tool calls (required and named, streaming and not, then the tool's answer sent back),
/// JSON output against a schema, logprobs with top-k, engine usage and the model's own
/// template, through the official Python and Node clients and an agent framework, all
/// against the daemon in front of llama-server running the tool model with `--jinja`.
#[tokio::test]
async fn official_clients_and_an_agent_framework_use_tools_through_the_daemon() {
    let python = std::env::var("ORCHD_OPENAI_PYTHON").expect("set by `cargo xtask e2e`");
    let node_sdk = std::env::var("ORCHD_OPENAI_NODE").expect("set by `cargo xtask e2e`");
    let agents = std::env::var("ORCHD_AGENTS_PYTHON").expect("set by `cargo xtask e2e`");
    let engine = LlamaServer::start_chat(&orchd_e2e::tool_model(), 2);
    let keys = "[[auth.keys]]\nname = \"app\"\nrole = \"data\"\nkey = \"e2e-key\"\n\n";
    let d = DaemonBuilder::new(format!(
        "{keys}{}",
        config(&llama_pool("llama", &engine.url(), ""))
    ))
    .start();
    let base = d.url("/v1");
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/../host/tests/openai");
    let common = ["--base-url", &base, "--key", "e2e-key", "--model", ALIAS];
    let engine_url = engine.url();
    let py = run_client(
        &python,
        &format!("{scripts}/tools_check.py"),
        &[&common[..], &["--named", "--engine-url", &engine_url]].concat(),
    )
    .await;
    assert!(py.contains("get_time"), "{py}");
    run_client(
        "node",
        &format!("{scripts}/tools_check.mjs"),
        &[&common[..], &["--named", "--sdk-dir", &node_sdk]].concat(),
    )
    .await;
    run_client(&agents, &format!("{scripts}/agent_check.py"), &common).await;
}
