//! Components built against the frozen `orchd:policy@0.1.0`: the host decides with the
//! 0.2.0 types and converts at the boundary. Fields 0.1.0 lacks are dropped on the way in;
//! on the way out, what 0.2.0 added takes the host's default (the rate-limit charge is the
//! host's estimate at reserve and the tokens used at settle).

use super::bindings::v1;
use super::bindings::{
    BudgetLeft, ClassSnapshot, PolicyInfo, QueueSnapshot, QueuedEntry, WitPriority, admission,
    budget, error_mapping, placement,
};

pub fn info(i: v1::PolicyInfo) -> PolicyInfo {
    PolicyInfo {
        name: i.name,
        version: i.version,
    }
}

fn priority(p: WitPriority) -> v1::WitPriority {
    match p {
        WitPriority::Interactive => v1::WitPriority::Interactive,
        WitPriority::Batch => v1::WitPriority::Batch,
    }
}

fn priority_back(p: v1::WitPriority) -> WitPriority {
    match p {
        v1::WitPriority::Interactive => WitPriority::Interactive,
        v1::WitPriority::Batch => WitPriority::Batch,
    }
}

fn left(b: &BudgetLeft) -> v1::BudgetLeft {
    v1::BudgetLeft {
        tokens: b.tokens,
        time_ms: b.time_ms,
        cost: b.cost,
    }
}

fn queue(q: &QueueSnapshot) -> v1::QueueSnapshot {
    let entry = |e: &QueuedEntry| v1::QueuedEntry {
        task_id: e.task_id.clone(),
        priority: priority(e.priority),
        age_ms: e.age_ms,
    };
    let class = |c: &ClassSnapshot| v1::ClassSnapshot {
        priority: priority(c.priority),
        depth: c.depth,
        oldest: c.oldest.iter().map(entry).collect(),
    };
    v1::QueueSnapshot {
        pool_id: q.pool_id.clone(),
        capacity: q.capacity,
        depth: q.depth,
        classes: q.classes.iter().map(class).collect(),
        slots_total: q.slots_total,
        slots_free: q.slots_free,
        service_ms: q.service_ms,
    }
}

pub fn admission_snapshot(s: &admission::Snapshot) -> v1::admission::Snapshot {
    let r = &s.request;
    v1::admission::Snapshot {
        now_ms: s.now_ms,
        request: v1::admission::Request {
            task_id: r.task_id.clone(),
            session_id: r.session_id.clone(),
            tenant: r.tenant.clone(),
            priority: priority(r.priority),
            engine: r.engine.clone(),
            model_ref: r.model_ref.clone(),
            ctx: r.ctx,
            max_tokens: r.max_tokens,
            expected_tokens: r.expected_tokens,
            deadline_ms: r.deadline_ms,
        },
        queue: queue(&s.queue),
        session: v1::admission::SessionInfo {
            turns: s.session.turns,
            budget: left(&s.session.budget),
        },
    }
}

pub fn admission_decision(d: v1::admission::Decision) -> admission::Decision {
    match d {
        v1::admission::Decision::Accept(p) => admission::Decision::Accept(priority_back(p)),
        v1::admission::Decision::AcceptEvicting(e) => {
            admission::Decision::AcceptEvicting(admission::Eviction {
                evict: e.evict,
                class: priority_back(e.class),
            })
        }
        v1::admission::Decision::Reject(r) => admission::Decision::Reject(admission::Rejection {
            code: r.code,
            message: r.message,
            retry_after_ms: r.retry_after_ms,
            policy_label: r.policy_label,
        }),
    }
}

fn usage(u: &budget::Usage) -> v1::budget::Usage {
    v1::budget::Usage {
        tokens: u.tokens,
        time_ms: u.time_ms,
        cost: u.cost,
    }
}

fn usage_back(u: v1::budget::Usage) -> budget::Usage {
    budget::Usage {
        tokens: u.tokens,
        time_ms: u.time_ms,
        cost: u.cost,
    }
}

/// The host's own rate-limit estimate for a request (what a 0.1.0 policy is charged).
pub fn rate_tokens_estimate(r: &budget::ReserveRequest) -> u64 {
    u64::from(r.prompt_tokens_estimate) + u64::from(r.max_tokens)
}

pub fn reserve_request(r: &budget::ReserveRequest) -> v1::budget::ReserveRequest {
    v1::budget::ReserveRequest {
        now_ms: r.now_ms,
        task_id: r.task_id.clone(),
        tenant: r.tenant.clone(),
        session_id: r.session_id.clone(),
        priority: priority(r.priority),
        engine: r.engine.clone(),
        model_ref: r.model_ref.clone(),
        prompt_tokens_estimate: r.prompt_tokens_estimate,
        max_tokens: r.max_tokens,
        deadline_ms: r.deadline_ms,
        key_left: left(&r.key_left),
        session_left: left(&r.session_left),
    }
}

