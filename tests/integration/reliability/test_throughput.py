"""Throughput: aligned requests per second at concurrency 1, 4 and 8 against one embedded server.

Each request aligns a real MT-bench draft (Llama-3-8B-Instruct's answer to one of the first
eight questions) for ``NEW`` new tokens, so the model's work dominates, as it does in use. The
server batches concurrent generations, and the test checks that it did (the largest batch
reaches the concurrency) and that batched answers equal the one-at-a-time answers. Rates are
printed, never asserted on: they depend on the machine (see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from reliability_helpers import metric

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.core import AlignResult
from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_LEVEL = int(os.environ.get("DIFFPO_THROUGHPUT_REQUESTS", "16"))
NEW = int(os.environ.get("DIFFPO_THROUGHPUT_NEW_TOKENS", "16"))
LIMIT_S = 600.0


def _mt_bench_pairs(count: int) -> list[tuple[str, str]]:
    with mt_bench_questions_path().open() as f:
        questions = {q["question_id"]: q["turns"][0] for q in map(json.loads, f)}
    with mt_bench_answers_path("llama-3-it-vanilla").open() as f:
        answers = [json.loads(line) for line in f][:count]
    return [(questions[a["question_id"]], a["choices"][0]["turns"][0]) for a in answers]


PAIRS = _mt_bench_pairs(8)


async def _rate(aligner: TGIAligner, concurrency: int) -> tuple[float, dict[int, AlignResult]]:
    semaphore = asyncio.Semaphore(concurrency)
    results: dict[int, AlignResult] = {}

    async def one(i: int) -> None:
        question, draft = PAIRS[i % len(PAIRS)]
        async with semaphore:
            results[i] = await aligner.aalign([("user", question)], draft)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(PER_LEVEL))), LIMIT_S)
    return PER_LEVEL / (time.perf_counter() - started), results


async def test_throughput_at_concurrency_1_4_8(server: str) -> None:
    aligner = TGIAligner(server, max_new_tokens=NEW, keep_prefix_tokens=6)
    await aligner.aalign([("user", PAIRS[0][0])], PAIRS[0][1])  # warm-up: route discovery, first allocations
    rates: dict[int, float] = {}
    answers: dict[int, dict[int, AlignResult]] = {}
    for concurrency in (1, 4, 8):
        rates[concurrency], answers[concurrency] = await _rate(aligner, concurrency)
    print(
        f"\nthroughput ({PER_LEVEL} MT-bench requests per level, {NEW} new tokens each, {os.cpu_count()} CPUs): "
        + ", ".join(f"c={c}: {r:.2f} req/s ({r / rates[1]:.2f}x)" for c, r in rates.items())
    )
    # Batching changes how fast, never what: every request got its one-at-a-time answer.
    for concurrency in (4, 8):
        for i, result in answers[concurrency].items():
            assert result.details["token_ids"] == answers[1][i].details["token_ids"], (concurrency, i)
    assert all(r.generated_tokens == NEW for r in answers[1].values())
    assert metric(server, "diffpo_largest_batch") == 8
