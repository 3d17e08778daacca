"""HTTP plumbing shared by the remote backends: one error mapper, one SSE parser, one retry loop.

Sync and async code paths call the same functions here, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx2
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_async_session
from huggingface_hub.errors import (
    GenerationError as HfGenerationError,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    TextGenerationError,
)
from huggingface_hub.errors import (
    IncompleteGenerationError as HfIncompleteGenerationError,
)
from huggingface_hub.errors import (
    OverloadedError as HfOverloadedError,
)
from huggingface_hub.errors import (
    ValidationError as HfValidationError,
)

from diffpo_integrations.core.errors import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    GenerationError,
    IncompleteGenerationError,
    OverloadedError,
    ServerValidationError,
    error_from_tgi_payload,
)

__all__ = [
    "RetryPolicy",
    "async_session",
    "reset_async_sessions",
    "map_error",
    "parse_sse_line",
    "raise_for_answer",
    "retry_after_seconds",
]

T = TypeVar("T")

# huggingface_hub's telemetry (its user-agent builder fetches a registry from huggingface.co on
# the first call) would send traffic off this machine although every call here goes to the
# user's own server. Keep it off unless the user opted in or out explicitly.
if "HF_HUB_DISABLE_TELEMETRY" not in os.environ and "DISABLE_TELEMETRY" not in os.environ:
    hf_constants.HF_HUB_DISABLE_TELEMETRY = True

# huggingface_hub's get_async_session() builds a new client per call, and each new client loads
# the CA store (~150 ms of CPU here): one client per event loop keeps the per-call cost tiny and
# lets 64 concurrent calls share one connection pool.
_ASYNC_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def async_session() -> AsyncIterator[httpx2.AsyncClient]:
    """The running loop's shared ``httpx2.AsyncClient``, made by huggingface_hub's async factory.

    Use it as ``async with async_session() as client:``; leaving the block does not close it.
    """
    loop = asyncio.get_running_loop()
    client = _ASYNC_SESSIONS.get(loop)
    if client is None or client.is_closed:
        client = get_async_session()
        _ASYNC_SESSIONS[loop] = client
    yield client


def reset_async_sessions() -> None:
    """Forget the shared async clients, so the next call uses huggingface_hub's current factory."""
    _ASYNC_SESSIONS.clear()


_HF_TGI_ERRORS: dict[type[TextGenerationError], type[AlignerError]] = {
    HfValidationError: ServerValidationError,
    HfOverloadedError: OverloadedError,
    HfGenerationError: GenerationError,
    HfIncompleteGenerationError: IncompleteGenerationError,
}


def retry_after_seconds(headers: Any) -> float | None:
    """The ``Retry-After`` header in seconds, when it is a number."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _decode_payload(response: Any) -> Any:
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
    """Map an exception from ``huggingface_hub`` or ``httpx2`` to the package's error tree.

    Errors that are already ours, and ones that are not about the aligner (cancellation,
    programming errors), come back unchanged.
    """
    if isinstance(exc, AlignerError):
        return exc
    if isinstance(exc, TextGenerationError):
        cause = exc.__cause__
        response = getattr(cause, "response", None)
        status = getattr(response, "status_code", None)
        retry_after = retry_after_seconds(getattr(response, "headers", None))
        cls = _HF_TGI_ERRORS.get(type(exc), AlignerError)
        if cls is OverloadedError:
            return OverloadedError(str(exc), endpoint=endpoint, status=status, retry_after=retry_after)
        return cls(str(exc), endpoint=endpoint, status=status)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        response = exc.response
        return error_from_tgi_payload(
            response.status_code,
            _decode_payload(response),
            endpoint=endpoint,
            retry_after=retry_after_seconds(response.headers),
        )
    if isinstance(exc, InferenceTimeoutError | httpx2.TimeoutException | TimeoutError):
        return AlignerTimeoutError(f"the aligner at {endpoint} did not answer in time: {exc}", endpoint=endpoint)
    if isinstance(exc, httpx2.TransportError | ConnectionError):
        return AlignerConnectionError(f"could not reach the aligner at {endpoint}: {exc}", endpoint=endpoint)
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
        backoff: first delay in seconds; doubles each retry.
        max_backoff: ceiling of one delay.
        deadline: seconds for the whole call, retries included; ``None`` for no limit.
    """

    def __init__(
        self, max_retries: int = 3, backoff: float = 0.25, max_backoff: float = 8.0, deadline: float | None = None
    ) -> None:
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.deadline = deadline

    def _delay(self, attempt: int, error: AlignerError, started: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up."""
        if not error.retryable or attempt >= self.max_retries:
            return None
        delay = float(min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2))
        retry_after: float | None = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if self.deadline is not None and time.monotonic() - started + delay > self.deadline:
            return None
        return delay

    def call(self, fn: Callable[[], T], endpoint: str) -> T:
        """Run ``fn`` with retries; raise the last typed error when the budget is spent."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                error = map_error(exc, endpoint)
                if not isinstance(error, AlignerError):
                    raise
                delay = self._delay(attempt, error, started)
                if delay is None:
                    raise error from exc
                time.sleep(delay)
                attempt += 1

    async def acall(self, fn: Callable[[], Awaitable[T]], endpoint: str) -> T:
        """Async :meth:`call`."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                if self.deadline is None:
                    return await fn()
                remaining = self.deadline - (time.monotonic() - started)
                return await asyncio.wait_for(fn(), timeout=max(remaining, 0.001))
            except Exception as exc:
                error = map_error(exc, endpoint)
                if not isinstance(error, AlignerError):
                    raise
                delay = self._delay(attempt, error, started)
                if delay is None:
                    raise error from exc
                await asyncio.sleep(delay)
                attempt += 1
