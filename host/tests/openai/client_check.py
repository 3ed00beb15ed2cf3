"""The official `openai` Python client against orchestratord's OpenAI front door.

Run by the Rust tests (host/tests/daemon/openai.rs and the real-engine tier) with the
daemon's base URL, a key, and the model to use; exits non-zero on the first failed check.
Checks: sync and async clients, streaming and not, chat and completions, embeddings
(the client's default base64 encoding and float), the model list, and errors raised as
the right exception types. With --budget-key, a key whose budget cannot cover a request:
the client must raise RateLimitError.
"""

import argparse
import asyncio
import sys
import urllib.request
import json

import openai


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def task_state(base_url, key, task_id):
    req = urllib.request.Request(
        base_url.rstrip("/").removesuffix("/v1") + f"/v1/tasks/{task_id}",
        headers={"X-API-Key": key},
    )
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)["state"]


def sync_checks(args):
    client = openai.OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0)

    models = [m.id for m in client.models.list()]
    check(args.model in models, f"models.list() lists {args.model}: {models}")

    chat = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Say something"}],
        max_tokens=8,
        seed=7,
    )
    text = chat.choices[0].message.content
    check(chat.object == "chat.completion" and chat.choices[0].message.role == "assistant",
          "chat completion shape")
    check(isinstance(text, str) and len(text) > 0, f"chat completion text: {text!r}")
    check(chat.usage.completion_tokens >= 1 and chat.usage.total_tokens
          == chat.usage.prompt_tokens + chat.usage.completion_tokens, f"usage: {chat.usage}")
    check(chat.choices[0].finish_reason in ("stop", "length"), "finish_reason")

    again = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Say something"}],
        max_tokens=8,
        seed=7,
    )
    if args.deterministic:
        check(again.choices[0].message.content == text, "same seed, same text")

    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Stream something"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", "chunk object") if not pieces else None
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                pieces.append(delta.content)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    check(len(pieces) >= 1, f"chat stream delivered {len(pieces)} pieces")
    check(finish in ("stop", "length"), f"chat stream finish_reason {finish}")
    check(usage is not None and usage.completion_tokens >= 1, f"stream usage {usage}")

    comp = client.completions.create(model=args.model, prompt="Once upon a time", max_tokens=5)
    check(comp.object == "text_completion" and len(comp.choices[0].text) > 0,
          "completion text")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=args.model, prompt="Once upon a time", max_tokens=5, stream=True
        )
        if c.choices
    )
    check(len(streamed) > 0, "completion stream text")

    if args.embeddings:
        emb = client.embeddings.create(model=args.model, input=["hello", "world"])
        check(len(emb.data) == 2 and len(emb.data[0].embedding) > 1,
              f"embeddings (base64 default): {len(emb.data)} x {len(emb.data[0].embedding)}")
        flt = client.embeddings.create(model=args.model, input="hello", encoding_format="float")
        check(all(abs(a - b) < 1e-5 for a, b in zip(flt.data[0].embedding, emb.data[0].embedding)),
              "float and base64 encodings agree")

    try:
        client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": "x"}], n=2
        )
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "n", f"n=2 → BadRequestError ({e.body})")

    try:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and e.code == "model_not_found",
              f"unknown model → 404 model_not_found, not retried ({e.code})")

    try:
        openai.OpenAI(base_url=args.base_url, api_key="wrong-key", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.PermissionDeniedError as e:
        check(e.status_code == 403, "wrong key → PermissionDeniedError")

    # Closing a stream early cancels its task (the engine stops).
    with client.chat.completions.with_streaming_response.create(
        model=args.model,
        messages=[{"role": "user", "content": "A long story"}],
        max_tokens=args.long_tokens,
        stream=True,
    ) as resp:
        task_id = resp.headers["x-orchd-task-id"]
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                break
    state = None
    for _ in range(100):
        state = task_state(args.base_url, args.key, task_id)
        if state == "canceled":
            break
        import time
        time.sleep(0.05)
    check(state == "canceled", f"closing the stream canceled the task ({state})")

    if args.budget_key:
        poor = openai.OpenAI(base_url=args.base_url, api_key=args.budget_key, max_retries=0)
        try:
            poor.chat.completions.create(
                model=args.model, messages=[{"role": "user", "content": "x"}], max_tokens=500
            )
            raise AssertionError("a request over budget was accepted")
        except openai.RateLimitError as e:
            check(e.status_code == 429 and e.code == "BUDGET_EXCEEDED",
                  f"over budget → RateLimitError ({e.code})")


async def async_checks(args):
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.key, max_retries=0)
    chat = await client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": "async"}], max_tokens=4
    )
    check(len(chat.choices[0].message.content) > 0, "async chat completion")
    pieces = []
    stream = await client.completions.create(
        model=args.model, prompt="async stream", max_tokens=4, stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            pieces.append(chunk.choices[0].text)
    check(len(pieces) >= 1, "async completion stream")
    results = await asyncio.gather(*[
        client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": f"n{i}"}], max_tokens=3
        )
        for i in range(4)
    ])
    check(all(r.choices[0].message.content for r in results), "4 concurrent async requests")
    if args.embeddings:
        emb = await client.embeddings.create(model=args.model, input="async")
        check(len(emb.data[0].embedding) > 1, "async embeddings")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--budget-key")
    p.add_argument("--embeddings", action="store_true")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--long-tokens", type=int, default=3000,
                   help="tokens of the request whose stream is closed early (fits the context)")
    args = p.parse_args()
    print(f"openai {openai.__version__} against {args.base_url}")
    sync_checks(args)
    asyncio.run(async_checks(args))
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
