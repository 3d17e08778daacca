"""An agent whose final answer is aligned: ``create_agent(..., middleware=[DiffPOMiddleware()])``.

An agent's model must call tools, which the small offline model cannot do, so this example's agent
model is a deterministic fake from ``langchain_core`` (``GenericFakeChatModel``, scripted to call
the weather tool and then answer). The aligner is real: ``diffpo serve``, where SmolLM2-135M-Instruct
stands in for a DiffPO checkpoint. Tool-calling turns pass through; only the final answer is aligned.

    diffpo serve &
    DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/langchain_agent.py
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import DiffPOMiddleware

ALIGNER_URL = os.environ.get("DIFFPO_ALIGNER_URL", "http://127.0.0.1:8080")


@tool
def get_weather(city: str) -> str:
    """Return today's weather for a city."""
    return f"Sunny in {city}, 21 degrees Celsius, light wind."


class ScriptedAgentModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that accepts tools; its answers are scripted, so it ignores them."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedAgentModel:
        return self


def main() -> None:
    model = ScriptedAgentModel(
        messages=iter(
            [
                AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}]),
                AIMessage(content="It is sunny in Paris at 21 degrees, so a light jacket is plenty for a walk."),
            ]
        )
    )
    agent = create_agent(
        model,
        tools=[get_weather],
        system_prompt="You help people plan their day.",
        middleware=[DiffPOMiddleware(TGIAligner(ALIGNER_URL, max_new_tokens=48))],
    )
    state = agent.invoke({"messages": [("user", "What should I wear for a walk in Paris today?")]})
    for message in state["messages"]:
        print(f"{message.type:>5}: {message.text or message.tool_calls}")
    answer = state["messages"][-1]
    print("draft:  ", answer.response_metadata["diffpo"]["draft"])
    print("aligned:", answer.content)


if __name__ == "__main__":
    main()
