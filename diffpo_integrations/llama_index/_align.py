"""The one place where the LlamaIndex wrappers call an aligner: fail policy, spans and events.

Every wrapper (response postprocessor, synthesizer, query and chat engines, ``DiffPOLLM``, the
Workflows step) owns a :class:`DiffPOAlignment` and never calls the aligner directly, so the fail
policy, the instrumentation and the draft bookkeeping behave the same everywhere.
"""

from __future__ import annotations

import inspect
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, get_args

# llama_index.core.instrumentation re-exports these without __all__ (strict mypy rejects that);
# they are the same objects, from the package llama-index-core itself depends on.
from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.dispatcher import active_instrument_tags
from llama_index_instrumentation.span import active_span_id

from diffpo_integrations.core.aligner import Aligner, check_aligner
from diffpo_integrations.core.errors import AlignerError, ConfigurationError, InputError
from diffpo_integrations.core.types import AlignChunk, AlignResult, FailPolicy, Message
from diffpo_integrations.llama_index.events import DiffPOAlignEndEvent, DiffPOAlignStartEvent, DiffPOFailOpenWarning

__all__ = ["DiffPOAlignment", "current_span_id", "default_aligner"]

dispatcher = get_dispatcher(__name__)

_FALLBACK_ERRORS = (AlignerError, InputError)
"""What ``fail_policy="open"`` falls back on: the aligner failed, or could not take this conversation.
A ``ConfigurationError`` always raises: a wrong setup should fail loudly, not hide behind drafts."""

_DRAFT_MEMORY = 512
"""Aligned answers remembered (per wrapper) so later turns can show the aligner the original drafts."""


def current_span_id() -> str | None:
    """The active instrumentation span; lazy streams capture it when they are created."""
    return active_span_id.get()


def default_aligner() -> Aligner:
    """A ``TGIAligner`` at ``$DIFFPO_ALIGNER_URL`` (default ``http://127.0.0.1:8080``)."""
    # Imported here so that building a wrapper with an explicit aligner never needs the HTTP stack.
    from diffpo_integrations.backends.tgi import TGIAligner

    return TGIAligner()


