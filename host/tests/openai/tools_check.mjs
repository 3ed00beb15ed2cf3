// Tool calls through the official `openai` Node SDK: the Node counterpart of checks
// (a) (b) (c) (d) of tools_check.py, against orchestratord's OpenAI front door (or straight
// at a llama-server /v1) backed by the tool model
// (make_model.py --template tools/e2e/tool-template.jinja --no-space-prefix --ctx 4096).
//
//   node host/tests/openai/tools_check.mjs --sdk-dir "$(tools/openai-client/setup-node.sh | tail -1)" \
//       --base-url URL --key KEY --model MODEL [--named]
//
// --sdk-dir (or $ORCHD_OPENAI_NODE) is the folder holding node_modules/openai; without it,
// `openai` is resolved the normal way (NODE_PATH included).
//   a  non-streaming tool call, tool_choice "required", parallel_tool_calls false
//   b  the same streaming, deltas accumulated by index
//   c  (--named) tool_choice {"type":"function","function":{"name":"get_time"}} among two
//      tools → get_time, streaming and not. llama-server b11434 reads the object as "auto"
//      (a 500 with this template); the daemon rewrites it, so --named only through the daemon.
//   d  follow-up with the assistant message as returned plus a tool result, tool_choice "none"
// Each check prints `ok: ...`; the first failure prints `FAILED: ...` and exits 1.

import { createRequire } from "node:module";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    "base-url": { type: "string" },
    key: { type: "string" },
    model: { type: "string" },
    named: { type: "boolean", default: false },
    "sdk-dir": { type: "string" },
  },
});
for (const need of ["base-url", "key", "model"]) {
  if (!args[need]) {
    console.error(`usage: tools_check.mjs --base-url URL --key KEY --model MODEL [--named] [--sdk-dir DIR] (missing --${need})`);
    process.exit(2);
  }
}
const sdkDir = args["sdk-dir"] ?? process.env.ORCHD_OPENAI_NODE;
const require = createRequire(sdkDir ? join(sdkDir, "package.json") : import.meta.url);
const { OpenAI } = require("openai");
const { VERSION } = require("openai/version");

const SEED = 7;
const WEATHER = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the weather for a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string", enum: ["Paris", "Oslo"] } },
      required: ["city"],
      additionalProperties: false,
    },
  },
};
const TIME = {
  type: "function",
  function: {
    name: "get_time",
    description: "Get the time in a zone",
    parameters: {
      type: "object",
      properties: { zone: { type: "string", enum: ["utc", "cet"] } },
      required: ["zone"],
      additionalProperties: false,
    },
  },
};
const ASK = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "What is the weather in Paris?" },
];

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
  console.log(`ok: ${what}`);
}

// The JSON Schema subset the tools use: type object/string, enum, properties, required,
// additionalProperties false.
function schemaErrors(value, schema, path = "$") {
  const errs = [];
  const t = schema.type;
  const isObj = value !== null && typeof value === "object" && !Array.isArray(value);
  if (t === "object" && !isObj) return [`${path}: not an object`];
  if (t === "string" && typeof value !== "string") return [`${path}: not a string`];
  if (schema.enum && !schema.enum.includes(value)) errs.push(`${path}: ${JSON.stringify(value)} not in ${JSON.stringify(schema.enum)}`);
  if (isObj) {
    const props = schema.properties ?? {};
    for (const k of schema.required ?? []) if (!(k in value)) errs.push(`${path}: missing required ${k}`);
    for (const [k, v] of Object.entries(value)) {
      if (k in props) errs.push(...schemaErrors(v, props[k], `${path}.${k}`));
      else if (schema.additionalProperties === false) errs.push(`${path}: unexpected key ${k}`);
    }
  }
  return errs;
}

function checkJson(text, schema, what) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new CheckFailed(`${what}: not JSON (${e.message}): ${JSON.stringify(text)}`);
  }
  const errs = schemaErrors(value, schema);
  check(errs.length === 0, `${what}: ${JSON.stringify(text)} validates${errs.length ? ` (${errs})` : ""}`);
  return value;
}

function checkUsage(usage, what) {
  check(
    usage && usage.prompt_tokens > 0 && usage.completion_tokens > 0 &&
      usage.total_tokens === usage.prompt_tokens + usage.completion_tokens,
    `usage on ${what}: ${usage && JSON.stringify([usage.prompt_tokens, usage.completion_tokens])}`,
  );
}

function checkCall(call, tool) {
  const name = tool.function.name;
  check(call.type === "function" && !!call.id, `${name}: tool call has type function and id ${call.id}`);
  check(call.function.name === name, `tool call names ${call.function.name}, expected ${name}`);
  return checkJson(call.function.arguments, tool.function.parameters, `${name} arguments`);
}

