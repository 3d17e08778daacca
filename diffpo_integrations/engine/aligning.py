"""One DiffPO alignment on an in-process model: prompt building, decoding, the answer.

This is the single implementation behind :class:`~diffpo_integrations.backends.local.LocalAligner`
and the embedded server's ``POST /diffpo/align`` route, so both give the same answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffpo_integrations.core.aligner import AnswerStream
from diffpo_integrations.core.errors import ConfigurationError, InputError
from diffpo_integrations.core.prompt import AlignPrompt, assemble_answer, build_prompt, hf_token_spans, render_texts
from diffpo_integrations.core.templates import ChatTemplate, TokenizerTemplate, get_template
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, DecodeMethod, PromptMode

__all__ = ["AnswerDecoder", "DecodeMethod", "EngineAligner"]


class AnswerDecoder:
    """The answer text as the official script decodes it: kept draft tokens and generated tokens together.

    Decoding the kept prefix and the continuation apart breaks a character whose bytes the cut
    splits (a CJK character or an emoji over two tokens gives ``"北\ufffd京"``); decoding them as
    one sequence gives the official ``"北京"``. Fed token by token, :meth:`push` returns the text
    that became final: a trailing incomplete character is held back until its last byte arrives.

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> decoder = AnswerDecoder(tokenizer, kept_ids=[30158], stops={2})  # doctest: +SKIP
        >>> decoder.stable(), decoder.push(241)  # doctest: +SKIP
        ('', '北')
    """

    def __init__(self, tokenizer: Any, kept_ids: list[int], stops: set[int] | frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(kept_ids)
        self._stops = stops
        self._emitted = ""

    @property
    def text(self) -> str:
        """Everything decoded so far (special tokens skipped), an incomplete last character included."""
        return str(self._tokenizer.decode(self._ids, skip_special_tokens=True))

    def stable(self) -> str:
        """The text that became final since the last call."""
        text = self.text.rstrip("\ufffd")
        if not text.startswith(self._emitted):  # pragma: no cover - decoding more tokens only extends the text
            return ""
        piece, self._emitted = text[len(self._emitted) :], text
        return piece

    def push(self, token: int) -> str:
        """Add one generated token (stop tokens are ignored); return the text that became final."""
        if token in self._stops:
            return ""
        self._ids.append(token)
        return self.stable()

    def extend(self, tokens: Sequence[int]) -> None:
        """Add generated tokens without decoding yet (stop tokens are ignored)."""
        self._ids.extend(t for t in tokens if t not in self._stops)


@dataclass
class EngineAligner:
    """Aligns requests on one loaded model (a ``LoadedModel`` from :func:`load_model`).

    Calls are serialised by a lock: one model instance runs one decode at a time, and
    interleaving two would only slow both. Inside a
    :class:`~diffpo_integrations.engine.batching.BatchScheduler` (the embedded server) concurrent
    calls run together instead, sharing every forward pass.
    """

    loaded: Any
    template: ChatTemplate | None = None
    prompt_mode: PromptMode = "official"
    method: DecodeMethod = "auto"
    block_size: int = 32
    max_iter: int = 1000
    endpoint: str = "local"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.template is None:
            self.template = TokenizerTemplate(self.loaded.tokenizer, name=str(self.loaded.model_id))

    @property
    def chat_template(self) -> ChatTemplate:
        """The template in use (the model's own unless one was given)."""
        assert self.template is not None
        return self.template

    def with_options(
        self,
        *,
        template: str | ChatTemplate | None = None,
        prompt_mode: PromptMode | None = None,
        method: DecodeMethod | None = None,
        block_size: int | None = None,
        max_iter: int | None = None,
    ) -> EngineAligner:
        """A view with other per-request options that shares the model and its lock."""
        return EngineAligner(
            loaded=self.loaded,
            template=get_template(template) if template is not None else self.template,
            prompt_mode=prompt_mode or self.prompt_mode,
            method=method or self.method,
            block_size=block_size or self.block_size,
            max_iter=max_iter or self.max_iter,
            endpoint=self.endpoint,
            _lock=self._lock,
        )

    def prompt(self, request: AlignRequest) -> AlignPrompt:
        """The exact fixed prompt for ``request`` (token ids, kept prefix, draft hint)."""
        template = self.chat_template
        texts = render_texts(template, request.messages, request.draft, mode=self.prompt_mode)
        spans = hf_token_spans(self.loaded.tokenizer, texts.full)
        assert request.keep_prefix_tokens is not None
        return build_prompt(
            texts,
            spans,
            keep_prefix_tokens=request.keep_prefix_tokens,
            mode=self.prompt_mode,
            stop=template.end_of_turn,
        )

    def answer_decoder(self, prompt: AlignPrompt, stops: set[int] | None = None) -> AnswerDecoder:
        """An :class:`AnswerDecoder` over the kept tokens of ``prompt`` (``ids[L:]``)."""
        kept = prompt.ids[prompt.prompt_tokens :]
        return AnswerDecoder(self.loaded.tokenizer, kept, stops if stops is not None else self.stop_token_ids())

    def stop_token_ids(self) -> set[int]:
        """The end-of-turn token of the template, plus the model's EOS tokens."""
        tokenizer = self.loaded.tokenizer
        ids = set(self.loaded.eos_token_ids)
        eot = tokenizer.convert_tokens_to_ids(self.chat_template.end_of_turn)
        if isinstance(eot, int) and eot != tokenizer.unk_token_id:
            ids.add(eot)
        if not ids:
            msg = f"no end-of-turn token id for {self.chat_template.end_of_turn!r}; the aligner could never stop"
            raise ConfigurationError(msg)
        return ids

    def align(
        self,
        request: AlignRequest,
        on_token: Callable[[int], None] | None = None,
        check: Callable[[], None] | None = None,
    ) -> AlignResult:
        """Align one resolved request (``keep_prefix_tokens`` and ``max_new_tokens`` set).

        Args:
            request: the request.
            on_token: called with each generated token (per block for Jacobi); may raise to stop.
            check: called before every Jacobi pass; may raise to stop (a cancelled request).
        """
        from diffpo_integrations.engine.batching import active_scheduler
        from diffpo_integrations.engine.decoding import decode

        prompt = self.prompt(request)
        stops = self.stop_token_ids()
        max_len = getattr(self.loaded.model.config, "max_position_embeddings", None)
        assert request.max_new_tokens is not None
        if max_len is not None and len(prompt.ids) + request.max_new_tokens > max_len:
            msg = (
                f"the prompt has {len(prompt.ids)} tokens and max_new_tokens is {request.max_new_tokens}, "
                f"over the model's {max_len}-token context: shorten the conversation or lower max_new_tokens"
            )
            raise InputError(msg)
        kwargs: dict[str, Any] = {"max_new_tokens": request.max_new_tokens, "stop_token_ids": stops}
        if self.method == "jacobi":
            kwargs.update(block_size=self.block_size, max_iter=self.max_iter, check=check)
        if on_token is not None:
            kwargs["on_token"] = on_token
        # Inside a batch scheduler (the server) concurrent decodes are what it batches; alone, one
        # decode at a time is fastest.
        guard = contextlib.nullcontext() if active_scheduler(self.loaded.model) else self._lock
        with guard:
            out = decode(self.loaded.model, prompt.ids, prompt.draft_ids, method=self.method, **kwargs)
        decoder = self.answer_decoder(prompt, stops)
        decoder.extend(out.tokens)
        return AlignResult(
            text=assemble_answer("", decoder.text, prompt.stop),
            draft=request.draft,
            kept_prefix=prompt.kept_text.strip(),
            kept_prefix_tokens=prompt.kept_draft_tokens,
            generated_tokens=len(out.tokens),
            finish_reason=out.finish_reason,
            endpoint=self.endpoint,
            details={
                "prompt_tokens": prompt.prompt_tokens,
                "kept_tokens": prompt.kept_tokens,
                "token_ids": list(out.tokens),
                "forward_passes": out.forward_passes,
                "accepted_draft_tokens": out.accepted_draft_tokens,
                "method": self.method,
                "elapsed_s": out.elapsed_s,
            },
        )

    def stream(self, request: AlignRequest, cancelled: Callable[[], bool] | None = None) -> Iterator[AlignChunk]:
        """Align in a worker thread and yield answer pieces as tokens arrive; the last chunk has the result.

        ``cancelled`` is polled at every token; when it returns true the decode stops.
        """
        import queue

        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()
        prompt = self.prompt(request)
        decoder = self.answer_decoder(prompt)
        abandoned = threading.Event()

        def check() -> None:
            if abandoned.is_set() or (cancelled is not None and cancelled()):
                raise _Cancelled

        def on_token(token: int) -> None:
            check()
            piece = decoder.push(token)
            if piece:
                pieces.put(("text", piece))

        def work() -> None:
            try:
                pieces.put(("result", self.align(request, on_token=on_token, check=check)))
            except BaseException as exc:
                pieces.put(("error", exc))

        answer = AnswerStream(stop=prompt.stop)
        first = answer.feed(decoder.stable())  # before the decode thread starts feeding the decoder
        thread = threading.Thread(target=work, name="diffpo-align", daemon=True)
        thread.start()
        if first:
            yield AlignChunk(text=first)
        try:
            while True:
                kind, value = pieces.get()
                if kind == "text":
                    piece = answer.feed(value)
                    if piece:
                        yield AlignChunk(text=piece)
                elif kind == "error":
                    if isinstance(value, _Cancelled):
                        return
                    raise value
                else:
                    # Held-back whitespace (and anything a decoder holds back) is in the result.
                    rest = value.text[len(answer.text) :]
                    yield AlignChunk(text=rest, result=value)
                    return
        finally:
            # The consumer may stop reading early (a closed stream): stop decoding for it.
            abandoned.set()


class _Cancelled(Exception):
    """Raised inside the decode loop to stop a generation nobody is waiting for."""
