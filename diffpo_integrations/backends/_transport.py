"""The one send path of the remote backends: error mapping, SSE parsing, retries and deadlines.

Every request of ``TGIAligner``, ``OpenAICompatAligner`` and ``AlignerPool`` (sync, async,
streamed, health probe) goes through :class:`Transport`, which runs it on the transport loop
(:mod:`._loop`) under one :class:`RetryPolicy` and one deadline:

- the deadline bounds the whole call, retries and waits included, in all four call styles; when
  it runs out the call raises :class:`AlignerTimeoutError` at once, even if the server is silent;
- ``timeout`` bounds one attempt;
- errors for which :func:`~diffpo_integrations.core.policy.is_retried` holds are retried with
  jittered exponential backoff (honouring ``Retry-After``), through ``tenacity``;
- a stream is retried only before its first byte; after that its errors go to the consumer.
"""

from __future__ import annotations

import contextvars
import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import anyio
import httpx2
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from diffpo_integrations.backends import _loop
from diffpo_integrations.core.errors import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    ConfigurationError,
    error_from_tgi_payload,
)
from diffpo_integrations.core.policy import is_retried
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult

__all__ = [
    "RetryPolicy",
    "Transport",
    "TransportCalls",
    "call_deadline",
    "current_call_deadline",
    "fail_at",
    "map_error",
    "parse_sse_line",
    "raise_for_answer",
    "retry_after_seconds",
]

T = TypeVar("T")

_USER_AGENT = "diffpo-integrations"

_CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("diffpo_call_deadline", default=None)


@contextmanager
def call_deadline(at: float | None) -> Iterator[None]:
    """Bound the requests started in this block by ``at`` (``time.monotonic()`` seconds) too.

    A pool uses it to give each member its share of the pool's own deadline.
    """
    token = _CALL_DEADLINE.set(at)
    try:
        yield
    finally:
        _CALL_DEADLINE.reset(token)


def current_call_deadline() -> float | None:
    """The deadline :func:`call_deadline` set around this call (``time.monotonic()`` seconds), if any."""
    return _CALL_DEADLINE.get()


def retry_after_seconds(headers: Any) -> float | None:
    """The ``Retry-After`` header in seconds, when it is a number."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _decode_payload(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except Exception:
        return response.text or f"HTTP {response.status_code}"


def raise_for_answer(response: httpx2.Response, endpoint: str) -> None:
    """Raise the typed error for a failed HTTP answer (body already read)."""
    if response.status_code < 400:
        return
    raise error_from_tgi_payload(
        response.status_code,
        _decode_payload(response),
        endpoint=endpoint,
        retry_after=retry_after_seconds(response.headers),
    )


def map_error(exc: BaseException, endpoint: str) -> BaseException:
    """Map an ``httpx2`` or socket exception into the error tree; others come back unchanged."""
    if isinstance(exc, AlignerError):
        return exc
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return AlignerTimeoutError(f"the aligner at {endpoint} did not answer in time: {exc}", endpoint=endpoint)
    if isinstance(exc, httpx2.TransportError | ConnectionError):
        return AlignerConnectionError(f"could not reach the aligner at {endpoint}: {exc}", endpoint=endpoint)
    if isinstance(exc, httpx2.InvalidURL | httpx2.UnsupportedProtocol):
        return AlignerConnectionError(f"cannot send to {endpoint}: {exc}", endpoint=endpoint)
    return exc


def parse_sse_line(line: str | bytes) -> dict[str, Any] | None:
    """Parse one Server-Sent Events line; ``None`` for blank, comment, non-data and ``[DONE]`` lines.

    Raises:
        AlignerError: the event is an error event (``{"error": ...}``), as TGI sends mid-stream.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    line = line.strip()
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    event = json.loads(data)
    if isinstance(event, dict) and "error" in event and event.get("error"):
        raise error_from_tgi_payload(500, event)
    return event if isinstance(event, dict) else {"data": event}


