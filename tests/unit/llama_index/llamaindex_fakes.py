"""Deterministic stand-ins for the LlamaIndex tests: an aligner and a base LLM, both socket-free."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback

from diffpo_integrations.core import AlignChunk, AlignRequest, AlignResult, BaseAligner, DiffPOError


def fake_aligned_text(request: AlignRequest) -> str:
    """What :class:`FakeAligner` answers: the kept draft words, then a tag of the whole conversation."""
    words = request.draft.split()
    kept = " ".join(words[: request.keep_prefix_tokens or 0])
    convo = "|".join(f"{m.role}:{m.content}" for m in request.messages)
    tag = hashlib.sha256(convo.encode()).hexdigest()[:8]
    return f"{kept} [aligned {tag}] for {len(request.messages)} turns".strip()


class FakeAligner(BaseAligner):
    """Keeps ``keep_prefix_tokens`` draft words and appends a conversation tag; records every request.

    ``fail`` raises that error on each call; ``fail_after`` (streams) raises after that many pieces.
    """

    endpoint = "fake://aligner"

    def __init__(self, *, fail: DiffPOError | None = None, fail_after: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("keep_prefix_tokens", 3)
        super().__init__(**kwargs)
        self.fail = fail
        self.fail_after = fail_after
        self.requests: list[AlignRequest] = []

    def _result(self, request: AlignRequest) -> AlignResult:
        self.requests.append(request)
        text = fake_aligned_text(request)
        kept = " ".join(request.draft.split()[: request.keep_prefix_tokens or 0])
        return AlignResult(
            text=text,
            draft=request.draft,
            kept_prefix=kept,
            kept_prefix_tokens=len(kept.split()),
            generated_tokens=len(text.split()) - len(kept.split()),
            endpoint=self.endpoint,
        )

    def _pieces(self, request: AlignRequest) -> Iterator[AlignChunk]:
        result = self._result(request)
        words = result.text.split(" ")
        for i, word in enumerate(words):
            if self.fail_after is not None and i == self.fail_after and self.fail is not None:
                raise self.fail
            piece = word if i == 0 else " " + word
            yield AlignChunk(text=piece, result=result if i == len(words) - 1 else None)

    def _align(self, request: AlignRequest) -> AlignResult:
        if self.fail is not None:
            self.requests.append(request)
            raise self.fail
        return self._result(request)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        return self._align(request)

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        if self.fail is not None and self.fail_after is None:
            self.requests.append(request)
            raise self.fail
        yield from self._pieces(request)

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        for chunk in self._stream(request):
            yield chunk


def draft_for(prompt: str) -> str:
    """What :class:`DraftLLM` answers to ``prompt``."""
    tag = hashlib.sha256(prompt.encode()).hexdigest()[:6]
    return f"Draft answer {tag} from the base model, plain and short."


class DraftLLM(CustomLLM):
    """A deterministic base LLM: one fixed sentence per prompt, streamed word by word."""

    chat_model: bool = False

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=self.chat_model, model_name="draft-llm")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=draft_for(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = draft_for(prompt)
        words = text.split(" ")

        def gen() -> CompletionResponseGen:
            out = ""
            for i, word in enumerate(words):
                delta = word if i == 0 else " " + word
                out += delta
                yield CompletionResponse(text=out, delta=delta)

        return gen()


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def tool_then_answer(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
    """A deterministic function-calling model: call ``multiply(6, 7)`` once, then answer with its result."""
    results = [m for m in messages if m.role == MessageRole.TOOL]
    if results:
        return ChatMessage(role="assistant", content=f"The product is {results[-1].content}.")
    call = ToolCallBlock(tool_call_id="call-1", tool_name="multiply", tool_kwargs={"a": 6, "b": 7})
    return ChatMessage(role="assistant", blocks=[call])
