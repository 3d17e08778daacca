"""Run pydantic-ai against a gateway, in the client's own environment; print the result as JSON.

    python run_pydantic_ai.py BASE_URL OPERATION QUESTION MAX_TOKENS

OPERATION is ``run_sync``, ``run_stream`` (``stream_text(delta=True)``), ``output_type`` (a pydantic
``Weather`` output, which pydantic-ai asks for through a tool) or ``tool`` (an agent with one tool,
``get_weather``), with the OpenAI chat model.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

SYSTEM = "Answer in one sentence."


class Weather(BaseModel):
    city: str
    celsius: int


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"21 degrees and sunny in {city}"


def main() -> None:
    base_url, operation, question, max_tokens = sys.argv[1:5]
    model = OpenAIChatModel("smollm2", provider=OpenAIProvider(base_url=base_url, api_key="unused"))
    settings: Any = {"max_tokens": int(max_tokens)}
    if operation == "output_type":
        typed = Agent(model, instructions=SYSTEM, model_settings=settings, output_type=Weather)
        print(json.dumps(typed.run_sync(question).output.model_dump()))
        return
    tools = [get_weather] if operation == "tool" else []
    agent = Agent(model, instructions=SYSTEM, model_settings=settings, tools=tools)
    if operation == "run_stream":
        print(json.dumps(asyncio.run(_stream(agent, question))))
        return
    print(json.dumps({"text": agent.run_sync(question).output}))


async def _stream(agent: Agent[Any, str], question: str) -> dict[str, Any]:
    async with agent.run_stream(question) as result:
        deltas = [piece async for piece in result.stream_text(delta=True)]
    return {"text": "".join(deltas)}


if __name__ == "__main__":
    main()
