"""One deadline bounds the whole call in all four call styles, against a server that never answers.

The server accepts the connection and reads the request, then stays silent; ``timeout`` (30 s)
is far above the deadline (2 s), so only the deadline can end these calls in time.
"""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest

from diffpo_integrations.backends import AlignerPool, OpenAICompatAligner, TGIAligner
from diffpo_integrations.backends._loop import use_client_factory
from diffpo_integrations.backends.testing import MockTGIServer
from diffpo_integrations.core import AlignerTimeoutError
from diffpo_integrations.core.aligner import BaseAligner

MESSAGES = [("user", "Name a prime.")]
DRAFT = "7 is a prime number."
DEADLINE = 2.0
TIMEOUT = 30.0
SLACK = 1.5  # generous: the machine is shared; the bug being guarded against waited 30 s


def tgi(url: str) -> BaseAligner:
    return TGIAligner(url, deadline=DEADLINE, timeout=TIMEOUT, max_retries=0, use_align_route=False, template="chatml")


def openai_compat(url: str) -> BaseAligner:
    return OpenAICompatAligner(url, model="m", template="chatml", deadline=DEADLINE, timeout=TIMEOUT, max_retries=0)


def pool(url: str) -> BaseAligner:
    return AlignerPool([TGIAligner(url, timeout=TIMEOUT, max_retries=0)], deadline=DEADLINE, max_retries=0)


def sync_align(aligner: BaseAligner) -> Any:
    return aligner.align(MESSAGES, DRAFT)


def sync_stream(aligner: BaseAligner) -> Any:
    return list(aligner.stream(MESSAGES, DRAFT))


async def async_align(aligner: BaseAligner) -> Any:
    return await aligner.aalign(MESSAGES, DRAFT)


async def async_stream(aligner: BaseAligner) -> Any:
    return [c async for c in aligner.astream(MESSAGES, DRAFT)]


@contextmanager
def healthy_replica() -> Iterator[MockTGIServer]:
    """``http://healthy`` answers from a mock server; every other URL goes to the real (loopback) network."""
    server = MockTGIServer()
    mock = httpx2.MockTransport(lambda request: server.handle(request))
    with use_client_factory(lambda: httpx2.AsyncClient(mounts={"all://healthy": mock})):
        yield server


BACKENDS = [pytest.param(tgi, id="tgi"), pytest.param(openai_compat, id="openai"), pytest.param(pool, id="pool")]


@pytest.mark.parametrize("make", BACKENDS)
@pytest.mark.parametrize("call", [sync_align, sync_stream], ids=["align", "stream"])
def test_sync_calls_stop_at_the_deadline(
    silent_server: str, make: Callable[[str], BaseAligner], call: Callable[[BaseAligner], Any]
) -> None:
    started = time.monotonic()
    with pytest.raises(AlignerTimeoutError):
        call(make(silent_server))
    elapsed = time.monotonic() - started
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + SLACK < TIMEOUT


@pytest.mark.parametrize("make", BACKENDS)
@pytest.mark.parametrize("call", [async_align, async_stream], ids=["aalign", "astream"])
async def test_async_calls_stop_at_the_deadline(
    silent_server: str, make: Callable[[str], BaseAligner], call: Callable[[BaseAligner], Awaitable[Any]]
) -> None:
    started = time.monotonic()
    with pytest.raises(AlignerTimeoutError):
        await call(make(silent_server))
    elapsed = time.monotonic() - started
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + SLACK < TIMEOUT


