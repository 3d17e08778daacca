"""Admission, cancellation and authentication on real servers that share the one loaded SmolLM2."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError, OverloadedError

from diffpo_integrations.server import ServerConfig, create_app
from diffpo_integrations.server.testing import serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG_RUN = {"inputs": "Count from one to one thousand:", "parameters": {"max_new_tokens": 2000}}
"""Far longer than any test waits: 2000 tokens take about a minute even at SmolLM2's best CPU speed."""
FREED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def tiny_queue(loaded: Any) -> Iterator[str]:
    config = ServerConfig(max_concurrent_requests=1, max_waiting=0, retry_after_s=2, api_key=None)
    with serve_in_thread(create_app(loaded, config)) as url:
        yield url


def _metric(base_url: str, name: str) -> int:
    metrics = httpx2.get(f"{base_url}/metrics").text
    return int(next(line for line in metrics.splitlines() if line.startswith(name + " ")).split()[1])


def _wait_until_free(base_url: str) -> float:
    started = time.monotonic()
    while _metric(base_url, "diffpo_admitted_requests") and time.monotonic() - started < FREED_WITHIN_S:
        time.sleep(0.05)
    assert _metric(base_url, "diffpo_admitted_requests") == 0
    return time.monotonic() - started


def test_full_queue_answers_429_then_a_closed_stream_frees_it(tiny_queue: str) -> None:
    cancelled = _metric(tiny_queue, "diffpo_cancelled_requests_total")
    with httpx2.stream("POST", f"{tiny_queue}/generate_stream", json=LONG_RUN, timeout=60) as running:
        lines = running.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # generating now
        r = httpx2.post(f"{tiny_queue}/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "2"
        assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        with pytest.raises(OverloadedError, match=r"^Model is overloaded$"):
            InferenceClient(base_url=tiny_queue).text_generation("Hi", max_new_tokens=1)
    # The client left after one token of 2000: the generation is cancelled at its next token.
    assert _wait_until_free(tiny_queue) < FREED_WITHIN_S
    assert _metric(tiny_queue, "diffpo_cancelled_requests_total") == cancelled + 1
    assert InferenceClient(base_url=tiny_queue).text_generation("Hi", max_new_tokens=1)


def test_abandoned_non_stream_request_is_cancelled(tiny_queue: str) -> None:
    cancelled = _metric(tiny_queue, "diffpo_cancelled_requests_total")
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(f"{tiny_queue}/generate", json=LONG_RUN, timeout=1.5)
    assert _wait_until_free(tiny_queue) < FREED_WITHIN_S
    assert _metric(tiny_queue, "diffpo_cancelled_requests_total") == cancelled + 1


def test_api_key(loaded: Any) -> None:
    with serve_in_thread(create_app(loaded, ServerConfig(api_key="k3y"))) as url:
        assert InferenceClient(base_url=url, api_key="k3y").text_generation("Hi", max_new_tokens=1)
        with pytest.raises(HfHubHTTPError) as info:
            InferenceClient(base_url=url, api_key="wrong").text_generation("Hi", max_new_tokens=1)
        assert info.value.response.status_code == 401
        bare = httpx2.post(f"{url}/generate", json={"inputs": "Hi"})
        assert bare.status_code == 401
        assert bare.json() == {"error": "missing or invalid API key: send `Authorization: Bearer <key>`"}
        assert httpx2.get(f"{url}/health").status_code == 200