pub fn reservation(r: v1::budget::Reservation, rate_tokens: u64) -> budget::Reservation {
    match r {
        v1::budget::Reservation::Reserve(u) => budget::Reservation::Reserve(budget::Charge {
            usage: usage_back(u),
            rate_tokens,
        }),
        v1::budget::Reservation::Deny(d) => budget::Reservation::Deny(budget::Denial {
            message: d.message,
            retry_after_ms: d.retry_after_ms,
        }),
    }
}

pub fn settle_request(r: &budget::SettleRequest) -> v1::budget::SettleRequest {
    v1::budget::SettleRequest {
        task_id: r.task_id.clone(),
        engine: r.engine.clone(),
        model_ref: r.model_ref.clone(),
        reserved: usage(&r.reserved.usage),
        tokens_in: r.tokens_in,
        tokens_out: r.tokens_out,
        time_ms: r.time_ms,
    }
}

pub fn settled(u: v1::budget::Usage, r: &budget::SettleRequest) -> budget::Charge {
    budget::Charge {
        usage: usage_back(u),
        rate_tokens: u64::from(r.tokens_in) + u64::from(r.tokens_out),
    }
}

pub fn placement_snapshot(s: &placement::Snapshot) -> v1::placement::Snapshot {
    let j = &s.job;
    let replica = |r: &placement::Replica| v1::placement::Replica {
        replica_id: r.replica_id.clone(),
        ready: r.ready,
        slots_total: r.slots_total,
        slots_free: r.slots_free,
        active_leases: r.active_leases,
        tokens_per_s: r.tokens_per_s,
        first_token_ms: r.first_token_ms,
        vram_free_bytes: r.vram_free_bytes,
        device_mask: r.device_mask.clone(),
        session_affinity: r.session_affinity,
    };
    let pool = |p: &placement::Pool| v1::placement::Pool {
        pool_id: p.pool_id.clone(),
        engine: p.engine.clone(),
        model_ref: p.model_ref.clone(),
        ready: p.ready,
        draining: p.draining,
        ctx_max: p.ctx_max,
        queue_depth: p.queue_depth,
        replicas: p.replicas.iter().map(replica).collect(),
    };
    v1::placement::Snapshot {
        now_ms: s.now_ms,
        stage: match s.stage {
            placement::Stage::Admission => v1::placement::Stage::Admission,
            placement::Stage::Dispatch => v1::placement::Stage::Dispatch,
        },
        job: v1::placement::Job {
            task_id: j.task_id.clone(),
            session_id: j.session_id.clone(),
            engine: j.engine.clone(),
            model_ref: j.model_ref.clone(),
            ctx: j.ctx,
            priority: priority(j.priority),
            mode: match j.mode {
                placement::Mode::Pin => v1::placement::Mode::Pin,
                placement::Mode::Prefer => v1::placement::Mode::Prefer,
                placement::Mode::Auto => v1::placement::Mode::Auto,
            },
            pin_pool_id: j.pin_pool_id.clone(),
            prefer_pools: j.prefer_pools.clone(),
            avoid_pools: j.avoid_pools.clone(),
            require_device_mask: j.require_device_mask.clone(),
            allow_fallback: j.allow_fallback,
        },
        candidates: s.candidates.iter().map(pool).collect(),
    }
}

pub fn placement_decision(d: v1::placement::Decision) -> placement::Decision {
    match d {
        v1::placement::Decision::Assign(a) => placement::Decision::Assign(placement::Assignment {
            pool_id: a.pool_id,
            replica_id: a.replica_id,
            decision_log: a.decision_log,
        }),
        v1::placement::Decision::Wait => placement::Decision::Wait,
        v1::placement::Decision::NoCapacity(why) => placement::Decision::NoCapacity(why),
    }
}

pub fn failure(f: &error_mapping::Failure) -> v1::error_mapping::Failure {
    v1::error_mapping::Failure {
        kind: f.kind.clone(),
        upstream_status: f.upstream_status,
        message: f.message.clone(),
        engine: f.engine.clone(),
        pool_id: f.pool_id.clone(),
        phase: match f.phase {
            error_mapping::Phase::BeforeDispatch => v1::error_mapping::Phase::BeforeDispatch,
            error_mapping::Phase::BeforeFirstToken => v1::error_mapping::Phase::BeforeFirstToken,
            error_mapping::Phase::MidStream => v1::error_mapping::Phase::MidStream,
        },
        attempt: f.attempt,
    }
}

pub fn mapped(m: v1::error_mapping::Mapped) -> error_mapping::Mapped {
    error_mapping::Mapped {
        code: m.code,
        http_status: m.http_status,
        retriable: m.retriable,
        retry_after_ms: m.retry_after_ms,
        message: m.message,
        policy_label: m.policy_label,
        retry_elsewhere: m.retry_elsewhere,
    }
}
