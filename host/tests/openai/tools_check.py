"""Tool calls, structured output, logprobs and usage through the official `openai` Python client.

Run against orchestratord's OpenAI front door (or straight at a llama-server /v1, which
accepts the same shapes) backed by the tool model:

    make_model.py --template tools/e2e/tool-template.jinja --no-space-prefix --ctx 4096

served with -c 4096 or more. The model has random weights, so only shapes and schemas are
checked: every request that must end uses a grammar (tool_choice "required", a bounded
json_schema) or max_tokens.

Checks (each prints `ok: ...`; the first failure exits 1):
  a  non-streaming tool call (tool_choice "required", parallel_tool_calls false)
  b  the same streaming, deltas accumulated by index
  c  (--named) a named tool_choice picks that function among two, streaming and not.
     llama-server b11434 reads a tool_choice object as "auto" (a 500 with this template);
     the daemon rewrites it to "required" with the tools narrowed, so pass --named only
     through the daemon.
  d  follow-up turn: the assistant tool-call message plus a tool result, tool_choice "none"
  e  response_format json_schema (strict) → JSON that validates
  f  logprobs with top_logprobs=3, streaming and not (no tools: llama-server rejects
     logprobs + tools + stream)
  g  (--engine-url) usage.prompt_tokens == token count of the engine's
     /apply-template + /tokenize {add_special: true} for a multi-turn chat
  h  usage (prompt_tokens > 0, completion_tokens > 0) on non-streaming answers and on
     streams with stream_options.include_usage
"""

import argparse
import json
import sys
import urllib.request

import openai

SEED = 7

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the time in a zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["utc", "cet"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
ASK = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather in Paris?"},
]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool,
    "integer": int, "number": (int, float), "null": type(None),
}


def schema_errors(value, schema, path="$"):
    """The subset of JSON Schema the checks use: type, enum, properties, required,
    additionalProperties (bool), items. Returns a list of error strings."""
    errs = []
    t = schema.get("type")
    if t is not None:
        py = _TYPES[t]
        if not isinstance(value, py) or (t in ("integer", "number") and isinstance(value, bool)):
            return [f"{path}: {value!r} is not of type {t}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errs.append(f"{path}: missing required {key!r}")
        for key, sub in value.items():
            if key in props:
                errs += schema_errors(sub, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                errs.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errs += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errs


def check_json(text, schema, what):
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{what}: not JSON ({e}): {text!r}")
    errs = schema_errors(value, schema)
    check(not errs, f"{what}: {text!r} validates" + (f" ({errs})" if errs else ""))
    return value


def check_usage(usage, what):
    check(usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
          and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
          f"usage on {what}: {usage and (usage.prompt_tokens, usage.completion_tokens)}")


def check_call(call, tool):
    name = tool["function"]["name"]
    check(call.type == "function" and bool(call.id), f"{name}: tool call has type function and id {call.id!r}")
    check(call.function.name == name, f"tool call names {call.function.name!r}, expected {name!r}")
    return check_json(call.function.arguments, tool["function"]["parameters"], f"{name} arguments")


def stream_tool_calls(stream):
    """Accumulates tool-call deltas by index as the SDK docs show. Returns
    (calls ordered by index as dicts {id, type, name, arguments}, finish_reason, usage)."""
    calls, finish, usage, content = {}, None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        if choice.delta.content:
            content.append(choice.delta.content)
        for tc in choice.delta.tool_calls or []:
            if tc.index not in calls:
                # The first fragment of a call carries its id and name.
                if not (tc.id and tc.function and tc.function.name):
                    raise AssertionError(f"first fragment of call {tc.index} lacks id or name: {tc}")
                calls[tc.index] = {"id": tc.id, "type": tc.type or "function",
                                   "name": tc.function.name, "arguments": ""}
            if tc.function and tc.function.arguments:
                calls[tc.index]["arguments"] += tc.function.arguments
    return [calls[i] for i in sorted(calls)], finish, usage, "".join(content)


def tool_checks(client, args):
    # (a) non-streaming, tool_choice "required", one call.
    resp = client.chat.completions.create(
        model=args.model, messages=ASK, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, temperature=0, seed=SEED, max_tokens=64,
    )
    choice = resp.choices[0]
    check(choice.finish_reason == "tool_calls", f"(a) finish_reason {choice.finish_reason!r}")
    calls = choice.message.tool_calls or []
    check(len(calls) == 1, f"(a) one tool call ({len(calls)})")
    check_call(calls[0], WEATHER)
    check_usage(resp.usage, "(a) tool call")

    # (b) the same, streaming.
    stream = client.chat.completions.create(
        model=args.model, messages=ASK, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, temperature=0, seed=SEED, max_tokens=64,
        stream=True, stream_options={"include_usage": True},
    )
    scalls, finish, usage, _ = stream_tool_calls(stream)
    check(finish == "tool_calls", f"(b) stream finish_reason {finish!r}")
    check(len(scalls) == 1 and scalls[0]["name"] == "get_weather",
          f"(b) stream delivered one get_weather call ({[c['name'] for c in scalls]})")
    check_json(scalls[0]["arguments"], WEATHER["function"]["parameters"], "(b) streamed arguments")
    check_usage(usage, "(b) tool-call stream (include_usage)")

    # (c) a named tool_choice among two tools.
    if args.named:
        named = {"type": "function", "function": {"name": "get_time"}}
        resp_c = client.chat.completions.create(
            model=args.model, messages=ASK, tools=[WEATHER, TIME], tool_choice=named,
            parallel_tool_calls=False, temperature=0, seed=SEED, max_tokens=64,
        )
        check(resp_c.choices[0].finish_reason == "tool_calls",
              f"(c) named: finish_reason {resp_c.choices[0].finish_reason!r}")
        ccalls = resp_c.choices[0].message.tool_calls or []
        check(len(ccalls) == 1, f"(c) named: one tool call ({len(ccalls)})")
        check_call(ccalls[0], TIME)
        check_usage(resp_c.usage, "(c) named tool call")
        stream = client.chat.completions.create(
            model=args.model, messages=ASK, tools=[WEATHER, TIME], tool_choice=named,
            parallel_tool_calls=False, temperature=0, seed=SEED, max_tokens=64, stream=True,
        )
        ncalls, finish, _, _ = stream_tool_calls(stream)
        check(finish == "tool_calls" and [c["name"] for c in ncalls] == ["get_time"],
              f"(c) named, streaming: {finish!r} {[c['name'] for c in ncalls]}")
        check_json(ncalls[0]["arguments"], TIME["function"]["parameters"], "(c) named streamed arguments")

    # (d) follow-up: the assistant message as returned, then the tool result.
    followups = [
        ("message object", choice.message, calls[0].id),
        ("dict from the stream", {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": c["id"], "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]}}
                           for c in scalls],
        }, scalls[0]["id"]),
    ]
    for how, assistant, call_id in followups:
        messages = ASK + [assistant, {"role": "tool", "tool_call_id": call_id,
                                      "content": json.dumps({"temp_c": 21})}]
        resp_d = client.chat.completions.create(
            model=args.model, messages=messages, tools=[WEATHER], tool_choice="none",
            temperature=0, seed=SEED, max_tokens=8,
        )
        d = resp_d.choices[0]
        check(d.finish_reason in ("stop", "length") and isinstance(d.message.content, str)
              and not d.message.tool_calls,
              f"(d) follow-up after a tool result ({how}): {d.finish_reason!r} {d.message.content!r}")
        check_usage(resp_d.usage, f"(d) follow-up ({how})")


