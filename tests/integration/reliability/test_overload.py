"""Overload: more concurrent requests than the server admits get 429 at once; retrying with Retry-After succeeds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from reliability_helpers import NEW_TOKENS, make_app, metric

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.core import OverloadedError
from diffpo_integrations.server.testing import serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONCURRENT = 8
RETRY_AFTER_S = 1
LIMIT_S = 240.0
MESSAGES = [("user", "Name a prime number.")]
DRAFT = "7 is a prime number."
REJECTED = 'diffpo_requests_total{route="/diffpo/align",status="429"}'


@pytest.fixture(scope="module")
def small_queue() -> Iterator[str]:
    """Admits two requests (one generating, one waiting); the rest are answered 429 + Retry-After."""
    app = make_app(max_concurrent_requests=1, max_waiting=1, retry_after_s=RETRY_AFTER_S)
    with serve_in_thread(app) as url:
        yield url


async def _timed(aligner: TGIAligner) -> tuple[str, float, float | None]:
    started = time.perf_counter()
    try:
        await aligner.aalign(MESSAGES, DRAFT)
    except OverloadedError as exc:
        return "429", time.perf_counter() - started, exc.retry_after
    return "ok", time.perf_counter() - started, None


async def test_excess_requests_get_429_quickly(small_queue: str) -> None:
    impatient = TGIAligner(small_queue, max_new_tokens=NEW_TOKENS, max_retries=0)
    await impatient.ainfo()
    outcomes = await asyncio.wait_for(asyncio.gather(*(_timed(impatient) for _ in range(CONCURRENT))), LIMIT_S)
    rejected = [(t, ra) for kind, t, ra in outcomes if kind == "429"]
    served = [t for kind, t, _ in outcomes if kind == "ok"]
    slowest_429 = max(t for t, _ in rejected)
    print(
        f"\noverload: {CONCURRENT} concurrent on a queue of 2: {len(served)} served, {len(rejected)} got 429 "
        f"(slowest 429 after {slowest_429 * 1000:.0f} ms; slowest served after {max(served):.2f} s)"
    )
    assert len(served) >= 2
    assert len(rejected) >= CONCURRENT - 4  # a fast worker may free a slot while the burst arrives
    assert {ra for _, ra in rejected} == {float(RETRY_AFTER_S)}


async def test_retries_honour_retry_after_then_succeed(small_queue: str) -> None:
    before = await asyncio.to_thread(metric, small_queue, REJECTED)
    patient = TGIAligner(small_queue, max_new_tokens=NEW_TOKENS, max_retries=20, backoff=0.05, deadline=LIMIT_S)
    await patient.ainfo()
    started = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(patient.aalign(MESSAGES, DRAFT) for _ in range(CONCURRENT))), LIMIT_S
    )
    elapsed = time.perf_counter() - started
    rejected = await asyncio.to_thread(metric, small_queue, REJECTED) - before
    print(
        f"overload: {CONCURRENT} concurrent with retries: all {len(results)} served in {elapsed:.2f} s "
        f"after {rejected:.0f} answers 429 (Retry-After {RETRY_AFTER_S} s)"
    )
    assert all(r.aligned for r in results)
    assert rejected > 0
    # Each 429 was waited out for at least Retry-After before the retry.
    assert elapsed >= RETRY_AFTER_S
