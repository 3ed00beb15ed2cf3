//! The pool manager's side of launched replicas: it starts the engine process, captures
//! its output into a log file, restarts it when it exits (exponential backoff with jitter,
//! and a breaker against restart storms), and restarts it on another model for a reload.
//! Readiness is not decided here: the health probes gate it (engine up, model loaded).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::config::LaunchSettings;

/// Restarts allowed within [`BREAKER_WINDOW`] before the breaker opens.
const BREAKER_RESTARTS: usize = 5;
const BREAKER_WINDOW: Duration = Duration::from_secs(60);
/// How long a stopped engine gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The model file a model ref names: `file:/abs/path`, `file:///abs/path`, or a path.
pub fn model_path(model_ref: &str) -> PathBuf {
    let path = model_ref
        .strip_prefix("file://")
        .or_else(|| model_ref.strip_prefix("file:"))
        .unwrap_or(model_ref);
    PathBuf::from(path)
}

pub struct Supervisor {
    pub replica_id: String,
    settings: LaunchSettings,
    model: Mutex<String>,
    child: Mutex<Option<Child>>,
    /// Bumped on every deliberate (re)start: a monitor of an older generation stands down.
    generation: AtomicU64,
    stopping: AtomicBool,
    restarts: Mutex<VecDeque<Instant>>,
    breaker_open: AtomicBool,
    /// The engine exited since the last deliberate (re)start.
    exited: AtomicBool,
    log_path: PathBuf,
}

impl Supervisor {
    pub fn new(replica_id: &str, settings: LaunchSettings, log_dir: &Path) -> Arc<Self> {
        let model = settings.model.clone();
        Arc::new(Self {
            replica_id: replica_id.to_owned(),
            settings,
            model: Mutex::new(model),
            child: Mutex::new(None),
            generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            restarts: Mutex::new(VecDeque::new()),
            breaker_open: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            log_path: log_dir.join(format!("{replica_id}.log")),
        })
    }

    /// The model the engine runs (or is being started on).
    pub fn model(&self) -> String {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn ready_timeout(&self) -> Duration {
        self.settings.ready_timeout
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The engine exited since it was last (re)started on purpose: a model it cannot load
    /// shows here long before any readiness timeout.
    pub fn exited_since_restart(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// Why the engine is not being restarted, if the breaker is open.
    pub fn breaker_open(&self) -> bool {
        self.breaker_open.load(Ordering::Acquire)
    }

    fn command(&self, model: &str) -> std::io::Result<Command> {
        if let Some(dir) = self.log_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let file = model_path(model).display().to_string();
        let mut cmd = Command::new(&self.settings.cmd);
        cmd.args(
            self.settings
                .args
                .iter()
                .map(|a| a.replace("{model}", &file)),
        )
        .envs(self.settings.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
        Ok(cmd)
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the engine on the current model and watches it. Must run in the runtime.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let model = self.model();
        let child = self.command(&model)?.spawn()?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(
            replica_id = %self.replica_id, pid = child.id().unwrap_or(0), model = %model,
            log = %self.log_path.display(), "engine launched"
        );
        *self.lock_child() = Some(child);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.monitor(generation).await });
        Ok(())
    }

    /// Waits for the engine of `generation` to exit; restarts it unless it was stopped on
    /// purpose, with backoff, until the breaker opens.
    async fn monitor(self: Arc<Self>, generation: u64) {
        let status = loop {
            {
                let mut guard = self.lock_child();
                if self.generation.load(Ordering::Acquire) != generation {
                    return;
                }
                match guard.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        guard.take();
                        break status;
                    }
                    Some(Ok(None)) => {}
                    Some(Err(_)) | None => return,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        self.exited.store(true, Ordering::Release);
        let attempt = {
            let mut restarts = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            while restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > BREAKER_WINDOW)
            {
                restarts.pop_front();
            }
            if restarts.len() >= BREAKER_RESTARTS {
                self.breaker_open.store(true, Ordering::Release);
                tracing::error!(
                    replica_id = %self.replica_id, %status, restarts = restarts.len(),
                    "engine keeps exiting; restart breaker open (no more restarts until a reload)"
                );
                return;
            }
            restarts.push_back(now);
            restarts.len() as u32
        };
        let cap = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
        let delay = Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2));
        tracing::warn!(
            replica_id = %self.replica_id, %status, delay_ms = delay.as_millis() as u64,
            "engine exited; restarting"
        );
        tokio::time::sleep(delay).await;
        if self.generation.load(Ordering::Acquire) == generation
            && !self.stopping.load(Ordering::Acquire)
            && let Err(e) = self.start()
        {
            tracing::error!(replica_id = %self.replica_id, error = %e, "engine restart failed");
        }
    }

    /// Stops the engine: SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let taken = self.lock_child().take();
        let Some(mut child) = taken else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// Restarts the engine on `model` (a reload or its rollback); the breaker closes.
    pub async fn restart_with(self: &Arc<Self>, model: &str) -> std::io::Result<()> {
        self.stop().await;
        *self.model.lock().unwrap_or_else(|p| p.into_inner()) = model.to_owned();
        self.restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.breaker_open.store(false, Ordering::Release);
        self.exited.store(false, Ordering::Release);
        self.start()
    }

    /// Stops for good (daemon shutdown).
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs_name_files() {
        assert_eq!(model_path("file:/m/a.gguf"), PathBuf::from("/m/a.gguf"));
        assert_eq!(model_path("file:///m/a.gguf"), PathBuf::from("/m/a.gguf"));
        assert_eq!(model_path("/m/b.gguf"), PathBuf::from("/m/b.gguf"));
    }

    #[tokio::test]
    async fn an_engine_that_exits_is_restarted_until_the_breaker_opens() {
        let dir = tempfile::tempdir().unwrap();
        let s = Supervisor::new(
            "r0",
            LaunchSettings {
                cmd: PathBuf::from("/bin/sh"),
                args: vec!["-c".into(), "echo started {model}; exit 3".into()],
                env: vec![],
                model: "/m/a.gguf".into(),
                ready_timeout: Duration::from_secs(1),
            },
            dir.path(),
        );
        s.start().unwrap();
        // Restarts back off 0.5-1 s, 1-2 s, …: wait for a few of them.
        let deadline = Instant::now() + Duration::from_secs(8);
        while s.restarts.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "no restarts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(s.log_path()).unwrap();
        assert!(log.matches("started /m/a.gguf").count() >= 2, "{log}");
        s.shutdown().await;
    }
}
