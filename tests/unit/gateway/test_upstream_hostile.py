"""Broken or hostile upstreams, each scripted byte by byte: a 502 or 504 naming the upstream, never a hang."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
from fastapi.testclient import TestClient
from hostile_upstreams import HANGING, HOSTILE, MAX_BODY
from scripted_upstream import ok, read_request, scripted, scripted_in_thread

from diffpo_integrations.backends.testing import mock_tgi
from diffpo_integrations.gateway import GatewayConfig, create_gateway_app
from diffpo_integrations.gateway.upstream import Upstream
from diffpo_integrations.gateway.wire import GatewayError

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def _answer_with(raw: bytes, *, then_sleep: float = 0.0, timeout: float = 5.0) -> tuple[str, GatewayError]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(then_sleep)

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=timeout)
        with pytest.raises(GatewayError) as info:
            await upstream.chat(BODY, {})
        await upstream.aclose()
    return server.url + "/v1", info.value


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"SPDY/9 banana\r\n\r\n", id="malformed-status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nBad Header Without Colon\r\n\r\n", id="malformed-header"),
        pytest.param(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"short": 1}', id="length-longer-than-body"),
        pytest.param(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nzz\r\n', id="chunked-broken"),
    ],
)
async def test_a_broken_answer_is_a_502_naming_the_upstream(raw: bytes) -> None:
    url, error = await _answer_with(raw)
    assert error.status == 502
    assert str(error).startswith(f"could not reach the upstream {url}: ") or str(error).startswith(
        f"the upstream {url} answered non-JSON"
    )


async def test_a_content_length_shorter_than_the_body_is_a_502_on_the_bytes_past_it() -> None:
    # llhttp reads the bytes past the declared length as the next answer's status line.
    url, error = await _answer_with(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{"a": 1}')
    assert (error.status, str(error)) == (
        502,
        f"could not reach the upstream {url}: Bad status line: Expected HTTP/, RTSP/ or ICE/: b'{{\"a\": 1}}'",
    )


async def test_transfer_encoding_and_content_length_together_are_a_502() -> None:
    url, error = await _answer_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n"
    )
    assert (error.status, str(error)) == (
        502,
        f"the upstream {url} answered with both Transfer-Encoding and Content-Length, which HTTP forbids",
    )


async def test_headers_then_silence_is_a_504_after_the_timeout() -> None:
    url, error = await _answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", then_sleep=30, timeout=0.3)
    assert (error.status, str(error)) == (
        504,
        f"the upstream {url} did not answer in time: no answer within 0.3 s",
    )


async def test_an_http_1_0_answer_read_until_close_is_read_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"id": "old"}')

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=5)
        assert await upstream.chat(BODY, {}) == {"id": "old"}
        assert await upstream.chat(BODY, {}) == {"id": "old"}
        await upstream.aclose()
    assert server.connections == 2


def _connections(upstream: Upstream) -> tuple[int, int]:
    """The upstream pool's connections: busy with an answer, and idle (kept for the next request)."""
    connector = upstream._session.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return len(connector._acquired), sum(len(idle) for idle in connector._conns.values())


LIMIT = 2
"""Connections the upstream pool may hold in the leak tests."""


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_answers_leak_no_connection(name: str, streamed: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        # The first LIMIT connections are hostile; a later one is a healthy upstream.
        while await read_request(reader):
            if n > LIMIT:
                writer.write(ok(b'{"id": "good"}'))
                continue
            await HOSTILE[name](reader, writer)
            return

    async def once(upstream: Upstream) -> object:
        if not streamed:
            return await upstream.chat(BODY, {})
        async with upstream.stream_chat(BODY, {}) as events:
            return [event async for event in events]

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=0.5, max_body=MAX_BODY, max_connections=LIMIT)
        outcomes = await asyncio.gather(*(once(upstream) for _ in range(LIMIT)), return_exceptions=True)
        left = _connections(upstream)
        good = await upstream.chat(BODY, {})
        await upstream.aclose()
    failures = [o for o in outcomes if not isinstance(o, dict | list)]
    assert all(isinstance(o, GatewayError) and o.status in (502, 504) for o in failures), failures
    # No connection is left busy with a broken answer. Only an answer that aiohttp received whole
    # (over the gateway's limit, but framed cleanly) goes back to the pool; the upstream closed it
    # meanwhile, so aiohttp drops it when next picked, and the good answer came on a new one.
    assert left == (0, LIMIT if name == "over-max-body" else 0)
    assert good == {"id": "good"}
    assert server.connections == LIMIT + 1


@pytest.mark.parametrize("name", HANGING)
def test_the_gateway_answers_health_while_a_request_hangs_on_the_upstream(name: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while request := await read_request(reader):
            if not request.startswith(b"GET /v1/models "):
                await HOSTILE[name](reader, writer)
                return
            writer.write(ok(b'{"object": "list", "data": []}'))

    timeout = 2.0
    with mock_tgi(), scripted_in_thread(handler) as server:
        config = GatewayConfig(upstream=server.url, aligner_urls=["http://mock-tgi"], upstream_timeout=timeout)
        with TestClient(create_gateway_app(config)) as client, ThreadPoolExecutor(1) as pool:
            hanging = pool.submit(client.post, "/v1/chat/completions", json=BODY)
            time.sleep(0.3)  # the chat request is now waiting on the upstream
            waits = []
            for _ in range(3):
                started = time.monotonic()
                health = client.get("/health")
                waits.append(time.monotonic() - started)
                assert (health.status_code, health.json()["upstream"]["ok"]) == (200, True)
                assert not hanging.done()
            answer = hanging.result(timeout=timeout + 5)
    assert max(waits) < 0.5 * timeout, waits
    assert (answer.status_code, answer.json()["error"]["type"]) == (504, "upstream_timeout")
    assert answer.json()["error"]["message"] == (
        f"the upstream {server.url}/v1 did not answer in time: no answer within {timeout:g} s"
    )
