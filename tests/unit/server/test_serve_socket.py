"""The socket ``serve_in_thread`` listens on gives connections with Nagle's algorithm off.

With Nagle on, an answer written as head then body waits for the client's delayed ACK (about
40 ms a request on Linux): a gateway in front of a 20 ms upstream answered in 64 ms instead of 22.
"""

from __future__ import annotations

import asyncio
import socket

from diffpo_integrations.server.serve import listening_socket


async def _accepted_nodelay(sock: socket.socket) -> int:
    """TCP_NODELAY of a connection asyncio accepts on ``sock``."""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            conn = transport.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await loop.create_server(Probe, sock=sock)
    port = sock.getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(seen, 5)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_connections_accepted_on_the_listening_socket_have_nagle_off() -> None:
    sock = listening_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    assert asyncio.run(_accepted_nodelay(sock)) == 1


def test_a_socket_without_its_protocol_named_keeps_nagle_on() -> None:
    # Why listening_socket names IPPROTO_TCP: asyncio leaves such connections as they are.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    assert asyncio.run(_accepted_nodelay(sock)) == 0
