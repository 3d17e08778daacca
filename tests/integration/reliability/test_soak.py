"""Soak: hundreds of mixed requests at concurrency 16 against one embedded server.

Valid, invalid, cancelled, streaming and deadline-cut requests are mixed; every one must end in a
result, a typed error, a flagged draft or a cancellation, nothing may hang, the server must be idle
and healthy afterwards, and this process's RSS (server included) must stay flat after a warm-up.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from collections import Counter

import httpx2
import pytest
from reliability_helpers import NEW_TOKENS, metric, rss_mb, wait_idle

from diffpo_integrations.backends import AlignerPool, TGIAligner
from diffpo_integrations.core import DiffPOError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUESTS = int(os.environ.get("DIFFPO_SOAK_REQUESTS", "500"))
WARMUP = max(REQUESTS // 8, 16)
CONCURRENCY = 16
RSS_GROWTH_LIMIT_MB = 50.0
TIME_LIMIT_S = 600.0
"""Only a hang guard: the run takes a minute or two on an idle 2-core machine."""

QUESTIONS = ["Name a prime number.", "What is the capital of France?", "Say hello.", "Give me a colour."]
DRAFTS = ["7 is a prime number.", "Paris is the capital of France.", "Hello there!", "Blue is a nice colour."]
KINDS = ["valid", "stream", "invalid_server", "invalid_client", "invalid_http", "cancel", "deadline", "valid",
         "stream", "invalid_http"]  # fmt: skip


async def test_soak_mixed_requests_are_all_accounted_for(server: str) -> None:
    aligner = TGIAligner(server, max_new_tokens=NEW_TOKENS, timeout=120)
    # A pool whose deadline is far too short: its calls come back as flagged drafts, and the
    # server requests they started are cancelled (the client closes the connection).
    rushed = AlignerPool(
        [TGIAligner(server, max_new_tokens=NEW_TOKENS, max_retries=0)], deadline=0.05, fail_policy="open"
    )
    rng = random.Random(0)
    semaphore = asyncio.Semaphore(CONCURRENCY)
    http = httpx2.AsyncClient(base_url=server, timeout=60)

    async def one(i: int) -> str:
        kind = KINDS[i % len(KINDS)]
        messages = [("user", QUESTIONS[i % 4])]
        draft = DRAFTS[(i // 4) % 4]
        async with semaphore:
            try:
                if kind == "valid":
                    return "result" if (await aligner.aalign(messages, draft)).aligned else "flagged"
                if kind == "stream":
                    chunks = [c async for c in aligner.astream(messages, draft)]
                    assert chunks[-1].result is not None
                    assert "".join(c.text for c in chunks) == chunks[-1].result.text
                    return "result"
                if kind == "invalid_server":  # the server refuses it: 422, a typed error here
                    await aligner.aalign(messages, draft, max_new_tokens=10**7)
                    return "unexpected"
                if kind == "invalid_client":  # refused before any request is sent
                    await aligner.aalign([("robot", "Hi")], "   ")
                    return "unexpected"
                if kind == "invalid_http":
                    body = rng.choice(
                        [b"{not json", b'{"messages": [], "draft": "x"}', b'{"messages": [{"role": "user", "content":'
                         b' [{"type": "image_url"}]}], "draft": "x"}', b'{"inputs": "", "parameters": {}}']
                    )  # fmt: skip
                    path = "/generate" if b"inputs" in body else "/diffpo/align"
                    r = await http.post(path, content=body, headers={"content-type": "application/json"})
                    assert r.status_code == 422, r.text
                    assert set(r.json()) == {"error", "error_type"}
                    return "typed_error"
                if kind == "cancel":
                    task = asyncio.ensure_future(aligner.aalign(messages, draft, max_new_tokens=64))
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    task.cancel()
                    try:
                        await task
                    except asyncio.CancelledError:
                        return "cancelled"
                    return "result"
                result = await rushed.aalign(messages, draft)  # "deadline"
                return "result" if result.aligned else "flagged"
            except DiffPOError:
                return "typed_error"

    async def batch(start: int, stop: int) -> Counter[str]:
        outcomes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(start, stop))), TIME_LIMIT_S)
        return Counter(outcomes)

    async def settled_rss() -> float:
        # Work still in flight (a deadline-cut request the server has not yet seen go) holds
        # memory that is no leak: measure once the server is idle.
        await wait_idle(server)
        gc.collect()
        return rss_mb()

    started = time.perf_counter()
    try:
        outcomes = await batch(0, WARMUP)
        rss_before = await settled_rss()
        outcomes += await batch(WARMUP, REQUESTS)
        elapsed = time.perf_counter() - started
        idle_after = await wait_idle(server)
        rss_after = await settled_rss()
    finally:
        await http.aclose()

    print(
        f"\nsoak: {REQUESTS} requests at concurrency {CONCURRENCY} in {elapsed:.1f} s: {dict(sorted(outcomes.items()))}"
        f"\nsoak: RSS {rss_before:.1f} MB after {WARMUP} warm-up requests -> {rss_after:.1f} MB at the end "
        f"({rss_after - rss_before:+.1f} MB); server idle {idle_after:.2f} s after the last answer; "
        f"server-side cancellations: {metric(server, 'diffpo_cancelled_requests_total'):.0f}"
    )
    assert sum(outcomes.values()) == REQUESTS
    assert "unexpected" not in outcomes
    assert outcomes["result"] > 0
    assert outcomes["typed_error"] > 0
    assert outcomes["flagged"] + outcomes["cancelled"] > 0
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB
    health = await asyncio.to_thread(httpx2.get, f"{server}/health", timeout=10)
    assert health.status_code == 200
    assert await asyncio.to_thread(metric, server, "diffpo_admitted_requests") == 0
