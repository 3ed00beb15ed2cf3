// The example page (examples/browser) in headless Chromium against a running
// orchestratord. The caller starts the daemon; this script serves the page itself, puts a
// TCP proxy in front of the daemon, drives the page with playwright-core, and checks:
//
//   blip          submit through a proxy that drops the stream's connection mid-stream (the
//                 first --cuts stream connections, each after --cut-after token frames; the
//                 first cut at a frame boundary, later ones in the middle of a frame): every
//                 token index 0..max_tokens-1 arrives exactly once and in order, with the same
//                 text as the daemon's own replay; each reconnect's Last-Event-ID names a frame
//                 that came whole; the end is not canceled and the task succeeded.
//                 With --key, the page posts with the key and streams with the stream token:
//                 every stream request carried `token=` and no Authorization header.
//   cancel        a long task, the page's Cancel button: 204, the end frame says canceled,
//                 the tokens before it came once each, and the task is canceled.
//   cross-origin  from a page on an origin the daemon does not list: a no-cors `text/plain`
//                 POST of a task is refused (403, seen at the proxy) and the task does not
//                 exist (GET /v1/tasks/<id> → 404, asked directly); a JSON POST dies at its
//                 preflight and creates nothing either.
//   all           the three, in that order (the default).
//
//   node host/tests/browser/page_check.mjs --pw-dir "$(tools/browser/setup.sh | tail -1)" \
//       --daemon http://127.0.0.1:PORT --page-port PAGE_PORT [--key KEY] [--mode MODE] \
//       [--model p-model] [--engine mock] [--max-tokens 60] [--cuts 2] [--cut-after 15]
//
// The daemon must list http://127.0.0.1:PAGE_PORT in `[cors] allowed_origins` (the page is
// served there; pick the port before starting the daemon) and must not list the
// cross-origin page's (--other-port, default: any free port). Its pool must stream slowly
// enough for the cuts to land mid-stream (mock `tokens_per_s = 20.0` with 60 tokens: 3 s)
// and its `stream.reconnect_grace_ms` must outlast EventSource's reconnect delay (the
// daemon's `retry:`, a third of the grace). --pw-dir (or $ORCHD_BROWSER) is the folder
// holding node_modules/playwright-core; --chromium defaults to /usr/bin/chromium.
// Each check prints `ok: ...`; the first failure prints `FAILED: ...` (with the page's
// console and the proxy's request log) and exits 1; success ends with "all checks passed"
// (--verbose prints the proxy's request log then too).

import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer as createTcpServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const HERE = dirname(fileURLToPath(import.meta.url));
const USAGE =
  "usage: page_check.mjs --daemon URL --page-port PORT [--pw-dir DIR] [--key KEY] " +
  "[--mode all|blip|cancel|cross-origin[,...]] [--model M] [--engine E] [--max-tokens N] " +
  "[--cuts N] [--cut-after N] [--other-port PORT] [--page-dir DIR] [--chromium PATH] [--timeout-s S] [--verbose]";

const { values: args } = parseArgs({
  options: {
    daemon: { type: "string" },
    "page-port": { type: "string" },
    "pw-dir": { type: "string" },
    key: { type: "string" },
    mode: { type: "string", default: "all" },
    model: { type: "string", default: "p-model" },
    engine: { type: "string", default: "mock" },
    "max-tokens": { type: "string", default: "60" },
    cuts: { type: "string", default: "2" },
    "cut-after": { type: "string", default: "15" },
    "other-port": { type: "string", default: "0" },
    "page-dir": { type: "string", default: resolve(HERE, "../../../examples/browser") },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    "timeout-s": { type: "string", default: "180" },
    verbose: { type: "boolean", default: false },
  },
});
function usage(problem) {
  console.error(`${USAGE}\n(${problem})`);
  process.exit(2);
}
if (!args.daemon) usage("missing --daemon");
if (!args["page-port"]) usage("missing --page-port (the port of the origin in [cors] allowed_origins)");
const ALL_MODES = ["blip", "cancel", "cross-origin"];
const modes = args.mode === "all" ? ALL_MODES : args.mode.split(",");
for (const m of modes) if (!ALL_MODES.includes(m)) usage(`unknown mode ${m}`);
const DAEMON = new URL(args.daemon);
const KEY = args.key || null;
const MAX_TOKENS = Number(args["max-tokens"]);
const CUTS = Number(args.cuts);
const CUT_AFTER = Number(args["cut-after"]);
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const pwDir = args["pw-dir"] ?? process.env.ORCHD_BROWSER;
const require = createRequire(pwDir ? join(pwDir, "package.json") : import.meta.url);
const { chromium } = require("playwright-core");

