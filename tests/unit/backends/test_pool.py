"""``AlignerPool``: routing, failover, circuit breaker, health checks, deadlines, fail policy, streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest

from diffpo_integrations.backends import AlignerPool, TGIAligner
from diffpo_integrations.backends.testing import MockTGIServer, mock_transport
from diffpo_integrations.core import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    AuthenticationError,
    ConfigurationError,
    GenerationError,
    IncompleteGenerationError,
    InputError,
    OverloadedError,
    ServerValidationError,
)
from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult

MESSAGES = [("user", "Name a prime.")]
DRAFT = "7 is a prime number."


class Fake(BaseAligner):
    """An in-process member whose calls follow a script: ``None`` succeeds, an exception is raised."""

    def __init__(self, name: str, script: list[BaseException | None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = name
        self.script = list(script or [])
        self.requests: list[AlignRequest] = []
        self.gate: asyncio.Event | None = None
        self.fail_mid_stream: BaseException | None = None
        self.closed_streams = 0
        self.cancelled = 0

    def _next(self, request: AlignRequest) -> AlignResult:
        self.requests.append(request)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return AlignResult(text=f"{self.endpoint}: {request.draft}", draft=request.draft, endpoint="member")

    def _align(self, request: AlignRequest) -> AlignResult:
        return self._next(request)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self._next(request)

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        try:
            result = self._next(request)
            yield AlignChunk(text=result.text[:3])
            if self.fail_mid_stream is not None:
                raise self.fail_mid_stream
            yield AlignChunk(text=result.text[3:], result=result)
        finally:
            self.closed_streams += 1

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        try:
            result = await self._aalign(request)
            yield AlignChunk(text=result.text[:3])
            if self.fail_mid_stream is not None:
                raise self.fail_mid_stream
            if self.gate is not None:
                await asyncio.sleep(3600)
            yield AlignChunk(text=result.text[3:], result=result)
        finally:
            self.closed_streams += 1


@contextmanager
def replicas(**hosts: MockTGIServer | None) -> Iterator[dict[str, MockTGIServer | None]]:
    """Route ``http://<host>`` to its mock server; a host mapped to ``None`` refuses connections."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        server = hosts.get(request.url.host)
        if server is None:
            raise httpx2.ConnectError("connection refused", request=request)
        return server.handle(request)

    with mock_transport(handle):
        yield hosts


def drain(stream: Iterator[AlignChunk], into: list[AlignChunk]) -> None:
    into.extend(stream)


async def adrain(stream: AsyncIterator[AlignChunk], into: list[AlignChunk]) -> None:
    async for chunk in stream:
        into.append(chunk)


# -- routing -----------------------------------------------------------------------------------------------


def test_ties_go_round_robin_and_results_name_the_replica() -> None:
    a, b = Fake("a"), Fake("b")
    with AlignerPool([a, b]) as pool:
        endpoints = [pool.align(MESSAGES, DRAFT).endpoint for _ in range(4)]
        assert sorted(str(e) for e in endpoints) == ["a", "a", "b", "b"]
        assert endpoints[0] != endpoints[1]
        stats = pool.stats()
    assert {name: (s.successes, s.failures, s.outstanding, s.state) for name, s in stats.items()} == {
        "a": (2, 0, 0, "closed"),
        "b": (2, 0, 0, "closed"),
    }


async def test_least_outstanding_routing() -> None:
    a, b = Fake("a"), Fake("b")
    pool = AlignerPool([a, b])
    a.gate = asyncio.Event()
    b.gate = asyncio.Event()
    first = asyncio.create_task(pool.aalign(MESSAGES, DRAFT))
    await asyncio.sleep(0.01)
    busy = next(name for name, s in pool.stats().items() if s.outstanding == 1)
    free = b if busy == "a" else a
    free.gate = None
    results = [await pool.aalign(MESSAGES, DRAFT) for _ in range(3)]
    assert {r.endpoint for r in results} == {free.endpoint}
    (a if busy == "a" else b).gate.set()  # type: ignore[union-attr]
    assert (await first).endpoint == busy


def test_options_are_resolved_once_by_the_pool_and_passed_to_members() -> None:
    a = Fake("a", keep_prefix_tokens=3, max_new_tokens=9)
    pool = AlignerPool([a])
    assert (pool.keep_prefix_tokens, pool.max_new_tokens) == (3, 9)
    pool.align(MESSAGES, DRAFT, max_new_tokens=4)
    assert (a.requests[-1].keep_prefix_tokens, a.requests[-1].max_new_tokens) == (3, 4)
    AlignerPool([a], keep_prefix_tokens=0).align(MESSAGES, DRAFT)
    assert a.requests[-1].keep_prefix_tokens == 0


