"""Bounds on what an upstream may send: ``--max-upstream-body`` bytes, and ``--upstream-timeout`` for the whole answer."""

from __future__ import annotations

import asyncio
import time

import pytest
from gateway_fakes import MESSAGES, ScriptedUpstream, completion, gateway
from scripted_upstream import Handler, ok, read_request, scripted

from diffpo_integrations.gateway.upstream import Upstream
from diffpo_integrations.gateway.wire import GatewayError

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
LIMIT = 1000
GOOD = ok(b'{"id": "good"}')


def _chunked(*pieces: bytes, status: bytes = b"200 OK", kind: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % (status, kind)
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _first_then_good(first: bytes, closed: list[int]) -> Handler:
    """The first connection's first answer is ``first``; every later answer is :data:`GOOD`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        answer = first if n == 1 else GOOD
        try:
            while await read_request(reader):
                writer.write(answer)
                await writer.drain()  # fails once the client has closed a connection cut off mid-answer
                answer = GOOD
        finally:
            closed.append(n)

    return handler


async def _read_stream(upstream: Upstream, seen: list[object]) -> None:
    async with upstream.stream_chat(BODY, {}) as events:
        async for event in events:
            seen.append(event)


READ_AHEAD = 1 << 20
"""More than aiohttp reads ahead of its consumer (it stops reading the socket past 128 KiB unread): an
answer this long is really cut off. One that arrives whole before the limit trips has ended its
framing cleanly, and aiohttp rightly hands its connection back to the pool."""

BIG = b'{"pad": "' + b"x" * READ_AHEAD + b'"}'


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(ok(BIG), id="content-length"),
        pytest.param(_chunked(BIG[:600], BIG[600:1200], BIG[1200:]), id="chunked"),
        pytest.param(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(BIG), BIG), id="error-body"),
        pytest.param(_chunked(BIG[:700], BIG[700:], status=b"503 Busy"), id="chunked-error-body"),
    ],
)
async def test_an_answer_over_the_limit_is_a_502_and_its_connection_is_closed(first: bytes) -> None:
    closed: list[int] = []
    async with scripted(_first_then_good(first, closed)) as server:
        upstream = Upstream(server.url + "/v1", timeout=5, max_body=LIMIT)
        with pytest.raises(GatewayError) as info:
            await upstream.chat(BODY, {})
        after = await upstream.chat(BODY, {})
        await upstream.aclose()
    assert (info.value.status, str(info.value)) == (
        502,
        f"the upstream {server.url}/v1 answered more than {LIMIT} bytes: raise --max-upstream-body",
    )
    assert info.value.body["error"]["type"] == "upstream_error"
    assert after == {"id": "good"}
    # The cut-off connection was closed, not handed back to the pool: the good answer came on a new one.
    assert (server.connections, closed[0]) == (2, 1)


async def test_a_stream_over_the_limit_in_total_is_a_502_after_the_events_within_it() -> None:
    event = b'data: {"n": "' + b"y" * 83 + b'"}\n\n'
    assert len(event) == 100
    closed: list[int] = []
    stream = _chunked(*[event] * (READ_AHEAD // len(event)), kind=b"text/event-stream")
    async with scripted(_first_then_good(stream, closed)) as server:
        upstream = Upstream(server.url + "/v1", timeout=5, max_body=LIMIT)
        seen: list[object] = []
        with pytest.raises(GatewayError) as info:
            await _read_stream(upstream, seen)
        after = await upstream.chat(BODY, {})
        await upstream.aclose()
    assert (info.value.status, str(info.value)) == (
        502,
        f"the upstream {server.url}/v1 answered more than {LIMIT} bytes: raise --max-upstream-body",
    )
    assert 0 < len(seen) <= LIMIT // len(event)
    assert after == {"id": "good"}
    assert (server.connections, closed[0]) == (2, 1)


async def test_an_answer_at_the_limit_is_read_and_its_connection_kept() -> None:
    body = b'{"pad": "' + b"z" * (LIMIT - 11) + b'"}'
    assert len(body) == LIMIT
    closed: list[int] = []
    async with scripted(_first_then_good(ok(body), closed)) as server:
        upstream = Upstream(server.url + "/v1", timeout=5, max_body=LIMIT)
        first = await upstream.chat(BODY, {})
        await upstream.chat(BODY, {})
        await upstream.aclose()
    assert first == {"pad": "z" * (LIMIT - 11)}
    assert server.connections == 1


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^max_body must be at least 1 byte, got 0$"):
        Upstream("http://127.0.0.1:9/v1", timeout=1, max_body=0)


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.25)


TIMEOUT = 1.0
"""Longer than the trickle's 0.25 s between bytes, so only a deadline over the whole answer trips."""


@pytest.mark.parametrize(
    ("at_once", "trickled"),
    [
        pytest.param(b"", ok(b'{"id": "' + b"t" * 200 + b'"}'), id="trickled-head-and-body"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", b" " * 500, id="trickled-body"),
    ],
)
async def test_an_answer_trickled_byte_by_byte_is_a_504_within_the_timeout(at_once: bytes, trickled: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(at_once)
        await _trickle(writer, trickled)

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=TIMEOUT)
        started = time.monotonic()
        with pytest.raises(GatewayError) as info:
            await upstream.chat(BODY, {})
        elapsed = time.monotonic() - started
        await upstream.aclose()
    assert (info.value.status, str(info.value)) == (
        504,
        f"the upstream {server.url}/v1 did not answer in time: no answer within 1 s",
    )
    assert TIMEOUT <= elapsed < TIMEOUT + 2


async def test_a_stream_event_trickled_byte_by_byte_is_a_504_within_the_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {"n": 1}\n\n')
        await _trickle(writer, b'data: {"n": 2, "pad": "' + b"p" * 100 + b'"}\n\n')

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=TIMEOUT)
        seen: list[object] = []
        started = time.monotonic()
        with pytest.raises(GatewayError) as info:
            await _read_stream(upstream, seen)
        elapsed = time.monotonic() - started
        await upstream.aclose()
    assert seen == [{"n": 1}]
    assert (info.value.status, str(info.value)) == (
        504,
        f"the upstream {server.url}/v1 did not answer in time: no event for 1 s",
    )
    assert TIMEOUT <= elapsed < TIMEOUT + 2


async def test_a_stream_longer_than_the_timeout_is_read_whole_while_its_events_keep_coming() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for n in range(8):
            writer.write(b'data: {"n": %d}\n\n' % n)
            await writer.drain()
            await asyncio.sleep(0.25)
        writer.write(b"data: [DONE]\n\n")

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=TIMEOUT)
        started = time.monotonic()
        async with upstream.stream_chat(BODY, {}) as events:
            seen = [event async for event in events]
        elapsed = time.monotonic() - started
        await upstream.aclose()
    assert seen == [{"n": n} for n in range(8)]
    assert elapsed > TIMEOUT


def test_the_gateway_answers_a_502_in_openai_shape_for_an_upstream_answer_over_its_limit() -> None:
    upstream = ScriptedUpstream([completion(["w" * 2 * LIMIT])])
    with gateway(upstream, max_upstream_body=LIMIT) as (client, _):
        response = client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 502
    assert response.json() == {
        "error": {
            "message": f"the upstream {upstream.url} answered more than {LIMIT} bytes: raise --max-upstream-body",
            "type": "upstream_error",
            "param": None,
            "code": None,
        }
    }
