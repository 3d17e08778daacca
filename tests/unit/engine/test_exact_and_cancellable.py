"""The Jacobi loop stops between passes when asked; answers decode kept and generated tokens together (#13)."""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import tiny

from diffpo_integrations.engine import decode, reference_jacobi
from diffpo_integrations.engine.aligning import AnswerDecoder


class _Stop(Exception):
    pass


def test_jacobi_checks_for_cancellation_before_every_pass() -> None:
    model = tiny("llama", 0)
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise _Stop

    with pytest.raises(_Stop):
        # One 64-token block with a useless draft needs many passes before any token is final.
        reference_jacobi(model, [1, 2, 3], [5] * 64, max_new_tokens=64, stop_token_ids=[], block_size=64, check=check)
    assert calls["n"] == 4
    calls["n"] = 0
    with pytest.raises(_Stop):
        decode(model, [1, 2, 3], [5] * 64, method="jacobi", max_new_tokens=64, stop_token_ids=[], check=check)
    assert calls["n"] == 4


def test_jacobi_without_check_is_unchanged() -> None:
    model = tiny("llama", 0)
    plain = reference_jacobi(model, [1, 2, 3], [5] * 8, max_new_tokens=8, stop_token_ids=[])
    checked = reference_jacobi(model, [1, 2, 3], [5] * 8, max_new_tokens=8, stop_token_ids=[], check=lambda: None)
    assert plain.tokens == checked.tokens


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer: Any) -> Any:
    return smollm2_tokenizer


@pytest.mark.parametrize("text", ["北京是中国的首都。", "I love 🍕 and 🎉!", "Cafe\u0301 nai\u0308ve"])
def test_the_answer_decoder_joins_to_the_official_decode_at_every_cut(tokenizer: Any, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    official = tokenizer.decode(ids, skip_special_tokens=True)
    cut_inside_a_character = 0
    for cut in range(len(ids) + 1):
        decoder = AnswerDecoder(tokenizer, ids[:cut], stops={2})
        pieces = [decoder.stable()]
        cut_inside_a_character += "\ufffd" in tokenizer.decode(ids[:cut])
        for token in [*ids[cut:], 2]:
            piece = decoder.push(token)
            assert "\ufffd" not in piece
            pieces.append(piece)
        assert "".join(pieces) == official == decoder.text
    assert cut_inside_a_character > 0 or text.isascii()


@pytest.mark.parametrize("method", ["greedy", "speculative"])
@pytest.mark.parametrize("batched", [False, True])
def test_on_logprob_scores_each_token_from_the_pass_that_chose_it(method: str, batched: bool) -> None:
    import contextlib

    import torch

    from diffpo_integrations.engine.batching import BatchScheduler, use_scheduler

    model = tiny("llama", 0)
    prompt, draft = [1, 2, 3, 4], [7, 8, 9, 10, 11, 12]
    scores: list[float] = []
    order: list[str] = []

    def on_logprob(value: float) -> None:
        scores.append(value)
        order.append("logprob")

    scheduler = BatchScheduler(model) if batched else None
    guard = use_scheduler(scheduler) if scheduler is not None else contextlib.nullcontext()
    with guard:
        out = decode(
            model,
            prompt,
            draft,
            method=method,  # type: ignore[arg-type]
            max_new_tokens=8,
            stop_token_ids=[],
            on_token=lambda _: order.append("token"),
            on_logprob=on_logprob,
        )
    if scheduler is not None:
        scheduler.close()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + out.tokens])).logits[0]
    want = [float(torch.log_softmax(logits[len(prompt) + i - 1].float(), -1)[t]) for i, t in enumerate(out.tokens)]
    assert scores == pytest.approx(want, abs=1e-4)
    assert order == ["logprob", "token"] * len(out.tokens)
