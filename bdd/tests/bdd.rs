//! Cucumber runner: every feature in `bdd/features` against the real binary in
//! `target/dist` (built by `cargo xtask dist`).

use cucumber::{World, given, then, when};
use orchd_testkit::{
    Daemon, DaemonBuilder, SseFrame, SseReader, config, default_admission, mock_pool, task,
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
    remembered: String,
}

impl Orchd {
    fn d(&self) -> &Daemon {
        &self.daemon.as_ref().expect("no daemon started").0
    }

    async fn record(&mut self, resp: reqwest::Response) {
        self.status = resp.status().as_u16();
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

fn start(pool: String) -> Running {
    Running(DaemonBuilder::new(config(&default_admission("reject"), 16, &[pool])).start())
}

#[given(expr = "a running daemon with a mock pool {string}")]
fn daemon(w: &mut Orchd, pool: String) {
    w.daemon = Some(start(mock_pool(
        &pool,
        "slots = 2, first_token_delay_ms = 5, tokens_per_s = 500.0",
    )));
}

#[given(expr = "a running daemon with a slow one-slot mock pool {string}")]
fn slow_daemon(w: &mut Orchd, pool: String) {
    w.daemon = Some(start(mock_pool(
        &pool,
        "slots = 1, first_token_delay_ms = 5, tokens_per_s = 100.0",
    )));
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
    assert!(frames.iter().rev().skip(1).all(|f| f.id < end.id));
}

#[then(expr = "the other task's stream holds only an {string} frame marked canceled")]
async fn other_only_end(w: &mut Orchd, event: String) {
    let frames = w.frames(&w.other_id).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event, event);
    assert_eq!(frames[0].data["canceled"], true);
}

#[tokio::main]
async fn main() {
    Orchd::cucumber()
        .fail_on_skipped()
        .run_and_exit(concat!(env!("CARGO_MANIFEST_DIR"), "/features"))
        .await;
}
