// orchestratord from a web page: submit a task, stream it, survive a blip, cancel.
//
// 1. POST /v1/tasks (JSON; `Authorization: Bearer <key>` when the daemon has keys) → 202
//    with the task id, the stream's path (`streams.sse`) and a stream token (`streams.token`).
// 2. new EventSource(`${stream}?token=${token}`): EventSource cannot send headers, so the
//    short-lived token (it opens this one stream and nothing else) stands in for the key.
// 3. If the connection drops, EventSource reconnects by itself (after the `retry:` the
//    daemon sent) with `Last-Event-ID`, and the daemon sends every frame after that id
//    exactly once. The task keeps running meanwhile (`stream.reconnect_grace_ms`). So this
//    page appends what arrives and de-duplicates nothing.
// 4. On `end` (or an `error` frame) the page closes the EventSource: a closed one never
//    reconnects. (Were it left open, the daemon would answer its reconnect with 204, which
//    also stops it.)
// 5. Cancel: POST /v1/tasks/{id}/cancel → 204; the stream then ends with `canceled: true`.
//
// The daemon must list this page's origin in `[cors] allowed_origins` unless it serves
// the page itself (same origin). Everything the page saw is kept in `window.orchdState`
// (see newState) for scripts and tests to read.

"use strict";

/** Fixed parts of the task body; the form supplies the rest. */
const TASK_DEFAULTS = {
  workload: "completion",
  priority: "interactive",
  ctx: 512, // must not exceed the pool's ctx_max
  deadline_ms: 120000, // a deadline the pool cannot meet is refused with 400 DEADLINE_UNMET
};

const $ = (id) => document.getElementById(id);
const form = $("task-form");
const submitButton = $("submit");
const cancelButton = $("cancel");
const statusLine = $("status");
const facts = $("facts");
const output = $("output");
const logList = $("log");

/** The open EventSource, if any. */
let source = null;

/** What the page saw for the current task; replaced on each submit. */
function newState() {
  return {
    phase: "idle", // idle | submitting | streaming | ended | failed
    taskId: null,
    accepted: null, // the 202 body
    streamUrl: null, // the URL handed to EventSource (with ?token= when one came back)
    started: null, // the `started` frame's data
    tokens: [], // every `token` frame, in arrival order: {index, text, eventId}
    lastEventId: null, // the id of the last frame received (what a reconnect resumes after)
    metrics: null, // the latest `metrics` frame's data
    ended: false,
    endData: null, // the `end` frame's data ({canceled, tokens_out, ...})
    errorFrame: null, // an `error` frame's data (the daemon's error envelope)
    errors: [], // human-readable problems: failed requests, a stream the browser gave up on
    opens: 0, // EventSource `open` events
    drops: 0, // connection losses EventSource is recovering from
    reconnects: 0, // `open` events after the first: resumed streams
    cancelStatus: null, // HTTP status of the cancel request
  };
}
let state = (window.orchdState = newState());

// --- settings -------------------------------------------------------------------------------

// The daemon: `?daemon=http://host:port` on the page's URL, else the page's own origin
// (when the daemon serves the page, or a reverse proxy puts both behind one origin).
{
  const params = new URLSearchParams(location.search);
  $("daemon").value = params.get("daemon") || location.origin;
}

function daemonBase() {
  return $("daemon").value.trim().replace(/\/+$/, "") + "/";
}

/** An absolute URL on the daemon for `path` (which may start with "/"). */
function daemonUrl(path) {
  return new URL(path.replace(/^\/+/, ""), daemonBase());
}

