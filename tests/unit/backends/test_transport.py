"""The shared HTTP plumbing: SSE parsing, error mapping, retries."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx2
import pytest

from diffpo_integrations.backends._transport import (
    RetryPolicy,
    map_error,
    parse_sse_line,
    raise_for_answer,
    retry_after_seconds,
)
from diffpo_integrations.core import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    GenerationError,
    IncompleteGenerationError,
    OverloadedError,
    ServerValidationError,
)

ENDPOINT = "http://tgi.test:8080"

# -- parse_sse_line ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ('data: {"token": {"id": 5, "text": "Hi"}}', {"token": {"id": 5, "text": "Hi"}}),
        ('data:{"text": "x"}', {"text": "x"}),
        (b'data: {"text": "bytes"}\n', {"text": "bytes"}),
        ('  data: {"text": "padded"}  \r\n', {"text": "padded"}),
        ("data: [1, 2]", {"data": [1, 2]}),
        ('data: {"error": null, "text": "ok"}', {"error": None, "text": "ok"}),
        ('data: {"error": "", "text": "ok"}', {"error": "", "text": "ok"}),
        (": keep-alive comment", None),
        ("", None),
        ("\n", None),
        ("data:", None),
        ("data: [DONE]", None),
        ("data:[DONE]", None),
        ("event: message", None),
        ("id: 7", None),
    ],
)
def test_parse_sse_line(line: str | bytes, event: dict[str, Any] | None) -> None:
    assert parse_sse_line(line) == event


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        ('{"error": "Request failed during generation: OOM", "error_type": "generation"}', GenerationError),
        ('{"error": "Model is overloaded", "error_type": "overloaded"}', OverloadedError),
        ('{"error": "Input validation error", "error_type": "validation"}', ServerValidationError),
        ('{"error": "cut short", "error_type": "incomplete_generation"}', IncompleteGenerationError),
        ('{"error": "something"}', AlignerError),
    ],
)
def test_parse_sse_error_events_raise_the_typed_error(payload: str, cls: type[AlignerError]) -> None:
    with pytest.raises(AlignerError) as info:
        parse_sse_line("data:" + payload)
    assert type(info.value) is cls
    assert str(info.value) == json.loads(payload)["error"]


# -- retry_after_seconds / raise_for_answer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after": "0"}, 0.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str] | None, seconds: float | None) -> None:
    assert retry_after_seconds(httpx2.Headers(headers) if headers is not None else None) == seconds


def _response(status: int, **kwargs: Any) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("POST", ENDPOINT + "/generate"), **kwargs)


def test_raise_for_answer() -> None:
    raise_for_answer(_response(200, json={"generated_text": "x"}), ENDPOINT)
    with pytest.raises(OverloadedError) as over:
        raise_for_answer(
            _response(429, json={"error": "busy", "error_type": "overloaded"}, headers={"Retry-After": "4"}), ENDPOINT
        )
    assert (over.value.status, over.value.endpoint, over.value.retry_after, str(over.value)) == (
        429,
        ENDPOINT,
        4.0,
        "busy",
    )
    with pytest.raises(AlignerConnectionError) as gateway:
        raise_for_answer(_response(502, text="Bad Gateway"), ENDPOINT)
    assert str(gateway.value) == "Bad Gateway"
    with pytest.raises(AlignerError) as empty:
        raise_for_answer(_response(500, content=b""), ENDPOINT)
    assert type(empty.value) is AlignerError
    assert str(empty.value) == "HTTP 500"


# -- map_error ---------------------------------------------------------------------------------------------


def test_map_error_timeouts_and_connection_errors() -> None:
    read = map_error(httpx2.ReadTimeout("read timed out"), ENDPOINT)
    assert type(read) is AlignerTimeoutError
    assert str(read) == f"the aligner at {ENDPOINT} did not answer in time: read timed out"
    assert type(map_error(TimeoutError("t"), ENDPOINT)) is AlignerTimeoutError
    connect = map_error(httpx2.ConnectError("[Errno 111] Connection refused"), ENDPOINT)
    assert type(connect) is AlignerConnectionError
    assert str(connect) == f"could not reach the aligner at {ENDPOINT}: [Errno 111] Connection refused"
    assert connect.endpoint == ENDPOINT
    assert connect.retryable
    assert type(map_error(ConnectionResetError("reset"), ENDPOINT)) is AlignerConnectionError
    assert type(map_error(httpx2.RemoteProtocolError("peer closed"), ENDPOINT)) is AlignerConnectionError


def test_map_error_passes_other_errors_through() -> None:
    ours = GenerationError("x", endpoint="e")
    assert map_error(ours, ENDPOINT) is ours
    bug = KeyError("token")
    assert map_error(bug, ENDPOINT) is bug
    cancelled = asyncio.CancelledError()
    assert map_error(cancelled, ENDPOINT) is cancelled


# -- RetryPolicy ---------------------------------------------------------------------------------------------


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``"ok"``."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or httpx2.ConnectError("refused")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"

    async def acall(self) -> str:
        await asyncio.sleep(0)
        return self()


@pytest.fixture
def sleeps() -> list[float]:
    """The delays a :func:`policy` waited (recorded instead of slept)."""
    return []


def policy(sleeps: list[float], **kwargs: Any) -> RetryPolicy:
    """A sync policy that records its delays in ``sleeps``; jitter pinned to its top (factor 1)."""
    return RetryPolicy(sleep=sleeps.append, jitter=lambda: 1.0, **kwargs)


def test_call_retries_until_success(sleeps: list[float]) -> None:
    fn = Flaky(3)
    assert policy(sleeps, max_retries=3, backoff=0.1, max_backoff=0.3).call(fn, ENDPOINT) == "ok"
    assert fn.calls == 4
    assert sleeps == pytest.approx([0.1, 0.2, 0.3])  # doubling, capped at max_backoff


def test_call_gives_up_after_max_retries(sleeps: list[float]) -> None:
    fn = Flaky(10)
    with pytest.raises(AlignerConnectionError) as info:
        policy(sleeps, max_retries=2, backoff=0.1).call(fn, ENDPOINT)
    assert fn.calls == 3
    assert len(sleeps) == 2
    assert info.value.endpoint == ENDPOINT
    assert isinstance(info.value.__cause__, httpx2.ConnectError)


def test_call_honours_retry_after(sleeps: list[float]) -> None:
    fn = Flaky(1, OverloadedError("busy", status=429, retry_after=2.0))
    assert policy(sleeps, max_retries=1, backoff=0.01).call(fn, ENDPOINT) == "ok"
    assert sleeps == [2.0]


def test_call_does_not_retry_non_retryable_or_foreign_errors(sleeps: list[float]) -> None:
    fn = Flaky(5, GenerationError("OOM", status=424))
    with pytest.raises(GenerationError):
        policy(sleeps, max_retries=5).call(fn, ENDPOINT)
    assert fn.calls == 1
    bug = Flaky(5, KeyError("x"))
    with pytest.raises(KeyError):
        policy(sleeps, max_retries=5).call(bug, ENDPOINT)
    assert bug.calls == 1
    assert sleeps == []


def test_call_stops_at_the_deadline(sleeps: list[float]) -> None:
    fn = Flaky(10, OverloadedError("busy", retry_after=5.0))
    with pytest.raises(OverloadedError):
        policy(sleeps, max_retries=10, backoff=0.01, deadline=1.0).call(fn, ENDPOINT)
    # The next delay would pass the deadline, so the policy gives up at once.
    assert fn.calls == 1
    assert sleeps == []


async def test_acall_retries_until_success() -> None:
    fn = Flaky(2)
    assert await RetryPolicy(max_retries=2, backoff=0.001).acall(fn.acall, ENDPOINT) == "ok"
    assert fn.calls == 3


async def test_acall_gives_up_and_maps_the_error() -> None:
    fn = Flaky(10, httpx2.ReadTimeout("slow"))
    with pytest.raises(AlignerTimeoutError):  # not retryable
        await RetryPolicy(max_retries=3, backoff=0.001).acall(fn.acall, ENDPOINT)
    assert fn.calls == 1
    fn = Flaky(10, IncompleteGenerationError("cut", status=500))
    with pytest.raises(IncompleteGenerationError):
        await RetryPolicy(max_retries=2, backoff=0.001).acall(fn.acall, ENDPOINT)
    assert fn.calls == 3


async def test_acall_deadline_cancels_a_slow_call() -> None:
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    started = time.monotonic()
    with pytest.raises(AlignerTimeoutError) as info:
        await RetryPolicy(max_retries=3, deadline=0.2).acall(slow, ENDPOINT)
    assert time.monotonic() - started < 2.0
    assert info.value.endpoint == ENDPOINT
