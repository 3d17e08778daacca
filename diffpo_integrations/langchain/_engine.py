"""What every LangChain component shares: settings, the fail policy, and aligned streaming.

:class:`Alignment` turns (conversation, draft message) into the aligned message, and a stream of
draft chunks into a stream of aligned chunks, under one fail policy and one stream policy. The
sync and async paths share :class:`_DraftBuffer` and the result helpers, so they cannot drift.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.callbacks.manager import AsyncRunManager, RunManager
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.utils import from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from diffpo_integrations.core.aligner import Aligner, check_aligner
from diffpo_integrations.core.errors import (
    AlignerError,
    ConfigurationError,
    FailOpenWarning,
    IncompleteGenerationError,
    InputError,
)
from diffpo_integrations.core.types import AlignResult, FailPolicy
from diffpo_integrations.langchain._convert import (
    ConversationLike,
    aligned_message,
    has_tool_calls,
    message_text,
    to_conversation,
    unaligned_message,
)

__all__ = [
    "FAIL_OPEN_EVENT",
    "Alignment",
    "AlignerSettings",
    "AsyncNotify",
    "FailOpenWarning",
    "Notify",
    "Resolve",
    "StreamPolicy",
    "async_notifier",
    "sync_notifier",
]

StreamPolicy = Literal["full_draft", "early"]

FAIL_OPEN_EVENT = "diffpo_fail_open"
"""Name of the custom callback event sent when a fail-open policy returns the draft unaligned."""

Resolve = Callable[[AIMessage], ConversationLike]
"""Gives the conversation for a draft; called only when the draft is to be aligned."""
Notify = Callable[[AlignResult], None]
AsyncNotify = Callable[[AlignResult], Awaitable[None]]

# Errors of one call that a fail-open policy absorbs. ConversationNotFoundError and
# ConfigurationError are wiring mistakes: returning drafts silently would hide them forever.
_RECOVERABLE = (AlignerError, InputError)


class AlignerSettings(BaseModel):
    """Pydantic fields shared by :class:`DiffPOAlign` and :class:`ChatDiffPO`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    aligner: Aligner | None = Field(default=None, exclude=True)
    """The aligner (any :class:`~diffpo_integrations.core.Aligner`); ``None`` builds a ``TGIAligner``
    for ``aligner_url`` on first use."""
    aligner_url: str | None = Field(default_factory=from_env("DIFFPO_ALIGNER_URL", default=None))
    """Server of the default ``TGIAligner``; default ``$DIFFPO_ALIGNER_URL``, else ``http://127.0.0.1:8080``."""
    keep_prefix_tokens: int | None = Field(default=None, ge=0)
    """Draft tokens kept verbatim; ``None`` uses the aligner's own setting."""
    fail_policy: FailPolicy = "closed"
    """``"closed"`` raises the aligner's typed error; ``"open"`` returns the draft, flagged, and warns."""
    stream_policy: StreamPolicy = "full_draft"
    """``"full_draft"`` waits for the whole draft; ``"early"`` starts once the kept prefix has arrived."""

    def __init__(self, *args: Any, **data: Any) -> None:
        # Checked before pydantic, which would wrap the ConfigurationError in a ValidationError.
        check_aligner(data.get("aligner"))
        super().__init__(*args, **data)

    _alignment: Alignment | None = PrivateAttr(default=None)
    _alignment_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def alignment(self) -> Alignment:
        """The :class:`Alignment` for these settings, built (with the default aligner) on first use."""
        with self._alignment_lock:
            if self._alignment is None:
                aligner = self.aligner
                if aligner is None:
                    # Imported here so a user who passes their own aligner never loads the HTTP stack.
                    from diffpo_integrations.backends.tgi import TGIAligner

                    aligner = TGIAligner(self.aligner_url)
                self._alignment = Alignment(
                    aligner,
                    fail_policy=self.fail_policy,
                    stream_policy=self.stream_policy,
                    keep_prefix_tokens=self.keep_prefix_tokens,
                )
            return self._alignment


def sync_notifier(run_manager: RunManager | None) -> Notify:
    """Report fail-open results as the custom event :data:`FAIL_OPEN_EVENT` on the component's own run."""

    def notify(result: AlignResult) -> None:
        if run_manager is None:
            return
        manager = CallbackManager(handlers=run_manager.handlers, parent_run_id=run_manager.run_id)
        manager.on_custom_event(FAIL_OPEN_EVENT, result.metadata(), run_id=run_manager.run_id)

    return notify


def async_notifier(run_manager: AsyncRunManager | None) -> AsyncNotify:
    """Async :func:`sync_notifier`."""

    async def notify(result: AlignResult) -> None:
        if run_manager is None:
            return
        manager = AsyncCallbackManager(handlers=run_manager.handlers, parent_run_id=run_manager.run_id)
        await manager.on_custom_event(FAIL_OPEN_EVENT, result.metadata(), run_id=run_manager.run_id)

    return notify


