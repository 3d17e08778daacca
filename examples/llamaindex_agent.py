"""A function-calling agent with a tool, whose final answer is aligned by DiffPO.

``DiffPOLLM`` wraps the agent's LLM: tool calls pass through untouched, the final text answer is
aligned (and streamed as ``AgentStream`` events). The base model here is LlamaIndex's
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
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llamaindex_common import make_aligner, show

from diffpo_integrations.llama_index import DiffPOLLM

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


async def main() -> None:
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


if __name__ == "__main__":
    asyncio.run(main())
