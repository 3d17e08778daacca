"""Deterministic aligners for the LangChain tests: answers that show what the aligner was given."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.core.errors import AlignerError
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, Message

ENDPOINT = "fake://echo"
DRAFT = "Seven is a prime number because its only divisors are one and itself."
USAGE = {"input_tokens": 11, "output_tokens": 13, "total_tokens": 24}
SYSTEM = "You are terse."


def draft_message(text: str = DRAFT, **fields: Any) -> AIMessage:
    """A draft as an API model returns it: id, usage and response metadata set."""
    fields.setdefault("id", "draft-1")
    fields.setdefault("usage_metadata", USAGE)
    fields.setdefault("response_metadata", {"model_name": "fake-base", "finish_reason": "stop"})
    return AIMessage(content=text, **fields)


def expected_text(question: str, draft: str = DRAFT, *, system: str | None = SYSTEM, keep: int = 2) -> str:
    """What :class:`EchoAligner` answers for a system prompt, one question and a draft."""
    turns = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content=question)]
    return echo_text(turns, draft, keep)


def expected_metadata(draft: str = DRAFT, *, keep: int = 2) -> dict[str, Any]:
    """``response_metadata["diffpo"]`` of an :class:`EchoAligner` answer, without the latency."""
    return {
        "draft": draft,
        "kept_prefix": " ".join(draft.split()[:keep]),
        "kept_prefix_tokens": keep,
        "generated_tokens": 7,
        "finish_reason": "eos_token",
        "aligned": True,
        "error": None,
        "endpoint": ENDPOINT,
        "timings": {},
        "details": {},
    }


def diffpo_meta(message: BaseMessage) -> dict[str, Any]:
    """The message's DiffPO metadata with the latency checked and removed (it varies per run)."""
    meta = dict(message.response_metadata["diffpo"])
    latency = meta.pop("latency_s")
    assert isinstance(latency, float)
    assert latency >= 0
    return meta


def echo_text(messages: Sequence[Message], draft: str, keep: int) -> str:
    """The fake aligner's answer: the kept draft words, then the conversation it was given."""
    kept = " ".join(draft.split()[:keep])
    convo = " / ".join(f"{m.role}: {m.content}" for m in messages)
    return f"{kept} [aligned for {convo}]"


class EchoAligner(BaseAligner):
    """Keeps the first ``keep_prefix_tokens`` words of the draft and appends the conversation.

    Like a real DiffPO aligner, the answer depends only on the conversation and the kept prefix.
    Streams word by word (the first chunk is the kept prefix). Records every call and the peak
    number of calls in flight at once.
    """

    endpoint = ENDPOINT

    def __init__(self, *, keep_prefix_tokens: int = 2, delay: float = 0.0, **kwargs: object) -> None:
        super().__init__(keep_prefix_tokens=keep_prefix_tokens, **kwargs)  # type: ignore[arg-type]
        self.delay = delay
        self.calls: list[tuple[list[Message], str]] = []
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def _result(self, request: AlignRequest) -> AlignResult:
        r = request.keep_prefix_tokens or 0
        self.calls.append((list(request.messages), request.draft))
        text = echo_text(request.messages, request.draft, r)
        kept = " ".join(request.draft.split()[:r])
        return AlignResult(
            text=text,
            draft=request.draft,
            kept_prefix=kept,
            kept_prefix_tokens=r,
            generated_tokens=7,
            endpoint=ENDPOINT,
        )

    def _pieces(self, result: AlignResult) -> list[str]:
        rest = result.text[len(result.kept_prefix) :]
        words = [w for w in rest.split(" ")]
        return [result.kept_prefix] + [(" " + w) if i or rest.startswith(" ") else w for i, w in enumerate(words) if w]

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _align(self, request: AlignRequest) -> AlignResult:
        return self._result(request)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        self._enter()
        try:
            await asyncio.sleep(self.delay)
            return self._result(request)
        finally:
            self._leave()

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        result = self._result(request)
        pieces = self._pieces(result)
        for piece in pieces[:-1]:
            yield AlignChunk(text=piece)
        yield AlignChunk(text=pieces[-1], result=result)

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        for chunk in self._stream(request):
            await asyncio.sleep(0)
            yield chunk


class FailingAligner(EchoAligner):
    """Fails with ``error`` after streaming ``after`` chunks (0: fails at once)."""

    def __init__(self, error: Exception | None = None, *, after: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.error = error or AlignerError("aligner down", endpoint=ENDPOINT, status=503)
        self.after = after

    def _align(self, request: AlignRequest) -> AlignResult:
        raise self.error

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        raise self.error

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        for i, chunk in enumerate(super()._stream(request)):
            if i == self.after:
                raise self.error
            yield chunk


class ScriptedChatModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that also streams tool calls, usage and response metadata.

    Records the messages of each call and counts the draft chunks it has handed out, so tests can
    tell whether a consumer stopped reading early. ``bind_tools`` binds like API models do.
    """

    calls: list[list[BaseMessage]] = Field(default_factory=list)
    served: int = 0
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
