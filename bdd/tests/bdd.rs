//! Cucumber runner: every feature in `bdd/features` against the real binary in
//! `target/dist` (built by `cargo xtask dist`).

use cucumber::gherkin::Step;
use cucumber::{World, given, then, when};
use orchd_testkit::{
    Daemon, DaemonBuilder, SseFrame, SseReader, config, default_admission, mock_pool, read_to_end,
    task,
};
use serde_json::{Value, json};

struct Running(Daemon);

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Daemon")
    }
}

struct Reader(SseReader);

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SseReader")
    }
}

#[derive(Debug, Default, World)]
struct Orchd {
    daemon: Option<Running>,
    status: u16,
    body: Value,
    task_id: String,
    other_id: String,
    reader: Option<Reader>,
    tokens_before_cancel: Vec<SseFrame>,
    /// The task's `tokens_out` right after the cancel's 204: final from then on.
    tokens_at_cancel: Option<u64>,
    remembered: String,
    /// Configuration assembled by `Given` steps before `the daemon is running`.
    extra_config: String,
    pools: Vec<String>,
    /// The API key requests carry (`X-API-Key`), if any.
    key: Option<String>,
    headers: reqwest::header::HeaderMap,
    /// Frames of the last stream read, and of the one before it.
    frames: Vec<SseFrame>,
    earlier_frames: Vec<SseFrame>,
    artifact_id: String,
    /// The port of a llama-server the daemon launched.
    engine_port: u16,
}

impl Orchd {
    fn d(&self) -> &Daemon {
        &self.daemon.as_ref().expect("no daemon started").0
    }

    async fn record(&mut self, resp: reqwest::Response) {
        self.status = resp.status().as_u16();
        self.headers = resp.headers().clone();
        self.body = resp.json().await.unwrap_or(Value::Null);
    }

    async fn submit(&mut self, pool: &str, tokens: u32, seed: Option<i64>) -> String {
        let mut extra = json!({"max_tokens": tokens});
        if let Some(seed) = seed {
            extra["seed"] = json!(seed);
        }
        let resp = self.d().submit(&task(pool, extra)).await;
        self.record(resp).await;
        assert_eq!(self.status, 202, "{}", self.body);
        self.body["task_id"].as_str().unwrap().to_owned()
    }

    async fn frames(&self, id: &str) -> Vec<SseFrame> {
        self.d().stream(id).await
    }

