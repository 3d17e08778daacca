"""The :class:`Aligner` protocol and :class:`BaseAligner`, the shared front of every backend.

A backend implements four private methods over a fully resolved :class:`AlignRequest`
(``_align``, ``_aalign``, ``_stream``, ``_astream``); :class:`BaseAligner` gives the public
``align(messages, draft)`` family, option resolution and timing, identically for all backends.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.core.prompt import paper_prefix_tokens
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, Message, PromptMode, coerce_messages

__all__ = [
    "DEFAULT_KEEP_PREFIX_TOKENS",
    "DEFAULT_MAX_NEW_TOKENS",
    "Aligner",
    "AnswerStream",
    "BaseAligner",
    "MessagesLike",
    "check_aligner",
]

DEFAULT_KEEP_PREFIX_TOKENS = 6
"""The mean of the official script's uniform 0..12 draw, used when no draw is asked for."""
DEFAULT_MAX_NEW_TOKENS = 256
"""The official script's default."""

MessagesLike = Sequence[Message | Mapping[str, Any] | tuple[str, str]]


@runtime_checkable
class Aligner(Protocol):
    """Anything that aligns a draft answer for a conversation."""

    def align(self, messages: MessagesLike, draft: str, **options: Any) -> AlignResult:
        """Align ``draft``, the answer to the last user turn of ``messages``."""
        ...

    async def aalign(self, messages: MessagesLike, draft: str, **options: Any) -> AlignResult:
        """Async :meth:`align`."""
        ...

    def stream(self, messages: MessagesLike, draft: str, **options: Any) -> Iterator[AlignChunk]:
        """Yield the aligned answer in pieces; the last chunk carries the :class:`AlignResult`."""
        ...

    def astream(self, messages: MessagesLike, draft: str, **options: Any) -> AsyncIterator[AlignChunk]:
        """Async :meth:`stream`."""
        ...


def check_aligner(value: object) -> Aligner | None:
    """``value`` if it is an aligner (or ``None``: the component builds its default one).

    Every integration checks its ``aligner=`` argument here, so a mistake reads the same everywhere.

    Raises:
        ConfigurationError: ``value`` is a URL string or another object that is no aligner.
    """
    if value is None or isinstance(value, Aligner):
        return value
    if isinstance(value, str):
        msg = (
            f"aligner={value!r} is a URL, not an aligner: pass aligner=TGIAligner({value!r}) "
            "(from diffpo_integrations.backends import TGIAligner), or set $DIFFPO_ALIGNER_URL and leave aligner out"
        )
        raise ConfigurationError(msg)
    msg = f"aligner must implement align/aalign/stream/astream (an Aligner), got {type(value).__name__}"
    raise ConfigurationError(msg)


