"""Run the OpenAI Agents SDK against a gateway, in the client's own environment; print the result as JSON.

    python run_agents.py BASE_URL API OPERATION QUESTION MAX_TOKENS

API is ``responses`` (the SDK's default, left as is) or ``chat_completions``
(``set_default_openai_api("chat_completions")``); OPERATION is ``run_sync``, ``run_streamed`` or
``tool`` (an agent with one function tool, ``get_weather``, run with ``Runner.run_sync``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

SYSTEM = "Answer in one sentence."


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"21 degrees and sunny in {city}"


def main() -> None:
    base_url, api, operation, question, max_tokens = sys.argv[1:6]
    set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0))
    set_tracing_disabled(True)  # traces go to api.openai.com, which is not the point here
    if api == "chat_completions":
        set_default_openai_api("chat_completions")
    tools: list[Any] = [get_weather] if operation == "tool" else []
    agent = Agent(
        name="assistant",
        instructions=SYSTEM,
        model="smollm2",
        model_settings=ModelSettings(max_tokens=int(max_tokens)),
        tools=tools,
    )
    if operation == "run_streamed":
        print(json.dumps(asyncio.run(_streamed(agent, question))))
        return
    result = Runner.run_sync(agent, question)
    print(json.dumps({"text": result.final_output}))


async def _streamed(agent: Agent[Any], question: str) -> dict[str, Any]:
    result = Runner.run_streamed(agent, question)
    deltas = []
    async for event in result.stream_events():
        if event.type == "raw_response_event" and getattr(event.data, "type", "") in ("response.output_text.delta",):
            deltas.append(event.data.delta)
    return {"text": result.final_output, "deltas": "".join(deltas)}


if __name__ == "__main__":
    main()