@pytest.mark.parametrize("call", [sync_align, sync_stream], ids=["align", "stream"])
def test_pool_fails_over_from_a_silent_member_inside_the_deadline(
    silent_server: str, call: Callable[[BaseAligner], Any]
) -> None:
    with healthy_replica() as healthy:
        healthy_member = TGIAligner("http://healthy", max_retries=0)
        # Default timeout (120 s): only the deadline can get the call to the healthy member in time.
        silent = TGIAligner(silent_server, max_retries=0)
        pool = AlignerPool([silent, healthy_member], deadline=DEADLINE, max_retries=0)
        pool._turn = itertools.repeat(0)  # type: ignore[assignment]  # scans start at the silent member
        started = time.monotonic()
        out = call(pool)
        elapsed = time.monotonic() - started
    result = out if not isinstance(out, list) else out[-1].result
    assert result.aligned
    assert result.endpoint == "http://healthy"
    assert elapsed < DEADLINE + SLACK
    assert healthy.requests  # the healthy member served it
    stats = pool.stats()[silent_server]
    assert (stats.failures, stats.consecutive_failures) == (1, 1)  # the timeout counts against the member
    assert stats.last_error is not None
    assert stats.last_error.startswith("AlignerTimeoutError")


@pytest.mark.parametrize("call", [async_align, async_stream], ids=["aalign", "astream"])
async def test_async_pool_fails_over_from_a_silent_member_inside_the_deadline(
    silent_server: str, call: Callable[[BaseAligner], Awaitable[Any]]
) -> None:
    with healthy_replica():
        silent = TGIAligner(silent_server, max_retries=0)
        pool = AlignerPool([silent, TGIAligner("http://healthy", max_retries=0)], deadline=DEADLINE, max_retries=0)
        pool._turn = itertools.repeat(0)  # type: ignore[assignment]
        started = time.monotonic()
        out = await call(pool)
        elapsed = time.monotonic() - started
    result = out if not isinstance(out, list) else out[-1].result
    assert (result.aligned, result.endpoint) == (True, "http://healthy")
    assert elapsed < DEADLINE + SLACK
    assert pool.stats()[silent_server].failures == 1


def test_the_breaker_opens_on_repeated_timeouts(silent_server: str) -> None:
    with healthy_replica():
        silent = TGIAligner(silent_server, max_retries=0)
        pool = AlignerPool(
            [silent, TGIAligner("http://healthy", max_retries=0)], deadline=1.0, max_retries=0, failure_threshold=2
        )
        pool._turn = itertools.repeat(0)  # type: ignore[assignment]
        for _ in range(2):
            assert pool.align(MESSAGES, DRAFT).endpoint == "http://healthy"
        assert pool.stats()[silent_server].state == "open"
        started = time.monotonic()
        assert pool.align(MESSAGES, DRAFT).endpoint == "http://healthy"
        assert time.monotonic() - started < 0.5  # the open member is not tried any more


@pytest.fixture
def stalling_stream_server() -> Iterator[str]:
    """An embedded-server look-alike whose ``/diffpo/align`` stream sends one event, then goes silent."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"model_id": "stall", "diffpo": {"align_route": "/diffpo/align"}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            event = b'data: {"text": "Seven"}\n\n'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            stop.wait(30)  # then silence, with the connection open

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_an_opened_stream_stops_at_the_deadline(stalling_stream_server: str) -> None:
    aligner = TGIAligner(stalling_stream_server, deadline=DEADLINE, timeout=TIMEOUT, max_retries=0)
    seen: list[str] = []
    started = time.monotonic()
    with pytest.raises(AlignerTimeoutError):
        seen.extend(chunk.text for chunk in aligner.stream(MESSAGES, DRAFT))
    assert seen == ["Seven"]
    assert time.monotonic() - started < DEADLINE + SLACK


async def test_an_opened_async_stream_stops_at_the_deadline(stalling_stream_server: str) -> None:
    aligner = TGIAligner(stalling_stream_server, deadline=DEADLINE, timeout=TIMEOUT, max_retries=0)
    seen: list[str] = []
    started = time.monotonic()

    async def drain() -> None:
        async for chunk in aligner.astream(MESSAGES, DRAFT):
            seen.append(chunk.text)

    with pytest.raises(AlignerTimeoutError):
        await drain()
    assert seen == ["Seven"]
    assert time.monotonic() - started < DEADLINE + SLACK