def test_duplicate_names_are_numbered() -> None:
    pool = AlignerPool([Fake("local"), Fake("local")])
    assert list(pool.stats()) == ["local", "local#1"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"health_interval": 0}, "health_interval"),
        ({"fail_policy": "maybe"}, "fail_policy"),
    ],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        AlignerPool([Fake("a")], **kwargs)


def test_empty_pool_and_bad_members_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        AlignerPool([])
    with pytest.raises(ConfigurationError, match="aligners or base URLs"):
        AlignerPool([object()])  # type: ignore[list-item]


# -- failover ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        AlignerConnectionError("refused"),
        AlignerTimeoutError("slow"),
        OverloadedError("busy", status=429),
        IncompleteGenerationError("cut", status=500),
        GenerationError("oom", status=424),
        AlignerError("bad gateway", status=502),  # any other 5xx
    ],
)
def test_fails_over_on_endpoint_errors(error: Exception) -> None:
    a, b = Fake("a", [error]), Fake("b")
    pool = AlignerPool([a, b], max_retries=0)
    result = pool.align(MESSAGES, DRAFT)  # the first call starts its scan at "a"
    assert (result.aligned, result.endpoint) == (True, "b")
    assert (len(a.requests), len(b.requests)) == (1, 1)


@pytest.mark.parametrize(
    "error",
    [ServerValidationError("too long", status=422), InputError("bad"), AuthenticationError("no", status=401)],
)
def test_does_not_fail_over_on_bad_requests(error: Exception) -> None:
    a, b = Fake("a", [error]), Fake("b", [error])
    pool = AlignerPool([a, b])
    with pytest.raises(type(error)):
        pool.align(MESSAGES, DRAFT)
    assert len(a.requests) + len(b.requests) == 1
    assert all(s.failures == 0 and s.outstanding == 0 for s in pool.stats().values())


def test_failover_over_http_to_a_live_replica() -> None:
    with replicas(dead=None, live=MockTGIServer()):
        pool = AlignerPool(["http://dead", "http://live"], max_retries=0)
        results = [pool.align(MESSAGES, DRAFT) for _ in range(3)]
        assert {r.endpoint for r in results} == {"http://live"}
        assert all(r.aligned and r.text.startswith("7 is") for r in results)
        assert pool.stats()["http://dead"].failures >= 1


async def test_async_failover_over_http() -> None:
    with replicas(dead=None, live=MockTGIServer()):
        pool = AlignerPool(["http://dead", "http://live"], max_retries=0)
        results = await asyncio.gather(*(pool.aalign(MESSAGES, DRAFT) for _ in range(4)))
        assert {r.endpoint for r in results} == {"http://live"}


def test_all_overloaded_retries_honouring_retry_after() -> None:
    with replicas(a=MockTGIServer(failures=[429]), b=MockTGIServer(failures=[429])):
        pool = AlignerPool(["http://a", "http://b"], max_retries=1, backoff=0.01)
        result = pool.align(MESSAGES, DRAFT)
        assert result.aligned
        # Overload is back-pressure, not a fault: the circuits stay closed.
        assert {s.state for s in pool.stats().values()} == {"closed"}


def test_last_error_is_raised_when_every_member_fails() -> None:
    a, b = Fake("a", [GenerationError("x")]), Fake("b", [GenerationError("y")])
    with pytest.raises(GenerationError):
        AlignerPool([a, b], max_retries=0).align(MESSAGES, DRAFT)


# -- circuit breaker and health ------------------------------------------------------------------------------


