"""One DiffPO alignment on an in-process model: prompt building, decoding, the answer.

This is the single implementation behind :class:`~diffpo_integrations.backends.local.LocalAligner`
and the embedded server's ``POST /diffpo/align`` route, so both give the same answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from diffpo_integrations.core.aligner import AnswerStream
from diffpo_integrations.core.errors import ConfigurationError, InputError
from diffpo_integrations.core.prompt import AlignPrompt, assemble_answer, build_prompt, hf_token_spans, render_texts
from diffpo_integrations.core.templates import ChatTemplate, TokenizerTemplate, get_template
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, DecodeMethod, PromptMode

__all__ = ["DecodeMethod", "EngineAligner"]


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

    def align(self, request: AlignRequest, on_token: Callable[[int], None] | None = None) -> AlignResult:
        """Align one resolved request (``keep_prefix_tokens`` and ``max_new_tokens`` set)."""
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
            kwargs.update(block_size=self.block_size, max_iter=self.max_iter)
        if on_token is not None and self.method != "jacobi":
            kwargs["on_token"] = on_token
        # Inside a batch scheduler (the server) concurrent decodes are what it batches; alone, one
        # decode at a time is fastest.
        guard = contextlib.nullcontext() if active_scheduler(self.loaded.model) else self._lock
        with guard:
            out = decode(self.loaded.model, prompt.ids, prompt.draft_ids, method=self.method, **kwargs)
        tokens = [t for t in out.tokens if t not in stops]
        generated = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        return AlignResult(
            text=assemble_answer(prompt.kept_text, generated, prompt.stop),
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
        tokenizer = self.loaded.tokenizer
        stops = self.stop_token_ids()
        generated: list[int] = []
        emitted = ""
        abandoned = threading.Event()

        def on_token(token: int) -> None:
            nonlocal emitted
            if abandoned.is_set() or (cancelled is not None and cancelled()):
                raise _Cancelled
            if token in stops:
                return
            generated.append(token)
            # Decode the whole continuation each time: a token can end halfway through a character.
            text = tokenizer.decode(generated, skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                pieces.put(("text", text[len(emitted) :]))
                emitted = text

        def work() -> None:
            try:
                pieces.put(("result", self.align(request, on_token=on_token)))
            except BaseException as exc:
                pieces.put(("error", exc))

        prompt = self.prompt(request)
        answer = AnswerStream(stop=prompt.stop)
        thread = threading.Thread(target=work, name="diffpo-align", daemon=True)
        thread.start()
        first = answer.feed(prompt.kept_text)
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
                    # Jacobi cannot stream per token: emit what the result adds.
                    rest = value.text[len(answer.text) :]
                    yield AlignChunk(text=rest, result=value)
                    return
        finally:
            # The consumer may stop reading early (a closed stream): stop decoding for it.
            abandoned.set()


class _Cancelled(Exception):
    """Raised inside the decode loop to stop a generation nobody is waiting for."""
