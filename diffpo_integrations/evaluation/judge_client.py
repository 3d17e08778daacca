"""The judge: any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, TGI, ``diffpo serve``).

Asked as FastChat asks GPT-4: the judge prompt's system message, one user message, ``n=1``,
temperature 0, ``max_tokens`` 2048. Overload (429), server errors (5xx), timeouts and dropped
connections are retried with exponential backoff (honouring ``Retry-After``); what still fails
raises :class:`JudgeError`, which the caller records with the judgment. A wrong URL, model or key
(401, 403, 404) would fail every judgment alike, so it raises :class:`ConfigurationError` at once.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import httpx2
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from diffpo_integrations.core.errors import ConfigurationError, DiffPOError

__all__ = ["DEFAULT_KEY_ENV", "JudgeClient", "JudgeError", "chat_completions_url"]

DEFAULT_KEY_ENV = "DIFFPO_JUDGE_API_KEY"
"""The environment variable the judge's API key is read from, unless told another."""

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_FATAL_STATUS = frozenset({401, 403, 404})


class JudgeError(DiffPOError):
    """One judge call failed after its retries; ``status`` is the last HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def chat_completions_url(url: str) -> str:
    """The chat-completions endpoint for a base URL given with or without ``/v1`` (or already complete).

    Example:
        >>> chat_completions_url("http://127.0.0.1:8080"), chat_completions_url("https://api.openai.com/v1/")
        ('http://127.0.0.1:8080/v1/chat/completions', 'https://api.openai.com/v1/chat/completions')
    """
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/chat/completions"
    return f"{base}/v1/chat/completions"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, JudgeError) and (exc.status is None or exc.status in _RETRY_STATUS)


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class JudgeClient:
    """Asks a judge model over an OpenAI-compatible chat-completions API.

    Args:
        url: the server (``http://host:8000``, ``https://api.openai.com/v1`` or the full endpoint).
        model: the judge model name sent in each request (and recorded in each judgment).
        api_key: sent as ``Authorization: Bearer``; default: the ``api_key_env`` variable, if set.
        api_key_env: where the key is read from (keys never go on a command line).
        max_tokens: the judgment's token limit (FastChat: 2048).
        timeout: seconds per request.
        max_retries: retries of a request that hit a retryable failure.
        transport: an ``httpx2`` transport (tests pass ``httpx2.MockTransport``).
        sleep: the backoff's sleep (tests pass one that returns at once).

    Example:
        >>> import asyncio  # doctest: +SKIP
        >>> async def ask():
        ...     async with JudgeClient("https://api.openai.com/v1", "gpt-4", api_key_env="OPENAI_API_KEY") as judge:
        ...         return await judge.complete("You are a helpful assistant.", "Rate: ... [[rating]]")
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = DEFAULT_KEY_ENV,
        max_tokens: int = 2048,
        timeout: float = 300.0,
        max_retries: int = 6,
        transport: httpx2.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            msg = f"the judge URL must start with http:// or https://, got {url!r}"
            raise ConfigurationError(msg)
        if not model:
            msg = "name the judge model (--judge-model), e.g. gpt-4 or the model a vLLM server serves"
            raise ConfigurationError(msg)
        if max_tokens < 1 or max_retries < 0:
            msg = f"max_tokens must be >= 1 and max_retries >= 0, got {max_tokens} and {max_retries}"
            raise ConfigurationError(msg)
        self.url = chat_completions_url(url)
        self.model = model
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx2.AsyncClient(headers=headers, timeout=timeout, transport=transport)
        self._sleep = sleep

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    def body(self, system: str, user: str) -> dict[str, Any]:
        """The request body FastChat sends (an empty system prompt is left out, as FastChat does)."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return {"model": self.model, "messages": messages, "n": 1, "temperature": 0, "max_tokens": self.max_tokens}

    async def complete(self, system: str, user: str) -> str:
        """The judge's answer to one judge prompt.

        Raises:
            JudgeError: the call still failed after the retries (or failed in a way retrying cannot fix).
            ConfigurationError: 401, 403 or 404: the key, URL or model is wrong.
        """
        extra: dict[str, Any] = {"sleep": self._sleep} if self._sleep is not None else {}
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=_wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
            **extra,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(self.body(system, user))
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    async def _once(self, body: dict[str, Any]) -> str:
        try:
            response = await self._client.post(self.url, json=body)
        except httpx2.TimeoutException as exc:
            msg = f"the judge at {self.url} did not answer in time ({type(exc).__name__})"
            raise JudgeError(msg) from exc
        except httpx2.TransportError as exc:
            msg = f"could not reach the judge at {self.url}: {exc}"
            raise JudgeError(msg) from exc
        if response.status_code in _FATAL_STATUS:
            msg = (
                f"the judge at {self.url} answered {response.status_code}: {response.text[:300]}. "
                "Check --judge-url, --judge-model and the API key variable (--judge-key-env)."
            )
            raise ConfigurationError(msg)
        if response.status_code >= 400:
            msg = f"the judge answered HTTP {response.status_code}: {response.text[:300]}"
            raise JudgeError(msg, status=response.status_code, retry_after=_retry_after(response))
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            msg = f"the judge's answer is not a chat completion: {response.text[:300]}"
            raise JudgeError(msg, status=response.status_code) from exc
        return "" if content is None else str(content)


_backoff = wait_exponential_jitter(initial=1, max=60, jitter=1)


def _wait(state: RetryCallState) -> float:
    """Exponential backoff, but never sooner than the server's ``Retry-After``."""
    delay = _backoff(state)
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, JudgeError) and exc.retry_after is not None:
        delay = max(delay, min(exc.retry_after, 300.0))
    return delay
