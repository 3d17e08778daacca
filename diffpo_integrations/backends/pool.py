"""``AlignerPool``: several aligner replicas behind one :class:`~diffpo_integrations.core.Aligner`.

Each call goes to the member with the fewest requests in flight (ties: round robin) and fails
over to the next member when one cannot serve; a member that keeps failing is taken out for a
cool-down (a circuit breaker per endpoint). ``GET /health`` probes, on demand or from a background
thread, take dead members out and bring restarted ones back.

Fails over: connection errors, a member's timeout, 429, incomplete generation, 424 and other 5xx.
Does not: :class:`InputError` / :class:`ServerValidationError` (a bad request is bad everywhere),
:class:`AuthenticationError`, :class:`ConfigurationError` (fix the setup). Streams fail over only
before their first chunk; a stream that breaks later raises (text handed out cannot be taken back).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from huggingface_hub import get_async_session, get_session

from diffpo_integrations.backends._transport import RetryPolicy
from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.core.errors import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    AuthenticationError,
    ConfigurationError,
    GenerationError,
    IncompleteGenerationError,
    InputError,
    OverloadedError,
)
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, FailPolicy

__all__ = ["AlignerPool", "CircuitState", "EndpointStats"]

CircuitState = Literal["closed", "open", "half_open"]
"""``closed``: in rotation; ``open``: out for a cool-down; ``half_open``: one probe request in flight."""


@dataclass(frozen=True)
class EndpointStats:
    """A snapshot of one member's figures, from :meth:`AlignerPool.stats`."""

    endpoint: str
    outstanding: int
    successes: int
    failures: int
    consecutive_failures: int
    state: CircuitState
    last_error: str | None


_FAILOVER = (AlignerConnectionError, AlignerTimeoutError, OverloadedError, IncompleteGenerationError, GenerationError)


@dataclass
class _Member:
    """One member with its counters and circuit; every field is guarded by the pool's lock."""

    aligner: BaseAligner
    name: str
    outstanding: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    state: CircuitState = "closed"
    opened_at: float = 0.0
    last_error: str | None = None

    @property
    def base_url(self) -> str | None:
        return getattr(self.aligner, "base_url", None)


def _failover_worthy(error: BaseException) -> bool:
    """Whether another member may succeed where this one failed (see the module docstring)."""
    if isinstance(error, InputError | AuthenticationError | ConfigurationError) or not isinstance(error, AlignerError):
        return False
    if isinstance(error, _FAILOVER):
        return True
    return error.status is not None and error.status >= 500


