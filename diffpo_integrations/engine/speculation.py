"""Lossless draft-speculative decoding: greedy output, verified draft chunks, re-sync after edits.

The DiffPO fixed point equals greedy decoding on prompt + kept prefix (DESIGN.md section 1), so
the draft can only change *how fast* the answer is found. This module uses the draft as a
speculation source:

1. The prefill pass runs over the prompt plus the first draft chunk.
2. Each later pass feeds the last accepted token plus the next draft chunk; the longest
   prefix where the model's argmax equals the draft is kept, plus the model's own next token.
   Rejected positions are cropped from the KV cache.
3. After an edit, :class:`DraftCursor` re-synchronises with the draft by looking up the last
   generated tokens in it (the last token one position off, shorter n-grams near the
   expected place, 6 tokens anywhere), so a one-token substitution, insertion or deletion
   costs about one extra pass.
4. The chunk length follows a cost model: a pass over several tokens costs more than a
   one-token step (measured on a 2-core CPU: about 1.9x, plus 3.5 % per token), so the loop
   speculates only when the recent acceptance rate makes it pay and otherwise takes plain
   greedy steps. That keeps foreign drafts at greedy speed. After a re-sync that found no
   match (a guess), one greedy step usually shows where the draft resumes for less than a
   failed verification costs.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffpo_integrations.core.errors import ConfigurationError

from ._core import (
    DecodeResult,
    Emitter,
    LogprobCallback,
    TokenCallback,
    check_decode_args,
    model_device,
)
from .batching import BatchSession, open_session

__all__ = ["DraftCursor", "SpeculationConfig", "choose_chunk", "speculative"]


@dataclass(frozen=True)
class SpeculationConfig:
    """Cost model and acceptance estimator of :func:`speculative`.

    Costs are in units of one single-token forward pass with a KV cache.

    Attributes:
        verify_base_cost: Cost of a pass over two or more tokens. On CPU a multi-row matmul
            is much slower than a matrix-vector product: SmolLM2-135M on a 2-core CPU took
            1.7x to 2.0x a one-token step for 2 to 9 tokens.
        verify_token_cost: Extra cost per verified draft token (measured 0.035 to 0.05).
        initial_chunk: Draft tokens verified inside the prefill pass, where they cost only
            their marginal compute.
        max_chunk: Upper bound on the draft tokens verified in one pass.
        min_gain: Speculate only when the expected tokens per cost unit exceed greedy's by
            this factor.
        prior_acceptance: Acceptance rate assumed before any evidence.
        prior_weight: How many observations the prior is worth.
        acceptance_decay: Per-token decay of past draft hits and misses in the estimate.
        max_ngram: Longest generated suffix looked up in the draft when re-synchronising.
        resync_window: Reach of a re-sync match per n-gram token: an n-gram shorter than
            ``max_ngram`` counts within ``resync_window * (n - 1)`` positions of the expected
            place, a ``max_ngram``-gram anywhere.
        guess_accuracy: Prior probability that a re-sync without any match (the
            "substitution" guess) finds the right draft position.
    """

    verify_base_cost: float = 1.9
    verify_token_cost: float = 0.035
    initial_chunk: int = 32
    max_chunk: int = 256
    min_gain: float = 1.0
    prior_acceptance: float = 0.5
    prior_weight: float = 2.0
    acceptance_decay: float = 0.98
    max_ngram: int = 6
    resync_window: int = 2
    guess_accuracy: float = 0.5

    @classmethod
    def for_device(cls, device: torch.device | str) -> SpeculationConfig:
        """Defaults for a device type.

        Args:
            device: Where the model runs.

        Returns:
            The CPU defaults, or cheaper verification on accelerators, where a pass over a few
            dozen tokens costs about as much as a one-token step.
        """
        if _on_accelerator(device):
            return cls(verify_base_cost=1.05, verify_token_cost=0.004)
        return cls()

    @classmethod
    def for_batch(cls, device: torch.device | str) -> SpeculationConfig:
        """Defaults for a sequence that shares its passes with others (the server's batches).

        In a batch the pass runs anyway, so speculating adds no fixed cost; but every verified
        token is real compute shared by the whole batch (on CPU about a tenth of a pass per
        token with eight sequences), so chunks stay short unless the draft keeps being right.

        Args:
            device: Where the model runs.

        Returns:
            The batched cost model for that device type.
        """
        if _on_accelerator(device):
            return cls(verify_base_cost=1.0, verify_token_cost=0.01, initial_chunk=16)
        return cls(verify_base_cost=1.0, verify_token_cost=0.1, initial_chunk=4)


def _on_accelerator(device: torch.device | str) -> bool:
    # Where a pass over a few dozen tokens costs about as much as a one-token step.
    return torch.device(device).type in ("cuda", "xpu", "mps")


def _verify_cost(chunk: int, config: SpeculationConfig) -> float:
    return config.verify_base_cost + config.verify_token_cost * chunk if chunk else 1.0


def _best_chunk(acceptance: float, limit: int, config: SpeculationConfig) -> tuple[int, float]:
    # Expected tokens of a chunk of c: 1 + a + a^2 + ... + a^c (draft tokens accepted until the
    # first rejection, plus the model's own token).
    best, best_expected, best_rate = 0, 1.0, config.min_gain
    expected, p = 1.0, 1.0
    for c in range(1, limit + 1):
        p *= acceptance
        expected += p
        rate = expected / _verify_cost(c, config)
        if rate > best_rate:
            best, best_expected, best_rate = c, expected, rate
        elif p < 1e-3:
            # Further tokens add almost nothing but cost: the ratio only falls from here.
            break
    return best, best_expected


def choose_chunk(
    acceptance: float, limit: int, config: SpeculationConfig, *, guess_accuracy: float | None = None
) -> int:
    """Number of draft tokens to verify next; 0 means a plain greedy step.

    Models each draft token as accepted with probability ``acceptance`` until the first
    rejection, so a chunk of ``c`` yields ``1 + a + a^2 + ... + a^c`` tokens at cost
    ``verify_base_cost + c * verify_token_cost`` (a greedy step costs 1); the chunk with the
    best ratio wins when it beats greedy by ``min_gain``.

    When the cursor only guessed where the draft resumes, the guess is right with
    probability ``guess_accuracy``. Speculating on it is compared with one greedy step
    first, whose token shows where the draft resumes, then the same chunk: where
    verification is dear (CPU) the step usually wins, where it is cheap (GPU) the guess does.

    Args:
        acceptance: Estimated probability that the next draft token is accepted.
        limit: Largest chunk allowed (draft left, token budget).
        config: The cost model.
        guess_accuracy: ``None`` when the cursor's position is confirmed, else the
            probability that its guessed position is right.

    Returns:
        The chunk length.
    """
    chunk, expected = _best_chunk(acceptance, limit, config)
    if guess_accuracy is None or chunk == 0:
        return chunk
    p, cost = guess_accuracy, _verify_cost(chunk, config)
    # Guess now: right, the chunk's tokens; wrong, one token, then the chunk again.
    guess_rate = (p * expected + (1 - p) * (1 + expected)) / (cost + (1 - p) * cost)
    probe_rate = (1 + expected) / (1 + cost)
    return chunk if guess_rate > probe_rate else 0


class DraftCursor:
    """Where the generated text stands in the draft, and how often the draft has been right.

    ``position`` is the index of the draft token expected next. A generated token equal to it
    advances the cursor; any other token triggers a re-sync: the token found one position off
    (an insertion in the draft, or a deletion detected one step late); else the longest
    generated suffix (``max_ngram`` down to 2 tokens) found in the draft nearest to the
    expected place, within ``resync_window * (n - 1)`` positions for n-grams shorter than
    ``max_ngram``; else the guess "substitution" (skip one draft token), left unconfirmed
    until a generated token matches it. Once the draft is used up, the longest generated
    suffix is looked up again where draft tokens follow it, since a jump to a phrase that the
    draft repeats can leave the answer following the earlier copy.

    Args:
        draft: Draft token ids, aligned so that ``draft[0]`` follows the fixed prompt.
        config: Supplies the n-gram length and the acceptance estimator's prior and decay.
    """

    def __init__(self, draft: Sequence[int], config: SpeculationConfig) -> None:
        self.draft = [int(t) for t in draft]
        self.position = 0
        self.confirmed = True
        """False while the position is a guess that no generated token has confirmed yet."""
        self._decay = config.acceptance_decay
        self._prior = config.prior_acceptance
        self._prior_weight = config.prior_weight
        self._guess_prior = config.guess_accuracy
        # Decayed [hits, trials] after confirmed positions and after guessed ones.
        self._draft_counts = [0.0, 0.0]
        self._guess_counts = [0.0, 0.0]
        self._max_ngram = max(1, config.max_ngram)
        self._window = config.resync_window
        self._history: list[int] = []
        # n-gram -> end positions s (draft[s - n:s] == n-gram), ascending.
        self._ends: dict[tuple[int, ...], list[int]] = {}
        for n in range(2, self._max_ngram + 1):
            for s in range(n, len(self.draft) + 1):
                self._ends.setdefault(tuple(self.draft[s - n : s]), []).append(s)

    @property
    def acceptance(self) -> float:
        """Estimated probability that a draft token at a confirmed position is accepted.

        The mean of a Beta posterior over recent hits: hits and trials decay geometrically,
        so the estimate follows the draft's quality along the answer.
        """
        hits, trials = self._draft_counts
        return (hits + self._prior * self._prior_weight) / (trials + self._prior_weight)

    @property
    def guess_accuracy(self) -> float:
        """Estimated probability that a guessed position (re-sync without a match) is right."""
        hits, trials = self._guess_counts
        return (hits + self._guess_prior * self._prior_weight) / (trials + self._prior_weight)

    def candidates(self, n: int) -> list[int]:
        """The next ``n`` draft tokens from the cursor (fewer near the draft's end).

        Args:
            n: How many tokens to propose.

        Returns:
            Draft token ids.
        """
        if n <= 0:
            return []
        return self.draft[self.position : self.position + n]

    def observe(self, token: int) -> None:
        """Record one generated token and move the cursor.

        Args:
            token: The token the model produced.
        """
        self._history.append(token)
        if len(self._history) > self._max_ngram:
            del self._history[0]
        pos = self.position
        if pos >= len(self.draft):
            self._rejoin()
            return
        hit = self.draft[pos] == token
        # A token after a confirmed alignment measures the draft; one after a guess measures
        # the guess. Mixing them would count every wrong guess against the draft.
        counts = self._draft_counts if self.confirmed else self._guess_counts
        counts[0] = self._decay * counts[0] + hit
        counts[1] = self._decay * counts[1] + 1.0
        self.confirmed = hit
        self.position = pos + 1 if hit else self._resync(pos)

    def _nearest(self, ngram: tuple[int, ...], target: int) -> int | None:
        ends = self._ends.get(ngram)
        if not ends:
            return None
        i = bisect.bisect_left(ends, target)
        near = [ends[j] for j in (i - 1, i) if 0 <= j < len(ends)]
        return min(near, key=lambda s: (abs(s - target), -s))

    def _rejoin(self) -> None:
        # The draft is used up, perhaps because a re-sync jumped to a later copy of a phrase
        # the draft repeats while the answer follows the earlier one. Where the longest
        # generated suffix also occurs with draft tokens after it, resume there on trial.
        hist = self._history
        if len(hist) < self._max_ngram:
            return
        ends = [s for s in self._ends.get(tuple(hist), ()) if s < len(self.draft)]
        if ends:
            self.position, self.confirmed = ends[-1], False

    def _resync(self, expected: int) -> int:
        # `expected` is the draft index the token just generated was supposed to match, so a
        # perfect alignment resumes at expected + 1.
        target = expected + 1
        hist = self._history
        token = hist[-1]
        # A one-token edit: the token sits one further in the draft (an insertion there), or
        # one back (a deletion, seen one token late after a substitution guess).
        for index in (expected + 1, expected - 1):
            if 0 <= index < len(self.draft) and self.draft[index] == token:
                self.confirmed = True
                return index + 1
        for n in range(min(self._max_ngram, len(hist)), 1, -1):
            found = self._nearest(tuple(hist[-n:]), target)
            # Short n-grams of common tokens ("\n\n", ", the") recur all over a draft: trust a
            # bigram only near the expected place, longer ones farther, the longest anywhere.
            reach = self._window * (n - 1) if n < self._max_ngram else len(self.draft)
            if found is not None and abs(found - target) <= reach:
                self.confirmed = True
                return found
        # No evidence: guess a substitution and let the next token confirm it.
        return min(target, len(self.draft))


def _matching_prefix(preds: Sequence[int], cand: Sequence[int]) -> int:
    k = 0
    for pred, tok in zip(preds, cand, strict=False):
        if pred != tok:
            break
        k += 1
    return k


def _cut_after_stop(cand: list[int], stop: Collection[int]) -> list[int]:
    # Verifying past a stop token is wasted work: decoding ends there if it is accepted.
    for i, tok in enumerate(cand):
        if tok in stop:
            return cand[: i + 1]
    return cand


def speculative(
    model: Any,
    input_ids: Sequence[int],
    draft_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_token_ids: Collection[int],
    chunk_size: int | None = None,
    config: SpeculationConfig | None = None,
    on_token: TokenCallback | None = None,
    on_logprob: LogprobCallback | None = None,
) -> DecodeResult:
    """Greedy decoding sped up by verifying draft chunks; output identical to :func:`greedy`.

    Args:
        model: A causal LM (transformers ``PreTrainedModel``) in eval mode.
        input_ids: The fixed prompt (template plus kept draft prefix).
        draft_ids: The draft continuation; ``draft_ids[0]`` is the guess for the first
            generated token.
        max_new_tokens: Budget of generated tokens.
        stop_token_ids: Token ids that end decoding (kept in the output).
        chunk_size: Fixed number of draft tokens to verify per pass; ``None`` adapts it to
            the measured acceptance rate with ``config``'s cost model.
        config: Cost model and estimator; defaults to :meth:`SpeculationConfig.for_device`, or
            :meth:`SpeculationConfig.for_batch` inside a batch scheduler.
        on_token: Streaming hook called with each accepted token in order.
        on_logprob: Called with each accepted token's log-probability (from the verifying pass)
            just before ``on_token``.

    Returns:
        The generated tokens and counters; ``accepted_draft_tokens`` counts draft tokens
        accepted by verification.

    Raises:
        ValueError: On an empty prompt, a negative budget or a negative ``chunk_size``.
    """
    start = time.perf_counter()
    prompt = check_decode_args(input_ids, max_new_tokens)
    if chunk_size is not None and chunk_size < 0:
        msg = f"chunk_size must be >= 0 or None, got {chunk_size}"
        raise ConfigurationError(msg)
    emitter = Emitter(max_new_tokens, stop_token_ids, on_token, on_logprob)
    scores = emitter.wants_logprobs
    if emitter.done:
        return emitter.result(forward_passes=0, accepted=0, prefill_tokens=len(prompt), elapsed_s=0.0)
    accepted = 0
    feed = prompt
    first = True
    with open_session(model) as session, torch.inference_mode():
        if config is not None:
            cfg = config
        elif isinstance(session, BatchSession):
            cfg = SpeculationConfig.for_batch(session.device)
        else:
            cfg = SpeculationConfig.for_device(model_device(model))
        cursor = DraftCursor(draft_ids, cfg)
        while True:
            # The model's own token follows every chunk, so a chunk of remaining - 1 draft
            # tokens already fills the budget.
            limit = emitter.remaining - 1
            if chunk_size is not None:
                want = chunk_size
            elif first:
                want = cfg.initial_chunk
            else:
                guess = None if cursor.confirmed else cursor.guess_accuracy
                want = choose_chunk(cursor.acceptance, min(limit, cfg.max_chunk), cfg, guess_accuracy=guess)
            cand = _cut_after_stop(cursor.candidates(min(want, limit)), emitter.stop_token_ids)
            preds = session.feed(feed + cand, len(cand) + 1, logprobs=scores)
            k = _matching_prefix(preds, cand)
            session.rollback(len(cand) - k)
            finished = False
            for i, tok in enumerate(preds[: k + 1]):
                accepted += i < k  # the last one is the model's own token
                cursor.observe(tok)
                if emitter.push(tok, session.last_logprobs[i] if scores else None):
                    finished = True
                    break
            if finished:
                break
            feed = [preds[k]]
            first = False
    return emitter.result(
        forward_passes=session.forward_passes,
        accepted=accepted,
        prefill_tokens=len(prompt),
        elapsed_s=time.perf_counter() - start,
    )
