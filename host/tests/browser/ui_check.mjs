// The daemon's status page (/ui) in headless Chromium, driven by playwright-core. The
// caller starts the daemon with an admin key and a pool `p` whose replica streams slowly;
// this script:
//   1. opens /ui, enters the admin key once in the page's form (the key never appears in a
//      URL, and the page's own requests carry it in X-API-Key);
//   2. waits for pool p and its replica, the four policies, and the charts' first points;
//   3. submits a long task (through the API, as a client would) and waits until the page
//      shows it running with tokens/s above 0 and the placement decision that put it there;
//   4. reloads the page: the key is remembered for the tab, not asked again;
//   5. clicks Drain on pool p: the daemon reports the pool draining, the page says so and
//      offers Undrain, which undoes it.
//
//   node host/tests/browser/ui_check.mjs --pw-dir DIR --daemon URL --key ADMIN_KEY
//
// Each check prints `ok: ...`; a failure prints `FAILED: ...` with the page's console and
// exits 1; success ends with "all checks passed".

import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    daemon: { type: "string" },
    key: { type: "string" },
    "pw-dir": { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    model: { type: "string", default: "p-model" },
  },
});
if (!args.daemon || !args.key) {
  console.error("usage: ui_check.mjs --daemon URL --key ADMIN_KEY [--pw-dir DIR]");
  process.exit(2);
}
const BASE = args.daemon.replace(/\/$/, "");
const KEY = args.key;
const pwDir = args["pw-dir"] ?? process.env.ORCHD_BROWSER;
const require = createRequire(pwDir ? join(pwDir, "package.json") : import.meta.url);
const { chromium } = require("playwright-core");

class CheckFailed extends Error {}
function check(cond, what, detail) {
  if (!cond) throw new CheckFailed(detail === undefined ? what : `${what}: ${detail}`);
  console.log(`ok: ${what}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function api(method, path, body) {
  const resp = await fetch(`${BASE}${path}`, {
    method,
    headers: { "X-API-Key": KEY, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

/** Waits until `f()` is truthy (polled), or fails with `what`. */
async function until(what, f, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new CheckFailed(`${what} (last: ${last})`);
}

const profile = mkdtempSync(join(tmpdir(), "orchd-ui-"));
const consoleLines = [];
const urls = [];
const keyedRequests = [];
let ctx;
try {
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("request", (r) => {
    urls.push(r.url());
    if (r.headers()["x-api-key"] === KEY) keyedRequests.push(r.url());
  });

  // 1. The page, then the key, once.
  await page.goto(`${BASE}/ui`);
  check((await page.title()) === "orchestratord", "the status page loads from the daemon");
  await page.fill("#key", KEY);
  await page.click("#login button[type=submit]");

  // 2. Pools, replicas, policies, charts.
  await until("pool p shows, ready", async () =>
    (await page.textContent("#pools"))?.includes("p-model") && (await page.textContent("#pools")).includes("ready"));
  check((await page.textContent("#pools")).includes("p-0"), "its replica shows");
  await until("the four policies show", async () => {
    const t = await page.textContent("#policies");
    return ["admission-default", "budget-default", "placement-default", "error-mapping-default"].every((n) => t.includes(n));
  });
  check(true, "policies show with their versions");

  // 3. A task streaming, as the page sees it.
  const submitted = await api("POST", "/v1/tasks", {
    workload: "completion", engine: "mock", model_ref: args.model, ctx: 64, priority: "interactive",
    prompt: "a long story", max_tokens: 400, deadline_ms: 600000, session_id: "ui-check",
  });
  check(submitted.status === 202, "a long task is submitted", JSON.stringify(submitted.body));
  const id = submitted.body.task_id;
  // Someone reads its stream (or the daemon cancels an unread task after attach_timeout).
  const reader = fetch(`${BASE}/v1/tasks/${id}/stream`, { headers: { "X-API-Key": KEY } }).then((r) => r.body.getReader().read());
  await until("the task shows running with tokens/s above 0", async () => {
    const row = await page.$(`tr[data-task="${id}"]`);
    if (!row) return false;
    const cells = await row.$$eval("td", (tds) => tds.map((td) => td.textContent));
    return cells[1] === "running" && Number(cells[4]) > 0 ? cells : false;
  });
  check(true, "the task streams on the page, with its tokens/s");
  await until("its placement decision shows", async () => (await page.textContent("#placements")).includes(id));
  check(true, "the placement decision that put it on its replica shows");
  await until("the throughput chart has points", async () =>
    Number(await page.getAttribute("#chart-tps", "data-points")) >= 2);
  check(true, "the charts plot the daemon's own metrics");

  // 4. The key is remembered for the tab; it never went into a URL.
  await page.reload();
  await until("the page reconnects without asking again", async () => (await page.textContent("#status")).startsWith("connected"));
  check(true, "after a reload the page is still connected (key kept for the tab)");
  check(!urls.some((u) => u.includes(KEY)), "the key is in no URL the page requested", urls.find((u) => u.includes(KEY)));
  check(keyedRequests.some((u) => u.endsWith("/v1/pools")), "the page's API requests carry the key in X-API-Key");

  // 5. Drain, then undrain, from the page.
  await page.click('button.drain[data-pool="p"]');
  await until("the daemon reports pool p draining", async () => {
    const pools = await api("GET", "/v1/pools");
    return pools.body.pools.find((p) => p.pool_id === "p")?.draining === true;
  });
  check(true, "the Drain button drains the pool");
  await until("the page shows it draining", async () => (await page.textContent('tr[data-pool-row="p"]')).includes("draining"));
  check(true, "the page shows the drain");
  await page.click('button.undrain[data-pool="p"]');
  await until("the daemon reports pool p taking work again", async () => {
    const pools = await api("GET", "/v1/pools");
    return pools.body.pools.find((p) => p.pool_id === "p")?.draining === false;
  });
  check(true, "the Undrain button undoes it");
  await api("POST", `/v1/tasks/${id}/cancel`, {});
  await reader.catch(() => {});
  console.log("all checks passed");
} catch (e) {
  console.log(`FAILED: ${e instanceof CheckFailed ? e.message : e.stack}`);
  try {
    const page = ctx?.pages()[0];
    if (page) console.log(`page status: ${await page.textContent("#status")}`);
  } catch {}
  console.log(consoleLines.join("\n"));
  process.exitCode = 1;
} finally {
  if (ctx) await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