class AlignerPool(BaseAligner):
    """Several TGI, OpenAI-compatible or local aligners behind one aligner.

    Args:
        members: aligners (``TGIAligner``, ``OpenAICompatAligner``, ``LocalAligner``...) or base URLs,
            which become ``TGIAligner(url, max_retries=0)``: the pool's failover is the retry, so a
            dead member is left at once instead of after its own backoff.
        failure_threshold: consecutive failures that open a member's circuit.
        cooldown: seconds an open circuit stays out before one probe request (or a health check) may close it.
        health_interval: seconds between background ``GET /health`` probes; ``None``: only :meth:`check_health`.
        health_timeout: seconds one health probe may take.
        max_retries, backoff: passes over the members after the first, and the first delay between them
            (jittered, doubling, honouring ``Retry-After``) when all are overloaded or none is available.
        deadline: seconds for one call, failovers and retries included. Async calls are cut off
            at the deadline (the member's HTTP request is cancelled); sync calls check it between
            attempts, so bound each attempt with the members' ``timeout``.
        fail_policy: ``"closed"`` raises when no member could align; ``"open"`` returns the draft
            unaligned, flagged (``result.aligned is False``, ``result.error`` says why).
        keep_prefix_tokens, max_new_tokens: as :class:`BaseAligner`; ``None`` takes the first member's
            (as do ``prefix_sampling`` and ``seed``: the pool resolves the options once, for every member).

    Example:
        >>> from diffpo_integrations.backends.testing import mock_tgi
        >>> with mock_tgi(), AlignerPool(["http://replica-a", "http://replica-b"]) as pool:
        ...     result = pool.align([("user", "Hi")], "Hello there, friend.")
        >>> result.endpoint in ("http://replica-a", "http://replica-b"), result.aligned
        (True, True)
    """

    def __init__(
        self,
        members: Sequence[BaseAligner | str],
        *,
        failure_threshold: int = 3,
        cooldown: float = 10.0,
        health_interval: float | None = None,
        health_timeout: float = 2.0,
        max_retries: int = 2,
        backoff: float = 0.25,
        deadline: float | None = None,
        fail_policy: FailPolicy = "closed",
        keep_prefix_tokens: int | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        aligners = [_as_aligner(m) for m in members]
        problems = [
            text
            for bad, text in (
                (not aligners, "AlignerPool needs at least one member"),
                (failure_threshold < 1, f"failure_threshold must be >= 1, got {failure_threshold}"),
                (cooldown < 0 or health_timeout <= 0, "cooldown must be >= 0 and health_timeout > 0 seconds"),
                (max_retries < 0, f"max_retries must be >= 0, got {max_retries}"),
                (health_interval is not None and health_interval <= 0, "health_interval must be > 0 seconds or None"),
                (fail_policy not in ("open", "closed"), f"fail_policy must be 'open' or 'closed', got {fail_policy!r}"),
            )
            if bad
        ]
        if problems:
            raise ConfigurationError("; ".join(problems))
        first = aligners[0]
        super().__init__(
            template=first.template,
            keep_prefix_tokens=first.keep_prefix_tokens if keep_prefix_tokens is None else keep_prefix_tokens,
            max_new_tokens=first.max_new_tokens if max_new_tokens is None else max_new_tokens,
            prompt_mode=first.prompt_mode,
            prefix_sampling=first.prefix_sampling,
            seed=first.seed,
        )
        self._members = [_Member(a, name) for a, name in zip(aligners, _unique_names(aligners), strict=True)]
        self.endpoint = "pool(" + ", ".join(m.name for m in self._members) + ")"
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.health_timeout = health_timeout
        self.fail_policy: FailPolicy = fail_policy
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, deadline=deadline)
        # A thread lock, held for a few updates only: safe on the event loop and across sync threads.
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._health_thread: threading.Thread | None = None
        if health_interval is not None:
            self._health_thread = threading.Thread(
                target=self._health_loop, args=(health_interval,), name="diffpo-pool-health", daemon=True
            )
            self._health_thread.start()

    def close(self) -> None:
        """Stop the background health checks (idempotent)."""
        self._stop.set()
        if self._health_thread is not None and self._health_thread is not threading.current_thread():
            self._health_thread.join(timeout=self.health_timeout + 5)

    def __enter__(self) -> AlignerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> AlignerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    def stats(self) -> dict[str, EndpointStats]:
        """Per-endpoint figures: requests in flight, successes, failures, circuit state.

        Example:
            >>> from diffpo_integrations.backends.testing import mock_tgi
            >>> with mock_tgi(), AlignerPool(["http://a"]) as pool:
            ...     _ = pool.align([("user", "Hi")], "Hello.")
            ...     s = pool.stats()["http://a"]
            >>> (s.outstanding, s.successes, s.failures, s.state)
            (0, 1, 0, 'closed')
        """
        with self._lock:
            return {
                m.name: EndpointStats(
                    m.name, m.outstanding, m.successes, m.failures, m.consecutive_failures, m.state, m.last_error
                )
                for m in self._members
            }

    # -- health -------------------------------------------------------------------------------

    def check_health(self) -> dict[str, bool]:
        """Probe every member with a ``base_url`` (``GET /health``); update circuits; return who is healthy.

        A failed probe takes the member out at once; a passing probe brings an open member back
        once its cool-down is over. Members without a URL (in-process) count as healthy.
        """
        return {m.name: self._health_result(m, self._probe(m)) for m in self._members}

    def _probe(self, m: _Member) -> bool:
        if m.base_url is None:
            return True
        try:
            return get_session().get(m.base_url + "/health", timeout=self.health_timeout).status_code == 200
        except Exception:  # refused, reset, timed out: all mean "not serving"
            return False

    async def acheck_health(self) -> dict[str, bool]:
        """Async :meth:`check_health`; the probes run concurrently."""

        async def probe(m: _Member) -> bool:
            if m.base_url is None:
                return True
            try:
                async with get_async_session() as session:
                    return (await session.get(m.base_url + "/health", timeout=self.health_timeout)).status_code == 200
            except Exception:
                return False

        results = await asyncio.gather(*(probe(m) for m in self._members))
        return {m.name: self._health_result(m, ok) for m, ok in zip(self._members, results, strict=True)}

    def _health_result(self, m: _Member, ok: bool) -> bool:
        with self._lock:
            if not ok:
                m.state, m.opened_at = "open", time.monotonic()
                m.last_error = "health check failed"
            elif m.state != "closed" and time.monotonic() - m.opened_at >= self.cooldown:
                m.state, m.consecutive_failures = "closed", 0
        return ok

    def _health_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_health()

    # -- routing and the circuit breaker ------------------------------------------------------

    def _acquire(self, tried: set[str]) -> _Member:
        """Take the member with the fewest requests in flight among those not tried and available."""
        now = time.monotonic()
        with self._lock:
            turn = next(self._turn)
            n = len(self._members)
            candidates: list[_Member] = []
            for i in range(n):
                # Rotating the scan start makes ``min`` below break ties by round robin.
                m = self._members[(turn + i) % n]
                if m.name in tried or m.state == "half_open":
                    continue
                if m.state == "open" and now - m.opened_at < self.cooldown:
                    continue
                candidates.append(m)
            if not candidates:
                detail = "; ".join(f"{m.name}: {m.state} ({m.last_error})" for m in self._members)
                msg = f"no aligner endpoint is available: {detail}"
                raise AlignerConnectionError(msg, endpoint=self.endpoint)
            chosen = min(candidates, key=lambda m: m.outstanding)
            if chosen.state == "open":
                chosen.state = "half_open"  # this request is the probe; others keep away meanwhile
            chosen.outstanding += 1
            return chosen

    def _release(self, m: _Member, error: BaseException | None, counted: bool = True) -> None:
        with self._lock:
            m.outstanding -= 1
            if not counted:
                # Cancelled or abandoned: says nothing about the endpoint; a probe gets another go.
                m.state = "open" if m.state == "half_open" else m.state
                return
            if error is None:
                m.successes += 1
                m.consecutive_failures = 0
                m.state = "closed"
                return
            m.last_error = f"{type(error).__name__}: {error}"
            if isinstance(error, OverloadedError):
                # Back-pressure from a live server is no fault: fail over, but keep it in rotation.
                m.state = "closed" if m.state == "half_open" else m.state
                return
            m.failures += 1
            m.consecutive_failures += 1
            if m.state == "half_open" or m.consecutive_failures >= self.failure_threshold:
                m.state, m.opened_at = "open", time.monotonic()

    def _settle(self, m: _Member, error: BaseException) -> None:
        """Account a member's error; re-raise it unless another member may serve the call."""
        if _failover_worthy(error):
            self._release(m, error)
            return
        # A bad request or setup is no sign of a bad endpoint: release without blame.
        self._release(m, None, counted=False)
        raise error

    def _next_member(self, tried: set[str], last: BaseException | None, deadline: float | None) -> _Member:
        """The member for the next attempt; the last member's error when none is left."""
        if deadline is not None and time.monotonic() > deadline:
            raise self._deadline_error()
        try:
            m = self._acquire(tried)
        except AlignerError:
            if last is not None:
                raise last from None
            raise
        tried.add(m.name)
        return m

    def _deadline_error(self) -> AlignerTimeoutError:
        return AlignerTimeoutError(f"the pool's deadline of {self.retry.deadline} s ran out", endpoint=self.endpoint)

    def _stamp_chunk(self, chunk: AlignChunk, m: _Member) -> AlignChunk:
        result = chunk.result.model_copy(update={"endpoint": m.name}) if chunk.result else None
        return AlignChunk(text=chunk.text, result=result)

    def _fail_open(self, request: AlignRequest, error: AlignerError) -> AlignResult:
        if self.fail_policy != "open":
            raise error
        return AlignResult.unaligned(request.draft, error, endpoint=error.endpoint)

    def _deadline_at(self) -> float | None:
        return None if self.retry.deadline is None else time.monotonic() + self.retry.deadline

    def _pass(self, request: AlignRequest, deadline: float | None) -> AlignResult:
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            m = self._next_member(tried, last, deadline)
            try:
                result = m.aligner.align(request)
            except BaseException as exc:
                self._settle(m, exc)  # re-raises unless another member may serve the call
                last = exc
                continue
            self._release(m, None)
            return result.model_copy(update={"endpoint": m.name})

    async def _apass(self, request: AlignRequest) -> AlignResult:
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            m = self._next_member(tried, last, None)  # RetryPolicy.acall enforces the deadline
            try:
                result = await m.aligner.aalign(request)
            except BaseException as exc:
                self._settle(m, exc)  # re-raises unless another member may serve the call
                last = exc
                continue
            self._release(m, None)
            return result.model_copy(update={"endpoint": m.name})

    def _align(self, request: AlignRequest) -> AlignResult:
        deadline = self._deadline_at()
        try:
            return self.retry.call(lambda: self._pass(request, deadline), self.endpoint)
        except AlignerError as exc:
            return self._fail_open(request, exc)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        try:
            return await self.retry.acall(lambda: self._apass(request), self.endpoint)
        except AlignerError as exc:
            return self._fail_open(request, exc)

    def _stream_error(self, m: _Member, exc: BaseException, started: bool) -> bool:
        """Account a stream's error; re-raise it, or say whether to fail over (else fail open or closed)."""
        own_deadline = isinstance(exc, AlignerTimeoutError) and exc.endpoint == self.endpoint
        worthy = _failover_worthy(exc) and not own_deadline
        self._release(m, exc if worthy else None, counted=worthy)
        # GeneratorExit and cancellation (the consumer left), or text was handed out already: it
        # cannot be taken back, so the error goes to the consumer.
        if started or not isinstance(exc, AlignerError):
            raise exc
        return worthy

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        deadline = self._deadline_at()
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            try:
                m = self._next_member(tried, last, deadline)
            except AlignerError as exc:
                yield self._stream_fail_open(request, exc)
                return
            started = False
            chunks = m.aligner.stream(request)
            try:
                for chunk in chunks:
                    started = True
                    yield self._stamp_chunk(chunk, m)
                    if deadline is not None and time.monotonic() > deadline:
                        raise self._deadline_error()  # sync streams cannot be cut while waiting
            except BaseException as exc:
                if self._stream_error(m, exc, started):  # raises, or says whether to fail over
                    last = exc
                    continue
                yield self._stream_fail_open(request, exc)
                return
            finally:
                chunks.close()  # type: ignore[attr-defined]
            self._release(m, None)
            return

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        deadline = self._deadline_at()
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            try:
                m = self._next_member(tried, last, deadline)
            except AlignerError as exc:
                yield self._stream_fail_open(request, exc)
                return
            started = False
            chunks = m.aligner.astream(request)
            try:
                while (chunk := await self._anext(chunks, deadline)) is not None:
                    started = True
                    yield self._stamp_chunk(chunk, m)
            except BaseException as exc:
                if self._stream_error(m, exc, started):  # raises, or says whether to fail over
                    last = exc
                    continue
                yield self._stream_fail_open(request, exc)
                return
            finally:
                # Closing the member's stream leaves its ``async with`` around the HTTP response, so
                # the connection closes and the server cancels the generation.
                await chunks.aclose()  # type: ignore[attr-defined]
            self._release(m, None)
            return

    async def _anext(self, chunks: AsyncIterator[AlignChunk], deadline: float | None) -> AlignChunk | None:
        """The next chunk, ``None`` at the end; the pool's deadline error when ``deadline`` (monotonic) passes."""
        try:
            if deadline is None:
                return await chunks.__anext__()
            remaining = max(deadline - time.monotonic(), 0.0)
            if sys.version_info >= (3, 11):
                # Same task as the stream (unlike wait_for on 3.10), so the member's HTTP context
                # is left in the task that entered it.
                async with asyncio.timeout(remaining):
                    return await chunks.__anext__()
            return await asyncio.wait_for(chunks.__anext__(), remaining)  # pragma: no cover - Python 3.10
        except StopAsyncIteration:
            return None
        except (TimeoutError, asyncio.TimeoutError):
            raise self._deadline_error() from None

    def _stream_fail_open(self, request: AlignRequest, error: BaseException) -> AlignChunk:
        """The one chunk of a stream that no member could start: the flagged draft, or the error raised."""
        if not isinstance(error, AlignerError):
            raise error
        result = self._fail_open(request, error)
        return AlignChunk(text=result.text, result=result)


def _as_aligner(member: BaseAligner | str) -> BaseAligner:
    if isinstance(member, str):
        from diffpo_integrations.backends.tgi import TGIAligner

        return TGIAligner(member, max_retries=0)
    if not isinstance(member, BaseAligner):
        msg = f"pool members must be aligners or base URLs, got {type(member).__name__}"
        raise ConfigurationError(msg)
    return member


def _unique_names(aligners: Sequence[BaseAligner]) -> list[str]:
    names: list[str] = []
    for a in aligners:
        name = str(getattr(a, "base_url", None) or a.endpoint)
        # Two in-process members are both "local": number them so stats and results tell them apart.
        names.append(name if name not in names else f"{name}#{len(names)}")
    return names