function authHeaders() {
  const key = $("key").value.trim();
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** A fresh id; sessions cap their turns, so each task here gets its own session. */
function newId(prefix) {
  const random = crypto.randomUUID
    ? crypto.randomUUID() // only in secure contexts (https, localhost)
    : Date.now().toString(36) + Math.random().toString(36).slice(2);
  return `${prefix}-${random}`;
}

// --- display --------------------------------------------------------------------------------

function setStatus(text, kind = "") {
  statusLine.textContent = text;
  statusLine.className = kind;
}

function log(text, kind = "") {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  if (kind) item.className = kind;
  logList.append(item);
}

function showFacts() {
  const parts = [`task ${state.taskId}`, `${state.tokens.length} tokens`];
  if (state.metrics) parts.push(`${state.metrics.tokens_per_s.toFixed(1)} tokens/s`);
  if (state.reconnects) parts.push(`${state.reconnects} reconnect(s)`);
  facts.textContent = parts.join(" · ");
}

function fail(text) {
  state.phase = "failed";
  state.errors.push(text);
  setStatus(text, "error");
  log(text, "error");
  finish();
}

/** Back to idle: the stream closed, the buttons reset. */
function finish() {
  if (source) {
    source.close();
    source = null;
  }
  submitButton.disabled = false;
  cancelButton.disabled = true;
}

/** Reads an error response's envelope ({code, message, ...}) into one line. */
async function describeError(resp) {
  let detail = "";
  try {
    const body = await resp.json();
    detail = body.code ? `${body.code}: ${body.message}` : JSON.stringify(body);
  } catch {
    detail = resp.statusText;
  }
  const retry = resp.headers.get("retry-after");
  return `${resp.status} ${detail}${retry ? ` (retry after ${retry} s)` : ""}`;
}

// --- submit ---------------------------------------------------------------------------------

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  finish();
  state = window.orchdState = newState();
  output.textContent = "";
  logList.textContent = "";
  facts.textContent = "";
  submitButton.disabled = true;

  const body = {
    ...TASK_DEFAULTS,
    session_id: newId("web"),
    engine: $("engine").value.trim(),
    model_ref: $("model").value.trim(),
    prompt: $("prompt").value,
    max_tokens: Number($("max-tokens").value),
  };
  state.phase = "submitting";
  setStatus("Submitting…");

  let resp;
  try {
    resp = await fetch(daemonUrl("/v1/tasks"), {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
  } catch (err) {
    // A network failure, or a CORS refusal: the daemon does not list this page's origin.
    fail(`Cannot reach the daemon at ${daemonBase()} (${err.message}); is this page's origin in [cors] allowed_origins?`);
    return;
  }
  if (resp.status !== 202) {
    fail(`Submit refused: ${await describeError(resp)}`);
    return;
  }

  const accepted = await resp.json();
  state.accepted = accepted;
  state.taskId = accepted.task_id;
  log(`accepted ${accepted.task_id}: queue position ${accepted.queue_position}, start in ~${accepted.predicted_start_ms} ms`);
  cancelButton.disabled = false;
  openStream(accepted);
});

// --- stream ---------------------------------------------------------------------------------

function openStream(accepted) {
  const streams = accepted.streams || {};
  const url = daemonUrl(streams.sse || `/v1/tasks/${encodeURIComponent(accepted.task_id)}/stream`);
  const token = streams.token || accepted.stream_token;
  if (token) url.searchParams.set("token", token);
  state.streamUrl = url.href;
  state.phase = "streaming";
  setStatus("Waiting for the first token…");

  const es = new EventSource(url.href);
  source = es;

  es.addEventListener("open", () => {
    state.opens += 1;
    if (state.opens > 1) {
      state.reconnects += 1;
      log("reconnected: the daemon resumes after the last event id", "warn");
      showFacts();
    }
  });

  // Every frame carries an id; EventSource sends the last one back when it reconnects.
  const seen = (e) => {
    state.lastEventId = Number(e.lastEventId);
  };

  es.addEventListener("started", (e) => {
    seen(e);
    state.started = JSON.parse(e.data);
    setStatus(`Running on ${state.started.pool_id}/${state.started.replica_id} (${state.started.engine})`);
  });

  es.addEventListener("token", (e) => {
    seen(e);
    const frame = JSON.parse(e.data); // {t: text, i: index}
    state.tokens.push({ index: frame.i, text: frame.t, eventId: Number(e.lastEventId) });
    output.append(frame.t);
    showFacts();
  });

  es.addEventListener("metrics", (e) => {
    seen(e);
    state.metrics = JSON.parse(e.data);
    showFacts();
  });

  es.addEventListener("end", (e) => {
    seen(e);
    state.endData = JSON.parse(e.data);
    state.ended = true;
    state.phase = "ended";
    finish(); // closing it is what stops EventSource from reconnecting
    const how = state.endData.canceled ? "Canceled" : "Done";
    setStatus(`${how}: ${state.endData.tokens_out} tokens in ${state.endData.decode_ms} ms`, state.endData.canceled ? "" : "done");
    log(`end${state.endData.canceled ? " (canceled)" : ""}; transcript ${state.endData.artifact_id ?? "none"}`);
  });

  // "error" is two things: a frame the daemon sent (`event: error`, a MessageEvent with the
  // error envelope as data; the task is over), or EventSource reporting the connection.
  es.addEventListener("error", (e) => {
    if (es !== source) return; // a stream this page already closed
    if (typeof e.data === "string") {
      state.errorFrame = JSON.parse(e.data);
      fail(`Task failed: ${state.errorFrame.code}: ${state.errorFrame.message}`);
    } else if (es.readyState === EventSource.CONNECTING) {
      // The connection dropped; EventSource reconnects with Last-Event-ID on its own.
      state.drops += 1;
      log(`connection lost after event ${state.lastEventId}; reconnecting`, "warn");
      setStatus("Connection lost; reconnecting…");
    } else {
      // CLOSED: the browser gave up (the stream answered with an HTTP error, e.g. 401 for
      // an expired token or 404 for a task gone past its retention).
      fail("The stream was closed by the browser (an HTTP error on connect; see the network log)");
    }
  });
}

// --- cancel ---------------------------------------------------------------------------------

cancelButton.addEventListener("click", async () => {
  if (!state.taskId) return;
  cancelButton.disabled = true;
  log("cancel requested");
  try {
    const resp = await fetch(daemonUrl(`/v1/tasks/${encodeURIComponent(state.taskId)}/cancel`), {
      method: "POST",
      headers: authHeaders(),
    });
    state.cancelStatus = resp.status;
    if (resp.status !== 204) {
      const text = `Cancel refused: ${await describeError(resp)}`;
      state.errors.push(text);
      log(text, "error");
      cancelButton.disabled = false;
    }
    // On 204 the stream's `end` frame (canceled: true) finishes the page.
  } catch (err) {
    state.errors.push(`cancel: ${err.message}`);
    log(`cancel failed: ${err.message}`, "error");
    cancelButton.disabled = false;
  }
});