class CheckFailed extends Error {}

function check(cond, what, detail) {
  if (!cond) throw new CheckFailed(detail === undefined ? what : `${what}: ${detail}`);
  console.log(`ok: ${what}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const listen = (server, port) =>
  new Promise((res, rej) => {
    server.once("error", rej);
    server.listen(port, "127.0.0.1", () => res(server.address().port));
  });

// --- the page's origin: examples/browser, served as static files ---------------------------

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".md": "text/markdown; charset=utf-8",
};

function staticServer(root) {
  const base = resolve(root) + sep;
  return createHttpServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = normalize(join(base, path === "/" ? "index.html" : decodeURIComponent(path)));
    let body;
    try {
      if (!file.startsWith(base)) throw new Error("outside");
      body = readFileSync(file);
    } catch {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, {
      "content-type": MIME[extname(file)] ?? "application/octet-stream",
      "cache-control": "no-store",
    });
    res.end(body);
  });
}

/** Another site: a blank page on an origin the daemon does not list. */
function otherSite() {
  return createHttpServer((req, res) => {
    if (req.url === "/favicon.ico") return res.writeHead(404).end();
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end("<!doctype html><title>another site</title><p>nothing to see</p>");
  });
}

// --- the proxy: forwards bytes, logs requests, drops stream connections on cue --------------

/**
 * A TCP proxy in front of the daemon. It follows HTTP/1.1 on each connection just enough to
 * log every request (method, path, headers, response status) and, for the first `cuts`
 * `/stream` responses after arm(), to count the SSE token frames it forwards (chunked body
 * decoded) and end the connection after `after` of them: the first cut right after the
 * frame's blank line, later cuts after the first line ("id: N") of the next frame.
 */
class CuttingProxy {
  constructor(target) {
    this.target = target;
    this.requests = [];
    this.cuts = [];
    this.cutsLeft = 0;
    this.planned = 0;
    this.after = 0;
    this.sockets = new Set();
    this.nextConn = 0;
    this.server = createTcpServer((client) => this.#accept(client));
  }

  async start() {
    this.port = await listen(this.server, 0);
    this.url = `http://127.0.0.1:${this.port}`;
    return this;
  }

  arm(cuts, after) {
    this.cutsLeft = cuts;
    this.planned = 0;
    this.after = after;
    this.cuts = [];
  }

  close() {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }

  #accept(client) {
    const upstream = connect(Number(this.target.port), this.target.hostname);
    const conn = {
      id: this.nextConn++,
      client,
      upstream,
      reqText: "", // unparsed request bytes (latin1)
      reqSkip: 0, // request body bytes still to pass
      waiting: [], // requests awaiting their response, oldest first
      resp: null, // the response being parsed
      cut: false,
    };
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
      s.on("error", () => {});
    }
    client.on("data", (d) => {
      this.#scanRequests(conn, d);
      upstream.write(d);
    });
    upstream.on("data", (d) => this.#onResponseBytes(conn, d));
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => (conn.cut ? undefined : client.end()));
  }

  #scanRequests(conn, data) {
    conn.reqText += data.toString("latin1");
    for (;;) {
      if (conn.reqSkip > 0) {
        const n = Math.min(conn.reqSkip, conn.reqText.length);
        conn.reqText = conn.reqText.slice(n);
        conn.reqSkip -= n;
        if (conn.reqSkip > 0) return;
      }
      const end = conn.reqText.indexOf("\r\n\r\n");
      if (end < 0) return;
      const [line, ...fields] = conn.reqText.slice(0, end).split("\r\n");
      conn.reqText = conn.reqText.slice(end + 4);
      const [method, path] = line.split(" ");
      const headers = {};
      for (const f of fields) {
        const i = f.indexOf(":");
        headers[f.slice(0, i).trim().toLowerCase()] = f.slice(i + 1).trim();
      }
      const req = { conn: conn.id, method, path, headers, status: null, at: Date.now() };
      this.requests.push(req);
      conn.waiting.push(req);
      conn.reqSkip = Number(headers["content-length"] ?? 0);
    }
  }

  #onResponseBytes(conn, data) {
    if (conn.cut) return;
    for (let i = 0; i < data.length; i++) {
      if (this.#step(conn, data[i])) {
        // Cut here: this byte is the last the client gets, then EOF mid-body.
        conn.cut = true;
        conn.client.end(data.subarray(0, i + 1));
        conn.upstream.destroy();
        return;
      }
    }
    conn.client.write(data);
  }

  /** Parses one response byte; true when the connection is to be cut after it. */
  #step(conn, byte) {
    let r = conn.resp;
    if (!r) {
      r = conn.resp = { state: "head", head: "", line: "" };
    }
    const ch = String.fromCharCode(byte);
    switch (r.state) {
      case "head": {
        r.head += ch;
        if (!r.head.endsWith("\r\n\r\n")) return false;
        const [statusLine, ...fields] = r.head.slice(0, -4).split("\r\n");
        const status = Number(statusLine.split(" ")[1]);
        const headers = {};
        for (const f of fields) {
          const i = f.indexOf(":");
          headers[f.slice(0, i).trim().toLowerCase()] = f.slice(i + 1).trim();
        }
        if (status >= 100 && status < 200) {
          conn.resp = null;
          return false;
        }
        const req = conn.waiting.shift() ?? { path: "?", method: "?" };
        req.status = status;
        r.req = req;
        const stream = req.method === "GET" && /\/stream(\?|$)/.test(req.path) && status === 200;
        if (stream) {
          r.sse = { line: "", frame: [], tokens: 0, lastWholeId: null, cutAt: null };
          if (this.cutsLeft > 0) {
            this.cutsLeft--;
            r.sse.cutAt = { tokens: this.after, midFrame: this.planned > 0 };
            this.planned++;
          }
        }
        if (req.method === "HEAD" || status === 204 || status === 304) {
          conn.resp = null;
        } else if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
          r.state = "chunk-size";
        } else if (headers["content-length"] !== undefined) {
          r.left = Number(headers["content-length"]);
          r.state = "length";
          if (r.left === 0) conn.resp = null;
        } else {
          r.state = "until-close";
        }
        return false;
      }
      case "chunk-size":
        r.line += ch;
        if (!r.line.endsWith("\r\n")) return false;
        r.left = parseInt(r.line, 16);
        r.line = "";
        r.state = r.left === 0 ? "trailer" : "chunk-data";
        return false;
      case "chunk-data":
        r.left--;
        if (r.left === 0) r.state = "chunk-crlf";
        return this.#sse(conn, r, ch);
      case "chunk-crlf":
        r.line += ch;
        if (r.line === "\r\n") {
          r.line = "";
          r.state = "chunk-size";
        }
        return false;
      case "trailer":
        r.line += ch;
        if (r.line.endsWith("\r\n")) {
          if (r.line === "\r\n") conn.resp = null;
          r.line = "";
        }
        return false;
      case "length":
        r.left--;
        if (r.left === 0) conn.resp = null;
        return this.#sse(conn, r, ch);
      default: // until-close
        return this.#sse(conn, r, ch);
    }
  }

  /** Follows the SSE text of a stream response; true when it is time to cut. */
  #sse(conn, r, ch) {
    const s = r.sse;
    if (!s) return false;
    if (ch === "\r") return false;
    if (ch !== "\n") {
      s.line += ch;
      return false;
    }
    const line = s.line;
    s.line = "";
    if (s.armed) {
      // Mid-frame cut: the next frame's first line has gone out, its end never will.
      this.#recordCut(conn, r, true, line);
      return true;
    }
    if (line !== "") {
      s.frame.push(line);
      return false;
    }
    // A blank line ends a frame.
    const frame = s.frame;
    s.frame = [];
    const id = frame.find((l) => l.startsWith("id:"));
    if (id) s.lastWholeId = id.slice(3).trim();
    if (!frame.includes("event: token")) return false;
    s.tokens++;
    if (!s.cutAt || s.tokens < s.cutAt.tokens) return false;
    if (s.cutAt.midFrame) {
      s.armed = true;
      return false;
    }
    this.#recordCut(conn, r, false, null);
    return true;
  }

  #recordCut(conn, r, midFrame, partialLine) {
    this.cuts.push({
      conn: conn.id,
      path: r.req.path,
      tokens: r.sse.tokens,
      lastWholeId: r.sse.lastWholeId,
      midFrame,
      partialLine,
      at: Date.now(),
    });
  }

  describe() {
    const lines = this.requests.map((q) => {
      const h = q.headers;
      const extra = [
        h.origin && `origin=${h.origin}`,
        h["last-event-id"] && `last-event-id=${h["last-event-id"]}`,
        h["content-type"] && `content-type=${h["content-type"]}`,
        h.authorization && "authorization=…",
      ].filter(Boolean);
      return `  [conn ${q.conn}] ${q.method} ${q.path.replace(/token=[^&]+/, "token=…")} → ${q.status ?? "-"} ${extra.join(" ")}`;
    });
    const cuts = this.cuts.map(
      (c) => `  cut conn ${c.conn} after ${c.tokens} tokens, last whole frame ${c.lastWholeId}${c.midFrame ? `, mid-frame after "${c.partialLine}"` : ""}`,
    );
    return [...lines, ...cuts].join("\n");
  }
}

