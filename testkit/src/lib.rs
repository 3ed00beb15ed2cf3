//! Test harness for integration and BDD tests: starts the real `orchestratord` from
//! `target/dist` on a free port, reads its JSON log, and speaks HTTP and SSE to it.
//!
//! `cargo xtask test` builds dist and fixtures first and points `ORCHD_DIST` and
//! `ORCHD_FIXTURES` at them.

mod redis;
mod sse;

pub use redis::Redis;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use sse::{SseFrame, SseReader};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

fn dir_from_env(var: &str, default: &str, hint: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(default));
    assert!(
        dir.is_dir(),
        "{} does not exist: {hint} (or set {var})",
        dir.display()
    );
    dir
}

/// The dist tree built by `cargo xtask dist`.
pub fn dist_dir() -> PathBuf {
    dir_from_env("ORCHD_DIST", "target/dist", "run `cargo xtask dist` first")
}

/// Test fixtures built by `cargo xtask fixtures`.
pub fn fixtures_dir() -> PathBuf {
    dir_from_env(
        "ORCHD_FIXTURES",
        "target/fixtures",
        "run `cargo xtask fixtures` first",
    )
}

pub fn binary() -> PathBuf {
    dist_dir().join("bin/orchestratord")
}

/// A pool on the mock adapter, as TOML. `mock_config` is the replica's inline table body.
pub fn mock_pool(id: &str, mock_config: &str) -> String {
    format!(
        r#"
[[pools]]
id = "{id}"
engine = "mock"
adapter = "mock"
model_ref = "{id}-model"
ctx_max = 4096
nominal_tokens_per_s = 200.0
nominal_first_token_ms = 20

[[pools.replicas]]
id = "{id}-0"
config = {{ {mock_config} }}
"#
    )
}

/// A pool of one replica on the `openai` adapter: an OpenAI-compatible engine at `url`
/// serving `model` (also the pool's model ref).
pub fn openai_pool(id: &str, url: &str, model: &str) -> String {
    format!(
        r#"
[[pools]]
id = "{id}"
adapter = "openai"
engine = "openai"
model_ref = "{model}"

[[pools.replicas]]
id = "{id}-0"
config = {{ url = "{url}", model = "{model}" }}
"#
    )
}

/// Replaces `target` by `source` the way an operator should: copy to a temporary name in
/// the same directory, then rename over the target (the watcher never sees a torn file).
pub fn swap_file(source: &Path, target: &Path) {
    let tmp = target.with_extension("swap-tmp");
    std::fs::copy(source, &tmp).expect("copy");
    std::fs::rename(&tmp, target).expect("rename");
}

/// A fixture policy component by file name (absolute path).
pub fn fixture_policy(file: &str) -> String {
    fixtures_dir()
        .join("policies")
        .join(file)
        .display()
        .to_string()
}

/// A config with the given admission section body and pools. Policy calls get 100 ms:
/// tests run daemons side by side on small machines, where the production 5 ms wall-clock
/// deadline can expire under preemption (fail-closed, by design); what they test is not that.
pub fn config(admission: &str, queue_capacity: u32, pools: &[String]) -> String {
    format!(
        "[queue]\ncapacity = {queue_capacity}\n\n[policies]\ntimeout_ms = 100\n\n[policies.admission]\n{admission}\n{}",
        pools.concat()
    )
}

/// The default admission policy in `mode`.
pub fn default_admission(mode: &str) -> String {
    format!("component = \"admission-default.wasm\"\nconfig = {{ mode = \"{mode}\" }}\n")
}

