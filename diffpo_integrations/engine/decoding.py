"""Token-level decoding for the DiffPO aligner: reference Jacobi loop, greedy, dispatcher.

All functions take the fixed prompt (``input_ids``: template plus kept draft prefix, see
DESIGN.md section 1), work on one sequence, and return a :class:`DecodeResult` whose
``tokens`` are the generated ids after the prompt, including the stop token when one was
produced. Stop rules are shared, so every method truncates identically.

- :func:`reference_jacobi` ports the official DiffPO loop (``gen_DiffuPO_answer.py``): full
  recompute, no cache. It is the fidelity oracle, and the only method that can return a
  partially refined block (small ``max_iter``).
- :func:`greedy` is greedy decoding with a KV cache, one pass per token.
- :func:`~diffpo_integrations.engine.speculation.speculative` gives greedy's tokens with far
  fewer passes when the aligner keeps most of the draft.

A converged Jacobi block is a fixed point of "argmax at every position", which is exactly
greedy decoding, so the three agree token for token (up to float rounding on exact ties).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.core.types import DecodeMethod

from ._core import (
    Chooser,
    DecodeFinishReason,
    DecodeResult,
    Emitter,
    LogprobCallback,
    TokenCallback,
    check_decode_args,
    full_forward_argmax,
)
from .batching import open_session
from .speculation import SpeculationConfig, speculative

__all__ = [
    "DecodeResult",
    "DecodeMethod",
    "DecodeFinishReason",
    "TokenCallback",
    "decode",
    "greedy",
    "reference_jacobi",
    "speculative",
]

"""Method names accepted by :func:`decode`."""


def greedy(
    model: Any,
    input_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_token_ids: Collection[int],
    on_token: TokenCallback | None = None,
    on_logprob: LogprobCallback | None = None,
) -> DecodeResult:
    """Greedy decoding with a KV cache: one prefill, then one forward pass per token.

    The model's forward is called directly (not ``generate``) so passes can be counted; the
    computation matches ``generate(do_sample=False)``.

    Args:
        model: A causal LM (transformers ``PreTrainedModel``) in eval mode.
        input_ids: The fixed prompt.
        max_new_tokens: Budget of generated tokens.
        stop_token_ids: Token ids that end decoding (kept in the output).
        on_token: Streaming hook called with each token as it is produced.
        on_logprob: Called with each token's log-probability (from the pass that chose it) just
            before ``on_token``.

    Returns:
        The generated tokens and counters.

    Raises:
        ValueError: On an empty prompt or a negative budget.
    """
    return stepwise(
        model,
        input_ids,
        max_new_tokens=max_new_tokens,
        stop_token_ids=stop_token_ids,
        on_token=on_token,
        on_logprob=on_logprob,
    )


def stepwise(
    model: Any,
    input_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_token_ids: Collection[int],
    on_token: TokenCallback | None = None,
    on_logprob: LogprobCallback | None = None,
    chooser: Callable[[list[int], Any], Chooser] | None = None,
) -> DecodeResult:
    """One prefill, then one pass per token; ``chooser(prompt, device)`` picks them (default: the argmax).

    ``on_logprob`` gets each chosen token's log-probability from the pass that chose it (the
    model's own distribution, before any sampling warper).

    The loop shared by :func:`greedy` and :func:`~diffpo_integrations.engine.sampling.sample`.
    """
    start = time.perf_counter()
    prompt = check_decode_args(input_ids, max_new_tokens)
    emitter = Emitter(max_new_tokens, stop_token_ids, on_token, on_logprob)
    scores = emitter.wants_logprobs
    passes = 0
    if not emitter.done:
        with open_session(model) as session, torch.inference_mode():
            choose = chooser(prompt, session.device) if chooser is not None else None
            token = session.feed(prompt, 1, choose, logprobs=scores)[0]
            while not emitter.push(token, session.last_logprobs[0] if scores else None):
                token = session.feed([token], 1, choose, logprobs=scores)[0]
            passes = session.forward_passes
    return emitter.result(
        forward_passes=passes,
        accepted=0,
        prefill_tokens=len(prompt),
        elapsed_s=time.perf_counter() - start,
    )


def reference_jacobi(
    model: Any,
    input_ids: Sequence[int],
    draft_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_token_ids: Collection[int],
    block_size: int = 32,
    max_iter: int = 1000,
    pad_token_id: int | None = None,
    on_token: TokenCallback | None = None,
    check: Callable[[], None] | None = None,
) -> DecodeResult:
    """The official DiffPO Jacobi loop, token for token (the test oracle).

    Per block of ``block_size`` tokens: initialise it with the draft tokens at the same
    positions (the official script writes the converged blocks into the tokenised
    prompt + draft and takes the next block from it, so block ``k`` always starts from
    ``draft_ids[k * block_size:]``); run the model over prompt + converged blocks + block
    without a cache; replace the block by the argmax at every position; repeat until the block
    is a fixed point, at most ``max_iter + 1`` passes (the official ``while itr <= max_iter``);
    keep the last iterate either way. Decoding stops after the first stop token (truncated
    after it) or after ``max_new_tokens`` tokens.

    Deviations, none of which changes a converged answer:

    - The official script needs ``max_new_tokens`` to be a multiple of ``block_size`` (else
      the last block's slice fails); here the last block is shortened. Causality makes a
      shortened block's iterates equal the prefix of the full block's.
    - Only the logits of the block positions are projected on the vocabulary
      (``logits_to_keep``); the official code projects every position and discards the rest.
    - Where the draft runs out, the official tokenizer call pads with ``pad_token_id``. Pass
      it to reproduce that; without it the last draft token (or the last prompt token when
      the draft is empty) is repeated, a neutral guess that needs no tokenizer.

    Args:
        model: A causal LM (transformers ``PreTrainedModel``) in eval mode.
        input_ids: The fixed prompt (``ids[:L + r]`` in DESIGN.md).
        draft_ids: The rest of the tokenised draft (``ids[L + r:]``), the initial guess.
        max_new_tokens: Budget of generated tokens past the fixed prompt.
        stop_token_ids: Token ids that end decoding (kept in the output).
        block_size: Tokens refined in parallel per block (official default 32).
        max_iter: Iteration bound per block (official default 1000); small values give
            partially refined, non-converged blocks.
        pad_token_id: Filler for positions past the end of the draft.
        on_token: Called with each token once its block is final (per block, not per pass).
        check: Called before every forward pass; raise from it to stop decoding. A block may take
            up to ``max_iter + 1`` passes before ``on_token`` is called again, so a cancelled
            request stops here within one pass instead of at the end of its block.

    Returns:
        The generated tokens and counters; ``accepted_draft_tokens`` counts output positions
        equal to the draft token at the same position.

    Raises:
        ValueError: On an empty prompt, a negative budget, ``block_size < 1`` or
            ``max_iter < 0``.
    """
    start = time.perf_counter()
    prompt = check_decode_args(input_ids, max_new_tokens)
    if block_size < 1:
        msg = f"block_size must be >= 1, got {block_size}"
        raise ConfigurationError(msg)
    if max_iter < 0:
        msg = f"max_iter must be >= 0, got {max_iter}"
        raise ConfigurationError(msg)
    draft = [int(t) for t in draft_ids]
    filler = pad_token_id if pad_token_id is not None else (draft or prompt)[-1]
    emitter = Emitter(max_new_tokens, stop_token_ids, on_token)
    sequence = list(prompt)
    passes = accepted = 0
    with torch.inference_mode():
        while not emitter.done:
            offset = len(emitter.tokens)
            size = min(block_size, emitter.remaining)
            guess = [draft[i] if i < len(draft) else filler for i in range(offset, offset + size)]
            block = guess
            for _ in range(max_iter + 1):
                if check is not None:
                    check()
                # Position j of the block is predicted from everything before it: the logits
                # at positions len(sequence) - 1 ... len(sequence) + size - 2.
                update = full_forward_argmax(model, sequence + block, size + 1)[:size]
                passes += 1
                converged = update == block
                block = update
                if converged:
                    break
            for tok, first_guess in zip(block, guess, strict=True):
                accepted += tok == first_guess
                if emitter.push(tok):
                    break
            sequence.extend(block)
    return emitter.result(
        forward_passes=passes,
        accepted=accepted,
        prefill_tokens=len(prompt),
        elapsed_s=time.perf_counter() - start,
    )


def decode(
    model: Any,
    input_ids: Sequence[int],
    draft_ids: Sequence[int] | None = None,
    *,
    method: DecodeMethod = "auto",
    max_new_tokens: int,
    stop_token_ids: Collection[int],
    block_size: int = 32,
    max_iter: int = 1000,
    pad_token_id: int | None = None,
    chunk_size: int | None = None,
    config: SpeculationConfig | None = None,
    on_token: TokenCallback | None = None,
    check: Callable[[], None] | None = None,
    on_logprob: LogprobCallback | None = None,
) -> DecodeResult:
    """Decode with the chosen method.

    Args:
        model: A causal LM (transformers ``PreTrainedModel``) in eval mode.
        input_ids: The fixed prompt.
        draft_ids: The draft continuation, or ``None`` for none.
        method: ``"auto"`` (speculative when a draft is given, else greedy), ``"greedy"``,
            ``"speculative"`` or ``"jacobi"`` (the reference loop).
        max_new_tokens: Budget of generated tokens.
        stop_token_ids: Token ids that end decoding (kept in the output).
        block_size: Jacobi block size.
        max_iter: Jacobi iteration bound per block.
        pad_token_id: Jacobi filler past the end of the draft.
        chunk_size: Speculative chunk size (``None``: adaptive).
        config: Speculative cost model.
        on_token: Streaming hook; it may raise to stop decoding.
        check: Cancellation hook for the Jacobi loop, called before each of its passes (the other
            methods call ``on_token`` after every pass or two, which serves the same purpose).

    Returns:
        The method's :class:`DecodeResult`.

    Raises:
        ValueError: On an unknown method or invalid arguments.
    """
    draft = list(draft_ids) if draft_ids is not None else []
    if method == "auto":
        method = "speculative" if draft else "greedy"
    if method == "greedy":
        return greedy(
            model,
            input_ids,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_token_ids,
            on_token=on_token,
            on_logprob=on_logprob,
        )
    if method == "speculative":
        return speculative(
            model,
            input_ids,
            draft,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_token_ids,
            chunk_size=chunk_size,
            config=config,
            on_token=on_token,
            on_logprob=on_logprob,
        )
    if method == "jacobi":
        return reference_jacobi(
            model,
            input_ids,
            draft,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_token_ids,
            block_size=block_size,
            max_iter=max_iter,
            pad_token_id=pad_token_id,
            on_token=on_token,
            check=check,
        )
    msg = f"unknown decoding method {method!r}; expected 'auto', 'greedy', 'speculative' or 'jacobi'"
    raise ConfigurationError(msg)
