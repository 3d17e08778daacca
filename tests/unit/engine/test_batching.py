"""Batched decoding: many threads through one BatchScheduler give each thread's solo tokens."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from engine_helpers import mt_bench_cases, tiny

from diffpo_integrations.core.errors import ConfigurationError, EngineError
from diffpo_integrations.engine import (
    BatchScheduler,
    DecodeResult,
    LoadedModel,
    SpeculationConfig,
    batching,
    greedy,
    speculative,
    supports_batching,
    tiny_random_model,
    use_scheduler,
)

pytestmark = pytest.mark.usefixtures("one_thread")

STOP = 5


@dataclass
class Case:
    prompt: list[int]
    draft: list[int] | None
    max_new: int
    expected: list[int]
    solo_passes: int


def _cases(model: Any, seed: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        prompt = [rng.randrange(96) for _ in range(rng.randrange(1, 24))]
        max_new = rng.randrange(1, 40)
        solo = greedy(model, prompt, max_new_tokens=max_new, stop_token_ids=[STOP])
        draft = None
        if i % 2:
            # The answer with about one token in five changed, plus a few extra tokens.
            draft = [t if rng.random() > 0.2 else rng.randrange(96) for t in solo.tokens]
            draft += [rng.randrange(96) for _ in range(rng.randrange(0, 5))]
        cases.append(Case(prompt, draft, max_new, solo.tokens, solo.forward_passes))
    return cases


def _decode(model: Any, case: Case, on_token: Callable[[int], None] | None = None) -> DecodeResult:
    if case.draft is None:
        return greedy(model, case.prompt, max_new_tokens=case.max_new, stop_token_ids=[STOP], on_token=on_token)
    return speculative(
        model, case.prompt, case.draft, max_new_tokens=case.max_new, stop_token_ids=[STOP], on_token=on_token
    )


def _wait_empty(scheduler: BatchScheduler) -> int:
    # The model thread frees the cache once the last session has left; give it a moment.
    deadline = time.monotonic() + 10
    while scheduler.cached_tokens and time.monotonic() < deadline:
        time.sleep(0.01)
    return scheduler.cached_tokens


def _run_threads(scheduler: BatchScheduler, jobs: list[Callable[[], Any]]) -> dict[int, Any]:
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        with use_scheduler(scheduler):
            try:
                results[i] = jobs[i]()
            except Exception as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a batched decode hung"
    return results


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_concurrent_decodes_give_their_solo_tokens(arch: str) -> None:
    model = tiny(arch, 3)
    cases = _cases(model, seed=7, count=20)
    scheduler = BatchScheduler(model, max_sessions=6)
    results = _run_threads(scheduler, [lambda c=c: _decode(model, c) for c in cases])
    for i, case in enumerate(cases):
        assert results[i].tokens == case.expected, f"case {i}"
    assert scheduler.largest_batch == 6
    # Every sequence needs at least as many passes as alone; together they need far fewer.
    assert scheduler.passes < sum(c.solo_passes for c in cases) / 2
    assert _wait_empty(scheduler) == 0  # everyone left: the cache is empty again


def test_gemma2_batches_across_its_sliding_window() -> None:
    # Window 8 and sequences of 30+ tokens: the sliding layers must see each sequence's own window.
    model = tiny("gemma2", 4)
    assert model.config.sliding_window == 8
    prompts = [[(7 * i + j) % 96 for j in range(12 + i)] for i in range(4)]
    expected = [greedy(model, p, max_new_tokens=30, stop_token_ids=[]).tokens for p in prompts]
    scheduler = BatchScheduler(model, max_sessions=4)
    results = _run_threads(
        scheduler, [lambda p=p: greedy(model, p, max_new_tokens=30, stop_token_ids=[]).tokens for p in prompts]
    )
    assert [results[i] for i in range(4)] == expected


def test_a_decode_that_joins_mid_way_gets_its_solo_tokens() -> None:
    model = tiny("llama", 5)
    long_prompt, late_prompt = [1, 2, 3], [9, 8, 7, 6]
    long_expected = greedy(model, long_prompt, max_new_tokens=40, stop_token_ids=[]).tokens
    late_expected = greedy(model, late_prompt, max_new_tokens=10, stop_token_ids=[]).tokens
    scheduler = BatchScheduler(model, max_sessions=2)
    started = threading.Event()
    joined = threading.Event()

    def long_job() -> list[int]:
        def on_token(_: int) -> None:
            started.set()
            joined.wait(timeout=30)  # hold until the second decode is in

        return greedy(model, long_prompt, max_new_tokens=40, stop_token_ids=[], on_token=on_token).tokens

    def late_job() -> list[int]:
        started.wait(timeout=30)
        joined.set()
        return greedy(model, late_prompt, max_new_tokens=10, stop_token_ids=[]).tokens

    results = _run_threads(scheduler, [long_job, late_job])
    assert results[0] == long_expected
    assert results[1] == late_expected
    assert scheduler.largest_batch == 2


def test_dead_tokens_are_compacted_without_changing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "_COMPACT_MIN_DEAD", 4)
    model = tiny("llama", 6)
    cases = [c for c in _cases(model, seed=11, count=16) if c.draft is not None]
    scheduler = BatchScheduler(model, max_sessions=4)
    compactions = 0
    original = scheduler._maybe_compact

    def counting() -> None:
        nonlocal compactions
        before = scheduler.cached_tokens
        original()
        compactions += scheduler.cached_tokens < before

    monkeypatch.setattr(scheduler, "_maybe_compact", counting)
    results = _run_threads(scheduler, [lambda c=c: _decode(model, c).tokens for c in cases])
    assert [results[i] for i in range(len(cases))] == [c.expected for c in cases]
    assert compactions > 0


def test_an_error_in_one_decode_leaves_the_others_untouched() -> None:
    model = tiny("llama", 8)
    cases = _cases(model, seed=3, count=6)

    def failing(_: int) -> None:
        raise KeyError("client went away")

    jobs: list[Callable[[], Any]] = [lambda c=c: _decode(model, c).tokens for c in cases]
    jobs.append(lambda: _decode(model, Case([4, 4, 4], None, 30, [], 0), on_token=failing))
    results = _run_threads(BatchScheduler(model, max_sessions=7), jobs)
    assert [results[i] for i in range(len(cases))] == [c.expected for c in cases]
    assert isinstance(results[len(cases)], KeyError)


def test_a_failed_pass_fails_every_decode_in_it_and_the_scheduler_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny("llama", 9)
    scheduler = BatchScheduler(model, max_sessions=3)
    real_forward = scheduler._forward
    failed = False

    def flaky(batch: Any) -> Any:
        nonlocal failed
        if len(batch) == 3 and not failed:
            failed = True
            raise MemoryError("out of memory in the packed pass")
        return real_forward(batch)

    real_session = scheduler.session
    opened = threading.Barrier(3)

    @contextlib.contextmanager
    def together() -> Iterator[Any]:
        # All three sessions are open before any feeds, so the first pass holds all three
        # however the threads are scheduled.
        with real_session() as session:
            opened.wait(timeout=60)
            yield session

    monkeypatch.setattr(scheduler, "_forward", flaky)
    monkeypatch.setattr(scheduler, "session", together)
    prompts = [[1, 2], [3, 4], [5, 6]]
    results = _run_threads(
        scheduler, [lambda p=p: greedy(model, p, max_new_tokens=10, stop_token_ids=[]).tokens for p in prompts]
    )
    assert all(isinstance(results[i], MemoryError) for i in range(3))
    assert _wait_empty(scheduler) == 0
    monkeypatch.setattr(scheduler, "session", real_session)
    after = _run_threads(scheduler, [lambda: greedy(model, [1, 2], max_new_tokens=10, stop_token_ids=[]).tokens])
    assert after[0] == greedy(model, [1, 2], max_new_tokens=10, stop_token_ids=[]).tokens


def test_without_a_scheduler_decoding_is_unchanged() -> None:
    model = tiny("llama", 3)
    scheduler = BatchScheduler(model)
    other = tiny_random_model("llama", seed=3)
    with use_scheduler(scheduler):
        # A scheduler only serves its own model: another model decodes alone.
        out = greedy(other, [1, 2, 3], max_new_tokens=5, stop_token_ids=[])
    assert out.tokens == greedy(model, [1, 2, 3], max_new_tokens=5, stop_token_ids=[]).tokens
    assert scheduler.passes == 0


def test_a_closed_scheduler_refuses_new_sessions() -> None:
    model = tiny("llama", 3)
    scheduler = BatchScheduler(model)
    first = _run_threads(scheduler, [lambda: greedy(model, [1, 2], max_new_tokens=3, stop_token_ids=[]).tokens])
    assert len(first[0]) == 3
    scheduler.close()
    with use_scheduler(scheduler), pytest.raises(EngineError, match="the batch scheduler is closed"):
        greedy(model, [1, 2], max_new_tokens=3, stop_token_ids=[])


def test_models_with_per_sequence_sliding_windows_are_refused() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=4,
    )
    model = MistralForCausalLM(config).eval()
    assert not supports_batching(model)
    assert supports_batching(tiny("llama", 3))
    assert supports_batching(tiny("gemma2", 3))
    with pytest.raises(ConfigurationError, match="MistralForCausalLM cannot be batched"):
        BatchScheduler(model)


@pytest.mark.slow
def test_smollm2_batched_answers_equal_solo_answers(smollm2: LoadedModel) -> None:
    cases = mt_bench_cases(smollm2.tokenizer, count=4)
    stop = smollm2.eos_token_ids

    def run(i: int) -> list[int]:
        case = cases[i]
        if i % 2:
            return speculative(
                smollm2.model, case.prompt_ids, case.draft_ids, max_new_tokens=32, stop_token_ids=stop
            ).tokens
        return greedy(smollm2.model, case.prompt_ids, max_new_tokens=32, stop_token_ids=stop).tokens

    expected = [run(i) for i in range(4)]
    scheduler = BatchScheduler(smollm2.model, max_sessions=4)
    results = _run_threads(scheduler, [lambda i=i: run(i) for i in range(4)])
    assert [results[i] for i in range(4)] == expected
    assert scheduler.largest_batch == 4


def test_batched_speculation_uses_the_batch_cost_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # In a batch every verified token is shared compute: the first pass verifies 4 draft tokens
    # (SpeculationConfig.for_batch), not the 32 a sequence alone verifies inside its prefill.
    model = tiny("llama", 3)
    prompt = [1, 2, 3]
    answer = greedy(model, prompt, max_new_tokens=40, stop_token_ids=[]).tokens
    scheduler = BatchScheduler(model, max_sessions=1)
    fed: list[int] = []
    real_forward = scheduler._forward

    def recording(batch: Any) -> Any:
        fed.extend(len(request.tokens) for request in batch)
        return real_forward(batch)

    monkeypatch.setattr(scheduler, "_forward", recording)
    results = _run_threads(
        scheduler, [lambda: speculative(model, prompt, answer, max_new_tokens=40, stop_token_ids=[]).tokens]
    )
    assert results[0] == answer
    assert fed[0] == len(prompt) + SpeculationConfig.for_batch("cpu").initial_chunk == 7
    alone = speculative(model, prompt, answer, max_new_tokens=40, stop_token_ids=[])
    assert alone.tokens == answer
    assert alone.forward_passes < len(fed)  # alone it verifies more per pass


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_long_feeds_are_split_over_passes_without_changing_answers(arch: str) -> None:
    # Prompts of up to 23 tokens fed 3 tokens per pass at most; only the positions that need
    # predictions (a verify chunk) may come in a wider last piece, all together.
    model = tiny(arch, 3)
    cases = _cases(model, seed=5, count=10)
    scheduler = BatchScheduler(model, max_sessions=5, max_step_tokens=3)
    split_pieces = 0
    real_forward = scheduler._forward

    def recording(batch: Any) -> Any:
        nonlocal split_pieces
        for request in batch:
            end = scheduler._piece_end(request)
            assert end - request.fed <= max(3, request.n_logits)
            split_pieces += end < len(request.tokens)
        return real_forward(batch)

    scheduler._forward = recording  # type: ignore[method-assign]
    results = _run_threads(scheduler, [lambda c=c: _decode(model, c) for c in cases])
    for i, case in enumerate(cases):
        assert results[i].tokens == case.expected, f"case {i}"
    assert split_pieces > len(cases)


def test_piece_boundaries_keep_the_predicted_positions_together() -> None:
    scheduler = BatchScheduler(tiny("llama", 3), max_step_tokens=4)
    session = batching.BatchSession(scheduler, 1)
    feed = batching._Feed(session, list(range(10)), n_logits=3)
    assert scheduler._piece_end(feed) == 4
    feed.fed = 4
    assert scheduler._piece_end(feed) == 7  # 8 would leave the last piece 2 tokens for 3 predictions
    feed.fed = 7
    assert scheduler._piece_end(feed) == 10
    wide = batching._Feed(session, list(range(10)), n_logits=9, fed=2)
    assert scheduler._piece_end(wide) == 10  # fewer tokens left than predictions needed: all at once
    with pytest.raises(ConfigurationError, match="max_step_tokens must be >= 1, got 0"):
        BatchScheduler(tiny("llama", 3), max_step_tokens=0)
