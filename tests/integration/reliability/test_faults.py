"""Faults: a pool of two embedded servers, one killed mid-stream and mid-batch, then restarted on its port."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from reliability_helpers import NEW_TOKENS, Replica, make_app, metric

from diffpo_integrations.backends import AlignerPool, TGIAligner
from diffpo_integrations.core import AlignerError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = [("user", "Name three prime numbers and say why they are prime.")]
DRAFT = "2, 3 and 5 are prime numbers: each has exactly two divisors, one and itself."
BATCH = 12
BATCH_NEW_TOKENS = 120
LIMIT_S = 240.0
"""Hang guard only."""


@pytest.fixture
def replicas() -> Iterator[tuple[Replica, Replica]]:
    # A stop gives requests in flight 1 s to finish: the batch below must be cut off mid-generation
    # whatever the machine's speed.
    a, b = Replica(make_app(), graceful_shutdown_s=1), Replica(make_app(), graceful_shutdown_s=1)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _pool(a: Replica, b: Replica) -> AlignerPool:
    members = [TGIAligner(r.url, max_new_tokens=NEW_TOKENS, max_retries=0, timeout=60) for r in (a, b)]
    return AlignerPool(members, failure_threshold=1, cooldown=0.5, fail_policy="open", max_retries=2, backoff=0.1)


async def test_kill_mid_stream_then_mid_batch_then_restart(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    pool = _pool(a, b)

    # 1. Mid-stream: a long stream on A (the first pick of an idle pool), A dies after its first chunk.
    stream = pool.astream(MESSAGES, DRAFT, max_new_tokens=400)
    first = await asyncio.wait_for(anext(stream), LIMIT_S)
    assert first.text
    served_by_a = pool.stats()[a.url].outstanding == 1
    assert served_by_a
    killer = asyncio.ensure_future(asyncio.to_thread(a.stop))
    outcome = "completed"
    try:
        async with asyncio.timeout(LIMIT_S):
            async for _ in stream:
                pass
    except AlignerError as exc:  # documented: after the first chunk a broken stream raises, typed
        outcome = type(exc).__name__
    await asyncio.wait_for(killer, LIMIT_S)
    # The caller's retry of the broken stream goes to the live replica.
    retried = await asyncio.wait_for(pool.aalign(MESSAGES, DRAFT), LIMIT_S)
    assert retried.aligned
    assert retried.endpoint == b.url
    print(f"\nfaults: stream on the killed replica ended with {outcome}; its retry was served by B")

    # 2. Mid-batch: A back, a batch across both, A killed while the batch runs.
    a.start()
    assert (await pool.acheck_health())[a.url]
    await asyncio.sleep(0.6)  # past the cool-down
    assert (await pool.acheck_health())[a.url]
    assert pool.stats()[a.url].state == "closed"
    # Long enough that A's share (decoded together, in one batch) is still running when A's 1 s
    # graceful stop runs out, so those requests really are cut off mid-generation.
    batch = [asyncio.ensure_future(pool.aalign(MESSAGES, DRAFT, max_new_tokens=BATCH_NEW_TOKENS)) for _ in range(BATCH)]
    await asyncio.sleep(0.3)
    await asyncio.wait_for(asyncio.to_thread(a.stop), LIMIT_S)
    results = await asyncio.wait_for(asyncio.gather(*batch), LIMIT_S)
    served = Counter(r.endpoint if r.aligned else "flagged draft" for r in results)
    print(f"faults: batch of {BATCH} with A killed mid-batch: {dict(served)}; pool stats {pool.stats()}")
    assert len(results) == BATCH
    assert all(r.aligned or (r.text == DRAFT and r.error) for r in results)
    assert served[b.url] > 0
    assert pool.stats()[a.url].failures >= 1  # A's in-flight requests failed, and were served elsewhere

    # 3. Restart A on the same port: a health probe brings it back, and it serves again.
    a.start()
    started = time.monotonic()
    while not (await pool.acheck_health())[a.url] or pool.stats()[a.url].state != "closed":
        assert time.monotonic() - started < 30, pool.stats()
        await asyncio.sleep(0.1)
    back_after = time.monotonic() - started
    results = await asyncio.wait_for(asyncio.gather(*(pool.aalign(MESSAGES, DRAFT) for _ in range(4))), LIMIT_S)
    print(
        f"faults: A restarted on its port, back in rotation {back_after:.2f} s later; served {Counter(r.endpoint for r in results)}"
    )
    assert a.url in {r.endpoint for r in results}
    assert metric(b.url, "diffpo_admitted_requests") == 0
