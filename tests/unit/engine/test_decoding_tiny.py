"""Fidelity of the decoding methods on tiny random Llama and Gemma-2 models (token ids only).

Every case asserts exact tokens: the reference Jacobi loop (converged), greedy decoding
with a KV cache and speculative decoding must agree for any draft. Gemma-2 uses a sliding
window of 8 tokens, so the cache rollbacks cross it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from engine_helpers import tiny

from diffpo_integrations.core.errors import ConfigurationError, InputError
from diffpo_integrations.engine import decode, greedy, reference_jacobi, speculative

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ("llama", "gemma2")
VOCAB = 96
DRAFT_KINDS = ("empty", "foreign_long", "foreign_short", "self", "self_longer", "self_shorter", "self10")


def edit(tokens: list[int], rng: random.Random, rate: float = 0.1) -> list[int]:
    """``tokens`` with about ``rate`` of positions substituted, followed by an insertion, or deleted."""
    out: list[int] = []
    for tok in tokens:
        roll = rng.random()
        if roll < rate / 3:
            out.append(rng.randrange(VOCAB))
        elif roll < 2 * rate / 3:
            out += [tok, rng.randrange(VOCAB)]
        elif roll >= rate:
            out.append(tok)
    return out


def make_draft(kind: str, answer: list[int], rng: random.Random) -> list[int]:
    foreign = [rng.randrange(VOCAB) for _ in range(80)]
    return {
        "empty": [],
        "foreign_long": foreign,
        "foreign_short": foreign[:5],
        "self": list(answer),
        "self_longer": answer + foreign[:20],
        "self_shorter": answer[: len(answer) // 2],
        "self10": edit(answer, rng),
    }[kind]


def random_prompt(rng: random.Random, low: int = 1, high: int = 12) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(rng.randint(low, high))]


def all_methods(
    model: Any, prompt: list[int], draft: list[int], n: int, stop: tuple[int, ...], block: int
) -> list[Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": n, "stop_token_ids": stop}
    return [
        greedy(model, prompt, **kwargs),
        reference_jacobi(model, prompt, draft, block_size=block, **kwargs),
        speculative(model, prompt, draft, **kwargs),
        speculative(model, prompt, draft, chunk_size=4, **kwargs),
    ]


@pytest.mark.parametrize("kind", DRAFT_KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_methods_agree_for_any_draft(arch: str, kind: str) -> None:
    for seed in range(3):
        rng = random.Random(f"{arch}-{kind}-{seed}")
        model = tiny(arch, seed)
        prompt = random_prompt(rng)
        n = (9, 24, 40)[seed]
        answer = greedy(model, prompt, max_new_tokens=n, stop_token_ids=()).tokens
        # A random model must give a varied answer, not one token repeated.
        assert len(set(answer)) >= n // 4, answer
        draft = make_draft(kind, answer, rng)
        block = (1, 4, 32)[(seed + len(kind)) % 3]
        for result in all_methods(model, prompt, draft, n, (), block):
            assert result.tokens == answer, (kind, seed, block)
            assert result.finish_reason == "length"
            assert result.prefill_tokens == len(prompt)


@pytest.mark.parametrize("block", [1, 4, 32])
@pytest.mark.parametrize("arch", ARCHS)
def test_stop_token_inside_a_block_truncates_after_it(arch: str, block: int) -> None:
    rng = random.Random(f"stop-{arch}-{block}")
    model = tiny(arch, 1)
    prompt = random_prompt(rng, 4, 8)
    free = greedy(model, prompt, max_new_tokens=40, stop_token_ids=()).tokens
    stop = free[13]  # a token the answer produces, in the middle of a 32-token block
    expected = free[: free.index(stop) + 1]
    for draft in (free, edit(free, rng), [rng.randrange(VOCAB) for _ in range(50)], free[: len(expected) - 1]):
        for result in all_methods(model, prompt, draft, 40, (stop,), block):
            assert result.tokens == expected
            assert result.finish_reason == "eos_token"


@pytest.mark.parametrize("arch", ARCHS)
def test_max_new_tokens_cuts_every_method_alike(arch: str) -> None:
    rng = random.Random(f"cut-{arch}")
    model = tiny(arch, 2)
    prompt = random_prompt(rng)
    full = greedy(model, prompt, max_new_tokens=30, stop_token_ids=()).tokens
    for n in (1, 5, 13):
        for result in all_methods(model, prompt, full, n, (), 4):
            assert result.tokens == full[:n]
            assert result.finish_reason == "length"


@pytest.mark.parametrize("arch", ARCHS)
def test_converged_jacobi_is_greedy_on_prompt_plus_kept_prefix(arch: str) -> None:
    rng = random.Random(f"fixed-point-{arch}")
    model = tiny(arch, 2)
    base = random_prompt(rng, 6, 6)
    draft = [rng.randrange(VOCAB) for _ in range(40)]
    answers = []
    for kept in (0, 3, 7):
        fixed = base + draft[:kept]
        expected = greedy(model, fixed, max_new_tokens=24, stop_token_ids=()).tokens
        answers.append(expected)
        other_tail = [rng.randrange(VOCAB) for _ in range(30)]
        for tail in (draft[kept:], other_tail, expected + other_tail, []):
            jacobi = reference_jacobi(model, fixed, tail, max_new_tokens=24, stop_token_ids=(), block_size=8)
            assert jacobi.tokens == expected
    # The kept prefix, not the rest of the draft, decides the answer.
    assert len({tuple(a) for a in answers}) > 1


def refine(model: Any, sequence: list[int], block: list[int]) -> list[int]:
    """One Jacobi update, computed by hand: argmax at every block position of one full pass."""
    with torch.inference_mode():
        logits = model(torch.tensor([sequence + block])).logits[0]
    start = len(sequence) - 1
    updated: list[int] = logits[start : start + len(block)].argmax(-1).tolist()
    return updated


def refine_blocks(model: Any, prompt: list[int], draft: list[int], n: int, block: int, passes: int) -> list[int]:
    sequence, out = list(prompt), list[int]()
    while len(out) < n:
        current = draft[len(out) : len(out) + min(block, n - len(out))]
        for _ in range(passes):
            current = refine(model, sequence, current)
        out += current
        sequence += current
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_partial_refinement_with_small_max_iter(arch: str) -> None:
    rng = random.Random(f"partial-{arch}")
    model = tiny(arch, 0)
    prompt = random_prompt(rng, 5, 5)
    draft = [rng.randrange(VOCAB) for _ in range(24)]
    answer = greedy(model, prompt, max_new_tokens=24, stop_token_ids=()).tokens
    for max_iter in (0, 1):
        # The official loop runs `while itr <= max_iter`: max_iter + 1 passes at most.
        runs = [
            reference_jacobi(
                model, prompt, draft, max_new_tokens=24, stop_token_ids=(), block_size=8, max_iter=max_iter
            )
            for _ in range(2)
        ]
        assert runs[0].tokens == runs[1].tokens  # deterministic
        assert runs[0].tokens == refine_blocks(model, prompt, draft, 24, 8, max_iter + 1)
        assert runs[0].tokens != answer  # not converged: only Jacobi returns such a partial answer
        assert runs[0].forward_passes == 3 * (max_iter + 1)
        assert runs[0].tokens[0] == answer[0]  # the first position is exact after one pass


@pytest.mark.parametrize("arch", ARCHS)
def test_speculative_spends_few_passes_on_a_kept_draft(arch: str) -> None:
    rng = random.Random(f"passes-{arch}")
    model = tiny(arch, 1)
    prompt = random_prompt(rng, 6, 6)
    answer = greedy(model, prompt, max_new_tokens=40, stop_token_ids=())
    kept = speculative(model, prompt, answer.tokens, max_new_tokens=40, stop_token_ids=())
    assert kept.tokens == answer.tokens
    assert kept.forward_passes <= 4
    assert kept.accepted_draft_tokens == 40 - kept.forward_passes
    foreign = [rng.randrange(VOCAB) for _ in range(60)]
    other = speculative(model, prompt, foreign, max_new_tokens=40, stop_token_ids=())
    assert other.tokens == answer.tokens
    assert other.forward_passes <= answer.forward_passes == 40


def test_streaming_callbacks_see_every_token_in_order() -> None:
    model = tiny("llama", 0)
    prompt = [5, 6, 7]
    for method in ("greedy", "speculative", "jacobi"):
        seen: list[int] = []
        draft = [1, 2, 3, 4] * 5
        result = decode(model, prompt, draft, method=method, max_new_tokens=20, stop_token_ids=(), on_token=seen.append)
        assert seen == result.tokens
        assert len(seen) == 20


def test_decode_dispatch_and_argument_checks() -> None:
    model = tiny("llama", 0)
    auto_plain = decode(model, [1, 2], None, max_new_tokens=6, stop_token_ids=())
    auto_draft = decode(model, [1, 2], auto_plain.tokens, max_new_tokens=6, stop_token_ids=())
    assert auto_plain.tokens == auto_draft.tokens
    assert auto_plain.accepted_draft_tokens == 0
    assert auto_draft.accepted_draft_tokens > 0  # "auto" with a draft is speculative
    empty = greedy(model, [1], max_new_tokens=0, stop_token_ids=())
    assert (empty.tokens, empty.finish_reason, empty.forward_passes) == ([], "length", 0)
    with pytest.raises(InputError, match="at least one token"):
        greedy(model, [], max_new_tokens=3, stop_token_ids=())
    with pytest.raises(InputError, match="max_new_tokens"):
        speculative(model, [1], [], max_new_tokens=-1, stop_token_ids=())
    with pytest.raises(ConfigurationError, match="block_size"):
        reference_jacobi(model, [1], [], max_new_tokens=3, stop_token_ids=(), block_size=0)
    with pytest.raises(ConfigurationError, match="unknown decoding method"):
        decode(model, [1], [], method="beam", max_new_tokens=3, stop_token_ids=())  # type: ignore[arg-type]