    async fn text(&self) -> String {
        self.frames(&self.task_id)
            .await
            .iter()
            .filter(|f| f.event == "token")
            .map(|f| f.data["t"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Orchd {
    /// `{task}` and `{artifact}` in a path stand for the current task and artifact.
    fn path(&self, path: &str) -> String {
        path.replace("{task}", &self.task_id)
            .replace("{artifact}", &self.artifact_id)
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<Value>) {
        let d = self.d();
        let mut req = d.http.request(
            method.parse().expect("an HTTP method"),
            d.url(&self.path(path)),
        );
        if let Some(key) = &self.key {
            req = req.header("x-api-key", key.as_str());
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        self.record(resp).await;
    }

    /// Reads the current task's stream to its end (after `last_event_id` if given).
    async fn read_stream(&mut self, last_event_id: Option<u64>) {
        let id = self.task_id.clone();
        self.read_stream_of(&id, last_event_id).await;
    }

    async fn read_stream_of(&mut self, task_id: &str, last_event_id: Option<u64>) {
        let d = self.d();
        let mut req = d.http.get(d.url(&format!("/v1/tasks/{task_id}/stream")));
        if let Some(key) = &self.key {
            req = req.header("x-api-key", key.as_str());
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        assert!(
            !task_id.is_empty(),
            "no task to stream; last response {} {}",
            self.status,
            self.body
        );
        let resp = req.send().await.expect("stream request sent");
        assert_eq!(resp.status().as_u16(), 200, "stream of {task_id}");
        let frames = read_to_end(task_id, SseReader::new(resp)).await;
        self.earlier_frames = std::mem::replace(&mut self.frames, frames);
    }
}

/// A JSON value from a step argument.
fn json_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("step argument {text:?} is not JSON: {e}"))
}

/// The value at `pointer` (`/a/b`) as text, strings unquoted.
fn field(body: &Value, pointer: &str) -> String {
    match body.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => panic!("no {pointer} in {body}"),
    }
}

/// Scenarios run concurrently, each with its own daemon, on what may be a 2-core machine:
/// policies get a wall-clock deadline that preemption cannot blow (production uses 5 ms;
/// `config()` sets the same for the daemons it describes).
const POLICY_TIMEOUT: &str = "[policies]\ntimeout_ms = 250\n\n";

/// Starts a daemon off the runner. Cucumber polls every running scenario from one task,
/// so `DaemonBuilder::start` (spawn, policy compilation, the wait for `listening`: seconds
/// on a loaded machine) run inside a step froze every other scenario mid-step. The freezes
/// added up to more than a minute: a canceled task outlived the daemon's retention of
/// finished tasks (`stream.retention_ms`, 60 s) before its scenario read the stream again,
/// which then answered 404.
async fn launch(builder: DaemonBuilder) -> Running {
    match tokio::task::spawn_blocking(move || builder.start()).await {
        Ok(daemon) => Running(daemon),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("daemon start did not finish: {e}"),
        },
    }
}

async fn start(pool: String) -> Running {
    launch(DaemonBuilder::new(config(
        &default_admission("reject"),
        16,
        &[pool],
    )))
    .await
}

#[given(expr = "a running daemon with a mock pool {string}")]
async fn daemon(w: &mut Orchd, pool: String) {
    w.daemon = Some(
        start(mock_pool(
            &pool,
            "slots = 2, first_token_delay_ms = 5, tokens_per_s = 500.0",
        ))
        .await,
    );
}

#[given(expr = "a running daemon with a slow one-slot mock pool {string}")]
async fn slow_daemon(w: &mut Orchd, pool: String) {
    w.daemon = Some(
        start(mock_pool(
            &pool,
            "slots = 1, first_token_delay_ms = 5, tokens_per_s = 100.0",
        ))
        .await,
    );
}

#[when(expr = "I submit a completion of {int} tokens to pool {string}")]
async fn submit(w: &mut Orchd, tokens: u32, pool: String) {
    w.task_id = w.submit(&pool, tokens, None).await;
}

#[when(expr = "I submit a completion of {int} tokens to pool {string} with seed {int}")]
async fn submit_seeded(w: &mut Orchd, tokens: u32, pool: String, seed: i64) {
    w.task_id = w.submit(&pool, tokens, Some(seed)).await;
}

#[when(expr = "I submit another completion of {int} tokens to pool {string}")]
async fn submit_other(w: &mut Orchd, tokens: u32, pool: String) {
    w.other_id = w.submit(&pool, tokens, None).await;
}

#[when("I remember the streamed text")]
async fn remember(w: &mut Orchd) {
    w.remembered = w.text().await;
    assert!(!w.remembered.is_empty());
}

#[then("the streamed text is the same as remembered")]
async fn same_text(w: &mut Orchd) {
    assert_eq!(w.text().await, w.remembered);
}

#[when(expr = "I ask for the stream of task {string}")]
async fn ask_stream(w: &mut Orchd, id: String) {
    let resp = w
        .d()
        .http
        .get(w.d().url(&format!("/v1/tasks/{id}/stream")))
        .send()
        .await
        .unwrap();
    w.record(resp).await;
}

#[when(expr = "I read {int} tokens from its stream")]
async fn read_tokens(w: &mut Orchd, n: usize) {
    let mut reader = w.d().open_stream(&w.task_id).await;
    let mut tokens = Vec::new();
    while tokens.len() < n {
        let f = reader.next_frame().await.expect("stream open");
        if f.event == "token" {
            tokens.push(f);
        }
    }
    w.tokens_before_cancel = tokens;
    w.reader = Some(Reader(reader));
}

#[when("I cancel the task")]
async fn cancel(w: &mut Orchd) {
    let resp = w.d().cancel(&w.task_id).await;
    w.status = resp.status().as_u16();
    let (_, status) = w.d().get_json(&format!("/v1/tasks/{}", w.task_id)).await;
    w.tokens_at_cancel = status["tokens_out"].as_u64();
}

#[when("I cancel the other task")]
async fn cancel_other(w: &mut Orchd) {
    let resp = w.d().cancel(&w.other_id).await;
    w.status = resp.status().as_u16();
}

#[when(expr = "I cancel task {string}")]
async fn cancel_id(w: &mut Orchd, id: String) {
    let resp = w.d().cancel(&id).await;
    w.record(resp).await;
}

#[then(expr = "the response status is {int}")]
fn response_status(w: &mut Orchd, status: u16) {
    assert_eq!(w.status, status, "{}", w.body);
}

#[then(expr = "the response status is {int} with code {string}")]
fn status_code(w: &mut Orchd, status: u16, code: String) {
    assert_eq!(w.status, status, "{}", w.body);
    assert_eq!(w.body["code"], code.as_str());
    assert!(w.body["correlation_id"].is_string());
}

#[then(expr = "the stream begins with {string} and ends with {string}")]
async fn begins_ends(w: &mut Orchd, first: String, last: String) {
    let frames = w.frames(&w.task_id).await;
    assert_eq!(frames.first().unwrap().event, first);
    assert_eq!(frames.last().unwrap().event, last);
    let terminal = frames
        .iter()
        .filter(|f| f.event == "end" || f.event == "error")
        .count();
    assert_eq!(terminal, 1);
}

#[then(expr = "the stream carries {int} tokens with indices {int} to {int}")]
async fn token_indices(w: &mut Orchd, n: usize, from: u64, to: u64) {
    let indices: Vec<u64> = w
        .frames(&w.task_id)
        .await
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["i"].as_u64().unwrap())
        .collect();
    assert_eq!(indices.len(), n);
    assert_eq!(indices, (from..=to).collect::<Vec<_>>());
}

#[then(expr = "a {string} frame comes right before {string}")]
async fn before(w: &mut Orchd, a: String, b: String) {
    let frames = w.frames(&w.task_id).await;
    let at = frames
        .iter()
        .position(|f| f.event == b)
        .expect("terminal frame");
    assert!(at > 0 && frames[at - 1].event == a);
}

async fn state_of(w: &Orchd, id: &str) -> String {
    let (_, status) = w.d().get_json(&format!("/v1/tasks/{id}")).await;
    status["state"].as_str().unwrap_or_default().to_owned()
}

#[then(expr = "the task state is {string}")]
async fn task_state(w: &mut Orchd, state: String) {
    assert_eq!(state_of(w, &w.task_id).await, state);
}

#[then(expr = "the other task state is {string}")]
async fn other_state(w: &mut Orchd, state: String) {
    assert_eq!(state_of(w, &w.other_id).await, state);
}

#[then(expr = "the stream ends with {string} marked canceled")]
async fn ends_canceled(w: &mut Orchd, event: String) {
    let mut reader = w.reader.take().expect("an open stream").0;
    let mut last = None;
    while let Some(f) = reader.next_frame().await {
        last = Some(f);
    }
    let last = last.expect("a terminal frame");
    assert_eq!(last.event, event);
    assert_eq!(last.data["canceled"], true);
}

#[then("no token follows the cancel")]
async fn no_token_after_cancel(w: &mut Orchd) {
    let frames = w.frames(&w.task_id).await;
    let end = frames.last().unwrap();
    let tokens = frames.iter().filter(|f| f.event == "token").count() as u64;
    assert_eq!(end.data["tokens_out"].as_u64().unwrap(), tokens);
    // What the task had produced when the 204 came is all it ever produced.
    let at_cancel = w.tokens_at_cancel.expect("a cancel step ran");
    assert_eq!(tokens, at_cancel, "a token followed the cancel: {frames:?}");
    assert_eq!(end.event, "end");
    assert_eq!(end.data["canceled"], true);
}

#[then(expr = "the other task's stream holds only an {string} frame marked canceled")]
async fn other_only_end(w: &mut Orchd, event: String) {
    let frames = w.frames(&w.other_id).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event, event);
    assert_eq!(frames[0].data["canceled"], true);
}