def _complete_words(text: str) -> int:
    """Words already followed by whitespace: the last word may still grow, so it does not count."""
    words = text.split()
    if words and not text[-1].isspace():
        return len(words) - 1
    return len(words)


class _DraftBuffer:
    """Collects draft chunks and says when to pass them through or to start aligning."""

    def __init__(self, ready_words: int | None) -> None:
        self.ready_words = ready_words
        self.chunks: list[AIMessageChunk] = []
        self.text = ""
        self.complete = True
        """False once the early policy stopped reading: the draft seen is then a prefix."""

    def add(self, chunk: AIMessageChunk) -> Literal["more", "passthrough", "ready"]:
        self.chunks.append(chunk)
        if has_tool_calls(chunk):
            return "passthrough"
        self.text += message_text(chunk)
        if self.ready_words is not None and _complete_words(self.text) >= self.ready_words:
            return "ready"
        return "more"

    @property
    def draft(self) -> AIMessageChunk | None:
        return add_ai_message_chunks(*self.chunks) if self.chunks else None


def _last_chunk(draft: AIMessageChunk, result: AlignResult, *, complete: bool) -> AIMessageChunk:
    if not complete:
        # Multi-turn histories must not mistake the prefix for the base model's whole answer.
        result = result.model_copy(update={"details": {**result.details, "draft_complete": False}})
    # Metadata and usage travel once, on the last chunk: merging with `+` concatenates strings.
    return AIMessageChunk(
        content="",
        id=draft.id,
        additional_kwargs=draft.additional_kwargs,
        response_metadata={**draft.response_metadata, "diffpo": result.metadata()},
        usage_metadata=draft.usage_metadata,
        chunk_position="last",
    )


def _not_last(chunk: AIMessageChunk) -> AIMessageChunk:
    return chunk.model_copy(update={"chunk_position": None}) if chunk.chunk_position else chunk


def _flag_chunk(draft: AIMessageChunk, result: AlignResult) -> AIMessageChunk:
    # The draft's own chunks already carried its metadata and usage: add only DiffPO's.
    return AIMessageChunk(
        content="", id=draft.id, response_metadata={"diffpo": result.metadata()}, chunk_position="last"
    )


