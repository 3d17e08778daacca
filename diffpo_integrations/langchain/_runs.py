"""The aligner call as a run of its own: traced as a model call, streamed the way LangGraph streams models.

Each alignment made by a LangChain component runs as a child chat-model run named
``DiffPOAligner`` (tag ``diffpo:aligner``): its input is the aligner's conversation and the draft,
its output the aligned message, with ``usage_metadata`` holding the aligner's own tokens
(``input_tokens``: the prompt tokens it read when the aligner reports them, else the draft tokens
kept; ``output_tokens``: the tokens it generated) and ``ls_provider="diffpo"`` /
``ls_model_name`` (the aligner's endpoint) in its metadata. Tracing tools (LangSmith, Langfuse)
show it as a model call with its latency and tokens, and count each token once.

The aligned pieces are reported as the run's new tokens, so LangGraph's ``messages`` stream mode
and ``astream_events`` see the aligned answer token by token. Where the component's own run
already streams them (``ChatDiffPO``), the child run is tagged ``nostream``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.callbacks.manager import (
    AsyncCallbackManagerForLLMRun,
    AsyncRunManager,
    CallbackManagerForLLMRun,
    RunManager,
)
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.tracers._streaming import _StreamingCallbackHandler

from diffpo_integrations.core.aligner import Aligner, MessagesLike
from diffpo_integrations.core.errors import IncompleteGenerationError
from diffpo_integrations.core.types import AlignChunk, AlignResult, Message, coerce_messages

__all__ = [
    "ALIGNER_RUN_NAME",
    "ALIGNER_TAG",
    "DRAFT_TAG",
    "NOSTREAM_TAG",
    "TracedAligner",
    "achild_manager",
    "aligner_usage",
    "child_manager",
    "inherit",
]

ALIGNER_RUN_NAME = "DiffPOAligner"
ALIGNER_TAG = "diffpo:aligner"
"""Tag of the aligner's runs; prompt capture ignores them."""
DRAFT_TAG = "diffpo:draft"
"""Tag of the wrapped model's runs inside ``ChatDiffPO``: its tokens are the draft's."""
NOSTREAM_TAG = "nostream"
"""LangGraph leaves the tokens of runs with this tag out of the ``messages`` stream."""


_M = TypeVar("_M", CallbackManager, AsyncCallbackManager)


def inherit(manager: _M, parent: RunManager | AsyncRunManager | CallbackManager) -> _M:
    """``manager`` with what ``parent`` passes on to children: handlers, tags and metadata."""
    manager.set_handlers(parent.inheritable_handlers)
    manager.add_tags(parent.inheritable_tags)
    manager.add_metadata(parent.inheritable_metadata)
    return manager


def child_manager(run_manager: RunManager) -> CallbackManager:
    """The manager of a run's children: what ``get_child`` gives, for model runs that lack it."""
    return inherit(CallbackManager(handlers=[], parent_run_id=run_manager.run_id), run_manager)


def achild_manager(run_manager: AsyncRunManager) -> AsyncCallbackManager:
    """Async :func:`child_manager`."""
    return inherit(AsyncCallbackManager(handlers=[], parent_run_id=run_manager.run_id), run_manager)


def _model_name(aligner: Aligner) -> str:
    for name in ("model_name", "endpoint"):
        value = getattr(aligner, name, None)
        if isinstance(value, str) and value:
            return value
    return type(aligner).__name__


def aligner_usage(result: AlignResult) -> UsageMetadata:
    """The aligner's tokens: the prompt it read (or the kept draft tokens) in, the generated tokens out."""
    prompt = result.details.get("prompt_tokens")
    read = prompt if isinstance(prompt, int) else result.kept_prefix_tokens
    return UsageMetadata(
        input_tokens=read, output_tokens=result.generated_tokens, total_tokens=read + result.generated_tokens
    )


def _inputs(messages: MessagesLike, draft: str) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    turns: Sequence[Message] = coerce_messages(messages)
    # The draft is shown as the assistant turn the aligner rewrites.
    return [*(kinds[m.role](content=m.content) for m in turns), AIMessage(content=draft, name="draft")]


