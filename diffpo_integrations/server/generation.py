"""One generation as a model-worker job: engine decoding plus token texts, stop sequences and log-probs.

Every route (TGI, OpenAI, DiffPO) describes its generation as a :class:`GenerationSpec` and runs
:func:`generation_job` on the worker; only the shape of the answer differs between routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffpo_integrations.server.runtime import IncrementalScorer, ModelRuntime, finite_logprob
from diffpo_integrations.server.worker import JobContext

if TYPE_CHECKING:
    from diffpo_integrations.engine.sampling import SamplingParams

__all__ = [
    "GeneratedToken",
    "GenerationResult",
    "GenerationSpec",
    "PrefillToken",
    "find_stop",
    "generation_job",
]


@dataclass
class GenerationSpec:
    """What to generate."""

    input_ids: list[int]
    max_new_tokens: int
    stop_sequences: list[str] = field(default_factory=list)
    """Stop once the generated text contains one of these (the token completing it is kept)."""
    draft_ids: list[int] | None = None
    """Speed hint for the engine (the rest of a DiffPO draft); never changes the tokens."""
    method: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    """Extra engine options (``block_size``, ``max_iter``)."""
    stream: bool = False
    """Emit one :class:`GeneratedToken` event per token."""
    token_logprobs: bool = False
    """Fill ``GeneratedToken.logprob``."""
    prefill_logprobs: bool = False
    """Fill :attr:`GenerationResult.prefill` (TGI's ``decoder_input_details``)."""
    top_n: int = 0
    """Fill ``GeneratedToken.top`` with the ``top_n`` likeliest tokens at each step (implies ``token_logprobs``)."""
    sampling: SamplingParams | None = None
    """Choose tokens with these settings (one token per pass); ``None``: the engine's greedy ``method``."""


@dataclass
class GeneratedToken:
    """One generated token, TGI's ``Token``; ``last`` marks the final one of the generation."""

    id: int
    text: str
    logprob: float | None
    special: bool
    last: bool = False
    top: list[GeneratedToken] = field(default_factory=list)
    """The likeliest tokens at this step, most likely first (TGI's ``top_tokens``)."""

    def tgi(self) -> dict[str, Any]:
        """TGI's JSON form."""
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


@dataclass
class PrefillToken:
    """One input token with its log-probability (``None`` for the first), TGI's ``PrefillToken``."""

    id: int
    text: str
    logprob: float | None

    def tgi(self) -> dict[str, Any]:
        """TGI's JSON form."""
        return {"id": self.id, "text": self.text, "logprob": self.logprob}


@dataclass
class GenerationResult:
    """A finished generation."""

    tokens: list[GeneratedToken]
    finish_reason: str
    """``"eos_token"``, ``"length"`` or ``"stop_sequence"`` (TGI's names)."""
    stop_sequence: str | None = None
    prefill: list[PrefillToken] | None = None
    forward_passes: int = 0
    accepted_draft_tokens: int = 0
    prefill_tokens: int = 0
    elapsed_s: float = 0.0
    seed: int | None = None
    """The sampling seed (TGI's ``details.seed``); ``None`` when decoding was greedy."""

    @property
    def token_ids(self) -> list[int]:
        """The generated ids, stop token included when produced."""
        return [t.id for t in self.tokens]


class _StopSequenceHit(Exception):
    def __init__(self, stop: str) -> None:
        super().__init__(stop)
        self.stop = stop


def find_stop(text: str, new_from: int, stops: Sequence[str]) -> str | None:
    """The stop sequence that ends earliest in ``text`` among those ending after ``new_from``.

    Checking only matches that end in the new text finds each stop once, even when it spans
    several tokens or lies inside one token.

    Example:
        >>> find_stop("Hello\\nUser:", 5, ["User:", "\\n"])
        '\\n'
    """
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        idx = text.find(stop, max(0, new_from - len(stop) + 1))
        if idx >= 0 and (best is None or idx + len(stop) < best[0]):
            best = (idx + len(stop), stop)
    return best[1] if best else None


def generation_job(runtime: ModelRuntime, spec: GenerationSpec) -> Callable[[JobContext], GenerationResult]:
    """The worker-thread function that runs ``spec``."""

    def run(ctx: JobContext) -> GenerationResult:
        ctx.check()
        start = time.perf_counter()
        texts = runtime.token_texts(spec.input_ids)
        wants_logprobs = spec.token_logprobs or spec.top_n > 0
        scores = spec.stream and wants_logprobs
        # The engine scores each streamed token in the pass that chose it (inside the batch). The
        # top-n alternatives, and a decoder that reports no scores (Jacobi), need a scorer of their
        # own: one extra step a token.
        reported: list[float] = []
        scorer: IncrementalScorer | None = (
            runtime.incremental_scorer(spec.input_ids) if scores and spec.top_n > 0 else None
        )
        eos = set(runtime.eos_token_ids)
        tokens: list[GeneratedToken] = []
        generated_text = ""

        def score(token_id: int) -> float | None:
            nonlocal scorer
            if not scores:
                return None
            if reported:
                return finite_logprob(reported.pop())
            if scorer is None:
                scorer = runtime.incremental_scorer(spec.input_ids)
            return scorer.score(token_id)

        def on_token(token_id: int) -> None:
            nonlocal generated_text
            ctx.check()
            last = token_id in eos or len(tokens) + 1 >= spec.max_new_tokens
            piece = texts.step(token_id, final=last)
            seen = len(generated_text)
            generated_text += piece
            stop = find_stop(generated_text, seen, spec.stop_sequences) if piece else None
            logprob = score(token_id)
            last = last or stop is not None
            token = GeneratedToken(token_id, piece, logprob, runtime.is_special(token_id), last)
            if scorer is not None and spec.top_n:
                token.top = [_top_token(runtime, tid, lp) for tid, lp in scorer.top(spec.top_n)]
            tokens.append(token)
            if spec.stream:
                ctx.emit(token)
            if stop is not None:
                raise _StopSequenceHit(stop)

        result = GenerationResult(tokens=tokens, finish_reason="length", prefill_tokens=len(spec.input_ids))
        if spec.sampling is not None and spec.sampling.do_sample:
            result.seed = spec.sampling.seed
        options = dict(spec.options)
        if scores and scorer is None:
            options["on_logprob"] = reported.append
        if spec.method == "jacobi":
            # A Jacobi block may take many passes before its tokens come out: check between passes.
            options["check"] = ctx.check
        try:
            outcome = runtime.generate(
                spec.input_ids,
                spec.draft_ids,
                method=spec.method,
                max_new_tokens=spec.max_new_tokens,
                on_token=on_token,
                sampling=spec.sampling,
                **options,
            )
        except _StopSequenceHit as hit:
            result.finish_reason = "stop_sequence"
            result.stop_sequence = hit.stop
        else:
            result.finish_reason = outcome.finish_reason
            result.forward_passes = outcome.forward_passes
            result.accepted_draft_tokens = outcome.accepted_draft_tokens
            result.prefill_tokens = outcome.prefill_tokens
            if outcome.tokens != result.token_ids:
                # The engine's list is authoritative; on_token mirrors it unless an engine skips calls.
                msg = f"engine reported {len(outcome.tokens)} tokens but streamed {len(tokens)}"
                raise RuntimeError(msg)
        if tokens:
            tokens[-1].last = True
        _add_logprobs(runtime, spec, result)
        result.elapsed_s = time.perf_counter() - start
        return result

    return run


def _top_token(runtime: ModelRuntime, token_id: int, logprob: float) -> GeneratedToken:
    return GeneratedToken(
        token_id, runtime.decode([token_id], skip_special_tokens=False), logprob, runtime.is_special(token_id)
    )


def _add_logprobs(runtime: ModelRuntime, spec: GenerationSpec, result: GenerationResult) -> None:
    need_tokens = (spec.token_logprobs or spec.top_n > 0) and not spec.stream and result.tokens
    if not need_tokens and not spec.prefill_logprobs:
        return
    ids = spec.input_ids + result.token_ids
    start = 0 if spec.prefill_logprobs else len(spec.input_ids)
    top_n = spec.top_n if need_tokens else 0
    values, tops = runtime.scores(ids, start, top_n)
    if spec.prefill_logprobs:
        prompt_values = values[: len(spec.input_ids)]
        result.prefill = [
            PrefillToken(tid, runtime.decode([tid], skip_special_tokens=False), lp)
            for tid, lp in zip(spec.input_ids, prompt_values, strict=True)
        ]
    if need_tokens:
        first = len(spec.input_ids) - start
        for i, (token, lp) in enumerate(zip(result.tokens, values[first:], strict=True)):
            token.logprob = lp
            if top_n:
                token.top = [_top_token(runtime, tid, value) for tid, value in tops[first + i]]
