//! One mock task on its own thread, cancelable at any wait.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use orchd_adapter_abi::plugin::{EngineJob, Sink};
use orchd_adapter_abi::{AdapterError, ErrorKind, Event, Phase, SubmitRequest};

use crate::config::{Failure, MockConfig};
use crate::generator::Generator;

#[derive(Default)]
struct CancelFlag {
    canceled: Mutex<bool>,
    cv: Condvar,
}

impl CancelFlag {
    fn cancel(&self) {
        *self.canceled.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Sleeps until `deadline` (or forever with `None`); returns `true` if canceled.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut canceled = self.canceled.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *canceled {
                return true;
            }
            match deadline {
                None => canceled = self.cv.wait(canceled).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    canceled = self
                        .cv
                        .wait_timeout(canceled, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

pub struct MockJob {
    flag: Arc<CancelFlag>,
}

impl EngineJob for MockJob {
    fn cancel(&self) {
        self.flag.cancel();
    }
}

/// Decrements the active-task count however the thread ends (including a panic).
struct ActiveGuard(Arc<AtomicU32>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MockJob {
    pub fn spawn(
        config: Arc<MockConfig>,
        active: Arc<AtomicU32>,
        req: SubmitRequest,
        sink: Sink,
    ) -> Self {
        let flag = Arc::new(CancelFlag::default());
        let thread_flag = Arc::clone(&flag);
        active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(active);
        std::thread::Builder::new()
            .name(format!("mock-{}", req.task_id))
            .spawn(move || {
                let _guard = guard;
                run(&config, &thread_flag, &req, &sink);
            })
            .expect("spawn mock job thread");
        Self { flag }
    }
}

fn run(config: &MockConfig, flag: &CancelFlag, req: &SubmitRequest, sink: &Sink) {
    let started = Instant::now();
    if !sink.emit(Event::Started {
        engine_version: crate::ENGINE_VERSION.into(),
    }) {
        return;
    }
    if config.failure == Failure::InternalError {
        sink.emit(Event::Error(AdapterError::new(
            ErrorKind::Internal,
            Phase::BeforeFirstToken,
            "injected internal adapter error",
        )));
        return;
    }
    if config.failure == Failure::ErrorBeforeFirstToken {
        sink.emit(Event::Error(AdapterError::new(
            ErrorKind::Upstream,
            Phase::BeforeFirstToken,
            "injected error before first token",
        )));
        return;
    }
    let first = started + Duration::from_millis(config.first_token_delay_ms);
    if flag.wait_until(Some(first)) {
        return;
    }
    let interval = Duration::from_secs_f64(1.0 / config.tokens_per_s);
    let mut generator = Generator::new(req.seed, req.prompt.as_str());
    let mut next = Instant::now();
    for produced in 0..req.max_tokens {
        if produced == config.fail_after_tokens {
            match config.failure {
                Failure::ErrorMidStream => {
                    let phase = if produced == 0 {
                        Phase::BeforeFirstToken
                    } else {
                        Phase::MidStream
                    };
                    sink.emit(Event::Error(AdapterError::new(
                        ErrorKind::Transport,
                        phase,
                        "injected connection reset",
                    )));
                    return;
                }
                Failure::Stall => {
                    flag.wait_until(None);
                    return;
                }
                Failure::PanicMidStream => panic!("injected panic mid-stream"),
                _ => {}
            }
        }
        if !sink.emit(Event::Token {
            text: generator.next_token().into(),
        }) {
            return;
        }
        next += interval;
        if produced + 1 < req.max_tokens && flag.wait_until(Some(next)) {
            return;
        }
    }
    let tokens_in = u32::try_from(req.prompt.split_whitespace().count()).unwrap_or(u32::MAX);
    sink.emit(Event::End {
        tokens_in,
        tokens_out: req.max_tokens,
    });
}
