"""Throughput: aligned requests per second at concurrency 1, 4 and 8 against one embedded server.

Printed, never asserted on time: the figures depend on the machine (see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from reliability_helpers import NEW_TOKENS

from diffpo_integrations.backends import TGIAligner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_LEVEL = int(os.environ.get("DIFFPO_THROUGHPUT_REQUESTS", "16"))
LIMIT_S = 300.0
MESSAGES = [("user", "What is the capital of France?")]
DRAFT = "The capital of France is Paris, a city on the Seine."


async def _rate(aligner: TGIAligner, concurrency: int) -> float:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            result = await aligner.aalign(MESSAGES, DRAFT)
            assert result.generated_tokens > 0

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(PER_LEVEL))), LIMIT_S)
    return PER_LEVEL / (time.perf_counter() - started)


async def test_throughput_at_concurrency_1_4_8(server: str) -> None:
    aligner = TGIAligner(server, max_new_tokens=NEW_TOKENS, keep_prefix_tokens=4)
    await aligner.aalign(MESSAGES, DRAFT)  # warm-up: route discovery, first-call allocations
    rates = {c: await _rate(aligner, c) for c in (1, 4, 8)}
    print(
        f"\nthroughput ({PER_LEVEL} requests per level, {NEW_TOKENS} new tokens each, {os.cpu_count()} CPUs): "
        + ", ".join(f"c={c}: {r:.2f} req/s ({r / rates[1]:.2f}x)" for c, r in rates.items())
    )
    assert all(r > 0 for r in rates.values())
