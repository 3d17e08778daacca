"""A function-calling agent with a tool, whose final answer is aligned by DiffPO.

``DiffPOLLM`` wraps the agent's LLM: tool calls pass through untouched, the final text answer is
aligned (and streamed as ``AgentStream`` events), and the aligner sees the tool's result (folded
into the user turn it serves), so it rewrites a grounded answer knowing the fact it rests on. The
example prints the conversation the aligner received, read from LlamaIndex's instrumentation
(``DiffPOAlignStartEvent``). The base model here is LlamaIndex's
``MockFunctionCallingLLM`` with a scripted, deterministic policy (call ``multiply``, then answer
with its result), so the example runs offline; swap in any function-calling LLM.
The aligner is at ``$DIFFPO_ALIGNER_URL``; SmolLM2-135M-Instruct stands in for a DiffPO checkpoint.

Run: ``DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/llamaindex_agent.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llamaindex_common import make_aligner, show
from pydantic import Field

from diffpo_integrations.llama_index import DiffPOAlignStartEvent, DiffPOLLM

QUESTION = "What is 6 times 7?"


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def scripted_policy(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
    """The mock model's behaviour: call the tool once, then answer with its result."""
    results = [m for m in messages if m.role == MessageRole.TOOL]
    if results:
        return ChatMessage(role="assistant", content=f"The product of 6 and 7 is {results[-1].content}.")
    return ChatMessage(
        role="assistant",
        blocks=[ToolCallBlock(tool_call_id="call-1", tool_name="multiply", tool_kwargs={"a": 6, "b": 7})],
    )


class AlignerInputs(BaseEventHandler):
    """Keeps the conversation of every alignment (what the aligner was shown)."""

    conversations: list[list[dict[str, str]]] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "AlignerInputs"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, DiffPOAlignStartEvent):
            self.conversations.append(event.messages)


async def main() -> None:
    seen = AlignerInputs()
    get_dispatcher().add_event_handler(seen)
    llm = DiffPOLLM(llm=MockFunctionCallingLLM(response_generator=scripted_policy), aligner=make_aligner())
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    handler = agent.run(QUESTION)
    print("== agent events")
    async for event in handler.stream_events():
        if isinstance(event, ToolCallResult):
            print(f"tool {event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content} (not aligned)")
        elif isinstance(event, AgentStream) and event.delta:
            print(event.delta, end="|", flush=True)
    print()
    result = await handler
    draft = scripted_policy([ChatMessage(role=MessageRole.TOOL, content="42")]).content or ""
    show("agent final answer", draft, result.response.content or "")
    print("== what the aligner was shown (the tool result included)")
    for turn in seen.conversations[-1]:
        print(f"{turn['role']}: {turn['content']}")
    get_dispatcher().event_handlers.remove(seen)


if __name__ == "__main__":
    asyncio.run(main())
