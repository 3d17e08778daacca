"""Deterministic aligners for the LangChain tests: answers that show what the aligner was given."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.core.errors import AlignerError
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, Message
from diffpo_integrations.langchain.testing import ScriptedChatModel

__all__ = [
    "DRAFT",
    "ENDPOINT",
    "SYSTEM",
    "USAGE",
    "EchoAligner",
    "FailingAligner",
    "ScriptedChatModel",
    "diffpo_meta",
    "draft_message",
    "echo_text",
    "expected_metadata",
    "expected_text",
]

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