#[given("the daemon config:")]
fn daemon_config(w: &mut Orchd, step: &Step) {
    w.extra_config
        .push_str(step.docstring.as_deref().expect("a doc string"));
    w.extra_config.push('\n');
}

#[given(expr = "a mock pool {string} with {string}")]
fn pool_with(w: &mut Orchd, pool: String, mock: String) {
    w.pools.push(mock_pool(&pool, &mock));
}

#[given("the daemon is running")]
async fn daemon_running(w: &mut Orchd) {
    let config = format!("{POLICY_TIMEOUT}{}\n{}", w.extra_config, w.pools.concat());
    w.daemon = Some(launch(DaemonBuilder::new(config)).await);
}

#[when(expr = "I use the key {string}")]
fn use_key(w: &mut Orchd, key: String) {
    w.key = Some(key);
}

#[when("I use no key")]
fn no_key(w: &mut Orchd) {
    w.key = None;
}

#[when(expr = "I submit to pool {string} a task with {string}")]
async fn submit_task_with(w: &mut Orchd, pool: String, extra: String) {
    // A field set to null in the step leaves the base task's field out (the API refuses
    // an explicit null).
    let mut body = task(&pool, json_arg(&extra));
    if let Some(fields) = body.as_object_mut() {
        fields.retain(|_, v| !v.is_null());
    }
    w.send("POST", "/v1/tasks", Some(body)).await;
    if w.status == 202 {
        w.other_id = std::mem::take(&mut w.task_id);
        w.task_id = field(&w.body, "/task_id");
    }
}

