//! The log's writer. A thread that logs only appends its formatted line to a buffer; one
//! thread, `orchd-log`, writes the buffer out. So no request thread makes a `write` call
//! for its log lines, and under load many lines leave in one call.
//!
//! The writer wakes for the first line after a quiet spell. If it last woke less than
//! [`BUSY`] ago it lingers [`LINGER`] to gather more, so under load it wakes at most about
//! 500 times a second however many lines there are; when quiet a line goes out at once.
//! A line is out at most [`LINGER`] after it was logged; [`LogSink::flush`] (at exit
//! and from the panic hook) waits until everything logged so far is out. A `kill -9`
//! loses at most the last [`LINGER`] of lines.
//!
//! If the output stops taking lines (a full pipe nobody reads), the buffer stops at
//! [`MAX_BUFFERED`]: later lines are dropped and counted, and the next write says how many.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the writer gathers lines after waking.
pub const LINGER: Duration = Duration::from_millis(2);
/// A wake-up within this long of the last one finds the writer busy: it lingers.
pub const BUSY: Duration = Duration::from_millis(5);
/// Bytes held before lines are dropped.
pub const MAX_BUFFERED: usize = 8 << 20;

/// Where log lines go: cheap to clone, one writer thread behind all clones.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    buf: Mutex<Buf>,
    /// The writer waits here for lines.
    lines: Condvar,
    /// [`LogSink::flush`] waits here for the writer.
    written: Condvar,
}

#[derive(Default)]
struct Buf {
    lines: Vec<u8>,
    /// Bytes accepted and bytes written since the start: a flush waits until `out`
    /// reaches what `accepted` was when it began.
    accepted: u64,
    out: u64,
    dropped: u64,
    writer_waiting: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buf> {
        // A thread that panicked while appending left whole lines or none.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogSink {
    /// Starts the writer thread on `out`.
    pub fn start(mut out: impl Write + Send + 'static) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buf::default()),
            lines: Condvar::new(),
            written: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("orchd-log".into())
            .spawn(move || {
                let mut batch = Vec::new();
                let mut woke = std::time::Instant::now() - BUSY;
                loop {
                    let mut buf = writer.lock();
                    if buf.lines.is_empty() {
                        buf.writer_waiting = true;
                        while buf.lines.is_empty() {
                            buf = writer.lines.wait(buf).unwrap_or_else(|p| p.into_inner());
                        }
                        buf.writer_waiting = false;
                        // Busy: gather what follows the first line before writing. Quiet:
                        // the line goes out at once.
                        if woke.elapsed() < BUSY {
                            drop(buf);
                            std::thread::sleep(LINGER);
                            buf = writer.lock();
                        }
                        woke = std::time::Instant::now();
                    }
                    std::mem::swap(&mut buf.lines, &mut batch);
                    let dropped = std::mem::take(&mut buf.dropped);
                    let upto = buf.accepted;
                    drop(buf);
                    if dropped > 0 {
                        let _ = writeln!(
                            out,
                            r#"{{"level":"WARN","message":"log lines dropped: the log output was not keeping up","dropped":{dropped},"target":"orchd_host::logsink"}}"#
                        );
                    }
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    batch.clear();
                    writer.lock().out = upto;
                    writer.written.notify_all();
                }
            })?;
        Ok(Self { shared })
    }

    /// Waits (at most `limit`) until every line logged before the call is written.
    pub fn flush(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut buf = self.shared.lock();
        let target = buf.accepted;
        while buf.out < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            buf = match self.shared.written.wait_timeout(buf, left) {
                Ok((b, _)) => b,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn append(&self, line: &[u8]) {
        let mut buf = self.shared.lock();
        if buf.lines.len() + line.len() > MAX_BUFFERED {
            buf.dropped += 1;
            return;
        }
        buf.lines.extend_from_slice(line);
        buf.accepted += line.len() as u64;
        if buf.writer_waiting {
            buf.writer_waiting = false;
            self.shared.lines.notify_one();
        }
    }
}

/// One formatted event: `tracing-subscriber` writes each whole line in one `write_all`.
pub struct Line<'a>(&'a LogSink);

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_come_out_whole_and_flush_waits_for_them() {
        let out = Captured::default();
        let sink = LogSink::start(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let line = format!("{{\"thread\":{t},\"i\":{i}}}\n");
                        tracing_subscriber::fmt::MakeWriter::make_writer(&sink)
                            .write_all(line.as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        sink.flush(Duration::from_secs(10));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        for t in 0..4 {
            // Each thread's lines are whole and in the order it logged them.
            let mine: Vec<u32> = lines
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["thread"] == t)
                .map(|v| v["i"].as_u64().unwrap() as u32)
                .collect();
            assert_eq!(mine, (0..500).collect::<Vec<_>>());
        }
    }

    /// An output that takes nothing until released.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Captured);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_costs_dropped_lines_not_blocked_threads_and_says_how_many() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Captured::default();
        let sink = LogSink::start(Stuck(Arc::clone(&gate), out.clone())).unwrap();
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        // The writer takes a first batch (at most a full buffer) and blocks on the output;
        // the rest fill the buffer and then overflow it. None of this blocks the caller.
        let lines = 2 * MAX_BUFFERED / line.len() + 100;
        for _ in 0..lines {
            tracing_subscriber::fmt::MakeWriter::make_writer(&sink)
                .write_all(&line)
                .unwrap();
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        sink.flush(Duration::from_secs(10));
        // One more line, so the writer reports the drops.
        tracing_subscriber::fmt::MakeWriter::make_writer(&sink)
            .write_all(b"{\"after\":true}\n")
            .unwrap();
        sink.flush(Duration::from_secs(10));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let report: serde_json::Value = text
            .lines()
            .find(|l| l.contains("log lines dropped"))
            .map(|l| serde_json::from_str(l).unwrap())
            .expect("the drops are reported");
        let dropped = report["dropped"].as_u64().unwrap();
        let kept = text.lines().filter(|l| l.starts_with('x')).count() as u64;
        assert!(dropped > 0);
        assert_eq!(
            kept + dropped,
            lines as u64,
            "every line is written or counted"
        );
        assert!(text.ends_with("{\"after\":true}\n"));
    }
}
