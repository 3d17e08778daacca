"""Serving an app with uvicorn, in the foreground (:func:`run_server`) or in a thread (:func:`serve_in_thread`)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from diffpo_integrations.server.config import ServerConfig

__all__ = ["connection_options", "graceful_server", "listening_socket", "run_server", "serve_in_thread"]

_GRACEFUL_SHUTDOWN_S = 10
_ERROR_MARGIN_S = 1.0
"""Seconds before uvicorn's forced cancellation when unfinished generations are ended with an error."""


def run_server(config: ServerConfig | None = None, app: Any = None) -> None:
    """Serve until interrupted (Ctrl-C stops gracefully: open streams get up to 10 s to finish).

    Args:
        config: settings; ``ServerConfig()`` (SmolLM2 on 127.0.0.1:8080) when ``None``.
        app: an app from :func:`~diffpo_integrations.server.create_app`; built from ``config`` when ``None``.
    """
    import uvicorn

    from diffpo_integrations.server.app import create_app

    cfg = config or ServerConfig()
    served = app if app is not None else create_app(cfg)
    uvicorn_config = uvicorn.Config(
        served,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        **connection_options(cfg),
    )
    graceful_server(uvicorn_config, served).run()


def graceful_server(config: Any, app: Any) -> Any:
    """A ``uvicorn.Server`` whose shutdown ends unfinished generations with a proper error.

    uvicorn gives requests in flight ``timeout_graceful_shutdown`` seconds, then cancels them: a
    waiting request would get a plain-text 500 and a stream would be cut without a word. One second
    before that, this server cancels the generations still running instead, so each request
    answers TGI's ``incomplete_generation`` (a 500 JSON body, or the stream's last event) and the
    client knows to retry elsewhere.
    """
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            grace = self.config.timeout_graceful_shutdown
            state = getattr(getattr(app, "state", None), "diffpo", None)
            handle = None
            if grace is not None and state is not None:
                loop = asyncio.get_running_loop()
                handle = loop.call_later(max(0.0, grace - _ERROR_MARGIN_S), state.worker.cancel_admitted)
            try:
                await super().shutdown(sockets)
            finally:
                if handle is not None:
                    handle.cancel()

    return _GracefulServer(config)


def connection_options(config: ServerConfig) -> dict[str, Any]:
    """uvicorn settings for ``config``'s connection limits: head and idle timeouts, the connection cap."""
    from diffpo_integrations.server.guards import connection_limits, guarded_protocol

    cap, backlog = connection_limits(config.max_connections)
    return {
        "http": guarded_protocol(config.header_timeout_s, cap),
        "backlog": backlog,
        "timeout_keep_alive": config.keep_alive_timeout_s,
        # One incomplete request head may not grow past this (h11's own default is 16 KB).
        "h11_max_incomplete_event_size": 64 * 1024,
    }


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``0``: a free port) for uvicorn to listen on.

    Made with ``IPPROTO_TCP`` named: asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only on
    connections whose socket says it is TCP. With a protocol of ``0`` every answer written in two
    pieces (head, then body) waited for the client's delayed ACK: about 40 ms a request on Linux.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 300.0, graceful_shutdown_s: int = 5
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL once ``/health`` answers 200.

    The socket is bound before the thread starts (port ``0`` picks a free one, with no race), and
    the server is always stopped on exit, even when the body raises.

    Args:
        app: an ASGI app (usually from :func:`~diffpo_integrations.server.create_app`).
        host: interface to bind; loopback by default.
        port: ``0`` for a free port.
        timeout: seconds to wait for start-up (model loading included).
        graceful_shutdown_s: on exit, how long requests in flight may run before they are cut off.

    Example:
        >>> with serve_in_thread(create_app(loaded)) as base_url:  # doctest: +SKIP
        ...     InferenceClient(base_url=base_url).text_generation("Hi", max_new_tokens=5)
    """
    import httpx2
    import uvicorn

    sock = listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    app_config = getattr(getattr(app, "state", None), "config", None)
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful_shutdown_s,
        **connection_options(app_config if isinstance(app_config, ServerConfig) else ServerConfig()),
    )
    server = graceful_server(config, app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="diffpo-uvicorn", daemon=True)
    thread.start()
    base_url = f"http://{host}:{bound_port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if not thread.is_alive():
                msg = "the server thread exited during start-up (see the log above)"
                raise RuntimeError(msg)
            if server.started:
                try:
                    if httpx2.get(f"{base_url}/health", timeout=5.0, trust_env=False).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
            if time.monotonic() > deadline:
                msg = f"the server did not become healthy within {timeout:.0f} s"
                raise TimeoutError(msg)
            time.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
