"""Cancellation and deadlines end to end: a cancelled client call stops the server's generation."""

from __future__ import annotations

import asyncio
import time

import pytest
from reliability_helpers import NEW_TOKENS, metric, wait_idle

from diffpo_integrations.backends import AlignerPool, TGIAligner
from diffpo_integrations.core import AlignerTimeoutError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = 1500
"""Far more tokens than any test waits for: a generation that ends soon after cancelling was cut."""
MESSAGES = [("user", "Count from one to one thousand in words.")]
DRAFT = "One, two, three, four, five, six, seven, eight, nine, ten."
CANCELLED = "diffpo_cancelled_requests_total"


async def _cancelled_count(url: str) -> float:
    return await asyncio.to_thread(metric, url, CANCELLED)


async def _generated(url: str) -> float:
    return await asyncio.to_thread(metric, url, "diffpo_generated_tokens_total")


async def test_cancelled_aalign_stops_the_server_generation(server: str) -> None:
    aligner = TGIAligner(server, max_new_tokens=LONG)
    await aligner.ainfo()
    before, tokens_before = await _cancelled_count(server), await _generated(server)
    task = asyncio.ensure_future(aligner.aalign(MESSAGES, DRAFT))
    await asyncio.sleep(1.0)  # admitted and generating
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    freed = await wait_idle(server)
    assert await _cancelled_count(server) == before + 1
    assert await _generated(server) == tokens_before  # no finished generation was recorded
    print(f"\ncancellation: aalign cancelled; the server was idle {freed:.2f} s later")


async def test_cancelled_astream_closes_its_http_stream(server: str) -> None:
    aligner = TGIAligner(server, max_new_tokens=LONG)
    before = await _cancelled_count(server)
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in aligner.astream(MESSAGES, DRAFT):
            got_first.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(got_first.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    freed = await wait_idle(server)
    assert await _cancelled_count(server) == before + 1
    print(f"cancellation: astream cancelled after its first chunk; the server was idle {freed:.2f} s later")


async def test_deadline_cuts_the_call_and_the_server_work(server: str) -> None:
    aligner = TGIAligner(server, max_new_tokens=LONG, deadline=1.0)
    await aligner.ainfo()
    before = await _cancelled_count(server)
    started = time.perf_counter()
    with pytest.raises(AlignerTimeoutError):
        await aligner.aalign(MESSAGES, DRAFT)
    took = time.perf_counter() - started
    await wait_idle(server)
    assert await _cancelled_count(server) == before + 1
    assert took < 10
    # The pool's deadline behaves the same; fail-open turns it into the flagged draft.
    pool = AlignerPool([TGIAligner(server, max_new_tokens=LONG, max_retries=0)], deadline=1.0, fail_policy="open")
    result = await pool.aalign(MESSAGES, DRAFT)
    assert (result.aligned, result.text) == (False, DRAFT)
    assert result.error is not None
    assert result.error.startswith("AlignerTimeoutError")
    await wait_idle(server)
    assert await _cancelled_count(server) == before + 2
    print(f"deadline: 1 s deadline raised after {took:.2f} s and cancelled the server work; fail-open gave the draft")
    # And a normal call still works afterwards.
    assert (await TGIAligner(server, max_new_tokens=NEW_TOKENS).aalign(MESSAGES, DRAFT)).aligned