class BaseAligner(ABC):
    """Shared options and public methods of every aligner.

    Args:
        template: the aligner's chat template: ``"gemma"`` (DiffPO-2B/9B), ``"llama3"`` (DiffPO-8B),
            ``"chatml"``, ``"smollm2"``, or a tokenizer path. ``None`` lets a backend use its model's own.
        keep_prefix_tokens: draft tokens kept verbatim (``r`` in the paper's inference).
        max_new_tokens: tokens the aligner may add after the kept prefix.
        prompt_mode: ``"official"`` (the official script's exact token sequence) or ``"clean"``.
        prefix_sampling: ``"fixed"`` uses ``keep_prefix_tokens``; ``"paper"`` draws ``r`` from 0..12,
            seeded by ``seed`` and the request, as the official script does.
        seed: seed of the ``paper`` draw.
    """

    endpoint: str = "local"

    def __init__(
        self,
        *,
        template: str | Any | None = None,
        keep_prefix_tokens: int = DEFAULT_KEEP_PREFIX_TOKENS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt_mode: PromptMode = "official",
        prefix_sampling: Literal["fixed", "paper"] = "fixed",
        seed: int = 0,
    ) -> None:
        if keep_prefix_tokens < 0:
            msg = f"keep_prefix_tokens must be >= 0, got {keep_prefix_tokens}"
            raise ConfigurationError(msg)
        if max_new_tokens < 1:
            msg = f"max_new_tokens must be >= 1, got {max_new_tokens}"
            raise ConfigurationError(msg)
        if prompt_mode not in ("official", "clean"):
            msg = f"prompt_mode must be 'official' or 'clean', got {prompt_mode!r}"
            raise ConfigurationError(msg)
        if prefix_sampling not in ("fixed", "paper"):
            msg = f"prefix_sampling must be 'fixed' or 'paper', got {prefix_sampling!r}"
            raise ConfigurationError(msg)
        self.template = template
        self.keep_prefix_tokens = keep_prefix_tokens
        self.max_new_tokens = max_new_tokens
        self.prompt_mode: PromptMode = prompt_mode
        self.prefix_sampling = prefix_sampling
        self.seed = seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint!r}, template={self.template!r})"

    # -- public API ---------------------------------------------------------------------------

    def request(
        self,
        messages: MessagesLike | AlignRequest,
        draft: str | None = None,
        *,
        keep_prefix_tokens: int | None = None,
        max_new_tokens: int | None = None,
    ) -> AlignRequest:
        """Validate a call and fill every option from this aligner's settings.

        Raises:
            InputError: the conversation or the draft is invalid.
        """
        if isinstance(messages, AlignRequest):
            req = messages
        else:
            req = AlignRequest(messages=coerce_messages(messages), draft=draft if draft is not None else "")
        r = keep_prefix_tokens if keep_prefix_tokens is not None else req.keep_prefix_tokens
        if r is None:
            if self.prefix_sampling == "paper":
                r = paper_prefix_tokens(req.messages, req.draft, self.seed)
            else:
                r = self.keep_prefix_tokens
        n = max_new_tokens if max_new_tokens is not None else req.max_new_tokens
        return AlignRequest(
            messages=req.messages,
            draft=req.draft,
            keep_prefix_tokens=r,
            max_new_tokens=n if n is not None else self.max_new_tokens,
        )

    def align(self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any) -> AlignResult:
        """Align ``draft`` for ``messages`` and return the :class:`AlignResult`.

        Raises:
            InputError: invalid conversation, draft or option.
            AlignerError: the aligner failed (a typed subclass says how).
        """
        req = self.request(messages, draft, **options)
        start = time.perf_counter()
        result = self._align(req)
        return result.model_copy(update={"latency_s": time.perf_counter() - start})

    async def aalign(
        self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any
    ) -> AlignResult:
        """Async :meth:`align`."""
        req = self.request(messages, draft, **options)
        start = time.perf_counter()
        result = await self._aalign(req)
        return result.model_copy(update={"latency_s": time.perf_counter() - start})

    def stream(
        self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any
    ) -> Iterator[AlignChunk]:
        """Yield :class:`AlignChunk` pieces of the aligned answer; the last one holds the result."""
        req = self.request(messages, draft, **options)
        start = time.perf_counter()
        for chunk in self._stream(req):
            yield _stamp(chunk, start)

    async def astream(
        self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any
    ) -> AsyncIterator[AlignChunk]:
        """Async :meth:`stream`."""
        req = self.request(messages, draft, **options)
        start = time.perf_counter()
        async for chunk in self._astream(req):
            yield _stamp(chunk, start)

    # -- backend hooks ------------------------------------------------------------------------

    @abstractmethod
    def _align(self, request: AlignRequest) -> AlignResult: ...

    @abstractmethod
    async def _aalign(self, request: AlignRequest) -> AlignResult: ...

    @abstractmethod
    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]: ...

    @abstractmethod
    def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]: ...


def _stamp(chunk: AlignChunk, start: float) -> AlignChunk:
    if chunk.result is None:
        return chunk
    result = chunk.result.model_copy(update={"latency_s": time.perf_counter() - start})
    return AlignChunk(text=chunk.text, result=result)


class AnswerStream:
    """Turns streamed pieces into pieces of the stripped answer, as :func:`assemble_answer` would.

    The official answer is ``(kept + generated).strip()``: leading whitespace is dropped, trailing
    whitespace is held back until more text shows it was inside the answer, and the end-of-turn
    text is never emitted.

    Example:
        >>> s = AnswerStream(stop="<|im_end|>")
        >>> [s.feed(t) for t in ["\\n", "Hi", " ", "there", "\\n", "<|im_end|>"]] + [s.text]
        ['', 'Hi', '', ' there', '', '', 'Hi there']
    """

    def __init__(self, stop: str = "") -> None:
        self.stop = stop
        self._started = False
        self._held = ""
        self.text = ""

    def feed(self, piece: str) -> str:
        """Add one piece; return the text that can be emitted now."""
        if self.stop and piece == self.stop:
            return ""
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self._started = True
        body = (self._held + piece).rstrip()
        self._held = (self._held + piece)[len(body) :]
        self.text += body
        return body

    def feed_all(self, pieces: Iterable[str]) -> str:
        """Feed several pieces; return what can be emitted."""
        return "".join(self.feed(p) for p in pieces)
