"""Every broken or hostile upstream answer the gateway must survive, scripted byte by byte.

Each answer is written after the request was read; those that hang (silence, a trickle) stop once
the client closes the connection, so no server task outlives its test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from scripted_upstream import ok

__all__ = ["HANGING", "HOSTILE", "MAX_BODY", "Answer"]

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""Writes one answer on a connection whose request was read."""

MAX_BODY = 1000
"""The ``max_body`` these answers are meant for: ``over-max-body`` is larger."""


def _raw(data: bytes, *, then_silence: bool = False) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if then_silence:
            await reader.read()  # until the client gives up and closes

    return answer


def _trickled(data: bytes, every: float = 0.1) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in data:
            if reader.at_eof():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)

    return answer


HOSTILE: dict[str, Answer] = {
    "malformed-status-line": _raw(b"SPDY/9 banana\r\n\r\n"),
    "malformed-header": _raw(b"HTTP/1.1 200 OK\r\nBad Header Without Colon\r\n\r\n"),
    "length-longer-than-body": _raw(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"short": 1}'),
    "length-shorter-than-body": _raw(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{"a": 1}'),
    "chunked-broken": _raw(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nzz\r\n'),
    "transfer-encoding-and-content-length": _raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n"
    ),
    "headers-then-silence": _raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", then_silence=True),
    "trickle": _trickled(ok(b'{"id": "' + b"t" * 200 + b'"}')),
    "over-max-body": _raw(ok(b'"' + b"x" * 4 * MAX_BODY + b'"')),
    "http-1.0-read-until-close": _raw(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"id": "old"}'),
}
"""The hostile answers by name; all but HTTP/1.0's are failures (502 or 504)."""

HANGING = ("headers-then-silence", "trickle")
"""The answers that hold a request until the gateway's timeout."""