#[when(expr = "I send {word} {string}")]
async fn send(w: &mut Orchd, method: String, path: String) {
    w.send(&method, &path, None).await;
}

#[when(expr = "I send {word} {string} with body {string}")]
async fn send_body(w: &mut Orchd, method: String, path: String, body: String) {
    w.send(&method, &path, Some(json_arg(&body))).await;
}

#[when("I read the task's stream")]
async fn read_stream(w: &mut Orchd) {
    w.read_stream(None).await;
}

#[when("I read the previous task's stream")]
async fn read_previous_stream(w: &mut Orchd) {
    let id = w.other_id.clone();
    w.read_stream_of(&id, None).await;
}

#[when(expr = "I resume the task's stream after event {int}")]
async fn resume_stream(w: &mut Orchd, after: u64) {
    w.read_stream(Some(after)).await;
}

#[when("I wait until the task is running")]
async fn wait_running(w: &mut Orchd) {
    w.d().wait_state(&w.task_id, "running").await;
}

#[when("I fetch the artifact again with its ETag")]
async fn fetch_with_etag(w: &mut Orchd) {
    let etag = w.headers["etag"].to_str().expect("an ETag").to_owned();
    let d = w.d();
    let mut req = d
        .http
        .get(d.url(&format!("/v1/artifacts/{}", w.artifact_id)))
        .header("if-none-match", etag);
    if let Some(key) = &w.key {
        req = req.header("x-api-key", key.as_str());
    }
    let resp = req.send().await.expect("request sent");
    w.record(resp).await;
}

#[then(expr = "the response field {string} is {string}")]
fn response_field(w: &mut Orchd, pointer: String, expected: String) {
    assert_eq!(field(&w.body, &pointer), expected, "{}", w.body);
}

#[then(expr = "the response has the header {string}")]
fn response_header(w: &mut Orchd, name: String) {
    assert!(w.headers.contains_key(name.as_str()), "{:?}", w.headers);
}

#[then(expr = "the stream ends with an {string} frame with code {string}")]
fn stream_error(w: &mut Orchd, event: String, code: String) {
    let last = w.frames.last().expect("frames");
    assert_eq!(last.event, event, "{:?}", w.frames);
    assert_eq!(last.data["code"], code.as_str());
}

#[then(expr = "the stream ends with {string}")]
fn stream_ends(w: &mut Orchd, event: String) {
    let last = w.frames.last().expect("frames");
    assert_eq!(last.event, event, "{:?}", w.frames);
}

#[then("every frame has an id, counting up from 0 without a gap")]
fn ids_from_zero(w: &mut Orchd) {
    let ids: Vec<u64> = w.frames.iter().map(|f| f.id.expect("an id")).collect();
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
}

#[then(expr = "the resumed stream holds exactly the events after {int}")]
fn resumed_exactly(w: &mut Orchd, after: u64) {
    let full: Vec<(Option<u64>, String)> = w
        .earlier_frames
        .iter()
        .filter(|f| f.id.is_some_and(|id| id > after))
        .map(|f| (f.id, f.data.to_string()))
        .collect();
    let resumed: Vec<(Option<u64>, String)> = w
        .frames
        .iter()
        .map(|f| (f.id, f.data.to_string()))
        .collect();
    assert!(!resumed.is_empty());
    assert_eq!(resumed, full);
}

#[then("the terminal frame names the task's transcript")]
fn names_transcript(w: &mut Orchd) {
    let last = w.frames.last().expect("frames");
    w.artifact_id = last.data["artifact_id"]
        .as_str()
        .expect("artifact_id on the terminal frame")
        .to_owned();
    assert!(w.artifact_id.starts_with("sha256:"));
}

#[then(expr = "the response field {string} is the remembered artifact")]
fn field_is_artifact(w: &mut Orchd, pointer: String) {
    assert_eq!(field(&w.body, &pointer), w.artifact_id, "{}", w.body);
}

#[then(expr = "the response lists an adapter {string}")]
fn lists_adapter(w: &mut Orchd, name: String) {
    let found = w.body["adapters"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["name"] == name.as_str()));
    assert!(found, "{}", w.body);
}

#[then("I remember the artifact id from the response")]
fn remember_artifact(w: &mut Orchd) {
    w.artifact_id = field(&w.body, "/id");
}

#[then(expr = "no log line contains {string}")]
fn log_clean(w: &mut Orchd, secret: String) {
    let logs = w.d().logs();
    assert!(!logs.is_empty());
    assert!(logs.iter().all(|l| !l.contains(&secret)));
}