// --- talking to the daemon directly (no Origin), for the ground truth -----------------------

async function direct(path, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (KEY) headers.authorization = `Bearer ${KEY}`;
  return fetch(new URL(path, DAEMON), { ...init, headers });
}

async function taskStatus(id) {
  const resp = await direct(`/v1/tasks/${encodeURIComponent(id)}`);
  return { code: resp.status, body: await resp.json().catch(() => null) };
}

/** The task's whole stream, replayed by the daemon (finished tasks replay for a while). */
async function replayTokens(id) {
  const resp = await direct(`/v1/tasks/${encodeURIComponent(id)}/stream`);
  const text = await resp.text();
  const tokens = [];
  for (const block of text.split("\n\n")) {
    const lines = block.split("\n");
    if (!lines.includes("event: token")) continue;
    const data = lines.find((l) => l.startsWith("data:"));
    const f = JSON.parse(data.slice(5));
    tokens.push({ index: f.i, text: f.t });
  }
  return tokens;
}

// --- the checks -----------------------------------------------------------------------------

let pageUrl; // the example page, pointed at the proxy
const consoleLines = [];

async function openPage(ctx) {
  const page = await ctx.newPage();
  page.on("console", (m) => consoleLines.push(`[console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`[pageerror] ${e.message}`));
  page.on("requestfailed", (r) => consoleLines.push(`[requestfailed] ${r.method()} ${r.url().replace(/token=[^&]+/, "token=…")}: ${r.failure()?.errorText}`));
  await page.goto(pageUrl);
  await page.fill("#model", args.model);
  await page.fill("#engine", args.engine);
  await page.fill("#key", KEY ?? "");
  return page;
}

async function readState(page) {
  return page.evaluate(() => window.orchdState);
}

async function waitForEnd(page, what, timeoutMs = 60000) {
  try {
    await page.waitForFunction(() => ["ended", "failed"].includes(window.orchdState.phase), null, { timeout: timeoutMs });
  } catch {
    const s = await readState(page);
    throw new CheckFailed(`${what}: no end within ${timeoutMs} ms (phase ${s.phase}, ${s.tokens.length} tokens, errors ${JSON.stringify(s.errors)})`);
  }
  return readState(page);
}

function indices(state) {
  return state.tokens.map((t) => t.index);
}

function firstGap(got, n) {
  for (let i = 0; i < Math.max(got.length, n); i++) {
    if (got[i] !== i) return `position ${i}: got ${got[i]} (indices around it: ${JSON.stringify(got.slice(Math.max(0, i - 3), i + 4))})`;
  }
  return "";
}

async function checkBlip(ctx, proxy) {
  proxy.arm(CUTS, CUT_AFTER);
  const page = await openPage(ctx);
  await page.fill("#max-tokens", String(MAX_TOKENS));
  const startedAt = proxy.requests.length;
  await page.click("#submit");
  const s = await waitForEnd(page, "blip");
  const seen = proxy.requests.slice(startedAt);
  check(s.phase === "ended" && !s.errorFrame && s.errors.length === 0, "blip: the page streamed to the end", JSON.stringify({ phase: s.phase, errors: s.errors, errorFrame: s.errorFrame }));

  const got = indices(s);
  check(got.length === MAX_TOKENS && firstGap(got, MAX_TOKENS) === "", `blip: every token index 0..${MAX_TOKENS - 1} arrived exactly once, in order`, `${got.length} tokens; ${firstGap(got, MAX_TOKENS)}`);
  check(s.endData && s.endData.canceled === false && s.endData.tokens_out === MAX_TOKENS, "blip: the end frame is not canceled and counts every token", JSON.stringify(s.endData));

  const replay = await replayTokens(s.taskId);
  const same = replay.length === s.tokens.length && replay.every((t, i) => t.index === s.tokens[i].index && t.text === s.tokens[i].text);
  check(same, "blip: the page's tokens (text too) are the daemon's own replay", `page ${JSON.stringify(s.tokens.slice(0, 5))}…, replay ${JSON.stringify(replay.slice(0, 5))}…`);

  const status = await taskStatus(s.taskId);
  check(status.code === 200 && status.body.state === "succeeded", "blip: the task succeeded (the drops canceled nothing)", JSON.stringify(status));

  const cuts = proxy.cuts;
  check(cuts.length >= 1, `blip: the proxy dropped the stream ${cuts.length} time(s) mid-stream`, "no stream connection was cut (too few tokens for --cut-after?)");
  check(s.reconnects >= cuts.length && s.drops >= cuts.length, `blip: the page saw ${s.drops} drop(s) and ${s.reconnects} reconnect(s)`, `cuts ${cuts.length}`);

  const streams = seen.filter((q) => q.method === "GET" && q.path.includes("/stream"));
  check(streams.length >= cuts.length + 1, `blip: ${streams.length} stream requests for ${cuts.length} cut(s)`);
  // Each reconnect names a frame that came whole: never the cut frame, never one the proxy
  // did not forward. (It may be earlier than the last whole frame: Chromium can discard
  // body bytes that arrived together with the connection's error, and then asks for them
  // again; the exactly-once check above is what matters.)
  for (const cut of cuts) {
    const next = streams.find((q) => q.conn !== cut.conn && q.at >= cut.at);
    const resumed = Number(next?.headers["last-event-id"]);
    check(
      next && Number.isInteger(resumed) && resumed <= Number(cut.lastWholeId),
      `blip: the reconnect after the cut on conn ${cut.conn}${cut.midFrame ? " (mid-frame)" : ""} resumed after event ${resumed} (the last whole frame sent was ${cut.lastWholeId})`,
      `next stream request ${JSON.stringify(next?.headers)}`,
    );
  }

  if (KEY) {
    const post = seen.find((q) => q.method === "POST" && q.path === "/v1/tasks");
    check(post && post.headers.authorization === `Bearer ${KEY}` && post.status === 202, "keys: the page posted with its key (Bearer) → 202", JSON.stringify(post?.headers));
    check(/[?&]token=/.test(s.streamUrl), "keys: the page's EventSource URL carries the stream token", s.streamUrl);
    check(
      streams.every((q) => /[?&]token=[^&]+/.test(q.path) && !q.headers.authorization && !q.headers["x-api-key"] && q.status === 200),
      `keys: all ${streams.length} stream requests (reconnects too) authenticated by token alone → 200`,
      JSON.stringify(streams.map((q) => ({ path: q.path.replace(/token=[^&]+/, "token=…"), status: q.status, auth: !!q.headers.authorization }))),
    );
    // The same page without the key is refused, and says so.
    await page.fill("#key", "");
    await page.click("#submit");
    const refused = await waitForEnd(page, "no key");
    check(refused.phase === "failed" && /401/.test(refused.errors.join(" ")), "keys: without the key the page's submit is refused (401) and shown", JSON.stringify(refused.errors));
  }
  await page.close();
  proxy.arm(0, 0);
}

async function checkCancel(ctx, proxy) {
  proxy.arm(0, 0);
  const page = await openPage(ctx);
  await page.fill("#max-tokens", "1000");
  await page.click("#submit");
  try {
    await page.waitForFunction(() => window.orchdState.tokens.length >= 5, null, { timeout: 30000 });
  } catch {
    const s = await readState(page);
    throw new CheckFailed(`cancel: fewer than 5 tokens within 30 s (phase ${s.phase}, errors ${JSON.stringify(s.errors)})`);
  }
  await page.click("#cancel");
  const s = await waitForEnd(page, "cancel", 15000);
  check(s.cancelStatus === 204, "cancel: the page's cancel → 204", String(s.cancelStatus));
  check(s.phase === "ended" && s.endData?.canceled === true, "cancel: the stream ended with canceled: true", JSON.stringify({ phase: s.phase, endData: s.endData, errors: s.errors }));
  const got = indices(s);
  check(got.length >= 5 && got.length < 1000 && firstGap(got, got.length) === "", `cancel: ${got.length} tokens before the end, each once, in order`, firstGap(got, got.length));
  const status = await taskStatus(s.taskId);
  check(status.code === 200 && status.body.state === "canceled", "cancel: the task is canceled", JSON.stringify(status));
  await page.close();
}

async function checkCrossOrigin(ctx, proxy, otherUrl) {
  proxy.arm(0, 0);
  const page = await ctx.newPage();
  page.on("console", (m) => consoleLines.push(`[other console.${m.type()}] ${m.text()}`));
  await page.goto(otherUrl);
  const otherOrigin = new URL(otherUrl).origin;
  const suffix = Math.random().toString(36).slice(2);
  const task = (id) => ({
    task_id: id,
    session_id: `s-${id}`,
    workload: "completion",
    engine: args.engine,
    model_ref: args.model,
    ctx: 64,
    priority: "interactive",
    prompt: "from another site",
    max_tokens: 2,
    deadline_ms: 60000,
  });
  const simpleId = `cross-simple-${suffix}`;
  const jsonId = `cross-json-${suffix}`;
  const from = proxy.requests.length;
  const result = await page.evaluate(
    async ({ url, simple, json }) => {
      const out = {};
      // A "simple" request: no preflight; the page cannot read the answer, but the daemon
      // must still refuse to act on it.
      try {
        const r = await fetch(url, { method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" }, body: simple });
        out.simple = { type: r.type, status: r.status };
      } catch (e) {
        out.simple = { error: String(e) };
      }
      // A JSON request: needs a preflight, which the daemon refuses.
      try {
        const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: json });
        out.json = { type: r.type, status: r.status };
      } catch (e) {
        out.json = { error: String(e) };
      }
      return out;
    },
    { url: `${proxy.url}/v1/tasks`, simple: JSON.stringify(task(simpleId)), json: JSON.stringify(task(jsonId)) },
  );
  await sleep(300);
  const seen = proxy.requests.slice(from);
  const simple = seen.find((q) => q.method === "POST" && q.headers["content-type"]?.startsWith("text/plain"));
  check(result.simple.type === "opaque", "cross-origin: the no-cors text/plain POST was sent (opaque answer)", JSON.stringify(result.simple));
  check(simple && simple.headers.origin === otherOrigin, `cross-origin: it reached the daemon with Origin ${otherOrigin}`, JSON.stringify(simple?.headers));
  check(simple.status === 403, "cross-origin: the daemon refused it (403)", String(simple.status));
  check(result.json.error !== undefined, "cross-origin: the JSON POST failed in the page (CORS)", JSON.stringify(result.json));
  const jsonPost = seen.find((q) => q.method === "POST" && q.headers["content-type"]?.startsWith("application/json"));
  const preflight = seen.find((q) => q.method === "OPTIONS");
  check(!jsonPost || jsonPost.status === 403, "cross-origin: its preflight stopped it or the daemon refused it", JSON.stringify({ preflight: preflight?.status, post: jsonPost?.status }));
  for (const id of [simpleId, jsonId]) {
    const status = await taskStatus(id);
    check(status.code === 404, `cross-origin: task ${id} does not exist (GET → 404)`, JSON.stringify(status));
  }
  await page.close();
}

// --- main -----------------------------------------------------------------------------------

const watchdog = setTimeout(() => {
  console.error(`FAILED: timed out after ${args["timeout-s"]} s`);
  process.exit(1);
}, Number(args["timeout-s"]) * 1000);

const pageServer = staticServer(args["page-dir"]);
const other = otherSite();
const proxy = new CuttingProxy(DAEMON);
const profile = mkdtempSync(join(tmpdir(), "orchd-chromium-"));
let ctx;
let code = 0;
try {
  const health = await fetch(new URL("/healthz", DAEMON)).catch((e) => ({ status: String(e) }));
  check(health.status === 200, `the daemon at ${DAEMON.origin} is up`, `GET /healthz: ${health.status}`);
  const pagePort = await listen(pageServer, Number(args["page-port"]));
  const otherPort = await listen(other, Number(args["other-port"]));
  await proxy.start();
  pageUrl = `http://127.0.0.1:${pagePort}/index.html?daemon=${encodeURIComponent(proxy.url)}`;
  const otherUrl = `http://127.0.0.1:${otherPort}/`;
  console.log(`page http://127.0.0.1:${pagePort}, other site ${otherUrl}, proxy ${proxy.url} → ${DAEMON.origin}${KEY ? " (with a key)" : ""}`);

  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    args: CHROMIUM_FLAGS,
  });
  console.log(`${args.chromium} driven by playwright-core ${require("playwright-core/package.json").version}`);

  if (modes.includes("blip")) await checkBlip(ctx, proxy);
  if (modes.includes("cancel")) await checkCancel(ctx, proxy);
  if (modes.includes("cross-origin")) await checkCrossOrigin(ctx, proxy, otherUrl);
  if (args.verbose) console.log(`proxy log:\n${proxy.describe()}`);
  console.log("all checks passed");
} catch (e) {
  code = 1;
  console.error(`FAILED: ${e instanceof CheckFailed ? e.message : e.stack}`);
  if (consoleLines.length) console.error(`page console:\n${consoleLines.join("\n")}`);
  if (proxy.requests.length) console.error(`proxy log:\n${proxy.describe()}`);
} finally {
  await ctx?.close().catch(() => {});
  proxy.close();
  pageServer.close();
  other.close();
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(watchdog);
}
process.exit(code);
