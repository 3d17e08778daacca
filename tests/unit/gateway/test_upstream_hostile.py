"""Broken or hostile upstreams, each scripted byte by byte: a 502 or 504 naming the upstream, never a hang."""

from __future__ import annotations

import asyncio

import pytest
from scripted_upstream import read_request, scripted

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


async def test_a_content_length_shorter_than_the_body_reads_only_the_declared_bytes() -> None:
    url, error = await _answer_with(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{"a": 1}')
    assert (error.status, str(error)) == (502, f"the upstream {url} answered non-JSON: b'{{\"'")


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