def _close(chunks: Iterator[AIMessageChunk]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


async def _aclose(chunks: AsyncIterator[AIMessageChunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class Alignment:
    """Aligns draft messages and draft streams for one aligner and one pair of policies.

    Args:
        aligner: the aligner.
        fail_policy: ``"closed"`` or ``"open"`` (see :class:`AlignerSettings`).
        stream_policy: ``"full_draft"`` or ``"early"``.
        keep_prefix_tokens: passed to every call when set.
    """

    def __init__(
        self,
        aligner: Aligner,
        *,
        fail_policy: FailPolicy = "closed",
        stream_policy: StreamPolicy = "full_draft",
        keep_prefix_tokens: int | None = None,
    ) -> None:
        if fail_policy not in ("open", "closed"):
            msg = f"fail_policy must be 'open' or 'closed', got {fail_policy!r}"
            raise ConfigurationError(msg)
        if stream_policy not in ("full_draft", "early"):
            msg = f"stream_policy must be 'full_draft' or 'early', got {stream_policy!r}"
            raise ConfigurationError(msg)
        self.aligner = aligner
        self.fail_policy = fail_policy
        self.stream_policy = stream_policy
        self.keep_prefix_tokens = keep_prefix_tokens

    @property
    def endpoint(self) -> str | None:
        endpoint = getattr(self.aligner, "endpoint", None)
        return endpoint if isinstance(endpoint, str) else None

    def _options(self) -> dict[str, Any]:
        return {} if self.keep_prefix_tokens is None else {"keep_prefix_tokens": self.keep_prefix_tokens}

    def ready_words(self) -> int | None:
        """For ``early``: complete words after which the kept prefix has surely arrived.

        Each word is at least one token, so ``r + 1`` complete words hold the ``r`` kept tokens
        (one more than needed: official mode keeps the template's newline as its first token).
        """
        if self.stream_policy != "early":
            return None
        r = self.keep_prefix_tokens
        if r is None and getattr(self.aligner, "prefix_sampling", "fixed") == "fixed":
            r = getattr(self.aligner, "keep_prefix_tokens", None)
        if not isinstance(r, int):
            msg = (
                "stream_policy='early' needs a fixed kept prefix: set keep_prefix_tokens on this component "
                "(the aligner draws it from the whole draft, or does not say how many tokens it keeps)"
            )
            raise ConfigurationError(msg)
        return r + 1

    def _unaligned(self, draft: str, error: Exception) -> AlignResult:
        """Raise under fail-closed; under fail-open, warn and return the flagged draft result."""
        if self.fail_policy == "closed":
            raise error
        result = AlignResult.unaligned(draft, error, endpoint=self.endpoint)
        warnings.warn(f"DiffPO returned the draft unaligned: {result.error}", FailOpenWarning, stacklevel=4)
        return result

    # -- whole messages -----------------------------------------------------------------------

    def align(
        self, conversation: Resolve, draft: AIMessage, notify: Notify, *, aligner: Aligner | None = None
    ) -> AIMessage:
        """The aligned message; tool-calling messages pass through unchanged.

        ``aligner`` is the call's view of :attr:`aligner` (a traced one, see ``_runs.TracedAligner``).
        """
        if has_tool_calls(draft):
            return draft
        text = message_text(draft)
        try:
            result = (aligner or self.aligner).align(to_conversation(conversation(draft)), text, **self._options())
        except _RECOVERABLE as err:
            result = self._unaligned(text, err)
            notify(result)
            return unaligned_message(draft, result)
        return aligned_message(draft, result)

    async def aalign(
        self, conversation: Resolve, draft: AIMessage, notify: AsyncNotify, *, aligner: Aligner | None = None
    ) -> AIMessage:
        """Async :meth:`align`."""
        if has_tool_calls(draft):
            return draft
        text = message_text(draft)
        try:
            result = await (aligner or self.aligner).aalign(
                to_conversation(conversation(draft)), text, **self._options()
            )
        except _RECOVERABLE as err:
            result = self._unaligned(text, err)
            await notify(result)
            return unaligned_message(draft, result)
        return aligned_message(draft, result)

    # -- streams ------------------------------------------------------------------------------
    #
    # Early policy: the upstream is closed only once the aligner has answered, so that a fail-open
    # error before any aligned text can still stream the *whole* draft rather than its first words.
    # Fail-open after aligned text was sent raises instead: the text already sent cannot be taken
    # back, and appending the draft to it would give the caller an answer no model wrote.

    def stream(
        self,
        conversation: Resolve,
        chunks: Iterator[AIMessageChunk],
        notify: Notify,
        *,
        aligner: Aligner | None = None,
    ) -> Iterator[AIMessageChunk]:
        """Aligned chunks for a stream of draft chunks; the last chunk carries the metadata."""
        buffer = _DraftBuffer(self.ready_words())
        for chunk in chunks:
            step = buffer.add(chunk)
            if step == "passthrough":
                yield from buffer.chunks
                yield from chunks
                return
            if step == "ready":
                buffer.complete = False
                break
        draft = buffer.draft
        if draft is None:
            return
        result: AlignResult | None = None
        emitted = False
        try:
            for piece in (aligner or self.aligner).stream(
                to_conversation(conversation(draft)), buffer.text, **self._options()
            ):
                if piece.text:
                    if not emitted:
                        _close(chunks)
                    emitted = True
                    yield AIMessageChunk(content=piece.text, id=draft.id)
                result = piece.result or result
            result = _require(result)
            _close(chunks)
        except _RECOVERABLE as err:
            if emitted or self.fail_policy == "closed":
                raise
            for chunk in buffer.chunks:
                yield _not_last(chunk)
            for chunk in chunks:
                buffer.add(chunk)
                yield _not_last(chunk)
            result = self._unaligned(buffer.text, err)
            notify(result)
            yield _flag_chunk(draft, result)
            return
        yield _last_chunk(draft, result, complete=buffer.complete)

    async def astream(
        self,
        conversation: Resolve,
        chunks: AsyncIterator[AIMessageChunk],
        notify: AsyncNotify,
        *,
        aligner: Aligner | None = None,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async :meth:`stream`."""
        buffer = _DraftBuffer(self.ready_words())
        async for chunk in chunks:
            step = buffer.add(chunk)
            if step == "passthrough":
                for seen in buffer.chunks:
                    yield seen
                async for rest in chunks:
                    yield rest
                return
            if step == "ready":
                buffer.complete = False
                break
        draft = buffer.draft
        if draft is None:
            return
        result: AlignResult | None = None
        emitted = False
        try:
            async for piece in (aligner or self.aligner).astream(
                to_conversation(conversation(draft)), buffer.text, **self._options()
            ):
                if piece.text:
                    if not emitted:
                        await _aclose(chunks)
                    emitted = True
                    yield AIMessageChunk(content=piece.text, id=draft.id)
                result = piece.result or result
            result = _require(result)
            await _aclose(chunks)
        except _RECOVERABLE as err:
            if emitted or self.fail_policy == "closed":
                raise
            for chunk in buffer.chunks:
                yield _not_last(chunk)
            async for chunk in chunks:
                buffer.add(chunk)
                yield _not_last(chunk)
            result = self._unaligned(buffer.text, err)
            await notify(result)
            yield _flag_chunk(draft, result)
            return
        yield _last_chunk(draft, result, complete=buffer.complete)


def _require(result: AlignResult | None) -> AlignResult:
    if result is None:
        msg = "the aligner's stream ended without its final result"
        raise IncompleteGenerationError(msg)
    return result