class DiffPOAlignment:
    """Run an aligner under a fail policy, inside an instrumentation span.

    Args:
        aligner: any :class:`~diffpo_integrations.core.Aligner`; ``None`` builds :func:`default_aligner`.
        fail_policy: ``"closed"`` raises the aligner's typed error; ``"open"`` returns the draft
            flagged (``aligned=False``, error recorded) and emits a :class:`DiffPOFailOpenWarning`
            on an ``AlignerError`` or ``InputError`` (a ``ConfigurationError`` always raises).
            While streaming, ``"open"`` can only fall back before the first aligned piece was
            emitted; a failure after that raises, since the caller already holds aligned text.
        align_options: keyword options passed to every aligner call (``keep_prefix_tokens``,
            ``max_new_tokens``).
    """

    def __init__(
        self,
        aligner: Aligner | None = None,
        *,
        fail_policy: FailPolicy = "closed",
        align_options: Mapping[str, Any] | None = None,
    ) -> None:
        if fail_policy not in get_args(FailPolicy):
            msg = f"fail_policy must be 'open' or 'closed', got {fail_policy!r}"
            raise ConfigurationError(msg)
        aligner = check_aligner(aligner)
        self.aligner: Aligner = aligner if aligner is not None else default_aligner()
        self.fail_policy: FailPolicy = fail_policy
        self.align_options: dict[str, Any] = dict(align_options or {})
        self._drafts: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> DiffPOAlignment:
        # Pydantic deep-copies a DiffPOLLM's private state. Aligners hold network clients and locks,
        # so a copy shares the aligner and gets its own lock and draft memory.
        clone = DiffPOAlignment(self.aligner, fail_policy=self.fail_policy, align_options=dict(self.align_options))
        with self._lock:
            clone._drafts = OrderedDict(self._drafts)
        return clone

    def __repr__(self) -> str:
        return f"DiffPOAlignment(aligner={self.aligner!r}, fail_policy={self.fail_policy!r})"

    # -- one-shot -----------------------------------------------------------------------------

    @dispatcher.span
    def align(self, messages: Sequence[Message], draft: str, caller: str = "") -> AlignResult:
        """Align ``draft`` for ``messages``; apply the fail policy."""
        self._started(messages, draft, caller)
        try:
            result = self.aligner.align(messages, draft.strip(), **self.align_options)
        except _FALLBACK_ERRORS as err:
            result = self._failed(err, draft)
        self._ended(result, caller)
        return result

    @dispatcher.span
    async def aalign(self, messages: Sequence[Message], draft: str, caller: str = "") -> AlignResult:
        """Async :meth:`align`."""
        self._started(messages, draft, caller)
        try:
            result = await self.aligner.aalign(messages, draft.strip(), **self.align_options)
        except _FALLBACK_ERRORS as err:
            result = self._failed(err, draft)
        self._ended(result, caller)
        return result

    # -- streaming ----------------------------------------------------------------------------
    # ``@dispatcher.span`` closes its span when a generator is *returned*, before any piece is
    # produced, so the streams open and close theirs by hand around the whole iteration. They do
    # not set ``active_span_id``: a generator shares its consumer's context, and the id would leak
    # into the consumer's own spans between two pieces.

    def stream(
        self, messages: Sequence[Message], draft: str, caller: str = "", parent_span_id: str | None = None
    ) -> Iterator[AlignChunk]:
        """Yield the aligned answer in pieces; the last chunk carries the result (fail policy applied).

        ``parent_span_id`` is the span the stream belongs to, captured by the wrapper when it built
        the lazy stream (by the time the caller iterates, that span has usually closed).
        """
        span_id, bound = self._enter("stream", messages, draft, caller, parent_span_id)
        result: AlignResult | None = None
        emitted = False
        try:
            self._started(messages, draft, caller, span_id)
            try:
                for chunk in self.aligner.stream(messages, draft.strip(), **self.align_options):
                    emitted = emitted or bool(chunk.text)
                    result = chunk.result or result
                    yield chunk
            except _FALLBACK_ERRORS as err:
                if emitted:
                    raise
                result = self._failed(err, draft)
                yield AlignChunk(text=draft, result=result)
            result = _require(result, self.aligner)
            self._ended(result, caller, span_id)
        except BaseException as err:
            dispatcher.span_drop(id_=span_id, bound_args=bound, instance=self, err=err)
            raise
        dispatcher.span_exit(id_=span_id, bound_args=bound, instance=self, result=result)

    async def astream(
        self, messages: Sequence[Message], draft: str, caller: str = "", parent_span_id: str | None = None
    ) -> AsyncIterator[AlignChunk]:
        """Async :meth:`stream`."""
        span_id, bound = self._enter("astream", messages, draft, caller, parent_span_id)
        result: AlignResult | None = None
        emitted = False
        try:
            self._started(messages, draft, caller, span_id)
            try:
                async for chunk in self.aligner.astream(messages, draft.strip(), **self.align_options):
                    emitted = emitted or bool(chunk.text)
                    result = chunk.result or result
                    yield chunk
            except _FALLBACK_ERRORS as err:
                if emitted:
                    raise
                result = self._failed(err, draft)
                yield AlignChunk(text=draft, result=result)
            result = _require(result, self.aligner)
            self._ended(result, caller, span_id)
        except BaseException as err:
            dispatcher.span_drop(id_=span_id, bound_args=bound, instance=self, err=err)
            raise
        dispatcher.span_exit(id_=span_id, bound_args=bound, instance=self, result=result)

    # -- draft bookkeeping --------------------------------------------------------------------

    def original_draft(self, text: str) -> str:
        """The draft behind an answer this wrapper aligned earlier, or ``text`` itself.

        DiffPO's conversation holds the base model's *original* earlier answers; frameworks that
        store the aligned answer in their memory (agents, ``Settings.llm`` chat engines) get their
        history turned back into drafts through this lookup.
        """
        with self._lock:
            return self._drafts.get(text.strip(), text)

    # -- internals ----------------------------------------------------------------------------

    def _enter(
        self, name: str, messages: Sequence[Message], draft: str, caller: str, parent: str | None
    ) -> tuple[str, inspect.BoundArguments]:
        span_id = f"{type(self).__name__}.{name}-{uuid.uuid4()}"
        bound = inspect.signature(self.stream).bind(messages, draft, caller, parent)
        parent = parent or active_span_id.get()
        dispatcher.span_enter(
            id_=span_id, bound_args=bound, instance=self, parent_id=parent, tags=active_instrument_tags.get()
        )
        return span_id, bound

    def _started(self, messages: Sequence[Message], draft: str, caller: str, span_id: str | None = None) -> None:
        event = DiffPOAlignStartEvent(
            messages=[{"role": m.role, "content": m.content} for m in messages], draft=draft, caller=caller
        )
        if span_id is not None:
            event.span_id = span_id
        dispatcher.event(event)

    def _ended(self, result: AlignResult, caller: str, span_id: str | None = None) -> None:
        if result.aligned:
            with self._lock:
                self._drafts[result.text.strip()] = result.draft
                while len(self._drafts) > _DRAFT_MEMORY:
                    self._drafts.popitem(last=False)
        event = DiffPOAlignEndEvent(metadata=result.metadata(), aligned=result.aligned, caller=caller)
        if span_id is not None:
            event.span_id = span_id
        dispatcher.event(event)

    def _failed(self, err: AlignerError | InputError, draft: str) -> AlignResult:
        if self.fail_policy == "closed":
            raise err
        endpoint = getattr(err, "endpoint", None) or getattr(self.aligner, "endpoint", None)
        result = AlignResult.unaligned(draft, err, endpoint=endpoint if isinstance(endpoint, str) else None)
        msg = f"DiffPO alignment failed, returning the draft unaligned (fail_policy='open'): {result.error}"
        # stacklevel 3 points at the wrapper method the user called rather than at this helper.
        warnings.warn(msg, DiffPOFailOpenWarning, stacklevel=3)
        return result


def _require(result: AlignResult | None, aligner: Aligner) -> AlignResult:
    if result is None:
        msg = f"{type(aligner).__name__}.stream ended without a final chunk carrying the result"
        raise AlignerError(msg, endpoint=getattr(aligner, "endpoint", None))
    return result
