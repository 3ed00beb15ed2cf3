//! The decision itself, free of bindings glue so it reads (and tests) as plain Rust.

use serde::Deserialize;

use crate::exports::orchd::policy::admission::{Decision, Eviction, Rejection, Snapshot};
use crate::orchd::policy::types::{Priority, QueueSnapshot, QueuedEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Mode {
    #[default]
    #[serde(rename = "reject")]
    Reject,
    #[serde(rename = "drop-lru")]
    DropLru,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Reject => "reject",
            Mode::DropLru => "drop-lru",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    pub min_retry_after_ms: u64,
    pub max_retry_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Reject,
            min_retry_after_ms: 100,
            max_retry_after_ms: 60_000,
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let config: Config = if text.is_empty() {
            Config::default()
        } else {
            serde_json::from_str(text).map_err(|e| format!("admission-default config: {e}"))?
        };
        if config.min_retry_after_ms > config.max_retry_after_ms {
            return Err(
                "admission-default config: min_retry_after_ms exceeds max_retry_after_ms".into(),
            );
        }
        Ok(config)
    }
}

pub fn decide(config: &Config, snapshot: &Snapshot) -> Decision {
    let queue = &snapshot.queue;
    let class = snapshot.request.priority;
    if queue.depth < queue.capacity {
        return Decision::Accept(class);
    }
    let retry_after_ms = retry_after_ms(config, queue, class);
    let full = format!(
        "queue of pool {} is full ({}/{})",
        queue.pool_id, queue.depth, queue.capacity
    );
    match config.mode {
        Mode::Reject => Decision::Reject(Rejection {
            code: "ADMISSION_REJECT".into(),
            message: format!("{full}; retry later"),
            retry_after_ms,
            policy_label: Mode::Reject.label().into(),
        }),
        Mode::DropLru => match lru_victim(queue, class) {
            Some(victim) => Decision::AcceptEvicting(Eviction {
                evict: victim.task_id.clone(),
                class,
            }),
            None => Decision::Reject(Rejection {
                code: "QUEUE_FULL_DROP_LRU".into(),
                message: format!("{full} and holds no lower-priority task to drop; retry later"),
                retry_after_ms,
                policy_label: Mode::DropLru.label().into(),
            }),
        },
    }
}

/// The least recently enqueued task of the lowest class the request may displace.
fn lru_victim(queue: &QueueSnapshot, class: Priority) -> Option<&QueuedEntry> {
    // Entries come oldest first; on equal ages (same millisecond) the earlier entry wins.
    let oldest_of = |p: Priority| {
        queue
            .classes
            .iter()
            .filter(|c| c.priority == p)
            .flat_map(|c| c.oldest.iter())
            .reduce(|best, e| if e.age_ms > best.age_ms { e } else { best })
    };
    match class {
        Priority::Batch => oldest_of(Priority::Batch),
        Priority::Interactive => {
            oldest_of(Priority::Batch).or_else(|| oldest_of(Priority::Interactive))
        }
    }
}

