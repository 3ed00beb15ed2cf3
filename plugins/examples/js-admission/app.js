// js-admission: an admission policy for orchestratord, written in JavaScript.
//
// Built into a WebAssembly component for the `admission-policy` world of
// wit/0.2.0/policy.wit (orchd:policy@0.2.0) by componentize-qjs (QuickJS), which
// ships in the @bytecodealliance/componentize-js npm package; see build.sh and
// README.md. The module exports one object per exported WIT interface:
//
// * `lifecycle`: `info()` and `init(config)`;
// * `admission`: `decide(snapshot)`.
//
// Calling conventions (jco's, which componentize uses): records are plain objects with
// camelCase fields (`slotsTotal`, `retryAfterMs`); enums are strings ('interactive');
// variants are `{ tag, val }`; integers are numbers, `u64` included (componentize-qjs;
// jco's own bindings use BigInt for `u64`, so `Number(x)` on the way in keeps code
// portable); an `option` is `undefined` or the value.
// A `result<_, string>` is ok when the function returns and err when it throws (throw
// the message itself).
//
// The component gets no WASI at all (`--stub-wasi`): no console, clock or randomness.
// A failure is made readable by logging it at `error` level before it escapes: the host
// puts the last such line on the failure (`last_error`, its log). `guarded` does that.

import { log } from 'orchd:policy/host@0.2.0';

const NAME = 'js-admission';
const VERSION = '0.1.0';
const LABEL = 'js-share';
// The host refuses a retry hint over one hour or a message over 1024 bytes.
const MIN_RETRY_AFTER_MS = 100;
const MAX_RETRY_AFTER_MS = 3_600_000;

// Set by init, read by decide: both run in the same instance.
let maxBatchShare = 1.0;
let failOn = null;

/** Parses the operator's config (JSON text); throws a readable message. */
function parseConfig(text) {
  const trimmed = text.trim();
  let config = {};
  if (trimmed) {
    try {
      config = JSON.parse(trimmed);
    } catch (e) {
      throw `${NAME} config: invalid JSON: ${e.message}`;
    }
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw `${NAME} config: expected a JSON object`;
  }
  const unknown = Object.keys(config).filter((k) => k !== 'max_batch_share' && k !== 'fail_on_tenant');
  if (unknown.length > 0) {
    throw `${NAME} config: unknown key(s) ${unknown.join(', ')}; the keys are max_batch_share and fail_on_tenant`;
  }
  const share = config.max_batch_share ?? 1.0;
  if (typeof share !== 'number' || !(share > 0 && share <= 1)) {
    throw `${NAME} config: max_batch_share must be a number in (0, 1], got ${JSON.stringify(share)}`;
  }
  return { share, failOn: config.fail_on_tenant ?? null };
}

/** Runs `f`; an exception is logged at error level (the host's account of the failure),
 * then rethrown. */
function guarded(what, f) {
  try {
    return f();
  } catch (e) {
    log('error', `${what}: ${e instanceof Error ? e.message : String(e)}`);
    throw e;
  }
}

export const lifecycle = {
  info() {
    return { name: NAME, version: VERSION };
  },

  init(config) {
    const parsed = parseConfig(config);
    maxBatchShare = parsed.share;
    failOn = parsed.failOn;
  },
};

export const admission = {
  decide(snapshot) {
    return guarded('decide', () => decide(snapshot, maxBatchShare));
  },
};

export function decide(snapshot, share) {
  const { queue, request } = snapshot;
  if (failOn !== null && request.tenant === failOn) {
    // A bug, on purpose (tests): the host shows this message in last_error.
    throw new Error(`tenant ${request.tenant} hit a bug in ${NAME}`);
  }
  const batchDepth = queue.classes
    .filter((c) => c.priority === 'batch')
    .reduce((n, c) => n + c.depth, 0);
  const batchLimit = share * queue.capacity;
  let why;
  if (queue.depth < queue.capacity) {
    if (request.priority === 'interactive' || batchDepth < batchLimit) {
      return { tag: 'accept', val: request.priority };
    }
    why = `batch share of pool ${queue.poolId} is used up (${batchDepth} batch tasks queued, limit ${batchLimit} of ${queue.capacity})`;
  } else {
    why = `queue of pool ${queue.poolId} is full (${queue.depth}/${queue.capacity})`;
  }
  return {
    tag: 'reject',
    val: {
      code: 'ADMISSION_REJECT',
      message: `${why}; retry later`.slice(0, 1000),
      retryAfterMs: retryAfterMs(queue.depth, queue.slotsTotal, queue.serviceMs),
      policyLabel: LABEL,
    },
  };
}

/** max(100, ceil(ahead / slots) × service), capped at the host's one hour. */
function retryAfterMs(ahead, slotsTotal, serviceMs) {
  const waves = Math.ceil(Number(ahead) / Math.max(1, Number(slotsTotal)));
  const ms = waves * Number(serviceMs);
  return Math.min(MAX_RETRY_AFTER_MS, Math.max(MIN_RETRY_AFTER_MS, ms));
}
