//! Load shapes and the report: closed loop (N streams in flight, back to back) or open loop
//! (streams started at a fixed rate whatever the answers, so a slow daemon cannot slow the
//! load down and hide its own latency), with a mix of cancels, disconnects and reconnects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::stream::{self, Action, Outcome, Shape, Target};

/// How streams are started.
#[derive(Debug, Clone, Copy)]
pub enum Schedule {
    /// `concurrency` workers, each running streams back to back, until `total` streams have
    /// started or `duration` has passed (whichever is set and comes first). Worker `k`
    /// starts `k × ramp / concurrency` late, so that equal streams do not start and end in
    /// lockstep waves (give about one stream's length).
    Closed {
        concurrency: usize,
        total: Option<u64>,
        duration: Option<Duration>,
        ramp: Duration,
    },
    /// `rate` streams per second for `duration`; a start that would exceed `max_in_flight`
    /// is skipped and counted, never delayed.
    Open {
        rate: f64,
        duration: Duration,
        max_in_flight: usize,
    },
}

/// Which share of streams cancel, disconnect or reconnect, and after how many tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    pub cancel: f64,
    pub disconnect: f64,
    pub reconnect: f64,
    pub after_tokens: u32,
    /// Streams are admitted and never attached to (admission throughput).
    pub submit_only: bool,
}

impl Mix {
    /// The action of stream `n`: deterministic, spread evenly over the run.
    pub fn action(&self, n: u64) -> Action {
        if self.submit_only {
            return Action::SubmitOnly;
        }
        // A low-discrepancy sequence in [0, 1): shares hold over any stretch of streams.
        let x = (n as f64 * 0.618_033_988_749_895).fract();
        let k = self.after_tokens.max(1);
        if x < self.cancel {
            Action::Cancel(k)
        } else if x < self.cancel + self.disconnect {
            Action::Disconnect(k)
        } else if x < self.cancel + self.disconnect + self.reconnect {
            Action::Reconnect(k)
        } else {
            Action::Read
        }
    }
}

/// A whole load run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub label: String,
    pub target: Target,
    pub shape: Shape,
    pub schedule: Schedule,
    pub mix: Mix,
    /// Speak HTTP/2 without TLS (h2c) to the target, over this many connections; `None`:
    /// HTTP/1.1, one connection per stream in flight.
    pub h2_connections: Option<usize>,
}

/// Latencies in microseconds.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Hist) {
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        Percentiles {
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Everything a run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub label: String,
    pub elapsed: Duration,
    pub started: u64,
    /// Open loop: starts skipped because `max_in_flight` streams were running.
    pub skipped: u64,
    pub admitted: u64,
    pub refused: u64,
    pub ended: u64,
    pub canceled: u64,
    pub tokens: u64,
    pub lost_frames: u64,
    pub violations: u64,
    /// The first few violations, described.
    pub violation_samples: Vec<String>,
    pub errors: BTreeMap<String, u64>,
    pub actions: BTreeMap<String, u64>,
    pub admit: Hist,
    pub first_token: Hist,
    pub inter_token: Hist,
}

impl Report {
    fn add(&mut self, o: Outcome) {
        self.started += 1;
        self.admitted += u64::from(o.admitted);
        self.refused += u64::from(o.refused);
        self.ended += u64::from(o.ended);
        self.canceled += u64::from(o.canceled);
        self.tokens += u64::from(o.tokens);
        self.lost_frames += u64::from(o.lost);
        if let Some(d) = o.admit {
            self.admit.record(d);
        }
        if let Some(d) = o.first_token {
            self.first_token.record(d);
        }
        for d in &o.inter_token {
            self.inter_token.record(*d);
        }
        if let Some(e) = o.error {
            *self.errors.entry(e).or_default() += 1;
        }
        if let Some(a) = o.action_taken {
            let name = match a {
                Action::Read => "read",
                Action::Cancel(_) => "cancel",
                Action::Disconnect(_) => "disconnect",
                Action::Reconnect(_) => "reconnect",
                Action::SubmitOnly => "submit_only",
            };
            *self.actions.entry(name.to_owned()).or_default() += 1;
        }
        self.violations += o.violations.len() as u64;
        for v in o.violations {
            if self.violation_samples.len() < 10 {
                self.violation_samples.push(v);
            }
        }
    }

    fn merge(&mut self, other: Report) {
        self.started += other.started;
        self.skipped += other.skipped;
        self.admitted += other.admitted;
        self.refused += other.refused;
        self.ended += other.ended;
        self.canceled += other.canceled;
        self.tokens += other.tokens;
        self.lost_frames += other.lost_frames;
        self.violations += other.violations;
        for v in other.violation_samples {
            if self.violation_samples.len() < 10 {
                self.violation_samples.push(v);
            }
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.actions {
            *self.actions.entry(k).or_default() += v;
        }
        self.admit.merge(&other.admit);
        self.first_token.merge(&other.first_token);
        self.inter_token.merge(&other.inter_token);
    }

    /// Streams that failed: refused, error frames, transport failures.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn summary(&self) -> Summary {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        Summary {
            label: self.label.clone(),
            elapsed_s: secs,
            started: self.started,
            skipped: self.skipped,
            admitted: self.admitted,
            admitted_per_s: self.admitted as f64 / secs,
            refused: self.refused,
            decided_per_s: (self.admitted + self.refused) as f64 / secs,
            ended: self.ended,
            canceled: self.canceled,
            failed: self.failed(),
            tokens: self.tokens,
            lost_frames: self.lost_frames,
            violations: self.violations,
            violation_samples: self.violation_samples.clone(),
            errors: self.errors.clone(),
            actions: self.actions.clone(),
            admit: self.admit.summary(),
            first_token: self.first_token.summary(),
            inter_token: self.inter_token.summary(),
        }
    }
}