/// A valid task body for `pool` (model `<pool>-model`), with `extra` fields merged in.
/// Each body gets its own session (sessions cap their turns) unless `extra` names one.
pub fn task(pool: &str, extra: Value) -> Value {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SESSION: AtomicU64 = AtomicU64::new(0);
    let mut body = json!({
        "session_id": format!("s{}", SESSION.fetch_add(1, Ordering::Relaxed)),
        "workload": "completion",
        "model_ref": format!("{pool}-model"),
        "engine": "mock",
        "ctx": 64,
        "priority": "interactive",
        "prompt": "tell me about queues",
        "max_tokens": 8,
        "deadline_ms": 600000,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Checks an error response: status, envelope `code`, a `needle` in the message, and the
/// correlation id in both header and body. Returns the envelope.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str, needle: &str) -> Value {
    let got = resp.status().as_u16();
    let correlation = resp
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "expected {status} {code}, got {got}: {text}");
    let body: Value = serde_json::from_str(&text).expect("an error envelope");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains(needle),
        "message should mention {needle:?}: {body}"
    );
    let correlation = correlation.expect("X-Correlation-Id on every response");
    assert_eq!(body["correlation_id"], correlation.as_str());
    body
}

/// How to start a daemon.
pub struct DaemonBuilder {
    config: String,
    policies_dir: PathBuf,
    adapters_dir: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    addr: String,
    dir: tempfile::TempDir,
    /// Open mode may use the admin endpoints (`--insecure-open-admin`): most tests drive
    /// the control plane without keys. `secure_open()` turns it off.
    open_admin: bool,
    /// The precompiled-policy cache (default: in the scratch directory).
    cache_dir: Option<PathBuf>,
}

impl DaemonBuilder {
    pub fn new(config: impl Into<String>) -> Self {
        let dist = dist_dir();
        Self {
            config: config.into(),
            policies_dir: dist.join("policies"),
            adapters_dir: dist.join("adapters"),
            extra_args: Vec::new(),
            env: Vec::new(),
            addr: "127.0.0.1:0".into(),
            dir: tempfile::tempdir().expect("temp dir"),
            open_admin: true,
            cache_dir: None,
        }
    }

    /// A precompiled-policy cache that outlives this daemon (to test a restart on it).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Open mode as shipped: data-only, admin endpoints refused without a key.
    pub fn secure_open(mut self) -> Self {
        self.open_admin = false;
        self
    }

