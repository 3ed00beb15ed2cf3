//! A real `llama-server` for the end-to-end tier: started on a free loopback port with a
//! generated GGUF model, waited for until `/health` is 200, killed on drop.
//!
//! `cargo xtask e2e` installs llama-server (cached under `~/.cache/orchd`), generates the
//! models and sets `ORCHD_LLAMA_SERVER` (the command), `ORCHD_E2E_MODEL` and
//! `ORCHD_E2E_MODEL_B` (two different tiny models).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn env_path(var: &str) -> PathBuf {
    let value = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: the real-engine tier runs through `cargo xtask e2e`")
    });
    PathBuf::from(value)
}

/// The first generated model.
pub fn model_a() -> PathBuf {
    env_path("ORCHD_E2E_MODEL")
}

/// A second, different model.
pub fn model_b() -> PathBuf {
    env_path("ORCHD_E2E_MODEL_B")
}

/// The tool model: `tools/e2e/tool-template.jinja` as its chat template (tool calls as
/// `<function=NAME>{json}`), no space prefix (grammars for tool calls and JSON output).
pub fn tool_model() -> PathBuf {
    env_path("ORCHD_E2E_TOOL_MODEL")
}

/// A port nothing listens on (yet).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub struct LlamaServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

/// The alias the servers give their model (`/v1/models` id).
pub const ALIAS: &str = "tiny";

impl LlamaServer {
    /// Starts llama-server on a free port with `slots` parallel slots and waits until ready.
    pub fn start(model: &std::path::Path, slots: u32) -> Self {
        Self::start_on(free_port(), model, slots)
    }

    pub fn start_on(port: u16, model: &std::path::Path, slots: u32) -> Self {
        // Embeddings on, mean-pooled (what `/v1/embeddings` needs); completion still works.
        Self::start_with(port, model, slots, &["--embeddings", "--pooling", "mean"])
    }

    /// A chat engine: the model's Jinja template, its tool-call parser and grammars.
    pub fn start_chat(model: &std::path::Path, slots: u32) -> Self {
        Self::start_with(free_port(), model, slots, &["--jinja"])
    }

    /// A server for benchmarks: `slots` slots of `ctx_per_slot` tokens each, `/metrics` on
    /// (`llamacpp:prompt_tokens_total` counts the prompt tokens it evaluated, cached ones
    /// not included).
    pub fn start_bench(
        model: &std::path::Path,
        slots: u32,
        ctx_per_slot: u32,
        extra: &[&str],
    ) -> Self {
        // One thread each: two replicas share this machine's two cores.
        let args: Vec<&str> = ["--metrics", "-t", "1"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::start_sized(free_port(), model, slots, slots * ctx_per_slot, &args)
    }

    fn start_with(port: u16, model: &std::path::Path, slots: u32, extra: &[&str]) -> Self {
        let args: Vec<&str> = ["-t", "2"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::start_sized(port, model, slots, 4096, &args)
    }

    fn start_sized(
        port: u16,
        model: &std::path::Path,
        slots: u32,
        ctx: u32,
        extra: &[&str],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("orchd-e2e-llama-{port}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env_path("ORCHD_LLAMA_SERVER"));
        // llama-server reads LLAMA_ARG_* for most flags: none may leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LLAMA_ARG_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("-m")
            .arg(model)
            .args(["-c", &ctx.to_string(), "-np", &slots.to_string()])
            .args(["--alias", ALIAS, "--no-webui"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start llama-server");
        let mut server = Self { child, port, log };
        server.wait_ready(Duration::from_secs(120));
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let url = format!("{}/health", self.url());
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("llama-server exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(resp) = blocking_get(&url)
                && resp.0 == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "llama-server not ready within {within:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `/slots`: how many are generating now.
    pub async fn busy_slots(&self) -> usize {
        let slots: Value = reqwest::get(format!("{}/slots", self.url()))
            .await
            .expect("GET /slots")
            .json()
            .await
            .expect("slots JSON");
        slots
            .as_array()
            .expect("a slot list")
            .iter()
            .filter(|s| s["is_processing"].as_bool().unwrap_or(false))
            .count()
    }

    /// `/metrics`' `llamacpp:prompt_tokens_total`: prompt tokens evaluated (not served
    /// from its prompt cache). Needs a server from [`LlamaServer::start_bench`].
    pub async fn prompt_tokens_evaluated(&self) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix("llamacpp:prompt_tokens_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("llamacpp:prompt_tokens_total in /metrics")
    }

    /// Kills the engine the hard way (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking GET (readiness polling outside any runtime): (status, body).
fn blocking_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}