class TracedAligner:
    """An aligner whose calls run as child model runs of a component's run (see the module docstring).

    Args:
        aligner: the aligner that does the work.
        manager: the callback manager of the component's children (sync calls).
        amanager: the same for async calls.
        message_id: id of the aligned message; its streamed tokens carry it.
        hidden: tag the run ``nostream`` (the component's own run streams the aligned tokens).
    """

    def __init__(
        self,
        aligner: Aligner,
        *,
        manager: CallbackManager | None = None,
        amanager: AsyncCallbackManager | None = None,
        message_id: str | None = None,
        hidden: bool = False,
    ) -> None:
        self.aligner = aligner
        self.manager = manager
        self.amanager = amanager
        self.message_id = message_id
        self.hidden = hidden

    def __getattr__(self, name: str) -> Any:
        # endpoint, keep_prefix_tokens, prefix_sampling: the aligner's own settings.
        if name == "aligner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.aligner, name)

    # -- run bookkeeping ----------------------------------------------------------------------

    def _configure(self, manager: CallbackManager | AsyncCallbackManager) -> None:
        manager.add_tags([ALIGNER_TAG, *([NOSTREAM_TAG] if self.hidden else [])], inherit=False)
        name = _model_name(self.aligner)
        manager.add_metadata({"ls_provider": "diffpo", "ls_model_name": name, "ls_model_type": "chat"}, inherit=False)

    def _start_args(self, messages: MessagesLike, draft: str, options: dict[str, Any]) -> dict[str, Any]:
        serialized = {"name": ALIGNER_RUN_NAME, "id": ["diffpo_integrations", ALIGNER_RUN_NAME]}
        params = {"_type": "diffpo", "model": _model_name(self.aligner), **options}
        return {
            "serialized": serialized,
            "messages": [_inputs(messages, draft)],
            "run_id": uuid.uuid4(),
            "name": ALIGNER_RUN_NAME,
            "invocation_params": params,
        }

    def _chunk(self, text: str) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(content=text, id=self.message_id))

    def _output(self, result: AlignResult) -> LLMResult:
        message = AIMessage(
            content=result.text,
            id=self.message_id,
            usage_metadata=aligner_usage(result),
            response_metadata={"model_name": _model_name(self.aligner), "diffpo": result.metadata()},
        )
        return LLMResult(generations=[[ChatGeneration(message=message)]])

    def _sync_run(self, messages: MessagesLike, draft: str, options: dict[str, Any]) -> CallbackManagerForLLMRun | None:
        if self.manager is None:
            return None
        manager = self.manager.copy()
        self._configure(manager)
        return manager.on_chat_model_start(**self._start_args(messages, draft, options))[0]

    async def _async_run(
        self, messages: MessagesLike, draft: str, options: dict[str, Any]
    ) -> AsyncCallbackManagerForLLMRun | None:
        if self.amanager is None:
            return None
        manager = self.amanager.copy()
        self._configure(manager)
        return (await manager.on_chat_model_start(**self._start_args(messages, draft, options)))[0]

    @staticmethod
    def _wants_tokens(manager: CallbackManager | AsyncCallbackManager | None) -> bool:
        # As BaseChatModel decides whether invoke streams: a streaming handler is listening.
        return manager is not None and any(isinstance(h, _StreamingCallbackHandler) for h in manager.handlers)

    # -- the Aligner protocol -----------------------------------------------------------------

    def align(self, messages: MessagesLike, draft: str, **options: Any) -> AlignResult:
        if self._wants_tokens(self.manager):
            result: AlignResult | None = None
            for chunk in self.stream(messages, draft, **options):
                result = chunk.result or result
            return _require(result)
        run = self._sync_run(messages, draft, options)
        try:
            result = self.aligner.align(messages, draft, **options)
        except BaseException as err:
            if run is not None:
                run.on_llm_error(err)
            raise
        if run is not None:
            run.on_llm_end(self._output(result))
        return result

    async def aalign(self, messages: MessagesLike, draft: str, **options: Any) -> AlignResult:
        if self._wants_tokens(self.amanager):
            result: AlignResult | None = None
            async for chunk in self.astream(messages, draft, **options):
                result = chunk.result or result
            return _require(result)
        run = await self._async_run(messages, draft, options)
        try:
            result = await self.aligner.aalign(messages, draft, **options)
        except BaseException as err:
            if run is not None:
                await run.on_llm_error(err)
            raise
        if run is not None:
            await run.on_llm_end(self._output(result))
        return result

    def stream(self, messages: MessagesLike, draft: str, **options: Any) -> Iterator[AlignChunk]:
        run = self._sync_run(messages, draft, options)
        result: AlignResult | None = None
        try:
            for chunk in self.aligner.stream(messages, draft, **options):
                if chunk.text and run is not None:
                    run.on_llm_new_token(chunk.text, chunk=self._chunk(chunk.text))
                result = chunk.result or result
                yield chunk
        except BaseException as err:
            if run is not None:
                run.on_llm_error(err)
            raise
        if run is not None:
            run.on_llm_end(self._output(_require(result)))

    async def astream(self, messages: MessagesLike, draft: str, **options: Any) -> AsyncIterator[AlignChunk]:
        run = await self._async_run(messages, draft, options)
        result: AlignResult | None = None
        try:
            async for chunk in self.aligner.astream(messages, draft, **options):
                if chunk.text and run is not None:
                    await run.on_llm_new_token(chunk.text, chunk=self._chunk(chunk.text))
                result = chunk.result or result
                yield chunk
        except BaseException as err:
            if run is not None:
                await run.on_llm_error(err)
            raise
        if run is not None:
            await run.on_llm_end(self._output(_require(result)))


def _require(result: AlignResult | None) -> AlignResult:
    if result is None:
        msg = "the aligner's stream ended without its final result"
        raise IncompleteGenerationError(msg)
    return result