    /// A scratch directory that lives as long as the daemon.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the dist policies into a scratch directory the daemon watches, so a test can
    /// swap files in it; returns the directory.
    pub fn own_policies_dir(&mut self) -> PathBuf {
        let dir = self.dir.path().join("policies");
        std::fs::create_dir_all(&dir).expect("policies dir");
        for entry in std::fs::read_dir(dist_dir().join("policies")).expect("dist policies") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.join(path.file_name().expect("file name")))
                .expect("copy policy");
        }
        self.policies_dir = dir.clone();
        dir
    }

    pub fn policies_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.policies_dir = dir.into();
        self
    }

    pub fn adapters_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.adapters_dir = dir.into();
        self
    }

    /// An environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The address to bind (default `127.0.0.1:0`).
    pub fn addr(mut self, addr: &str) -> Self {
        self.addr = addr.to_owned();
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    fn command(&self) -> Command {
        let config_path = self.dir.path().join("orchd.toml");
        std::fs::write(&config_path, &self.config).expect("write config");
        let mut cmd = Command::new(binary());
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--addr")
            .arg(&self.addr)
            .arg("--adapters-dir")
            .arg(&self.adapters_dir)
            .arg("--policies-dir")
            .arg(&self.policies_dir)
            .arg("--cache-dir")
            .arg(
                self.cache_dir
                    .clone()
                    .unwrap_or_else(|| self.dir.path().join("cache")),
            )
            .args(&self.extra_args)
            .args(self.open_admin.then_some("--insecure-open-admin"))
            .env_remove("ORCHD_INSECURE_OPEN_ADMIN")
            .env_remove("ORCHD_ADDR")
            .env_remove("ORCHD_CONFIG")
            .env_remove("ORCHD_API_KEYS")
            .env_remove("ORCHD_API_KEYS_FILE")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs the daemon expecting it to exit; returns (exit code, stderr, stdout).
    pub fn run_to_exit(self) -> (i32, String, String) {
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .expect("run orchestratord");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Starts the daemon and waits until it logs the address it listens on.
    pub fn start(self) -> Daemon {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn orchestratord");
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message"] == "listening"
                        && let Some(addr) = v["addr"].as_str()
                    {
                        let _ = tx.send(addr.to_owned());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "orchestratord did not start; log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Daemon {
            child,
            base: format!("http://{addr}"),
            logs,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
            _dir: self.dir,
        }
    }
}

/// A running daemon; killed on drop.
pub struct Daemon {
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines (parsed) whose `message` is `message`.
    pub fn log_events(&self, message: &str) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// [`log_events`](Self::log_events) once at least `n` have arrived (log lines are read
    /// from the process's output by another thread: on a loaded machine they come late),
    /// or whatever arrived within 10 s.
    pub async fn log_events_at_least(&self, message: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let events = self.log_events(message);
            if events.len() >= n || std::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits (at most 30 s) for the process to exit; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process with SIGKILL (a crash: nothing is flushed) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn submit(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/tasks"))
            .json(body)
            .send()
            .await
            .expect("POST /v1/tasks")
    }

    /// Submits and expects 202; returns the task id.
    pub async fn submit_ok(&self, body: &Value) -> String {
        let resp = self.submit(body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status.as_u16(), 202, "expected 202, got {status}: {text}");
        let v: Value = serde_json::from_str(&text).expect("202 body is JSON");
        v["task_id"].as_str().expect("task_id").to_owned()
    }

    pub async fn open_stream(&self, task_id: &str) -> SseReader {
        let resp = self
            .http
            .get(self.url(&format!("/v1/tasks/{task_id}/stream")))
            .send()
            .await
            .expect("GET stream");
        assert_eq!(resp.status().as_u16(), 200, "stream of {task_id}");
        SseReader::new(resp)
    }

    /// A stream resumed after frame `last_event_id` (`Last-Event-ID`).
    pub async fn open_stream_after(&self, task_id: &str, last_event_id: u64) -> SseReader {
        let resp = self
            .http
            .get(self.url(&format!("/v1/tasks/{task_id}/stream")))
            .header("last-event-id", last_event_id.to_string())
            .send()
            .await
            .expect("GET stream");
        assert_eq!(resp.status().as_u16(), 200, "stream of {task_id}");
        SseReader::new(resp)
    }

    /// The whole stream of a task, until the server closes it (at most 30 s).
    pub async fn stream(&self, task_id: &str) -> Vec<SseFrame> {
        let reader = self.open_stream(task_id).await;
        read_to_end(task_id, reader).await
    }

    /// The rest of a stream after frame `last_event_id`, until the server closes it.
    pub async fn stream_after(&self, task_id: &str, last_event_id: u64) -> Vec<SseFrame> {
        let reader = self.open_stream_after(task_id, last_event_id).await;
        read_to_end(task_id, reader).await
    }

    pub async fn cancel(&self, task_id: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/tasks/{task_id}/cancel")))
            .send()
            .await
            .expect("POST cancel")
    }

    /// Polls `GET /readyz` until the daemon is ready (a pool's first health probe of an
    /// HTTP engine comes after start), at most 30 s.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get_json("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `GET /v1/tasks/{id}` until the task reaches `state` (at most 10 s).
    pub async fn wait_state(&self, task_id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, s) = self.get_json(&format!("/v1/tasks/{task_id}")).await;
            if s["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{task_id} never reached {state}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The `/metrics` exposition text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The sum of a metric's samples whose labels include every `labels` pair.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }

    /// `POST path` with a JSON body → (status, JSON body or `null`).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(self.url(path)).send().await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Reads a stream until the server closes it (at most 30 s).
pub async fn read_to_end(task_id: &str, mut reader: SseReader) -> Vec<SseFrame> {
    let mut frames = Vec::new();
    let read = async {
        while let Some(f) = reader.next_frame().await {
            frames.push(f);
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .is_err()
    {
        panic!("stream of {task_id} did not end within 30 s");
    }
    frames
}
