"""Sampling: reproducible per seed, alone or in the continuous batch; penalties and warpers as TGI applies them."""

from __future__ import annotations

import threading

import pytest
import torch

from diffpo_integrations.engine import (
    BatchScheduler,
    SamplingParams,
    greedy,
    sample,
    tiny_random_model,
    use_scheduler,
)
from diffpo_integrations.engine.sampling import TokenChooser

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [3, 17, 42, 8]


@pytest.fixture(scope="module")
def model() -> object:
    return tiny_random_model("llama")


def _run(model: object, params: SamplingParams, prompt: list[int] = PROMPT, n: int = 24) -> list[int]:
    return sample(model, prompt, params=params, max_new_tokens=n, stop_token_ids=[]).tokens


def test_same_seed_same_tokens_other_seed_other_tokens(model: object) -> None:
    a = _run(model, SamplingParams(temperature=1.5, seed=1))
    assert a == _run(model, SamplingParams(temperature=1.5, seed=1))
    assert a != _run(model, SamplingParams(temperature=1.5, seed=2))
    # Sampling at a high temperature does not reproduce the greedy answer.
    assert a != greedy(model, PROMPT, max_new_tokens=24, stop_token_ids=[]).tokens


def test_without_do_sample_or_with_top_k_1_it_is_greedy(model: object) -> None:
    expected = greedy(model, PROMPT, max_new_tokens=24, stop_token_ids=[]).tokens
    assert _run(model, SamplingParams(do_sample=False, temperature=0.5, top_p=0.5, seed=3)) == expected
    assert _run(model, SamplingParams(top_k=1, seed=4)) == expected


def test_seeded_samples_are_the_same_inside_the_batch(model: object) -> None:
    seeds = [11, 12, 13, 14]
    solo = {s: _run(model, SamplingParams(temperature=1.3, top_p=0.95, seed=s), [*PROMPT, s]) for s in seeds}
    greedy_solo = greedy(model, PROMPT, max_new_tokens=24, stop_token_ids=[]).tokens
    scheduler = BatchScheduler(model, max_sessions=8)
    out: dict[int, list[int]] = {}

    def run(seed: int) -> None:
        with use_scheduler(scheduler):
            if seed == 0:
                out[0] = greedy(model, PROMPT, max_new_tokens=24, stop_token_ids=[]).tokens
            else:
                out[seed] = _run(model, SamplingParams(temperature=1.3, top_p=0.95, seed=seed), [*PROMPT, seed])

    threads = [threading.Thread(target=run, args=(s,)) for s in [0, *seeds]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler.close()
    assert scheduler.largest_batch > 1
    assert out == {0: greedy_solo, **solo}


def test_repetition_penalty_is_tgi_s() -> None:
    # Positive logits are divided by the penalty, negative ones multiplied, for prompt tokens too.
    chooser = TokenChooser(SamplingParams(do_sample=False, repetition_penalty=4.0), [0, 1], "cpu")
    assert chooser(torch.tensor([[4.0, -1.0, 3.0]])) == [2]  # 4/4 = 1 < 3
    chooser = TokenChooser(SamplingParams(do_sample=False, repetition_penalty=4.0), [2], "cpu")
    assert chooser(torch.tensor([[1.0, -1.0, 3.0]])) == [0]  # 3/4 < 1


def test_frequency_and_presence_penalties_count_generated_tokens() -> None:
    chooser = TokenChooser(SamplingParams(do_sample=False, frequency_penalty=1.5), [1, 1, 1], "cpu")
    logits = torch.tensor([[2.0, 2.5, 0.0]])
    assert chooser(logits) == [1]  # the prompt's tokens are not penalised
    assert chooser(logits) == [0]  # 2.5 - 1.5 < 2
    presence = TokenChooser(SamplingParams(do_sample=False, presence_penalty=0.4), [], "cpu")
    assert [presence(torch.tensor([[2.0, 2.3, 0.0]]))[0] for _ in range(2)] == [1, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"top_k": 0}, "top_k must be >= 1, got 0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"typical_p": 0.0}, "typical_p must be in (0, 1], got 0.0"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
    ],
)
def test_invalid_settings_say_what_to_change(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_a_tiny_temperature_is_the_argmax_not_an_error() -> None:
    logits = torch.tensor([[1.0, 3.0, -2.0, 2.9]])
    assert TokenChooser(SamplingParams(temperature=1e-300, seed=1), [], "cpu")(logits) == [1]


def test_draws_follow_the_distribution_and_never_pick_a_zero_probability_token() -> None:
    chooser = TokenChooser(SamplingParams(seed=3), [], "cpu")
    probs = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25, 0.0])
    counts = torch.bincount(torch.tensor([chooser._draw(probs) for _ in range(4000)]), minlength=6)
    assert counts[[0, 2, 5]].tolist() == [0, 0, 0]
    assert abs(counts[1].item() / 4000 - 0.5) < 0.04
    assert abs(counts[3].item() / 4000 - 0.25) < 0.04
