"""What keeps one client from freezing or exhausting the server: the body limit and the connection guard.

- :class:`BodyLimit` (ASGI middleware) answers 413 as soon as a request announces, or has sent, more
  than ``max_body_bytes``: a ``Content-Length`` over the limit is refused before any of the body is
  read, and a chunked body is cut off at the first chunk past the limit, so memory never holds more
  than the limit per request.
- :func:`guarded_protocol` builds uvicorn's HTTP protocol with a request-head timeout and a cap on
  open connections. A connection that has not sent a complete request head within
  ``header_timeout_s`` (slowloris, a half-open socket), or falls silent that long while sending a
  body, is closed; when a new connection would pass
  ``max_connections``, the connection that has waited longest without a request is closed to make
  room (the newcomer when every connection is busy). A health probe therefore always gets in, and
  the process never runs out of file descriptors while the cap is below ``ulimit -n``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "connection_limits", "guarded_protocol", "payload_too_large"]

_log = logging.getLogger(__name__)

_RESERVED_FILES = 32
"""File descriptors left to the process besides client connections (a served model holds about 10)."""
_DEFAULT_BACKLOG = 2048
"""uvicorn's listen backlog."""


def payload_too_large(limit: int) -> bytes:
    """The JSON body of a 413 answer."""
    message = f"the request body is larger than the server's limit of {limit} bytes (--max-body-size)"
    return json.dumps({"error": message, "error_type": "validation"}).encode()


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over ``max_bytes``, before it is read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = 0
                if announced > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Answer now and tell the app the client is gone: it stops reading and its
                    # own answer, if any, is dropped below.
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = payload_too_large(self.max_bytes)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _ConnectionGuard:
    """Mixin over a uvicorn HTTP protocol: request-head timeout and the connection cap."""

    header_timeout_s: float = 10.0
    max_connections: int = 256

    # Provided by the uvicorn protocol this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()
        if len(self.connections) > self.max_connections:
            victim = min(
                (c for c in self.connections if isinstance(c, _ConnectionGuard) and c._awaiting_head()),
                key=lambda c: c._head_wait_since,
                default=self,
            )
            victim._drop()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        self._head_wait_since = self.loop.time()
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)  # type: ignore[misc]

    def _awaiting_head(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._awaiting_head():
            self._drop()
            return
        if getattr(self.cycle, "more_body", False):
            # The body is still coming: a client that stops sending it holds the connection
            # (and its request) as long as a silent head would, so the same limit applies to
            # every silence between its pieces.
            silent = self.loop.time() - getattr(self, "_last_data", self._head_wait_since)
            if silent >= self.header_timeout_s:
                self._drop()
            else:
                self._head_timer = self.loop.call_later(self.header_timeout_s - silent, self._head_timeout)

    def _drop(self) -> None:
        if not self.transport.is_closing():
            # abort(): nothing useful is buffered for a connection that never sent a request.
            self.transport.abort()


def connection_limits(max_connections: int) -> tuple[int, int]:
    """``(connection cap, listen backlog)`` that fit under the process's open-file limit.

    asyncio accepts up to ``backlog`` pending connections at each turn of the event loop, before the
    guard sees any of them; a descriptor must be free for each, or accepting fails (``EMFILE``) and the server stops
    accepting for a second at a time, health probes included. So the open connections plus one
    burst of accepts must stay under ``ulimit -n``: the cap is lowered (with a warning) when it
    does not leave room for that.
    """
    backlog = _DEFAULT_BACKLOG
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - platforms without rlimits
        return max_connections, backlog
    if soft == resource.RLIM_INFINITY:
        return max_connections, backlog
    room = max(4, soft - _RESERVED_FILES)
    cap = min(max_connections, max(2, room // 2))
    if cap < max_connections:
        _log.warning(
            "max_connections lowered from %d to %d to stay under the open-file limit (ulimit -n %d)",
            max_connections,
            cap,
            soft,
        )
    # Accepted sockets wait up to a few loop turns before the guard sees them, and the listener may
    # fire on each turn: a quarter of the free room per burst keeps several bursts under the limit.
    return cap, max(2, min(backlog, (room - cap) // 4))


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with :class:`_ConnectionGuard`.

    Pass the result as ``uvicorn.Config(http=...)``.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    attrs = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type(f"Guarded{Base.__name__}", (_ConnectionGuard, Base), attrs)