// Accumulates streamed tool-call deltas by index, as the SDK docs show.
async function streamToolCalls(stream) {
  const calls = new Map();
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices?.[0];
    if (!choice) continue;
    finish = choice.finish_reason ?? finish;
    for (const tc of choice.delta?.tool_calls ?? []) {
      if (!calls.has(tc.index)) {
        if (!tc.id || !tc.function?.name) {
          throw new CheckFailed(`first fragment of call ${tc.index} lacks id or name: ${JSON.stringify(tc)}`);
        }
        calls.set(tc.index, { id: tc.id, type: tc.type ?? "function", function: { name: tc.function.name, arguments: "" } });
      }
      calls.get(tc.index).function.arguments += tc.function?.arguments ?? "";
    }
  }
  const ordered = [...calls.keys()].sort((a, b) => a - b).map((i) => calls.get(i));
  return { calls: ordered, finish, usage };
}

async function main() {
  console.log(`openai (node) ${VERSION} against ${args["base-url"]}`);
  const client = new OpenAI({ baseURL: args["base-url"], apiKey: args.key, maxRetries: 0, timeout: 120_000 });
  const base = { model: args.model, temperature: 0, seed: SEED, max_tokens: 64, parallel_tool_calls: false };

  // (a)
  const resp = await client.chat.completions.create({ ...base, messages: ASK, tools: [WEATHER], tool_choice: "required" });
  const choice = resp.choices[0];
  check(choice.finish_reason === "tool_calls", `(a) finish_reason ${choice.finish_reason}`);
  const calls = choice.message.tool_calls ?? [];
  check(calls.length === 1, `(a) one tool call (${calls.length})`);
  checkCall(calls[0], WEATHER);
  checkUsage(resp.usage, "(a) tool call");

  // (b)
  const sb = await streamToolCalls(
    await client.chat.completions.create({
      ...base, messages: ASK, tools: [WEATHER], tool_choice: "required",
      stream: true, stream_options: { include_usage: true },
    }),
  );
  check(sb.finish === "tool_calls", `(b) stream finish_reason ${sb.finish}`);
  check(sb.calls.length === 1 && sb.calls[0].function.name === "get_weather",
    `(b) stream delivered one get_weather call (${sb.calls.map((c) => c.function.name)})`);
  checkJson(sb.calls[0].function.arguments, WEATHER.function.parameters, "(b) streamed arguments");
  checkUsage(sb.usage, "(b) tool-call stream (include_usage)");

  // (c)
  if (args.named) {
    const named = { type: "function", function: { name: "get_time" } };
    const rc = await client.chat.completions.create({ ...base, messages: ASK, tools: [WEATHER, TIME], tool_choice: named });
    check(rc.choices[0].finish_reason === "tool_calls", `(c) named: finish_reason ${rc.choices[0].finish_reason}`);
    const cc = rc.choices[0].message.tool_calls ?? [];
    check(cc.length === 1, `(c) named: one tool call (${cc.length})`);
    checkCall(cc[0], TIME);
    const sc = await streamToolCalls(
      await client.chat.completions.create({ ...base, messages: ASK, tools: [WEATHER, TIME], tool_choice: named, stream: true }),
    );
    check(sc.finish === "tool_calls" && sc.calls.length === 1 && sc.calls[0].function.name === "get_time",
      `(c) named, streaming: ${sc.finish} ${sc.calls.map((c) => c.function.name)}`);
    checkJson(sc.calls[0].function.arguments, TIME.function.parameters, "(c) named streamed arguments");
  }

  // (d) the assistant message as returned, then as accumulated from the stream.
  const followups = [
    ["message as returned", choice.message, calls[0].id],
    ["message from the stream", { role: "assistant", content: null, tool_calls: sb.calls }, sb.calls[0].id],
  ];
  for (const [how, assistant, id] of followups) {
    const rd = await client.chat.completions.create({
      model: args.model, temperature: 0, seed: SEED, max_tokens: 8, tools: [WEATHER], tool_choice: "none",
      messages: [...ASK, assistant, { role: "tool", tool_call_id: id, content: JSON.stringify({ temp_c: 21 }) }],
    });
    const d = rd.choices[0];
    check(["stop", "length"].includes(d.finish_reason) && typeof d.message.content === "string" && !d.message.tool_calls?.length,
      `(d) follow-up after a tool result (${how}): ${d.finish_reason} ${JSON.stringify(d.message.content)}`);
    checkUsage(rd.usage, `(d) follow-up (${how})`);
  }
  console.log("all checks passed");
}

main().catch((e) => {
  if (e instanceof CheckFailed) console.error(`FAILED: ${e.message}`);
  else if (e instanceof OpenAI.APIError) console.error(`FAILED: ${e.constructor.name}: ${e.message}`);
  else console.error(`FAILED: ${e?.stack ?? e}`);
  process.exit(1);
});
