//! One mock task on its own thread, cancelable at any wait.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use orchd_adapter_abi::abi_stable::std_types::{RNone, RSome};
use orchd_adapter_abi::plugin::{ChatSink, EngineJob, Sink};
use orchd_adapter_abi::{
    AdapterError, ChatDelta, ChatEnd, ChatEvent, ChatRequest, EngineUsage, ErrorKind, Event, Phase,
    SubmitRequest, ToolCallDelta, ToolChoiceMode,
};

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
        let name = format!("mock-{}", req.task_id);
        Self::on_thread(name, active, move |flag| run(&config, flag, &req, &sink))
    }

    pub fn spawn_chat(
        config: Arc<MockConfig>,
        active: Arc<AtomicU32>,
        req: ChatRequest,
        sink: ChatSink,
    ) -> Self {
        let name = format!("mock-{}", req.task_id);
        Self::on_thread(name, active, move |flag| {
            run_chat(&config, flag, &req, &sink)
        })
    }

    fn on_thread(
        name: String,
        active: Arc<AtomicU32>,
        work: impl FnOnce(&CancelFlag) + Send + 'static,
    ) -> Self {
        let flag = Arc::new(CancelFlag::default());
        let thread_flag = Arc::clone(&flag);
        active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(active);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _guard = guard;
                work(&thread_flag);
            })
            .expect("spawn mock job thread");
        Self { flag }
    }
}

/// A chat task: the conversation seeds the generator (so a conversation always gets the
/// same answer), tokens come as content deltas; with `tool_choice` required or naming a
/// function, the answer is one call of that (or the first) tool whose arguments, `{}`,
/// arrive in two fragments. The mock's failures do not apply to chat.
fn run_chat(config: &MockConfig, flag: &CancelFlag, req: &ChatRequest, sink: &ChatSink) {
    let started = Instant::now();
    if !sink.emit(ChatEvent::Started {
        engine_version: crate::engine_version().into(),
    }) {
        return;
    }
    if flag.wait_until(Some(
        started + Duration::from_millis(config.first_token_delay_ms),
    )) {
        return;
    }
    let conversation: String = req
        .messages
        .iter()
        .map(|m| {
            m.content
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .into_option()
                .unwrap_or_else(|| m.parts.iter().map(|p| p.as_str()).collect())
        })
        .collect::<Vec<_>>()
        .join("\n");
    let prompt_tokens = u32::try_from(conversation.split_whitespace().count()).unwrap_or(u32::MAX);
    let delta = |content: String, tool_calls: Vec<ToolCallDelta>| {
        ChatEvent::Delta(ChatDelta {
            content: content.into(),
            tool_calls: tool_calls.into(),
            logprobs: Default::default(),
        })
    };
    let tool = match req.tool_choice.mode {
        ToolChoiceMode::Function => Some(req.tool_choice.function.clone()),
        ToolChoiceMode::Required => req.tools.first().map(|t| t.name.clone()),
        _ => None,
    };
    let (finish_reason, completion_tokens) = if let Some(name) = tool {
        let first = ToolCallDelta {
            index: 0,
            id: RSome(format!("call_{}", req.task_id).into()),
            name: RSome(name),
            arguments: "{".into(),
        };
        let second = ToolCallDelta {
            index: 0,
            id: RNone,
            name: RNone,
            arguments: "}".into(),
        };
        if !sink.emit(delta(String::new(), vec![first]))
            || !sink.emit(delta(String::new(), vec![second]))
        {
            return;
        }
        ("tool_calls", 2)
    } else {
        let seed = req.seed.into_option().unwrap_or(0);
        let mut generator = Generator::new(seed, &conversation);
        let interval = Duration::from_secs_f64(1.0 / config.tokens_per_s);
        let mut next = Instant::now();
        for produced in 0..req.max_tokens {
            if !sink.emit(delta(generator.next_token(), Vec::new())) {
                return;
            }
            next += interval;
            if produced + 1 < req.max_tokens && flag.wait_until(Some(next)) {
                return;
            }
        }
        ("length", req.max_tokens)
    };
    sink.emit(ChatEvent::End(ChatEnd {
        finish_reason: finish_reason.into(),
        usage: if config.report_usage {
            RSome(EngineUsage {
                prompt_tokens,
                completion_tokens,
                cached_tokens: RNone,
            })
        } else {
            RNone
        },
    }));
}

fn run(config: &MockConfig, flag: &CancelFlag, req: &SubmitRequest, sink: &Sink) {
    let started = Instant::now();
    if !sink.emit(Event::Started {
        engine_version: crate::engine_version().into(),
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
    let (tokens_in, tokens_out) = if config.report_usage {
        (tokens_in, req.max_tokens)
    } else {
        (0, 0)
    };
    sink.emit(Event::End {
        tokens_in,
        tokens_out,
    });
}