class Clock:
    """A hand-moved monotonic clock for the circuit breakers' cool-downs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_circuit_opens_after_consecutive_failures_then_one_probe_closes_it() -> None:
    down = AlignerConnectionError("down")
    a, b = Fake("a", [down, down]), Fake("b")
    clock = Clock()
    pool = AlignerPool([a, b], failure_threshold=2, cooldown=10, max_retries=0, clock=clock)
    for _ in range(4):
        assert pool.align(MESSAGES, DRAFT).endpoint == "b" or len(a.requests) <= 2
    assert pool.stats()["a"].state == "open"
    calls = len(a.requests)
    for _ in range(3):
        assert pool.align(MESSAGES, DRAFT).endpoint == "b"
    assert len(a.requests) == calls  # out of rotation during the cool-down
    clock.now += 9.9
    assert {pool.align(MESSAGES, DRAFT).endpoint for _ in range(3)} == {"b"}  # still cooling down
    clock.now += 0.1
    served = {pool.align(MESSAGES, DRAFT).endpoint for _ in range(2)}
    assert "a" in served
    assert pool.stats()["a"].state == "closed"


def test_a_failed_probe_reopens_the_circuit() -> None:
    down = AlignerConnectionError("down")
    a, b = Fake("a", [down, down]), Fake("b")
    clock = Clock()
    pool = AlignerPool([a, b], failure_threshold=1, cooldown=10, max_retries=0, clock=clock)
    pool.align(MESSAGES, DRAFT)
    pool.align(MESSAGES, DRAFT)
    assert pool.stats()["a"].state == "open"
    clock.now += 10
    assert pool.align(MESSAGES, DRAFT).endpoint == "b"  # the probe to "a" failed over to "b"
    assert pool.stats()["a"].state == "open"


def test_no_member_available_raises_a_connection_error() -> None:
    a = Fake("a", [AlignerConnectionError("down")])
    pool = AlignerPool([a], failure_threshold=1, cooldown=60, max_retries=0)
    with pytest.raises(AlignerConnectionError):
        pool.align(MESSAGES, DRAFT)
    with pytest.raises(AlignerConnectionError, match="no aligner endpoint is available"):
        pool.align(MESSAGES, DRAFT)


def test_health_checks_take_members_out_and_bring_them_back() -> None:
    hosts: dict[str, MockTGIServer | None] = {"a": MockTGIServer(), "b": MockTGIServer()}
    with replicas(**hosts) as live:
        clock = Clock()
        pool = AlignerPool(["http://a", "http://b"], cooldown=30, clock=clock)
        assert pool.check_health() == {"http://a": True, "http://b": True}
        live["b"] = None
        assert pool.check_health() == {"http://a": True, "http://b": False}
        assert pool.stats()["http://b"].state == "open"
        assert {pool.align(MESSAGES, DRAFT).endpoint for _ in range(3)} == {"http://a"}
        live["b"] = MockTGIServer()
        assert pool.check_health()["http://b"]
        assert pool.stats()["http://b"].state == "open"  # healthy again, but still cooling down
        clock.now += 30
        assert pool.check_health()["http://b"]
        assert pool.stats()["http://b"].state == "closed"


async def test_async_health_checks() -> None:
    with replicas(a=MockTGIServer(), b=None):
        pool = AlignerPool(["http://a", "http://b", Fake("local")])
        assert await pool.acheck_health() == {"http://a": True, "http://b": False, "local": True}


def test_background_health_thread_runs_and_stops() -> None:
    with replicas(a=MockTGIServer(), b=None):
        pool = AlignerPool(["http://a", "http://b"], health_interval=0.02)
        deadline = time.monotonic() + 5
        while pool.stats()["http://b"].state != "open" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.stats()["http://b"].state == "open"
        pool.close()
        assert pool._health_thread is not None
        assert not pool._health_thread.is_alive()


# -- fail policy and deadlines -----------------------------------------------------------------------------


def test_fail_open_returns_the_draft_flagged() -> None:
    pool = AlignerPool([Fake("a", [GenerationError("boom")])], fail_policy="open", max_retries=0)
    result = pool.align(MESSAGES, DRAFT)
    assert (result.text, result.aligned, result.finish_reason) == (DRAFT, False, "error")
    assert result.error == "GenerationError: boom"


async def test_fail_open_async_and_stream() -> None:
    pool = AlignerPool([Fake("a", [GenerationError("x")] * 3)], fail_policy="open", max_retries=0)
    assert not (await pool.aalign(MESSAGES, DRAFT)).aligned
    chunks = [c async for c in pool.astream(MESSAGES, DRAFT)]
    assert [c.text for c in chunks] == [DRAFT]
    assert chunks[-1].result is not None
    assert not chunks[-1].result.aligned
    sync_chunks = list(pool.stream(MESSAGES, DRAFT))
    assert sync_chunks[-1].result is not None
    assert sync_chunks[-1].result.error == "GenerationError: x"


def test_client_side_input_errors_come_back_flagged_when_failing_open() -> None:
    # The same answer as DiffPOAlign(fail_policy="open") and DiffPOAlignment(fail_policy="open") give.
    pool = AlignerPool([Fake("a")], fail_policy="open")
    result = pool.align([("robot", "Hi")], DRAFT)
    assert (result.text, result.aligned, result.finish_reason) == (DRAFT, False, "error")
    assert result.error == "InputError: message 0 has role 'robot'; use 'system', 'user' or 'assistant'"
    empty = pool.align(MESSAGES, "   ")
    assert (empty.text, empty.aligned) == ("   ", False)
    assert empty.error == "InputError: the draft is empty or whitespace: pass the base model's answer text as the draft"
    with pytest.raises(InputError, match="role"):
        AlignerPool([Fake("a")], fail_policy="closed").align([("robot", "Hi")], DRAFT)


async def test_client_side_input_errors_come_back_flagged_from_every_call_style() -> None:
    pool = AlignerPool([Fake("a")], fail_policy="open")
    assert (await pool.aalign(MESSAGES, "")).error == (
        "InputError: the draft is empty or whitespace: pass the base model's answer text as the draft"
    )
    chunks = list(pool.stream(MESSAGES, ""))
    assert [(c.text, c.result.aligned if c.result else None) for c in chunks] == [("", False)]
    achunks = [c async for c in pool.astream([("robot", "Hi")], DRAFT)]
    assert [(c.text, c.result.aligned if c.result else None) for c in achunks] == [(DRAFT, False)]


async def test_async_deadline_cuts_the_call_and_cancels_the_member() -> None:
    a = Fake("a")
    a.gate = asyncio.Event()  # never set: the member hangs
    pool = AlignerPool([a], deadline=0.2)
    started = time.monotonic()
    with pytest.raises(AlignerTimeoutError):
        await pool.aalign(MESSAGES, DRAFT)
    assert time.monotonic() - started < 2
    assert a.cancelled == 1
    assert pool.stats()["a"].outstanding == 0
    assert pool.stats()["a"].failures == 1  # a member that does not answer in time is a failing member


async def test_async_stream_deadline_raises_after_the_first_chunk() -> None:
    chunks: list[AlignChunk] = []
    pool = AlignerPool([_sleepy_stream()], deadline=0.2, fail_policy="open")
    started = time.monotonic()
    with pytest.raises(AlignerTimeoutError):
        await adrain(pool.astream(MESSAGES, DRAFT), chunks)
    assert time.monotonic() - started < 2
    assert [c.text for c in chunks] == ["sle"]
    assert pool.stats()["sleepy"].outstanding == 0


def _sleepy_stream() -> Fake:
    member = Fake("sleepy")
    member.gate = asyncio.Event()
    member.gate.set()  # aalign passes; the stream then sleeps after the first chunk
    return member


# -- streams -----------------------------------------------------------------------------------------------


def test_stream_fails_over_before_the_first_chunk() -> None:
    a, b = Fake("a", [AlignerConnectionError("down")]), Fake("b")
    pool = AlignerPool([a, b], max_retries=0)
    chunks = list(pool.stream(MESSAGES, DRAFT))
    assert chunks[-1].result is not None
    assert "".join(c.text for c in chunks) == chunks[-1].result.text
    assert chunks[-1].result.endpoint == "b"
    assert (pool.stats()["a"].failures, pool.stats()["b"].successes) == (1, 1)


async def test_async_stream_fails_over_before_the_first_chunk() -> None:
    a, b = Fake("a", [AlignerConnectionError("down")]), Fake("b")
    chunks = [c async for c in AlignerPool([a, b]).astream(MESSAGES, DRAFT)]
    assert chunks[-1].result is not None
    assert chunks[-1].result.aligned
    assert chunks[-1].result.endpoint == "b"


def test_stream_broken_after_the_first_chunk_raises() -> None:
    a, b = Fake("a"), Fake("b")
    a.fail_mid_stream = b.fail_mid_stream = AlignerConnectionError("connection reset")
    pool = AlignerPool([a, b], fail_policy="open")
    seen: list[AlignChunk] = []
    with pytest.raises(AlignerConnectionError, match="reset"):
        drain(pool.stream(MESSAGES, DRAFT), seen)
    assert len(seen) == 1
    assert sum(s.failures for s in pool.stats().values()) == 1


async def test_async_stream_broken_after_the_first_chunk_raises() -> None:
    a, b = Fake("a"), Fake("b")
    a.fail_mid_stream = b.fail_mid_stream = IncompleteGenerationError("cut")
    pool = AlignerPool([a, b], fail_policy="open")
    seen: list[AlignChunk] = []
    with pytest.raises(IncompleteGenerationError):
        await adrain(pool.astream(MESSAGES, DRAFT), seen)
    assert len(seen) == 1
    assert all(s.outstanding == 0 for s in pool.stats().values())


def test_stream_closed_early_releases_the_member() -> None:
    a = Fake("a")
    pool = AlignerPool([a])
    stream = pool.stream(MESSAGES, DRAFT)
    assert isinstance(stream, Generator)
    next(stream)
    stream.close()
    assert a.closed_streams == 1
    assert pool.stats()["a"] == pool.stats()["a"].__class__("a", 0, 0, 0, 0, "closed", None)


async def test_cancelled_astream_closes_the_member_stream() -> None:
    member = _sleepy_stream()
    pool = AlignerPool([member])
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in pool.astream(MESSAGES, DRAFT):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert member.closed_streams == 1
    assert pool.stats()["sleepy"].outstanding == 0


def test_stream_over_http_reports_the_replica() -> None:
    with replicas(dead=None, live=MockTGIServer()):
        pool = AlignerPool([TGIAligner("http://dead", max_retries=0), "http://live"])
        chunks = list(pool.stream(MESSAGES, DRAFT))
        assert chunks[-1].result is not None
        assert chunks[-1].result.endpoint == "http://live"
