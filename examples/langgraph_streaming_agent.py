"""Stream an aligned agent answer the way a chat UI does: LangGraph's ``stream_mode="messages"``.

The agent (``langchain.agents.create_agent``) runs on ``ChatDiffPO``: the wrapped model's draft
tokens are hidden from the stream (its run is tagged ``nostream``), the tool call reaches the UI
once, and the final answer streams once, as the aligner writes it. An agent's model must call
tools, which the small offline model cannot do, so the base model here is the package's scripted
chat model (``diffpo_integrations.langchain.testing.ScriptedChatModel``, which streams text and
tool calls). The aligner is real: ``diffpo serve``, where SmolLM2-135M-Instruct stands in for a
DiffPO checkpoint, so the aligned text shows the mechanics, not DiffPO's quality.

    diffpo serve &
    DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/langgraph_streaming_agent.py
"""

from __future__ import annotations

import os

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from langchain_core.tools import tool

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import ChatDiffPO
from diffpo_integrations.langchain.testing import ScriptedChatModel

ALIGNER_URL = os.environ.get("DIFFPO_ALIGNER_URL", "http://127.0.0.1:8080")
DRAFT = "It is sunny in Paris at 21 degrees, so a light jacket is plenty for a walk."


@tool
def get_weather(city: str) -> str:
    """Return today's weather for a city."""
    return f"Sunny in {city}, 21 degrees Celsius, light wind."


def main() -> None:
    base = ScriptedChatModel(
        messages=iter(
            [
                AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}]),
                AIMessage(content=DRAFT),
            ]
        )
    )
    model = ChatDiffPO(llm=base, aligner=TGIAligner(ALIGNER_URL, max_new_tokens=48))
    agent = create_agent(model, tools=[get_weather], system_prompt="You help people plan their day.")

    answer: AIMessageChunk | None = None
    print("== stream_mode='messages', as a chat UI renders it")
    for message, meta in agent.stream(
        {"messages": [("user", "What should I wear for a walk in Paris today?")]}, stream_mode="messages"
    ):
        if isinstance(message, ToolMessage):
            print(f"\n[{meta['langgraph_node']}] tool result: {message.text}")
        elif isinstance(message, AIMessageChunk) and message.tool_call_chunks:
            print(f"[{meta['langgraph_node']}] tool call: {message.tool_call_chunks[0]['name']}")
        elif isinstance(message, AIMessageChunk):
            print(message.text, end="", flush=True)
            answer = message if answer is None else answer + message
    print()
    assert answer is not None
    shown = answer.text
    print("draft:  ", answer.response_metadata["diffpo"]["draft"])
    print("aligned:", shown)
    print("draft tokens hidden from the stream:", DRAFT not in shown)
    print("(SmolLM2-135M-Instruct stands in for a DiffPO checkpoint on this machine.)")


if __name__ == "__main__":
    main()
