"""Shared pieces of the decoding loops: the result type, token emission and KV-cache passes.

Everything here works on one sequence (batch size 1) and on token ids; tokenizers and chat
templates belong to the callers.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffpo_integrations.core.errors import InputError
from diffpo_integrations.core.types import DecodeFinishReason

__all__ = [
    "DecodeResult",
    "DecodeFinishReason",
    "TokenCallback",
    "argmax_ids",
    "chosen_logprobs",
    "cache_keyword",
    "check_decode_args",
    "Chooser",
    "Emitter",
    "KVSession",
    "full_forward_argmax",
    "model_device",
    "model_lock",
    "takes_logits_to_keep",
]

"""Why decoding ended: a stop token was produced, or ``max_new_tokens`` was reached."""

TokenCallback = Callable[[int], None]
"""Streaming hook: called with each newly accepted token id, in order."""
LogprobCallback = Callable[[float], None]
"""Scoring hook: called with each accepted token's log-probability, just before ``on_token``."""

Chooser = Callable[[torch.Tensor], list[int]]
"""Picks tokens from ``[positions, vocab]`` logits (sampling); the passes default to the argmax."""


@dataclass(frozen=True)
class DecodeResult:
    """What a decoding function produced and what it cost.

    Attributes:
        tokens: Generated token ids after the fixed prompt, including the stop token when one
            was produced.
        finish_reason: ``"eos_token"`` when a stop token ended decoding, else ``"length"``.
        forward_passes: Number of model forward calls.
        accepted_draft_tokens: Draft tokens the output kept (speculative: tokens accepted by
            verification; Jacobi: output positions equal to the draft token there; greedy: 0).
        prefill_tokens: Length of the fixed prompt.
        elapsed_s: Wall time of the call in seconds.
    """

    tokens: list[int]
    finish_reason: DecodeFinishReason
    forward_passes: int
    accepted_draft_tokens: int
    prefill_tokens: int
    elapsed_s: float