def format_checks(client, args):
    # (e) structured output.
    resp = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}},
        temperature=0, seed=SEED, max_tokens=48,
    )
    check(resp.choices[0].finish_reason == "stop", f"(e) json_schema finish_reason {resp.choices[0].finish_reason!r}")
    check_json(resp.choices[0].message.content, ANSWER_SCHEMA, "(e) json_schema content")
    check_usage(resp.usage, "(e) json_schema")

    # (f) logprobs, non-streaming then streaming.
    hello = [{"role": "user", "content": "hello"}]
    resp = client.chat.completions.create(
        model=args.model, messages=hello, logprobs=True, top_logprobs=3,
        temperature=0, seed=SEED, max_tokens=4,
    )
    lp = resp.choices[0].logprobs
    entries = (lp and lp.content) or []
    check(len(entries) == resp.usage.completion_tokens,
          f"(f) one logprob entry per token ({len(entries)} for {resp.usage.completion_tokens})")
    check(all(isinstance(e.token, str) and e.logprob <= 0 and len(e.top_logprobs) == 3 for e in entries),
          "(f) each entry has a token, a logprob <= 0 and 3 top_logprobs")
    check("".join(e.token for e in entries) == resp.choices[0].message.content,
          "(f) logprob tokens join to the content")
    check_usage(resp.usage, "(f) logprobs")

    stream = client.chat.completions.create(
        model=args.model, messages=hello, logprobs=True, top_logprobs=3,
        temperature=0, seed=SEED, max_tokens=4, stream=True, stream_options={"include_usage": True},
    )
    sentries, usage, text = [], None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
            if c.logprobs and c.logprobs.content:
                sentries += c.logprobs.content
    check(len(sentries) >= 1 and all(len(e.top_logprobs) == 3 for e in sentries),
          f"(f) stream: {len(sentries)} logprob entries, each with 3 top_logprobs")
    check([e.token for e in sentries] == [e.token for e in entries],
          "(f) stream logprob tokens equal the non-streamed ones")
    check_usage(usage, "(f) logprobs stream (include_usage)")


def engine_post(engine, path, body):
    req = urllib.request.Request(
        engine.rstrip("/") + path, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def template_check(client, args):
    # (g) prompt tokens agree with the engine's template + tokenizer.
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a city."},
        {"role": "assistant", "content": "Oslo."},
        {"role": "user", "content": "Another one?"},
    ]
    resp = client.chat.completions.create(
        model=args.model, messages=messages, temperature=0, seed=SEED, max_tokens=2,
    )
    prompt = engine_post(args.engine_url, "/apply-template", {"messages": messages})["prompt"]
    tokens = engine_post(args.engine_url, "/tokenize", {"content": prompt, "add_special": True})["tokens"]
    check(resp.usage.prompt_tokens == len(tokens),
          f"(g) usage.prompt_tokens {resp.usage.prompt_tokens} == engine apply-template + tokenize {len(tokens)}")
    check_usage(resp.usage, "(g) multi-turn chat")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--engine-url", help="llama-server base URL without /v1, for the template check")
    p.add_argument("--named", action="store_true",
                   help="check a named tool_choice (through the daemon only)")
    args = p.parse_args()
    print(f"openai {openai.__version__} against {args.base_url}")
    client = openai.OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0, timeout=120)
    tool_checks(client, args)
    format_checks(client, args)
    if args.engine_url:
        template_check(client, args)
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except openai.APIError as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
