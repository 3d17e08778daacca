"""``AlignerPool``: several aligner replicas behind one :class:`~diffpo_integrations.core.Aligner`.

Each call goes to the member with the fewest requests in flight (ties: round robin) and fails
over to the next member when one cannot serve; a member that keeps failing is taken out for a
cool-down (a circuit breaker per endpoint). ``GET /health`` probes, on demand or from a background
thread, take dead members out and bring restarted ones back.

Which errors fail over (and count against a member's circuit) is decided by
:mod:`diffpo_integrations.core.policy`, as for every component: endpoint faults, timeouts, 429 and
5xx do; a bad request, refused credentials or a setup error do not. Streams fail over only before
their first chunk; a stream that breaks later raises (text handed out cannot be taken back).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from diffpo_integrations.backends import _loop
from diffpo_integrations.backends._transport import RetryPolicy, Transport, call_deadline, fail_at
from diffpo_integrations.core.aligner import BaseAligner, MessagesLike
from diffpo_integrations.core.errors import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    ConfigurationError,
)
from diffpo_integrations.core.policy import check_fail_policy, counts_against_member, fail_over_or_raise, fall_back
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
        deadline: seconds for one call, failovers and retries included, in every call style: each
            attempt gets the remaining time shared among the members not tried yet, so a silent
            member times out (and counts as a failure) in time for the next one to answer.
        fail_policy: ``"closed"`` raises when no member could align; ``"open"`` returns the draft
            unaligned, flagged (``result.aligned is False``, ``result.error`` says why).
        keep_prefix_tokens, max_new_tokens: as :class:`BaseAligner`; ``None`` takes the first member's
            (as do ``prefix_sampling`` and ``seed``: the pool resolves the options once, for every member).
        clock: monotonic clock of the circuit breakers' cool-downs (injectable for tests).

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
        clock: Callable[[], float] = time.monotonic,
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
            )
            if bad
        ]
        if problems:
            raise ConfigurationError("; ".join(problems))
        check_fail_policy(fail_policy)
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
        self.clock = clock
        self._probes = {
            m.name: _probe_transport(m.aligner, m.base_url, health_timeout) for m in self._members if m.base_url
        }
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
        transport = self._probes.get(m.name)
        return True if transport is None else _loop.run(transport.probe("/health", self.health_timeout))

    async def acheck_health(self) -> dict[str, bool]:
        """Async :meth:`check_health`; the probes run concurrently."""

        async def probe(m: _Member) -> bool:
            transport = self._probes.get(m.name)
            return True if transport is None else await transport.probe("/health", self.health_timeout)

        async def probe_all() -> list[bool]:
            return list(await asyncio.gather(*(probe(m) for m in self._members)))

        results = await _loop.arun(probe_all())
        return {m.name: self._health_result(m, ok) for m, ok in zip(self._members, results, strict=True)}

    def _health_result(self, m: _Member, ok: bool) -> bool:
        with self._lock:
            if not ok:
                m.state, m.opened_at = "open", self.clock()
                m.last_error = "health check failed"
            elif m.state != "closed" and self.clock() - m.opened_at >= self.cooldown:
                m.state, m.consecutive_failures = "closed", 0
        return ok

    def _health_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_health()

    # -- routing and the circuit breaker ------------------------------------------------------

    def _acquire(self, tried: set[str]) -> _Member:
        """Take the member with the fewest requests in flight among those not tried and available."""
        now = self.clock()
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
                # Cancelled, abandoned or a bad request: says nothing about the endpoint; a probe gets another go.
                m.state = "open" if m.state == "half_open" else m.state
                return
            if error is None:
                m.successes += 1
                m.consecutive_failures = 0
                m.state = "closed"
                return
            m.last_error = f"{type(error).__name__}: {error}"
            if not counts_against_member(error):
                # Back-pressure from a live server is no fault: fail over, but keep it in rotation.
                m.state = "closed" if m.state == "half_open" else m.state
                return
            m.failures += 1
            m.consecutive_failures += 1
            if m.state == "half_open" or m.consecutive_failures >= self.failure_threshold:
                m.state, m.opened_at = "open", self.clock()

    def _settle(self, m: _Member, error: BaseException) -> None:
        """Account a member's error; re-raise it unless another member may serve the call."""
        try:
            fail_over_or_raise(error)
        except BaseException:
            self._release(m, None, counted=False)
            raise
        self._release(m, error)

    def _next_member(
        self, tried: set[str], last: BaseException | None, deadline: float | None
    ) -> tuple[_Member, float | None]:
        """The member for the next attempt and the attempt's deadline; the last member's error when none is left."""
        if deadline is not None and time.monotonic() >= deadline:
            raise self._deadline_error(last)
        try:
            m = self._acquire(tried)
        except AlignerError:
            if last is not None:
                raise last from None
            raise
        tried.add(m.name)
        if deadline is None:
            return m, None
        # Share what is left among the members not tried yet, so a silent one leaves time for the rest.
        untried = max(1, sum(1 for other in self._members if other.name not in tried) + 1)
        now = time.monotonic()
        return m, now + (deadline - now) / untried

    def _deadline_error(self, last: BaseException | None = None) -> AlignerTimeoutError:
        why = f" (last error: {type(last).__name__}: {last})" if last is not None else ""
        return AlignerTimeoutError(
            f"the pool's deadline of {self.retry.deadline} s ran out{why}", endpoint=self.endpoint
        )

    def _member_timeout(self, m: _Member, seconds: float) -> AlignerTimeoutError:
        msg = f"{m.name} did not answer within its {seconds:.3g} s share of the pool's deadline"
        return AlignerTimeoutError(msg, endpoint=m.name)

    def _stamp_chunk(self, chunk: AlignChunk, m: _Member) -> AlignChunk:
        result = chunk.result.model_copy(update={"endpoint": m.name}) if chunk.result else None
        return AlignChunk(text=chunk.text, result=result)

    def _pass(self, request: AlignRequest, deadline: float | None) -> AlignResult:
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            m, budget = self._next_member(tried, last, deadline)
            try:
                with call_deadline(budget):
                    result = m.aligner.align(request)
            except BaseException as exc:
                self._settle(m, exc)  # re-raises unless another member may serve the call
                last = exc
                continue
            self._release(m, None)
            return result.model_copy(update={"endpoint": m.name})

    async def _apass(self, request: AlignRequest, deadline: float | None) -> AlignResult:
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            m, budget = self._next_member(tried, last, deadline)
            try:
                try:
                    with call_deadline(budget), fail_at(budget):
                        result = await m.aligner.aalign(request)
                except TimeoutError:
                    raise self._member_timeout(m, (budget or 0.0) - time.monotonic()) from None
            except BaseException as exc:
                self._settle(m, exc)  # re-raises unless another member may serve the call
                last = exc
                continue
            self._release(m, None)
            return result.model_copy(update={"endpoint": m.name})

    def _align(self, request: AlignRequest) -> AlignResult:
        deadline = self.retry.deadline_at()
        return self.retry.call(lambda: self._pass(request, deadline), self.endpoint, deadline)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        deadline = self.retry.deadline_at()
        # Each member's share of the deadline cuts its attempt (and counts against it); the pool's
        # own scope must not cut first, or the timeout would be nobody's.
        return await self.retry.acall(lambda: self._apass(request, deadline), self.endpoint, deadline, cut=False)

    def _stream_error(self, m: _Member, exc: BaseException, started: bool) -> None:
        """Account a stream's error; re-raise it unless the call may fail over to another member."""
        if started or not isinstance(exc, Exception):
            # Text was handed out (it cannot be taken back), or the consumer left: no failover.
            counted = started and isinstance(exc, Exception) and counts_against_member(exc)
            self._release(m, exc if counted else None, counted=counted)
            raise exc
        self._settle(m, exc)

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        deadline = self.retry.deadline_at()
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            m, budget = self._next_member(tried, last, deadline)
            started = False
            chunks = m.aligner.stream(request)
            try:
                while True:
                    # The share applies until the first chunk; then the whole deadline does.
                    with call_deadline(deadline if started else budget):
                        chunk = next(chunks, None)
                    if chunk is None:
                        break
                    started = True
                    yield self._stamp_chunk(chunk, m)
            except BaseException as exc:
                self._stream_error(m, exc, started)  # raises unless the call fails over
                last = exc
                continue
            finally:
                chunks.close()  # type: ignore[attr-defined]
            self._release(m, None)
            return

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        deadline = self.retry.deadline_at()
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            m, budget = self._next_member(tried, last, deadline)
            started = False
            chunks = m.aligner.astream(request)
            try:
                while True:
                    limit = deadline if started else budget
                    try:
                        with call_deadline(limit), fail_at(limit):
                            chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        if started:
                            raise self._deadline_error() from None
                        raise self._member_timeout(m, (limit or 0.0) - time.monotonic()) from None
                    started = True
                    yield self._stamp_chunk(chunk, m)
            except BaseException as exc:
                self._stream_error(m, exc, started)  # raises unless the call fails over
                last = exc
                continue
            finally:
                # Closing the member's stream closes its HTTP response, so the server cancels the generation.
                await chunks.aclose()  # type: ignore[attr-defined]
            self._release(m, None)
            return

    # -- the fail policy, around the whole call (request validation included) -----------------------

    def _fallback_chunk(self, draft: str, error: Exception, emitted: bool) -> AlignChunk:
        """The one chunk of a stream no member could start (the flagged draft), or ``error`` raised."""
        result = fall_back(self.fail_policy, draft, error, endpoint=self.endpoint, emitted=emitted)
        return AlignChunk(text=result.text, result=result)

    def align(self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any) -> AlignResult:
        """Align through the members; under ``fail_policy="open"`` a failure returns the flagged draft."""
        try:
            return super().align(messages, draft, **options)
        except Exception as exc:
            return fall_back(self.fail_policy, _draft_of(messages, draft), exc, endpoint=self.endpoint)

    async def aalign(
        self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any
    ) -> AlignResult:
        """Async :meth:`align`."""
        try:
            return await super().aalign(messages, draft, **options)
        except Exception as exc:
            return fall_back(self.fail_policy, _draft_of(messages, draft), exc, endpoint=self.endpoint)

    def stream(
        self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any
    ) -> Iterator[AlignChunk]:
        """Stream through the members; a stream no member could start yields one chunk: the flagged draft."""
        emitted = False
        try:
            for chunk in super().stream(messages, draft, **options):
                emitted = emitted or bool(chunk.text)
                yield chunk
        except Exception as exc:
            yield self._fallback_chunk(_draft_of(messages, draft), exc, emitted)

    async def astream(
        self, messages: MessagesLike | AlignRequest, draft: str | None = None, **options: Any
    ) -> AsyncIterator[AlignChunk]:
        """Async :meth:`stream`."""
        emitted = False
        try:
            async for chunk in super().astream(messages, draft, **options):
                emitted = emitted or bool(chunk.text)
                yield chunk
        except Exception as exc:
            yield self._fallback_chunk(_draft_of(messages, draft), exc, emitted)


def _draft_of(messages: MessagesLike | AlignRequest, draft: str | None) -> str:
    if isinstance(messages, AlignRequest):
        return messages.draft
    return draft if isinstance(draft, str) else ""


def _probe_transport(aligner: BaseAligner, base_url: str, timeout: float) -> Transport:
    """The member's own transport (its headers, its HTTP client), or a bare one for its URL."""
    transport = getattr(aligner, "transport", None)
    if isinstance(transport, Transport):
        return transport
    return Transport(base_url, headers={}, timeout=timeout, retry=RetryPolicy(max_retries=0))


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
