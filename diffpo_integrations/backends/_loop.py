"""The transport's event loop: one background thread that runs every HTTP request of the backends.

Sync, async and streaming calls all run the same coroutine here, so a deadline is enforced the
same way in all four call styles (an ``anyio`` cancel scope, which also cuts a request that is
stuck waiting on a silent server), and one shared ``httpx2.AsyncClient`` serves them all.

The thread starts on the first request, not on import. :func:`close_http_clients` closes the
shared client; it also runs at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx2

__all__ = [
    "ClientFactory",
    "aiterate",
    "arun",
    "close_http_clients",
    "http_client",
    "iterate",
    "run",
    "set_client_factory",
    "use_client_factory",
]

T = TypeVar("T")

ClientFactory = Callable[[], httpx2.AsyncClient]
"""Builds the ``httpx2.AsyncClient`` every backend request goes through (proxies, certificates, mocks)."""


def _default_factory() -> httpx2.AsyncClient:
    # No redirects: a POST answered with a redirect is a misconfigured URL, and should say so.
    # The proxy rule of both legs (loopback direct, then the environment's): see _net.proxy_for.
    from diffpo_integrations.backends._net import RoutedTransport, ssl_context

    transport = RoutedTransport(verify=ssl_context())
    return httpx2.AsyncClient(timeout=None, follow_redirects=False, trust_env=False, transport=transport)


class _Runtime:
    """The loop thread and the shared client; every field is guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.factory: ClientFactory = _default_factory
        self.client: httpx2.AsyncClient | None = None
        self.client_factory: ClientFactory | None = None
        self.exit_hook = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None or self.loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="diffpo-transport", daemon=True)
                thread.start()
                self.loop = loop
                if not self.exit_hook:
                    atexit.register(close_http_clients)
                    self.exit_hook = True
            return self.loop


_RUNTIME = _Runtime()


async def http_client() -> httpx2.AsyncClient:
    """The shared client (built by the current factory); call it on the transport loop only."""
    with _RUNTIME.lock:
        stale = None
        if _RUNTIME.client is None or _RUNTIME.client_factory is not _RUNTIME.factory or _RUNTIME.client.is_closed:
            stale = _RUNTIME.client
            _RUNTIME.client = _RUNTIME.factory()
            _RUNTIME.client_factory = _RUNTIME.factory
        client = _RUNTIME.client
    if stale is not None and not stale.is_closed:
        await stale.aclose()
    return client


def set_client_factory(factory: ClientFactory | None) -> ClientFactory:
    """Make the backends build their HTTP client with ``factory`` (``None``: the default); return the previous one."""
    with _RUNTIME.lock:
        previous = _RUNTIME.factory
        _RUNTIME.factory = factory or _default_factory
    return previous


@contextmanager
def use_client_factory(factory: ClientFactory) -> Iterator[None]:
    """Use ``factory`` while the block runs, then restore the factory that was there before."""
    previous = set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)
        close_http_clients()


def close_http_clients() -> None:
    """Close the shared HTTP client; the next request builds a new one."""
    with _RUNTIME.lock:
        client, _RUNTIME.client = _RUNTIME.client, None
        loop = _RUNTIME.loop
    if client is None or client.is_closed or loop is None or loop.is_closed() or not loop.is_running():
        return
    future = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
    try:
        future.result(timeout=5)
    except (concurrent.futures.TimeoutError, RuntimeError):  # pragma: no cover - interpreter shutting down
        future.cancel()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the transport loop and wait for it; interrupting the wait cancels it."""
    loop = _RUNTIME.get_loop()
    if _on_transport_thread(loop):
        coro.close()
        msg = "a sync aligner call was made from the transport thread itself (from an HTTP event hook?); use aalign"
        raise RuntimeError(msg)
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on the transport loop; cancelling the caller cancels it there."""
    future = asyncio.run_coroutine_threadsafe(coro, _RUNTIME.get_loop())
    try:
        return await asyncio.wrap_future(future)
    except BaseException:
        future.cancel()
        raise


def _on_transport_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_END = object()


async def _pump(items: AsyncIterator[T], deliver: Callable[[object], None]) -> None:
    """Drive ``items`` in one task (so its HTTP context stays in the task that opened it)."""
    try:
        async for item in items:
            deliver(item)
    except BaseException as exc:
        deliver(_Failed(exc))
        if not isinstance(exc, Exception):
            raise
    else:
        deliver(_END)
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _unwrap(item: object) -> object:
    if isinstance(item, _Failed):
        if isinstance(item.error, asyncio.CancelledError):
            raise item.error
        raise item.error.with_traceback(item.error.__traceback__)
    return item


def iterate(items: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator on the transport loop from sync code; closing the iterator cancels it."""
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    future = asyncio.run_coroutine_threadsafe(_pump(items, inbox.put), _RUNTIME.get_loop())
    try:
        while (item := _unwrap(inbox.get())) is not _END:
            yield item  # type: ignore[misc]
    finally:
        future.cancel()


async def aiterate(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """Iterate an async iterator on the transport loop from another loop; leaving early cancels it."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[object] = asyncio.Queue()

    def deliver(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the consumer's loop is closed: nobody is left to read
            loop.call_soon_threadsafe(inbox.put_nowait, item)

    future = asyncio.run_coroutine_threadsafe(_pump(items, deliver), _RUNTIME.get_loop())
    try:
        while (item := _unwrap(await inbox.get())) is not _END:
            yield item  # type: ignore[misc]
    finally:
        future.cancel()
