"""One tool round trip through an agent framework (OpenAI Agents SDK, `openai-agents`)
against an OpenAI-compatible base URL: orchestratord's front door, or a llama-server /v1.

Python: the venv from tools/openai-client/setup-agents.sh (openai-agents + openai, pinned).
The engine should serve the tool model
(make_model.py --template tools/e2e/tool-template.jinja --no-space-prefix --ctx 4096).

The agent uses OpenAIChatCompletionsModel (Chat Completions, not the Responses API) on an
AsyncOpenAI client pointed at --base-url, tracing off, one function tool
get_weather(city: Literal["Paris", "Oslo"]), ModelSettings(tool_choice="required",
parallel_tool_calls=False) and tool_use_behavior="stop_on_first_tool": the random-weight
model's forced call runs the Python function and its result ends the run (no second model
turn that would have to produce text). Checks, non-streamed (Runner.run) and streamed
(Runner.run_streamed): the function ran exactly once with a valid city, and the run's
final output is what the function returned. Prints `ok: ...`; exits 1 on the first failure.
"""

import argparse
import asyncio
import sys
from typing import Literal

import openai
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents import __version__ as agents_version

CITIES = ("Paris", "Oslo")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def make_agent(client, model, calls):
    @function_tool
    def get_weather(city: Literal["Paris", "Oslo"]) -> str:
        """Get the weather for a city.

        Args:
            city: The city.
        """
        calls.append(city)
        return f"sunny in {city}"

    return Agent(
        name="weather",
        instructions="You are terse. Use the tool.",
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=64,
        ),
        tools=[get_weather],
        tool_use_behavior="stop_on_first_tool",
    )


async def run_checks(args):
    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.key, max_retries=0, timeout=120)

    calls = []
    result = await Runner.run(make_agent(client, args.model, calls),
                              "What is the weather in Paris?", max_turns=2)
    check(len(calls) == 1 and calls[0] in CITIES,
          f"Runner.run: the tool function ran once with a valid city ({calls})")
    check(result.final_output == f"sunny in {calls[0]}",
          f"Runner.run: final output is the tool's result ({result.final_output!r})")
    usage = result.context_wrapper.usage
    check(usage.requests == 1 and usage.input_tokens > 0 and usage.output_tokens > 0,
          f"Runner.run: one model request with usage ({usage.requests}, {usage.input_tokens}, {usage.output_tokens})")

    calls = []
    streamed = Runner.run_streamed(make_agent(client, args.model, calls),
                                   "What is the weather in Oslo?", max_turns=2)
    kinds = set()
    async for event in streamed.stream_events():
        kinds.add(event.type)
    check(len(calls) == 1 and calls[0] in CITIES,
          f"Runner.run_streamed: the tool function ran once with a valid city ({calls})")
    check(streamed.final_output == f"sunny in {calls[0]}",
          f"Runner.run_streamed: final output is the tool's result ({streamed.final_output!r})")
    check("raw_response_event" in kinds and "run_item_stream_event" in kinds,
          f"Runner.run_streamed: raw and run-item events ({sorted(kinds)})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--model", required=True)
    args = p.parse_args()
    print(f"openai-agents {agents_version} (openai {openai.__version__}) against {args.base_url}")
    asyncio.run(run_checks(args))
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
