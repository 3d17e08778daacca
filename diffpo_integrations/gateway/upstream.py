"""The upstream chat endpoint: one connection pool, failures turned into OpenAI-shaped gateway errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from diffpo_integrations import __version__
from diffpo_integrations.gateway.http1 import HTTP1Client, Response
from diffpo_integrations.gateway.wire import GatewayError, upstream_error_body

__all__ = ["Upstream"]


class Upstream:
    """Forwards OpenAI requests to the upstream and reports its failures in OpenAI's error shape.

    Create it on the event loop that will use it (the app's lifespan does).

    Args:
        base_url: the upstream's base URL, ending in ``/v1``.
        timeout: seconds to connect, and to wait for the answer or for the next streamed event.
    """

    def __init__(self, base_url: str, *, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._client = HTTP1Client(base_url, timeout=timeout, user_agent=f"diffpo-gateway/{__version__}")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _failed(self, exc: OSError | ValueError) -> GatewayError:
        if isinstance(exc, TimeoutError):
            return GatewayError(504, f"the upstream {self.base_url} did not answer in time: {exc}", "upstream_timeout")
        return GatewayError(502, f"could not reach the upstream {self.base_url}: {exc}", "upstream_unreachable")

    async def _send(self, method: str, path: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        try:
            return await self._client.request(method, path, body=body, headers=headers)
        except (OSError, ValueError) as exc:
            raise self._failed(exc) from exc

    async def _read(self, response: Response) -> bytes:
        try:
            return await response.read()
        except OSError as exc:
            raise self._failed(exc) from exc

    async def _error_answer(self, response: Response) -> GatewayError:
        raw = await self._read(response)
        if response.status < 400:
            # Not followed: a chat request re-sent elsewhere could lose its body or its key.
            where = response.headers.get("location", "an unnamed place")
            msg = (
                f"the upstream {self.base_url} answered HTTP {response.status}, a redirect to {where}: "
                "give the gateway the final URL as its upstream"
            )
            return GatewayError(502, msg, "upstream_error", code=str(response.status))
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        err = GatewayError(response.status, "", "upstream_error")
        err.body = upstream_error_body(response.status, payload, self.base_url)
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            err.headers["Retry-After"] = retry_after
        return err

    async def chat(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """POST ``/chat/completions`` (not streamed) and return the decoded answer.

        Raises:
            GatewayError: the upstream answered an error (its status and body) or a redirect (502), could
                not be reached (502), did not answer in time (504), or answered something other than a
                JSON object (502).
        """
        response = await self._send("POST", "/chat/completions", headers, json.dumps(body).encode())
        async with response:
            if response.status >= 300:
                raise await self._error_answer(response)
            raw = await self._read(response)
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            msg = f"the upstream {self.base_url} answered non-JSON: {raw[:200]!r}"
            raise GatewayError(502, msg, "upstream_error") from exc
        if not isinstance(payload, dict):
            msg = f"the upstream {self.base_url} answered JSON that is not a chat completion: {raw[:200]!r}"
            raise GatewayError(502, msg, "upstream_error")
        return payload

    async def responses(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """POST ``/responses`` (not streamed), for upstreams with their own Responses API; the decoded answer.

        Raises:
            GatewayError: as :meth:`chat`.
        """
        response = await self._send("POST", "/responses", headers, json.dumps(body).encode())
        async with response:
            if response.status >= 300:
                raise await self._error_answer(response)
            raw = await self._read(response)
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            msg = f"the upstream {self.base_url} answered non-JSON: {raw[:200]!r}"
            raise GatewayError(502, msg, "upstream_error") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("output"), list):
            msg = f"the upstream {self.base_url} answered JSON that is not a response object: {raw[:200]!r}"
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
        response = await self._send("POST", "/chat/completions", headers, json.dumps(body).encode())
        # Closed, not returned to the pool, unless the stream was read to its end: the upstream
        # stops generating when the gateway leaves early.
        async with response:
            if response.status >= 300:
                raise await self._error_answer(response)
            yield self._events(response)

    async def _events(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        # The events are forwarded, not interpreted as errors here: an upstream error event must
        # reach the client as the upstream sent it.
        try:
            async for raw in response.lines():
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                if data:
                    event = json.loads(data)
                    if isinstance(event, dict):
                        yield event
        except OSError as exc:
            raise self._failed(exc) from exc

    async def get(self, path: str, headers: Mapping[str, str]) -> tuple[int, Any]:
        """GET a path under the base URL; the status and the decoded body."""
        response = await self._send("GET", path, headers)
        async with response:
            raw = await self._read(response)
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")

    async def probe(self, headers: Mapping[str, str], timeout: float = 2.0) -> dict[str, Any]:
        """``GET /models`` within ``timeout`` seconds: whether the upstream answers, for ``/health``."""

        async def models() -> int:
            async with await self._client.request("GET", "/models", headers=headers) as response:
                await response.read()
            return response.status

        try:
            status = await asyncio.wait_for(models(), timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            return {"url": self.base_url, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"url": self.base_url, "ok": status < 400, "status": status}
