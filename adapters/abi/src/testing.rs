//! Unit-testing an adapter without the daemon: sinks that record what `submit` and
//! `submit_chat` emit, as the host's sink would receive it through the ABI.
//!
//! ```
//! use orchd_adapter_abi::abi_stable::std_types::RString;
//! use orchd_adapter_abi::{testing, Event};
//!
//! let (sink, recorded) = testing::sink();
//! // An adapter's job would emit from its own thread; here, by hand:
//! assert!(sink.emit(Event::Started { engine_version: RString::from("x-1") }));
//! drop(sink); // a job that ends drops its sink
//! assert_eq!(recorded.wait_closed(std::time::Duration::from_secs(1)).len(), 1);
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;

use crate::ffi::{FfiEventSink, FfiEventSink_TO};
use crate::plugin::{ChatSink, Sink};
use crate::{ChatEvent, Event, SinkStatus};

/// What a recording sink received.
#[derive(Debug)]
struct Log<E> {
    events: Vec<E>,
    /// The sink was dropped (the adapter's job let go of it).
    closed: bool,
}

impl<E> Log<E> {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            closed: false,
        }
    }
}

/// The events a recording sink received, readable while the adapter's job runs.
#[derive(Debug)]
pub struct Recorded<E> {
    shared: Arc<(Mutex<Log<E>>, Condvar)>,
}

impl<E: Clone> Recorded<E> {
    /// The events so far, in order.
    pub fn events(&self) -> Vec<E> {
        self.log().events.clone()
    }

    /// Waits (at most `timeout`) until the adapter dropped the sink, as every job must
    /// when it ends; the events received.
    pub fn wait_closed(&self, timeout: Duration) -> Vec<E> {
        self.wait_until(timeout, |log| log.closed)
    }

    /// Waits (at most `timeout`) until at least `n` events arrived; the events received.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<E> {
        self.wait_until(timeout, |log| log.events.len() >= n || log.closed)
    }

    /// Whether the adapter dropped the sink.
    pub fn is_closed(&self) -> bool {
        self.log().closed
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log<E>> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Log<E>) -> bool) -> Vec<E> {
        let deadline = Instant::now() + timeout;
        let mut log = self.log();
        while !done(&log) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            log = self
                .shared
                .1
                .wait_timeout(log, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        log.events.clone()
    }
}

/// The host side of a recording sink: records, and says stop after `stop_after` events.
struct Recorder {
    plain: Arc<(Mutex<Log<Event>>, Condvar)>,
    chat: Arc<(Mutex<Log<ChatEvent>>, Condvar)>,
    stop_after: Option<usize>,
}

fn record<E>(shared: &(Mutex<Log<E>>, Condvar), event: E, stop_after: Option<usize>) -> SinkStatus {
    let mut log = shared.0.lock().unwrap_or_else(|p| p.into_inner());
    log.events.push(event);
    shared.1.notify_all();
    if stop_after.is_some_and(|n| log.events.len() >= n) {
        SinkStatus::Stop
    } else {
        SinkStatus::Continue
    }
}

impl FfiEventSink for Recorder {
    fn emit(&self, event: Event) -> SinkStatus {
        record(&self.plain, event, self.stop_after)
    }

    fn emit_chat(&self, event: ChatEvent) -> SinkStatus {
        record(&self.chat, event, self.stop_after)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.plain
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.plain.1.notify_all();
        self.chat.0.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.chat.1.notify_all();
    }
}

fn recorder(stop_after: Option<usize>) -> (Recorder, Recorded<Event>, Recorded<ChatEvent>) {
    let plain = Arc::new((Mutex::new(Log::new()), Condvar::new()));
    let chat = Arc::new((Mutex::new(Log::new()), Condvar::new()));
    (
        Recorder {
            plain: Arc::clone(&plain),
            chat: Arc::clone(&chat),
            stop_after,
        },
        Recorded { shared: plain },
        Recorded { shared: chat },
    )
}

/// A [`Sink`] for `submit` that records every event.
pub fn sink() -> (Sink, Recorded<Event>) {
    let (recorder, plain, _) = recorder(None);
    (
        Sink::from_ffi(FfiEventSink_TO::from_value(recorder, TD_Opaque)),
        plain,
    )
}

/// A [`Sink`] that records, and answers "stop" once it holds `n` events: what the host
/// does when the task was canceled or its client left. The adapter must stop its work and
/// drop the sink.
pub fn sink_stopping_after(n: usize) -> (Sink, Recorded<Event>) {
    let (recorder, plain, _) = recorder(Some(n));
    (
        Sink::from_ffi(FfiEventSink_TO::from_value(recorder, TD_Opaque)),
        plain,
    )
}

/// A [`ChatSink`] for `submit_chat` that records every event.
pub fn chat_sink() -> (ChatSink, Recorded<ChatEvent>) {
    let (recorder, _, chat) = recorder(None);
    (
        ChatSink::from_ffi(FfiEventSink_TO::from_value(recorder, TD_Opaque)),
        chat,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdapterError, ErrorKind, Phase};
    use abi_stable::std_types::RString;

    #[test]
    fn a_recording_sink_keeps_order_stops_when_told_and_sees_the_drop() {
        let (sink, recorded) = sink_stopping_after(2);
        assert!(sink.emit(Event::Started {
            engine_version: RString::from("v")
        }));
        assert!(
            !sink.emit(Event::Token {
                text: RString::from("a")
            }),
            "stop after 2"
        );
        assert!(!recorded.is_closed());
        std::thread::spawn(move || {
            sink.emit(Event::Error(AdapterError::new(
                ErrorKind::Internal,
                Phase::MidStream,
                "late",
            )));
        })
        .join()
        .unwrap();
        let events = recorded.wait_closed(Duration::from_secs(1));
        assert_eq!(events.len(), 3);
        assert!(recorded.is_closed());
        assert!(matches!(events[1], Event::Token { ref text } if text.as_str() == "a"));
    }
}
