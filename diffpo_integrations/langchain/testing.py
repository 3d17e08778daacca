"""A scripted chat model that streams text *and tool calls*, for tests and offline demos of agents.

``langchain_core``'s ``GenericFakeChatModel`` cannot stream tool calls, so an agent built on it
cannot be streamed the way a chat UI streams a real one. :class:`ScriptedChatModel` answers with
the given messages in turn, streams their text word by word, then their tool calls as tool-call
chunks, then usage and response metadata on the last chunk, like an API model does.

Example:
    >>> from langchain_core.messages import AIMessage
    >>> call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}
    >>> model = ScriptedChatModel(messages=iter([AIMessage(content="", tool_calls=[call]), "Sunny."]))
    >>> [c.tool_call_chunks[0]["name"] for c in model.stream("Weather?") if c.tool_call_chunks]
    ['get_weather']
    >>> model.invoke("Thanks").content
    'Sunny.'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

__all__ = ["ScriptedChatModel"]


class ScriptedChatModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that also streams tool calls, usage and response metadata.

    Records the messages of each call (``calls``) and counts the draft chunks it has handed out
    (``served``), so tests can tell whether a consumer stopped reading early. ``bind_tools``
    binds like API models do; the answers stay scripted.
    """

    calls: list[list[BaseMessage]] = Field(default_factory=list)
    """The messages of each call, in order."""
    served: int = 0
    """Text chunks streamed so far."""
    failures: int = 0
    """Calls that raise ``ValueError`` before the model answers normally."""

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        self.calls.append(list(messages))
        if self.failures > 0:
            self.failures -= 1
            msg = "base model down"
            raise ValueError(msg)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        message = self._generate(messages, stop=stop, **kwargs).generations[0].message
        assert isinstance(message, AIMessage)
        for token in re.split(r"(\s)", message.text):
            if token:
                self.served += 1
                yield ChatGenerationChunk(message=AIMessageChunk(content=token, id=message.id))
        calls = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(message.tool_calls)
        ]
        if calls:
            yield ChatGenerationChunk(message=AIMessageChunk(content="", id=message.id, tool_call_chunks=calls))
        last = AIMessageChunk(
            content="",
            id=message.id,
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[Any, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)