/// A model of the real-engine tier by letter (`a`, `b`), from `cargo xtask e2e`.
fn model_file(letter: &str) -> String {
    let var = match letter {
        "a" => "ORCHD_E2E_MODEL",
        "b" => "ORCHD_E2E_MODEL_B",
        other => panic!("no model {other:?}"),
    };
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is set by `cargo xtask e2e`"))
}

#[given(expr = "a daemon that launches llama-server on model {string}")]
async fn launched_daemon(w: &mut Orchd, letter: String) {
    let server = std::env::var("ORCHD_LLAMA_SERVER").expect("ORCHD_LLAMA_SERVER");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    w.engine_port = port;
    let pool = format!(
        "[[pools]]\nid = \"tiny\"\nadapter = \"llamacpp\"\nmodel_ref = \"tiny\"\nhealth_interval_ms = 200\n\n\
         [[pools.replicas]]\nid = \"tiny-0\"\nconfig = {{ url = \"http://127.0.0.1:{port}\" }}\n\
         launch = {{ cmd = \"{server}\", model = \"{}\", ready_timeout_ms = 30000, args = [\"-m\", \"{{model}}\", \"--host\", \"127.0.0.1\", \"--port\", \"{port}\", \"-c\", \"1024\", \"-np\", \"1\", \"-t\", \"2\", \"--alias\", \"tiny\", \"--no-webui\"] }}\n",
        model_file(&letter)
    );
    let Running(d) = launch(DaemonBuilder::new(format!("{POLICY_TIMEOUT}{pool}"))).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, health) = d.get_json("/v1/pools/tiny/health").await;
        if health["ready"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the launched engine never got ready: {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    w.daemon = Some(Running(d));
}

#[when(expr = "I reload the pool onto model {string}")]
async fn reload_onto(w: &mut Orchd, letter: String) {
    let body = json!({"new_model_ref": model_file(&letter)});
    w.send("POST", "/v1/pools/tiny/reload", Some(body)).await;
}

#[when("I reload the pool onto a broken model file")]
async fn reload_broken(w: &mut Orchd) {
    let path = std::env::temp_dir().join(format!("orchd-bdd-broken-{}.gguf", w.engine_port));
    std::fs::write(&path, b"GGUF, but nothing a server can load").unwrap();
    let body = json!({"new_model_ref": path.display().to_string()});
    w.send("POST", "/v1/pools/tiny/reload", Some(body)).await;
}

#[then(expr = "the engine runs model {string}")]
async fn engine_runs(w: &mut Orchd, letter: String) {
    let props: Value = reqwest::get(format!("http://127.0.0.1:{}/props", w.engine_port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(props["model_path"], model_file(&letter).as_str());
}

#[when(expr = "I wait {int} ms")]
async fn wait_ms(_w: &mut Orchd, ms: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

#[tokio::main]
async fn main() {
    Orchd::cucumber()
        .max_concurrent_scenarios(4)
        .fail_on_skipped()
        .run_and_exit(features_dir())
        .await;
}

/// `features/` normally; `real-engine/` when the real-engine tier runs the BDD binary
/// (`ORCHD_BDD_REAL_ENGINE=1`, set by `cargo xtask e2e` with a llama-server installed).
fn features_dir() -> &'static str {
    if std::env::var_os("ORCHD_BDD_REAL_ENGINE").is_some() {
        concat!(env!("CARGO_MANIFEST_DIR"), "/real-engine")
    } else {
        concat!(env!("CARGO_MANIFEST_DIR"), "/features")
    }
}

#[then(expr = "the stream carries one tool call {string} with arguments {string}")]
fn stream_tool_call(w: &mut Orchd, name: String, arguments: String) {
    let fragments: Vec<&Value> = w
        .frames
        .iter()
        .filter(|f| f.event == "tool_call")
        .map(|f| &f.data)
        .collect();
    assert!(!fragments.is_empty(), "no tool_call frame: {:?}", w.frames);
    assert!(fragments.iter().all(|f| f["index"] == 0), "{fragments:?}");
    assert_eq!(fragments[0]["name"], name.as_str(), "{fragments:?}");
    assert!(fragments[0]["id"].is_string(), "{fragments:?}");
    let joined: String = fragments
        .iter()
        .map(|f| f["arguments"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(joined, arguments);
}

#[then(expr = "the end frame's {string} is {string}")]
fn end_field(w: &mut Orchd, key: String, expected: String) {
    let last = w.frames.last().expect("frames");
    assert_eq!(last.event, "end", "{:?}", w.frames);
    let value = &last.data[key.as_str()];
    let got = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    assert_eq!(got, expected, "{}", last.data);
}