class RetryPolicy:
    """Retries with jittered exponential backoff, honouring ``Retry-After``, within a deadline.

    Args:
        max_retries: retries after the first attempt.
        backoff: first delay in seconds; doubles each retry (times a jitter factor in 0.5-1).
        max_backoff: ceiling of one delay.
        deadline: seconds for the whole call, retries included; ``None`` for no limit.
        clock: monotonic clock, in seconds (injectable for tests).
        sleep, asleep: how to wait between attempts (injectable for tests).
        jitter: returns a number in [0, 1) scaling the jitter (injectable for tests).

    When no retry fits before the deadline, the last error is raised. When the deadline runs out
    *during* an async attempt (every backend request is one), :class:`AlignerTimeoutError` is.
    """

    def __init__(
        self,
        max_retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        deadline: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.deadline = deadline
        self.clock = clock
        self.sleep = sleep
        self.asleep = asleep or anyio.sleep
        self.jitter = jitter

    def deadline_at(self) -> float | None:
        """This call's deadline on :attr:`clock`: the policy's own, or a caller's tighter one."""
        own = None if self.deadline is None else self.clock() + self.deadline
        outer = _CALL_DEADLINE.get()
        if outer is None or self.clock is not time.monotonic:
            return own
        return outer if own is None else min(own, outer)

    def _wait(self, state: RetryCallState) -> float:
        delay = min(self.max_backoff, self.backoff * 2 ** (state.attempt_number - 1)) * (0.5 + self.jitter() / 2)
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        return max(delay, float(retry_after)) if isinstance(retry_after, int | float) else float(delay)

    def _stop(self, deadline_at: float | None) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > self.max_retries:
                return True
            return deadline_at is not None and self.clock() + state.upcoming_sleep >= deadline_at

        return stop

    def _options(self, deadline_at: float | None) -> dict[str, Any]:
        return {
            "stop": self._stop(deadline_at),
            "wait": self._wait,
            "retry": retry_if_exception(is_retried),
            "reraise": True,
        }

    def call(self, fn: Callable[[], T], endpoint: str, deadline_at: float | None = None) -> T:
        """Run ``fn`` with retries; errors are mapped into the tree.

        ``fn`` is not interrupted: give it the deadline itself (every :class:`Transport` request
        reads :func:`call_deadline`).
        """
        deadline_at = self.deadline_at() if deadline_at is None else deadline_at

        def attempt() -> T:
            if deadline_at is not None and self.clock() >= deadline_at:
                raise _deadline_error(endpoint, self.deadline)
            try:
                return fn()
            except Exception as exc:
                raise map_error(exc, endpoint) from exc

        return Retrying(sleep=self.sleep, **self._options(deadline_at))(attempt)

    async def acall(
        self, fn: Callable[[], Awaitable[T]], endpoint: str, deadline_at: float | None = None, *, cut: bool = True
    ) -> T:
        """Async :meth:`call`; the deadline cuts an attempt that is still running (unless ``cut`` is false:
        ``fn`` enforces it itself)."""
        deadline_at = self.deadline_at() if deadline_at is None else deadline_at

        async def attempt() -> T:
            try:
                with fail_at(deadline_at if cut else None, self.clock):
                    result = await fn()
            except TimeoutError as exc:
                if deadline_at is not None and self.clock() >= deadline_at:
                    raise _deadline_error(endpoint, self.deadline) from exc
                raise map_error(exc, endpoint) from exc
            except Exception as exc:
                raise map_error(exc, endpoint) from exc
            return result

        retrying = AsyncRetrying(sleep=self.asleep, **self._options(deadline_at))
        return await retrying(attempt)


def _deadline_error(endpoint: str, seconds: float | None) -> AlignerTimeoutError:
    limit = f"of {seconds} s " if seconds is not None else ""
    return AlignerTimeoutError(f"the deadline {limit}ran out before {endpoint} answered", endpoint=endpoint)


def fail_at(
    deadline_at: float | None, clock: Callable[[], float] = time.monotonic
) -> AbstractContextManager[anyio.CancelScope]:
    """A cancel scope raising ``TimeoutError`` at ``deadline_at`` (never, for ``None``)."""
    if deadline_at is None:
        return anyio.fail_after(None)
    return anyio.fail_after(max(deadline_at - clock(), 0.0))


class Transport:
    """One backend's HTTP: base URL, headers, per-attempt ``timeout``, the retry policy and deadline.

    Args:
        base_url: the server's root URL.
        headers: sent with every request (``Authorization``...).
        timeout: seconds for one attempt (connect, send, wait, read); ``None`` for no limit.
        retry: the :class:`RetryPolicy` (its ``deadline`` bounds each whole call).
    """

    def __init__(self, base_url: str, *, headers: dict[str, str], timeout: float | None, retry: RetryPolicy) -> None:
        self.base_url = base_url
        self.endpoint = base_url
        self.headers = {"User-Agent": _USER_AGENT, **headers}
        self.timeout = timeout
        self.retry = retry

    # -- one attempt (on the transport loop) --------------------------------------------------------

    def _build(self, client: httpx2.AsyncClient, method: str, path: str, body: Any) -> httpx2.Request:
        return client.build_request(method, self.base_url + path, json=body, headers=self.headers)

    async def _send(
        self, method: str, path: str, body: Any, deadline_at: float | None, *, stream: bool, ok: tuple[int, ...] = ()
    ) -> httpx2.Response:
        client = await _loop.http_client()
        attempt_at = None if self.timeout is None else time.monotonic() + self.timeout
        cut = (
            attempt_at if deadline_at is None else (deadline_at if attempt_at is None else min(deadline_at, attempt_at))
        )
        response: httpx2.Response | None = None
        try:
            with fail_at(cut):
                response = await client.send(self._build(client, method, path, body), stream=True)
                if not stream or response.status_code >= 400:
                    await response.aread()
            assert response is not None
        except TimeoutError as exc:
            if response is not None:
                await response.aclose()
            if deadline_at is not None and time.monotonic() >= deadline_at:
                raise _deadline_error(self.endpoint, self.retry.deadline) from exc
            msg = f"the aligner at {self.endpoint} did not answer within timeout={self.timeout} s"
            raise AlignerTimeoutError(msg, endpoint=self.endpoint) from exc
        except BaseException as exc:
            if response is not None:
                await response.aclose()
            mapped = map_error(exc, self.endpoint)
            if mapped is exc:
                raise
            raise mapped from exc
        if response.status_code >= 400 and response.status_code not in ok:
            raise_for_answer(response, self.endpoint)
        return response

    async def request(
        self, method: str, path: str, body: Any = None, *, deadline_at: float | None, ok: tuple[int, ...] = ()
    ) -> httpx2.Response:
        """Send one request with retries, within ``deadline_at``; raise the typed error of a failed answer.

        ``ok`` lists error statuses to return instead of raising (``404`` for an optional route).
        Runs on the transport loop: call it from a coroutine given to :meth:`call` or :meth:`acall`.
        """
        return await self.retry.acall(
            lambda: self._send(method, path, body, deadline_at, stream=False, ok=ok), self.endpoint, deadline_at
        )

    async def lines(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        deadline_at: float | None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[str]:
        """The answer's lines as they arrive, within ``deadline_at``; retried only before the first byte.

        ``headers``, when given, receives the answer's headers before the first line.
        """
        response = await self.retry.acall(
            lambda: self._send(method, path, body, deadline_at, stream=True), self.endpoint, deadline_at
        )
        if headers is not None:
            headers.update(response.headers)
        try:
            lines = response.aiter_lines()
            while True:
                try:
                    with fail_at(deadline_at):
                        line = await lines.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise _deadline_error(self.endpoint, self.retry.deadline) from exc
                except Exception as exc:
                    mapped = map_error(exc, self.endpoint)
                    if mapped is exc:
                        raise
                    raise mapped from exc
                yield line
        finally:
            await response.aclose()

    async def probe(self, path: str, timeout: float) -> bool:  # noqa: ASYNC109 - one probe's own limit
        """Whether ``GET path`` answers 200 within ``timeout`` seconds (one attempt, no retry)."""
        try:
            response = await self._send("GET", path, None, time.monotonic() + timeout, stream=False)
        except AlignerError:  # refused, reset, timed out, an error status: all mean "not serving"
            return False
        return response.status_code == 200

    # -- the four call styles: each runs one coroutine of the backend on the transport loop ---------

    def call(self, fn: Callable[[float | None], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn(deadline_at)`` on the transport loop and wait (sync calls and health probes)."""
        return _loop.run(fn(self.retry.deadline_at()))

    async def acall(self, fn: Callable[[float | None], Coroutine[Any, Any, T]]) -> T:
        """Async :meth:`call`: cancelling the caller cancels the request."""
        return await _loop.arun(fn(self.retry.deadline_at()))

    def stream(self, fn: Callable[[float | None], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate ``fn(deadline_at)`` on the transport loop; closing the iterator closes the HTTP stream."""
        yield from _loop.iterate(fn(self.retry.deadline_at()))

    async def astream(self, fn: Callable[[float | None], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Async :meth:`stream`."""
        async for item in _loop.aiterate(fn(self.retry.deadline_at())):
            yield item


class TransportCalls:
    """The four call styles of a remote backend, each running one coroutine on the transport loop.

    A backend mixes this in before :class:`~diffpo_integrations.core.aligner.BaseAligner` and writes
    the call once, as ``_run_align`` and ``_run_stream`` (which take the call's deadline).
    """

    transport: Transport

    def _connect(
        self,
        base_url: str,
        *,
        timeout: float | None,
        deadline: float | None,
        max_retries: int,
        backoff: float,
        api_key: str | None,
        headers: dict[str, str] | None,
    ) -> None:
        """Set ``base_url``, ``endpoint``, ``timeout``, ``retry``, ``headers`` and the transport.

        Raises:
            ConfigurationError: ``base_url`` is not an http(s) URL.
        """
        if not base_url.startswith(("http://", "https://")):
            msg = f"base_url must start with http:// or https://, got {base_url!r}"
            raise ConfigurationError(msg)
        self.base_url = self.endpoint = base_url
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, deadline=deadline)
        self.api_key = api_key or os.environ.get("DIFFPO_API_KEY")
        self.headers = dict(headers or {})
        if self.api_key:
            self.headers.setdefault("Authorization", f"Bearer {self.api_key}")
        self.transport = Transport(base_url, headers=self.headers, timeout=timeout, retry=self.retry)

    async def _run_align(self, request: AlignRequest, deadline_at: float | None) -> AlignResult:
        raise NotImplementedError

    def _run_stream(self, request: AlignRequest, deadline_at: float | None) -> AsyncIterator[AlignChunk]:
        raise NotImplementedError

    def _align(self, request: AlignRequest) -> AlignResult:
        return self.transport.call(lambda at: self._run_align(request, at))

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        return await self.transport.acall(lambda at: self._run_align(request, at))

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        return self.transport.stream(lambda at: self._run_stream(request, at))

    def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        return self.transport.astream(lambda at: self._run_stream(request, at))
