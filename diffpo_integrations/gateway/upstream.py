"""The upstream chat endpoint: one ``httpx.AsyncClient``, errors turned into OpenAI-shaped gateway errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from diffpo_integrations.gateway.wire import GatewayError, upstream_error_body

__all__ = ["Upstream"]


class Upstream:
    """Forwards OpenAI requests to the upstream and reports its failures in OpenAI's error shape.

    Args:
        base_url: the upstream's base URL, ending in ``/v1``.
        timeout: seconds to connect, and to wait for the answer or for the next streamed event.
        transport: an ``httpx.AsyncBaseTransport`` (tests pass ``httpx.MockTransport``).
    """

    def __init__(self, base_url: str, *, timeout: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url
        # Many concurrent requests share one pool; httpx's default of 100 connections would queue
        # the 101st request inside the client, where no timeout or 429 accounts for it.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout), limits=limits, transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _failed(self, exc: httpx.HTTPError) -> GatewayError:
        if isinstance(exc, httpx.TimeoutException):
            return GatewayError(
                504, f"the upstream {self.base_url} did not answer in time ({type(exc).__name__})", "upstream_timeout"
            )
        return GatewayError(502, f"could not reach the upstream {self.base_url}: {exc}", "upstream_unreachable")

    def _error_answer(self, response: httpx.Response) -> GatewayError:
        try:
            payload: Any = response.json()
        except ValueError:
            payload = response.text
        err = GatewayError(response.status_code, "", "upstream_error")
        err.body = upstream_error_body(response.status_code, payload, self.base_url)
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            err.headers["Retry-After"] = retry_after
        return err

    async def chat(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """POST ``/chat/completions`` (not streamed) and return the decoded answer.

        Raises:
            GatewayError: the upstream answered an error (its status and body), or could not be reached
                (502) or did not answer in time (504).
        """
        try:
            response = await self._client.post("/chat/completions", json=body, headers=dict(headers))
        except httpx.HTTPError as exc:
            raise self._failed(exc) from exc
        if response.status_code >= 400:
            raise self._error_answer(response)
        try:
            payload = response.json()
        except ValueError as exc:
            msg = f"the upstream {self.base_url} answered non-JSON: {response.text[:200]!r}"
            raise GatewayError(502, msg, "upstream_error") from exc
        if not isinstance(payload, dict):
            msg = f"the upstream {self.base_url} answered JSON that is not a chat completion: {response.text[:200]!r}"
            raise GatewayError(502, msg, "upstream_error")
        return payload

    @asynccontextmanager
    async def stream_chat(
        self, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """POST a streamed ``/chat/completions``; yields an iterator over the decoded events.

        Leaving the block closes the connection, which stops the upstream's generation.

        Raises:
            GatewayError: as :meth:`chat`, before the first event.
        """
        request = self._client.build_request("POST", "/chat/completions", json=body, headers=dict(headers))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._failed(exc) from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                raise self._error_answer(response)
            yield self._events(response)
        finally:
            await response.aclose()

    async def _events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        # The events are forwarded, not interpreted as errors here: an upstream error event must
        # reach the client as the upstream sent it.
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                if data:
                    event = json.loads(data)
                    if isinstance(event, dict):
                        yield event
        except httpx.HTTPError as exc:
            raise self._failed(exc) from exc

    async def get(self, path: str, headers: Mapping[str, str]) -> tuple[int, Any]:
        """GET a path under the base URL; the status and the decoded body."""
        try:
            response = await self._client.get(path, headers=dict(headers))
        except httpx.HTTPError as exc:
            raise self._failed(exc) from exc
        try:
            payload: Any = response.json()
        except ValueError:
            payload = response.text
        return response.status_code, payload

    async def probe(self, headers: Mapping[str, str], timeout: float = 2.0) -> dict[str, Any]:
        """``GET /models`` with a short timeout: whether the upstream answers, for ``/health``."""
        try:
            response = await self._client.get("/models", headers=dict(headers), timeout=timeout)
        except httpx.HTTPError as exc:
            return {"url": self.base_url, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"url": self.base_url, "ok": response.status_code < 400, "status": response.status_code}
