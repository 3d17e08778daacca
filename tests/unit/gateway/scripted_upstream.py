"""A loopback server that runs a script per connection and controls every byte it sends."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

__all__ = ["Handler", "Scripted", "ok", "read_request", "scripted", "scripted_in_thread"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
"""One connection of a scripted server; the int counts connections from 1."""


def ok(body: bytes = b'{"ok": true}') -> bytes:
    """A complete 200 answer with ``Content-Length``."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, head and body, as it came over the wire (b"" once the client has closed)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


class Scripted:
    """Counts connections and keeps every request it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Scripted]:
    """Serve ``handler`` on a free loopback port; ``url`` names it by ``host``."""
    server = Scripted(handler)
    srv = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=ssl_context)
    port = srv.sockets[0].getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
    try:
        yield server
    finally:
        srv.close()


@contextmanager
def scripted_in_thread(handler: Handler) -> Iterator[Scripted]:
    """:func:`scripted`, served from a thread with its own event loop (for sync tests of the gateway app)."""
    loop = asyncio.new_event_loop()
    entered = scripted(handler)
    server = loop.run_until_complete(entered.__aenter__())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def stop() -> None:
        await entered.__aexit__(None, None, None)
        # Connections the client has not closed yet must not outlive the loop.
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
