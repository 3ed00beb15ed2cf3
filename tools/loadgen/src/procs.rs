//! The processes a benchmark runs: the engine simulator and orchestratord from a dist tree,
//! each killed when its guard drops, and what `/proc` says about them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub base: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size and CPU time so far.
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::of(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory and CPU time, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub cpu: Duration,
}

impl ProcStats {
    pub fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS in /proc/<pid>/status")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces): utime and stime are the
        // 14th and 15th fields overall, in clock ticks.
        let rest = stat.rsplit_once(')').context("/proc/<pid>/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let total = ticks(11) + ticks(12);
        Ok(Self {
            rss_bytes: rss_kib * 1024,
            cpu: Duration::from_secs_f64(total as f64 / clock_ticks() as f64),
        })
    }
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// How the engine simulator behaves.
#[derive(Debug, Clone, Copy)]
pub struct SimArgs {
    pub first_token_ms: u64,
    pub inter_token_ms: u64,
    pub slots: u32,
    pub threads: usize,
}

/// Starts `engine-sim` on a free port and waits for it to listen.
/// A `redis-server` on a free loopback port (no persistence); `base` is its URL.
pub fn start_redis() -> Result<Proc> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start redis-server (Debian package redis-server)")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Proc {
        child,
        base: format!("redis://127.0.0.1:{port}/"),
    })
}

pub fn start_sim(bin: &Path, a: SimArgs) -> Result<Proc> {
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0"])
        .args(["--first-token-ms", &a.first_token_ms.to_string()])
        .args(["--inter-token-ms", &a.inter_token_ms.to_string()])
        .args(["--slots", &a.slots.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let stderr = child.stderr.take().context("sim stderr")?;
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("engine-sim listening on ") else {
        let _ = child.kill();
        bail!("engine-sim did not start: {line:?}");
    };
    Ok(Proc {
        base: format!("http://{addr}"),
        child,
    })
}

/// nginx (Debian's package) as a plain reverse proxy in front of `upstream`, on a free
/// loopback port: keep-alive to the upstream, no buffering (streams pass as they come), no
/// access log. Its files live in `dir`. The floor every proxy in this path is held to.
pub fn start_nginx(dir: &Path, upstream: &str) -> Result<Proc> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("nginx is not installed (Debian package nginx-light)")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let port = free_port()?;
    let upstream = upstream
        .strip_prefix("http://")
        .context("the upstream is http://host:port")?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process on;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream engine {{
        server {upstream};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"#,
            dir = dir.display()
        ),
    )?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {bin}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
    })
}

/// CPU time of a process and all its children (nginx's master and workers).
pub fn tree_cpu(pid: u32) -> Result<Duration> {
    let mut total = ProcStats::of(pid)?.cpu;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.file_name();
        let children = std::fs::read_to_string(format!(
            "/proc/{pid}/task/{}/children",
            task.to_string_lossy()
        ))
        .unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            total += tree_cpu(child).unwrap_or_default();
        }
    }
    Ok(total)
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts orchestratord from `dist` with `config` (TOML) in `dir`, logging to
/// `dir/orchestratord.log`, and waits until pool `pool` is ready.
pub async fn start_daemon(
    dist: &Path,
    dir: &Path,
    policies: &Path,
    config: &str,
    pool: &str,
) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let config_path = dir.join("orchd.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join("orchestratord.log"))?;
    let port = free_port()?;
    let child = Command::new(dist.join("bin/orchestratord"))
        .arg("--config")
        .arg(&config_path)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .arg("--adapters-dir")
        .arg(dist.join("adapters"))
        .arg("--policies-dir")
        .arg(policies)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        // The harness polls pool health and swaps policies without keys.
        .arg("--insecure-open-admin")
        .env_remove("ORCHD_API_KEYS")
        .env_remove("ORCHD_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start orchestratord")?;
    let mut proc = Proc {
        base: format!("http://127.0.0.1:{port}"),
        child,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "orchestratord exited ({status}); see {}",
                dir.join("orchestratord.log").display()
            );
        }
        let ready = http
            .get(format!("{}/v1/pools/{pool}/health", proc.base))
            .send()
            .await;
        if let Ok(r) = ready
            && let Ok(v) = r.json::<serde_json::Value>().await
            && v["ready"] == true
        {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!("pool {pool} not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The dist tree's policy directory copied to `dir`, so a benchmark can swap files in it.
pub fn copy_policies(dist: &Path, dir: &Path) -> Result<PathBuf> {
    let out = dir.join("policies");
    std::fs::create_dir_all(&out)?;
    for entry in std::fs::read_dir(dist.join("policies"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, out.join(path.file_name().context("file name")?))?;
        }
    }
    Ok(out)
}