/// Work ahead of a request of `class`, spread over the slots, at the measured service time.
fn retry_after_ms(config: &Config, queue: &QueueSnapshot, class: Priority) -> u64 {
    let ahead: u64 = queue
        .classes
        .iter()
        .filter(|c| class == Priority::Batch || c.priority == Priority::Interactive)
        .map(|c| u64::from(c.depth))
        .sum();
    let slots = u64::from(queue.slots_total.max(1));
    let waves = ahead.div_ceil(slots).max(1);
    waves
        .saturating_mul(queue.service_ms)
        .clamp(config.min_retry_after_ms, config.max_retry_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::orchd::policy::admission::{Request, SessionInfo};
    use crate::orchd::policy::types::{BudgetLeft, ClassSnapshot};

    fn entry(id: &str, priority: Priority, age_ms: u64) -> QueuedEntry {
        QueuedEntry {
            task_id: id.into(),
            priority,
            age_ms,
        }
    }

    fn snapshot(class: Priority, capacity: u32, queued: &[QueuedEntry]) -> Snapshot {
        let classes = [Priority::Interactive, Priority::Batch]
            .into_iter()
            .map(|p| {
                let mut oldest: Vec<_> =
                    queued.iter().filter(|e| e.priority == p).cloned().collect();
                oldest.sort_by_key(|e| std::cmp::Reverse(e.age_ms));
                ClassSnapshot {
                    priority: p,
                    depth: oldest.len() as u32,
                    oldest,
                }
            })
            .collect();
        Snapshot {
            now_ms: 0,
            request: Request {
                task_id: "new".into(),
                session_id: "s".into(),
                tenant: "open".into(),
                group: None,
                priority: class,
                engine: "mock".into(),
                model_ref: "mock".into(),
                ctx: 0,
                max_tokens: 8,
                expected_tokens: None,
                deadline_ms: 1000,
                expected_service_ms: 100,
            },
            queue: QueueSnapshot {
                pool_id: "p".into(),
                capacity,
                depth: queued.len() as u32,
                classes,
                slots_total: 2,
                slots_free: 0,
                service_ms: 300,
            },
            session: SessionInfo {
                turns: 0,
                budget: BudgetLeft {
                    tokens: None,
                    time_ms: None,
                    cost: None,
                },
            },
        }
    }

    fn cfg(mode: Mode) -> Config {
        Config {
            mode,
            ..Config::default()
        }
    }

    fn name(p: Priority) -> &'static str {
        match p {
            Priority::Interactive => "Interactive",
            Priority::Batch => "Batch",
        }
    }

    fn check(mode: Mode, class: Priority, capacity: u32, queued: &[QueuedEntry], expected: &str) {
        let got = match decide(&cfg(mode), &snapshot(class, capacity, queued)) {
            Decision::Accept(p) => format!("accept {}", name(p)),
            Decision::AcceptEvicting(e) => format!("evict {} {}", e.evict, name(e.class)),
            Decision::Reject(r) => {
                format!("reject {} {} {}", r.code, r.policy_label, r.retry_after_ms)
            }
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn decisions() {
        use Priority::{Batch as B, Interactive as I};
        let full = [entry("i1", I, 50), entry("b1", B, 10), entry("b2", B, 40)];
        let same_ms = [entry("b1", B, 7), entry("b2", B, 7)];
        check(Mode::DropLru, I, 2, &same_ms, "evict b1 Interactive");
        check(Mode::Reject, I, 4, &full, "accept Interactive");
        check(
            Mode::Reject,
            B,
            3,
            &full,
            "reject ADMISSION_REJECT reject 600",
        );
        check(
            Mode::Reject,
            I,
            3,
            &full,
            "reject ADMISSION_REJECT reject 300",
        );
        check(Mode::DropLru, I, 3, &full, "evict b2 Interactive");
        check(Mode::DropLru, B, 3, &full, "evict b2 Batch");
        let only_interactive = [entry("i1", I, 50), entry("i2", I, 70)];
        check(
            Mode::DropLru,
            I,
            2,
            &only_interactive,
            "evict i2 Interactive",
        );
        check(
            Mode::DropLru,
            B,
            2,
            &only_interactive,
            "reject QUEUE_FULL_DROP_LRU drop-lru 300",
        );
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(Config::parse("").unwrap().mode, Mode::Reject);
        assert_eq!(
            Config::parse(r#"{"mode":"drop-lru"}"#).unwrap().mode,
            Mode::DropLru
        );
        assert!(Config::parse(r#"{"mode":"lottery"}"#).is_err());
        assert!(Config::parse(r#"{"mood":"reject"}"#).is_err());
        assert!(Config::parse(r#"{"min_retry_after_ms":5,"max_retry_after_ms":1}"#).is_err());
    }
}
