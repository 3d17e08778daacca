"""Sampled (and penalised greedy) decoding, one token per pass, alone or inside the continuous batch.

TGI's ``NextTokenChooser`` order: repetition penalty, frequency and presence penalties, then the
warpers (temperature, top-k, top-p, typical-p), then a draw (``do_sample``) or the argmax.
The warpers and the repetition penalty are transformers' own logits processors. Each
generation draws from its own ``torch.Generator`` seeded with :attr:`SamplingParams.seed`, so
a seed gives the same tokens whether the request runs alone or shares its passes with others
(up to the float summation order of a packed pass, as for greedy decoding).

DiffPO alignment itself is always greedy (see DESIGN.md): only the server's generation routes
sample, and only when asked.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._core import DecodeResult, LogprobCallback, TokenCallback
from .decoding import stepwise

__all__ = ["SamplingParams", "TokenChooser", "sample"]


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each next token (TGI's ``parameters`` / OpenAI's sampling fields).

    Attributes:
        do_sample: Draw from the distribution; ``False`` takes the argmax after the penalties.
        temperature: Divides the logits (``1.0``: unchanged).
        top_k: Keep the ``top_k`` most likely tokens.
        top_p: Keep the smallest set of tokens whose probability reaches ``top_p``.
        typical_p: Typical decoding mass.
        repetition_penalty: HF/TGI repetition penalty over prompt and generated tokens (``1.0``: none).
        frequency_penalty: Subtracted once per earlier occurrence of a token in the generated text.
        presence_penalty: Subtracted once from every token already generated.
        seed: Seed of this generation's random generator.
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            (self.temperature <= 0, f"temperature must be > 0, got {self.temperature}"),
            (self.top_k is not None and self.top_k < 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.top_p is not None and not 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                self.typical_p is not None and not 0 < self.typical_p <= 1,
                f"typical_p must be in (0, 1], got {self.typical_p}",
            ),
            (
                self.repetition_penalty is not None and self.repetition_penalty <= 0,
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
            ),
        ]
        for failed, msg in problems:
            if failed:
                raise ValueError(msg)


class TokenChooser:
    """Chooses each next token of one generation from its logits.

    Args:
        params: The sampling settings.
        prompt_ids: The prompt (the repetition penalty covers it, as in TGI and transformers).
        device: Where the generator lives (the model's device).
    """

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], device: Any) -> None:
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
            TypicalLogitsWarper,
        )

        self.params = params
        self.history = [int(t) for t in prompt_ids]
        self._generated: dict[int, int] = {}
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(params.seed)
        processors: list[Any] = []
        if params.repetition_penalty not in (None, 1.0):
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        self._penalties = LogitsProcessorList(processors)
        warpers: list[Any] = []
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k is not None:
            warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p is not None and params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        if params.typical_p is not None and params.typical_p < 1.0:
            warpers.append(TypicalLogitsWarper(params.typical_p))
        self._warpers = LogitsProcessorList(warpers)

    def _draw(self, probs: torch.Tensor) -> int:
        # Inverse-CDF draw: the same distribution as torch.multinomial at a fifteenth of its CPU cost
        # over a 50k vocabulary. ``right=True`` never lands on a zero-probability token.
        cdf = probs.double().cumsum(-1)
        u = torch.rand(1, generator=self._generator, dtype=torch.float64, device=probs.device) * cdf[-1]
        return min(int(torch.searchsorted(cdf, u, right=True)[0]), probs.numel() - 1)

    def __call__(self, logits: torch.Tensor) -> list[int]:
        """The next token after the last of ``logits`` (``[positions, vocab]``), recorded in the history."""
        scores = logits[-1:].float()
        history: Any = torch.tensor([self.history], dtype=torch.long, device=scores.device)
        scores = self._penalties(history, scores)
        p = self.params
        if self._generated and (p.frequency_penalty or p.presence_penalty):
            ids = torch.tensor(list(self._generated), dtype=torch.long, device=scores.device)
            counts = torch.tensor(list(self._generated.values()), dtype=scores.dtype, device=scores.device)
            scores[0, ids] -= p.frequency_penalty * counts + p.presence_penalty
        if p.do_sample:
            warped = self._warpers(history, scores)
            if torch.isposinf(warped).any():
                # A temperature so small that the logits overflow: its limit, the argmax.
                token = int(scores[0].argmax())
            else:
                token = self._draw(torch.softmax(warped, dim=-1)[0])
        else:
            token = int(scores[0].argmax())
        self.history.append(token)
        self._generated[token] = self._generated.get(token, 0) + 1
        return [token]


def sample(
    model: Any,
    input_ids: Sequence[int],
    *,
    params: SamplingParams,
    max_new_tokens: int,
    stop_token_ids: Collection[int],
    on_token: TokenCallback | None = None,
    on_logprob: LogprobCallback | None = None,
) -> DecodeResult:
    """Decode one token per pass, each chosen by a :class:`TokenChooser` (batched like :func:`greedy`).

    Args:
        model: A causal LM in eval mode.
        input_ids: The prompt.
        params: The sampling settings (their ``seed`` makes the run reproducible).
        max_new_tokens: Budget of generated tokens.
        stop_token_ids: Token ids that end decoding (kept in the output).
        on_token: Streaming hook.
        on_logprob: Called with each chosen token's log-probability (the model's own, before the warpers).

    Returns:
        The generated tokens and counters.

    Example:
        >>> from diffpo_integrations.engine.testing import tiny_random_model
        >>> model = tiny_random_model("llama")
        >>> params = SamplingParams(temperature=0.8, seed=7)
        >>> a = sample(model, [1, 2, 3], params=params, max_new_tokens=5, stop_token_ids=[]).tokens
        >>> a == sample(model, [1, 2, 3], params=params, max_new_tokens=5, stop_token_ids=[]).tokens
        True
    """
    return stepwise(
        model,
        input_ids,
        max_new_tokens=max_new_tokens,
        stop_token_ids=stop_token_ids,
        on_token=on_token,
        on_logprob=on_logprob,
        chooser=lambda prompt, device: TokenChooser(params, prompt, device),
    )
