"""The upstream leg's HTTP/1.1 client, against scripted loopback servers that control every byte."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from diffpo_integrations.gateway.http1 import HTTP1Client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
"""One connection of a scripted server; the int counts connections from 1."""

ANSWER = b'{"ok": true}'


def ok(body: bytes = ANSWER, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, head and body, as it came over the wire (b"" once the client has closed)."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


class Scripted:
    """A loopback server running ``handler`` per connection; records requests and connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_client = asyncio.Event()
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Scripted]:
    server = Scripted(handler)
    srv = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=ssl_context)
    port = srv.sockets[0].getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        srv.close()


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while request := await read_request(reader):
        writer.write(ok(b'{"path": "%s"}' % request.split(b" ")[1]))


async def test_requests_reuse_one_keep_alive_connection_and_send_an_exact_head() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while request := await read_request(reader):
            seen.append(request)
            writer.write(ok())

    async with scripted(handler) as server:
        client = HTTP1Client(server.url + "/v1/", timeout=5, user_agent="ua/1")
        bodies = []
        for _ in range(3):
            response = await client.request("POST", "/chat/completions", body=b'{"a":1}', headers={"X-Key": "v"})
            assert (response.status, response.headers["content-type"]) == (200, "application/json")
            bodies.append(await response.read())
        await client.aclose()
    assert bodies == [ANSWER] * 3
    assert server.connections == 1
    port = server.url.rsplit(":", 1)[1]
    assert (
        seen[0]
        == (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: ua/1\r\nAccept: */*\r\n"
            'Content-Type: application/json\r\nContent-Length: 7\r\nX-Key: v\r\n\r\n{"a":1}'
        ).encode()
    )


async def test_a_chunked_answer_is_read_whole_and_line_by_line() -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(3)] + [b"data: [DONE]\n\n"]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for event in events:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        whole = await (await client.request("GET", "/a")).read()
        lines = [line async for line in (await client.request("GET", "/b")).lines()]
        await client.aclose()
    assert whole == b"".join(events)
    assert lines == [line for event in events for line in (event[:-1], b"\n")]
    assert server.connections == 1


async def test_an_answer_without_length_ends_at_the_close_and_its_connection_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        assert await (await client.request("GET", "/")).read() == b"all of it"
        assert await (await client.request("GET", "/")).read() == b"all of it"
        await client.aclose()
    assert server.connections == 2


async def test_a_body_cut_short_is_a_connection_error_not_a_short_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        response = await client.request("GET", "/")
        with pytest.raises(
            ConnectionError, match=r"^the upstream closed the connection before the answer was complete$"
        ):
            await response.read()
        await client.aclose()


async def test_a_reused_connection_closed_by_the_upstream_is_retried_once_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(b"%d" % n))
        await writer.drain()
        await read_request(reader)  # the first connection then closes without answering its second request

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        first = await (await client.request("POST", "/", body=b"{}")).read()
        second = await (await client.request("POST", "/", body=b"{}")).read()
        await client.aclose()
    assert (first, second, server.connections) == (b"1", b"2", 2)


async def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        with pytest.raises(
            ConnectionError, match=r"^the upstream closed the connection before the answer was complete$"
        ):
            await client.request("POST", "/", body=b"{}")
        await client.aclose()
    assert server.connections == 1


async def test_a_silent_upstream_times_out_after_timeout_seconds() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"^no answer within 0\.2 s$"):
            await client.request("GET", "/")
        assert time.monotonic() - started < 2
        await client.aclose()


async def test_a_stalled_body_times_out_but_a_slow_reader_does_not() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            await asyncio.sleep(30)
        writer.write(ok())

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=0.2)
        stalled = await client.request("GET", "/")
        with pytest.raises(TimeoutError, match=r"^the answer stalled for 0\.2 s$"):
            await stalled.read()
        # Time spent by the caller before reading is not the upstream's stall.
        waiting = await client.request("GET", "/")
        await asyncio.sleep(0.4)
        assert await waiting.read() == ANSWER
        await client.aclose()


async def test_an_unreachable_upstream_raises_an_os_error() -> None:
    async with scripted(answer_each) as server:
        url = server.url
    client = HTTP1Client(url, timeout=5)
    with pytest.raises(ConnectionRefusedError):
        await client.request("GET", "/")


async def test_a_malformed_answer_is_a_connection_error_naming_the_cause() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"SPDY/9 banana\r\n\r\n")
        await asyncio.sleep(1)

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        with pytest.raises(ConnectionError, match=r"^the upstream sent a malformed HTTP answer \("):
            await client.request("GET", "/")
        await client.aclose()


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    client = HTTP1Client("http://127.0.0.1:9", timeout=5)
    with pytest.raises(ValueError, match=r"^the header 'Authorization' for the upstream contains a line break$"):
        asyncio.run(client.request("GET", "/", headers={"Authorization": "Bearer k\r\nX-Evil: 1"}))


@pytest.mark.parametrize("url", ["ftp://example.com", "127.0.0.1:8080", "http://"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"^the upstream URL must start with http:// or https:// and name a host"):
        HTTP1Client(url, timeout=5)


async def test_leaving_a_stream_early_closes_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 2:
            writer.write(ok())
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"6\r\ndata:\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            if reader.at_eof():
                server.closed_by_client.set()
                return

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        async with await client.request("POST", "/", body=b"{}") as response:
            async for _ in response.lines():
                break
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
        assert await (await client.request("GET", "/")).read() == ANSWER
        await client.aclose()
    assert server.connections == 2


async def test_a_large_unread_body_pauses_the_socket_and_then_arrives_whole() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB, far over the read buffer

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(ok(big))
        await writer.drain()
        await reader.read()  # stay connected: a closed socket reads nothing either

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        response = await client.request("GET", "/")
        await asyncio.sleep(0.2)  # the answer piles up unread: the client must stop reading the socket
        assert not response._connection.transport.is_reading()
        assert await response.read() == big
        await client.aclose()


async def test_an_https_upstream_is_reached_over_tls_and_its_certificate_is_checked() -> None:
    authority = trustme.CA()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_side)
    async with scripted(answer_each, ssl_context=server_side) as server:
        trust = ssl.create_default_context()
        authority.configure_trust(trust)
        trusting = HTTP1Client(server.url + "/v1", timeout=5, ssl_context=trust)
        assert await (await trusting.request("GET", "/models")).read() == b'{"path": "/v1/models"}'
        await trusting.aclose()
        default = HTTP1Client(server.url, timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            await default.request("GET", "/models")
        await default.aclose()


async def test_cancelling_a_request_closes_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        await reader.read()  # until the client goes away
        server.closed_by_client.set()

    async with scripted(handler) as server:
        client = HTTP1Client(server.url, timeout=5)
        task = asyncio.ensure_future(client.request("GET", "/"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
        await client.aclose()