def check_decode_args(input_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Validate the arguments every decoding function shares.

    Args:
        input_ids: The fixed prompt.
        max_new_tokens: Budget of generated tokens.

    Returns:
        The prompt as a list of ints.

    Raises:
        ValueError: If the prompt is empty or the budget is negative.
    """
    prompt = [int(t) for t in input_ids]
    if not prompt:
        msg = "input_ids must hold at least one token (the model needs a position to predict from)"
        raise InputError(msg)
    if max_new_tokens < 0:
        msg = f"max_new_tokens must be >= 0, got {max_new_tokens}"
        raise InputError(msg)
    return prompt


class Emitter:
    """Collects generated tokens and applies the stop rules shared by every method.

    Decoding ends after the first stop token (kept in the output) or once ``max_new_tokens``
    tokens exist, whichever comes first, so all methods truncate identically.

    Args:
        max_new_tokens: Budget of generated tokens.
        stop_token_ids: Token ids that end decoding.
        on_token: Optional streaming hook called with each token as it is accepted.
        on_logprob: Optional hook called with each token's log-probability before ``on_token``;
            the decoding loops then ask their passes for it (:attr:`wants_logprobs`).
    """

    def __init__(
        self,
        max_new_tokens: int,
        stop_token_ids: Collection[int],
        on_token: TokenCallback | None = None,
        on_logprob: LogprobCallback | None = None,
    ) -> None:
        self.tokens: list[int] = []
        self.max_new_tokens = max_new_tokens
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.on_token = on_token
        self.on_logprob = on_logprob
        # A zero budget is finished before any pass runs.
        self.finish_reason: DecodeFinishReason | None = "length" if max_new_tokens == 0 else None

    @property
    def done(self) -> bool:
        """Whether a stop rule has fired."""
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        """Tokens still allowed by the budget."""
        return self.max_new_tokens - len(self.tokens)

    @property
    def wants_logprobs(self) -> bool:
        """Whether the loop should score the tokens it pushes (someone listens to ``on_logprob``)."""
        return self.on_logprob is not None

    def push(self, token: int, logprob: float | None = None) -> bool:
        """Append one token.

        Args:
            token: The token id.
            logprob: Its log-probability, when the pass that chose it was asked for it.

        Returns:
            True when decoding must stop after this token.
        """
        self.tokens.append(token)
        if self.on_logprob is not None and logprob is not None:
            self.on_logprob(logprob)
        if self.on_token is not None:
            self.on_token(token)
        if token in self.stop_token_ids:
            self.finish_reason = "eos_token"
        elif len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None

    def result(self, *, forward_passes: int, accepted: int, prefill_tokens: int, elapsed_s: float) -> DecodeResult:
        """Freeze the collected tokens into a :class:`DecodeResult`.

        Args:
            forward_passes: Model calls made.
            accepted: Draft tokens kept.
            prefill_tokens: Length of the fixed prompt.
            elapsed_s: Wall time.

        Returns:
            The result.
        """
        # A loop only leaves early through a stop rule, so finish_reason is set here; "length"
        # covers the defensive case of a caller that exhausted its own iteration bound.
        return DecodeResult(
            tokens=list(self.tokens),
            finish_reason=self.finish_reason or "length",
            forward_passes=forward_passes,
            accepted_draft_tokens=accepted,
            prefill_tokens=prefill_tokens,
            elapsed_s=elapsed_s,
        )


_locks: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The lock that serialises forward passes on ``model`` across threads.

    Two forwards at once on one CPU only fight for the same cores, so every pass of the engine
    (batched, single-sequence, full recompute) and of the server's scoring takes it.

    Args:
        model: The torch module.

    Returns:
        One re-entrant lock per model object.
    """
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter.

    Args:
        model: A torch module.

    Returns:
        Its device (CPU for a model without parameters).
    """
    for param in model.parameters():
        return torch.device(param.device)
    return torch.device("cpu")


def argmax_ids(logits: torch.Tensor) -> list[int]:
    """Greedy choice at every position of ``[1, positions, vocab]`` logits.

    Args:
        logits: Model output logits for one sequence.

    Returns:
        One token id per position.
    """
    # torch.argmax returns the first maximal index, so exact ties resolve the same way in
    # every method as long as the logits are bit-identical.
    ids: list[int] = logits[0].argmax(dim=-1).tolist()
    return ids


def chosen_logprobs(logits: torch.Tensor, ids: Sequence[int]) -> list[float]:
    """``log_softmax(logits)[position, ids[position]]`` for ``[1, positions, vocab]`` logits.

    The greedy token of a position is its argmax, so this scores it from the very pass that chose
    it: a stream gets its log-probabilities without a second model pass.
    """
    targets = torch.tensor(list(ids), dtype=torch.long, device=logits.device).unsqueeze(-1)
    values: list[float] = torch.log_softmax(logits[0].float(), dim=-1).gather(-1, targets).squeeze(-1).tolist()
    return values


def _forward_parameters(model: Any) -> Collection[str]:
    return inspect.signature(model.forward).parameters.keys()


def cache_keyword(model: Any) -> str:
    """The name of ``model.forward``'s KV-cache argument.

    transformers 5 calls it ``cache``; earlier releases ``past_key_values``.

    Args:
        model: A causal LM.

    Returns:
        ``"cache"`` or ``"past_key_values"``.
    """
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def takes_logits_to_keep(model: Any) -> bool:
    """Whether ``model.forward`` can project only some positions on the vocabulary.

    Args:
        model: A causal LM.

    Returns:
        True when it takes ``logits_to_keep``.
    """
    return "logits_to_keep" in _forward_parameters(model)


class KVSession:
    """One sequence's KV cache with counted forward passes and rollback.

    transformers 5 names the cache argument ``cache`` (``past_key_values`` before); the
    session detects which one the model takes, so the loops run on both generations.

    Args:
        model: A causal LM in eval mode.
    """

    def __init__(self, model: Any) -> None:
        from transformers import DynamicCache

        self.model = model
        self.device = model_device(model)
        self._cache_kw = cache_keyword(model)
        self._keep_kw = "logits_to_keep" if takes_logits_to_keep(model) else None
        try:
            # With the config the cache mirrors the model's sliding/full layer layout; sliding
            # layers can only be rolled back past their window when they record the past.
            cache: Any = DynamicCache(config=model.config)
            if hasattr(cache, "activate_past_recording"):
                cache.activate_past_recording()
        except TypeError:  # pragma: no cover - transformers without the config argument
            cache = DynamicCache()
        self.cache = cache
        self.length = 0
        self.forward_passes = 0
        self.last_logprobs: list[float] = []
        """Log-probabilities of the last :meth:`feed`'s predictions, when it was asked for them."""

    def feed(
        self, tokens: Sequence[int], n_logits: int, choose: Chooser | None = None, *, logprobs: bool = False
    ) -> list[int]:
        """Run the model over ``tokens`` after the cached ones.

        Args:
            tokens: Token ids to append to the cache.
            n_logits: How many trailing positions need a prediction.
            choose: Picks the tokens from those positions' logits instead of the argmax.
            logprobs: Also score each chosen token (into :attr:`last_logprobs`), from the model's own
                distribution in the same pass.

        Returns:
            The chosen (by default the argmax) token at each of the last ``n_logits`` positions.
        """
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {self._cache_kw: self.cache, "use_cache": True}
        if self._keep_kw is not None:
            # Only the verified positions need the (large) vocabulary projection.
            kwargs[self._keep_kw] = n_logits
        with model_lock(self.model):
            logits = self.model(input_ids=ids, **kwargs).logits
        self.forward_passes += 1
        self.length += len(tokens)
        kept = logits[:, -n_logits:, :]
        preds = choose(kept[0]) if choose is not None else argmax_ids(kept)
        self.last_logprobs = chosen_logprobs(kept, preds) if logprobs else []
        return preds

    def rollback(self, n_tokens: int) -> None:
        """Drop the last ``n_tokens`` positions from the cache.

        Args:
            n_tokens: Positions to remove (0 is a no-op).
        """
        if n_tokens > 0:
            self.cache.crop(-n_tokens)
            self.length -= n_tokens


def full_forward_argmax(model: Any, tokens: Sequence[int], n_logits: int) -> list[int]:
    """One cache-free forward pass over ``tokens`` (the Jacobi loop's full recompute).

    Args:
        model: A causal LM in eval mode.
        tokens: The whole sequence.
        n_logits: How many trailing positions need a prediction.

    Returns:
        The argmax token at each of the last ``n_logits`` positions.
    """
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=model_device(model))
    kwargs: dict[str, Any] = {"use_cache": False}
    if takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = n_logits
    with model_lock(model):
        logits = model(input_ids=ids, **kwargs).logits
    return argmax_ids(logits[:, -n_logits:, :])