/// A report in the shape the suite writes out.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub label: String,
    pub elapsed_s: f64,
    pub started: u64,
    pub skipped: u64,
    pub admitted: u64,
    pub admitted_per_s: f64,
    /// Requests refused with an error envelope (admission decisions too).
    #[serde(default)]
    pub refused: u64,
    /// Admission decisions (202s and refusals) per second.
    #[serde(default)]
    pub decided_per_s: f64,
    pub ended: u64,
    pub canceled: u64,
    pub failed: u64,
    pub tokens: u64,
    pub lost_frames: u64,
    pub violations: u64,
    pub violation_samples: Vec<String>,
    pub errors: BTreeMap<String, u64>,
    pub actions: BTreeMap<String, u64>,
    pub admit: Percentiles,
    pub first_token: Percentiles,
    pub inter_token: Percentiles,
}

/// The clients streams use: one pool for HTTP/1.1, or `n` h2c connections.
fn clients(h2_connections: Option<usize>) -> anyhow::Result<Vec<reqwest::Client>> {
    let base = || {
        reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(600))
    };
    Ok(match h2_connections {
        None => vec![base().build()?],
        Some(n) => (0..n.max(1))
            .map(|_| base().http2_prior_knowledge().build())
            .collect::<Result<_, _>>()?,
    })
}

/// Live counters a caller may watch while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub in_flight: AtomicU64,
    pub started: AtomicU64,
    pub finished: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

/// Runs a load; `progress` is updated as streams start and finish.
pub async fn run(spec: Spec, progress: Arc<Progress>) -> anyhow::Result<Report> {
    let clients = Arc::new(clients(spec.h2_connections)?);
    let spec = Arc::new(spec);
    let run_id = std::process::id();
    let one = {
        let clients = Arc::clone(&clients);
        let spec = Arc::clone(&spec);
        let progress = Arc::clone(&progress);
        move |n: u64| {
            let clients = Arc::clone(&clients);
            let spec = Arc::clone(&spec);
            let progress = Arc::clone(&progress);
            async move {
                progress.in_flight.fetch_add(1, Ordering::Relaxed);
                progress.started.fetch_add(1, Ordering::Relaxed);
                let client = &clients[n as usize % clients.len()];
                let session = format!("lg-{run_id}-{n}");
                let o = stream::run(
                    client,
                    &spec.target,
                    &spec.shape,
                    spec.mix.action(n),
                    &session,
                )
                .await;
                progress.in_flight.fetch_sub(1, Ordering::Relaxed);
                progress.finished.fetch_add(1, Ordering::Relaxed);
                o
            }
        }
    };
    let mut report = Report {
        label: spec.label.clone(),
        ..Report::default()
    };
    let began = Instant::now();
    match spec.schedule {
        Schedule::Closed {
            concurrency,
            total,
            duration,
            ramp,
        } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut workers = JoinSet::new();
            let workers_n = concurrency.max(1);
            for k in 0..workers_n {
                let delay = ramp.mul_f64(k as f64 / workers_n as f64);
                let next = Arc::clone(&next);
                let one = one.clone();
                let label = spec.label.clone();
                workers.spawn(async move {
                    let mut part = Report {
                        label,
                        ..Report::default()
                    };
                    tokio::time::sleep(delay).await;
                    loop {
                        if duration.is_some_and(|d| began.elapsed() >= d) {
                            break;
                        }
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if total.is_some_and(|t| n >= t) {
                            break;
                        }
                        part.add(one(n).await);
                    }
                    part
                });
            }
            while let Some(part) = workers.join_next().await {
                report.merge(part?);
            }
        }
        Schedule::Open {
            rate,
            duration,
            max_in_flight,
        } => {
            let mut streams = JoinSet::new();
            let mut launched = 0u64;
            let mut n = 0u64;
            while began.elapsed() < duration {
                let due = (began.elapsed().as_secs_f64() * rate) as u64;
                while launched < due {
                    launched += 1;
                    if streams.len() >= max_in_flight {
                        report.skipped += 1;
                        continue;
                    }
                    streams.spawn(one(n));
                    n += 1;
                }
                while let Some(done) = streams.try_join_next() {
                    report.add(done?);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            while let Some(done) = streams.join_next().await {
                report.add(done?);
            }
        }
    }
    report.elapsed = began.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_gives_each_action_its_share() {
        let mix = Mix {
            cancel: 0.1,
            disconnect: 0.05,
            reconnect: 0.2,
            after_tokens: 3,
            submit_only: false,
        };
        let mut counts = BTreeMap::new();
        for n in 0..10_000 {
            let name = match mix.action(n) {
                Action::Cancel(3) => "cancel",
                Action::Disconnect(3) => "disconnect",
                Action::Reconnect(3) => "reconnect",
                Action::Read => "read",
                other => panic!("unexpected {other:?}"),
            };
            *counts.entry(name).or_insert(0u32) += 1;
        }
        let share = |k: &str| f64::from(counts[k]) / 10_000.0;
        assert!((share("cancel") - 0.1).abs() < 0.01, "{counts:?}");
        assert!((share("disconnect") - 0.05).abs() < 0.01, "{counts:?}");
        assert!((share("reconnect") - 0.2).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut h = Hist::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=995).contains(&s.p99_us), "{s:?}");
        assert!((999..=1001).contains(&s.max_us), "{s:?}");
        assert_eq!(Hist::default().summary(), Percentiles::default());
    }
}
