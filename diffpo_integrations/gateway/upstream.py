"""The upstream chat endpoint on ``httpx2``: one keep-alive pool, failures turned into OpenAI-shaped gateway errors.

``httpx2`` is the backends' client too, so both legs of the gateway share one maintained HTTP stack
(proxies, TLS, HTTP/1.1 framing). Measured with ``diffpo bench gateway``: see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx2

from diffpo_integrations import __version__
from diffpo_integrations.backends._net import RoutedTransport, ssl_context
from diffpo_integrations.gateway.redaction import REDACTED, hide_secrets_in_logs, note_secret, redact
from diffpo_integrations.gateway.wire import GatewayError, upstream_error_body

__all__ = ["Upstream"]

_STALE = "Server disconnected without sending a response."
"""httpcore's message when a connection closed before any byte of the answer: a pooled one may be stale."""

DEFAULT_MAX_BODY = 32 * 1024 * 1024
"""Bytes an upstream answer may have (32 MiB): a whole answer, an error body, or a stream in total."""


def _untrusted(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _redacted(response: httpx2.Response, raw: bytes) -> bytes:
    # Some upstreams echo the request (headers included) in what they answer: the key must not
    # reach the client, the logs or an exception message through it.
    secret = note_secret(response.request.headers).encode("latin-1")
    return raw.replace(secret, REDACTED.encode()) if secret and secret in raw else raw


def _cause(exc: BaseException) -> BaseException | None:
    """``exc`` as the cause to chain, unless its text quotes the key: then none, so no traceback shows it."""
    return None if redact(str(exc)) != str(exc) else exc


def _quoted(response: httpx2.Response, raw: bytes) -> str:
    """The first 200 bytes of an answer, for an error message, without the key."""
    return repr(_redacted(response, raw)[:200])


class Upstream:
    """Forwards OpenAI requests to the upstream and reports its failures in OpenAI's error shape.

    Create it on the event loop that will use it (the app's lifespan does).

    Args:
        base_url: the upstream's base URL, ending in ``/v1``.
        timeout: seconds to connect, and for the whole answer (a stream: for its head, then for each event).
        max_body: bytes an answer may have, decoded (a stream: in total); past it the answer is cut off
            with a 502 and its connection closed.
        max_connections: connections kept open to the upstream (the gateway's admission bounds use).
        proxy: forward proxy instead of the environment's (see :func:`~diffpo_integrations.backends._net.proxy_for`).
        proxy_env: read ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``.
        ca_bundle: PEM file of CAs trusted besides the system's (and ``SSL_CERT_FILE``).
        transport: an ``httpx2`` transport to send through instead of the network (tests, mocks).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        max_body: int = DEFAULT_MAX_BODY,
        max_connections: int = 64,
        proxy: str | None = None,
        proxy_env: bool = True,
        ca_bundle: str | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")) or not httpx2.URL(base_url).host:
            msg = f"the upstream URL must start with http:// or https:// and name a host, got {base_url!r}"
            raise ValueError(msg)
        if max_body < 1:
            msg = f"max_body must be at least 1 byte, got {max_body}"
            raise ValueError(msg)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        if transport is None:
            transport = RoutedTransport(proxy=proxy, use_env=proxy_env, verify=ssl_context(ca_bundle), limits=limits)
        hide_secrets_in_logs()
        self._client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            headers={"User-Agent": f"diffpo-gateway/{__version__}", "Accept": "*/*"},
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _too_big(self) -> GatewayError:
        msg = f"the upstream {self.base_url} answered more than {self.max_body} bytes: raise --max-upstream-body"
        return GatewayError(502, msg, "upstream_error")

    def _late(self, detail: str) -> GatewayError:
        msg = f"the upstream {self.base_url} did not answer in time: {detail}"
        return GatewayError(504, msg, "upstream_timeout")

    def _failed(self, exc: Exception, *, reading: bool = False) -> GatewayError:
        if isinstance(exc, httpx2.TimeoutException | TimeoutError):
            # httpx2's timeouts carry no text: say which wait ran out.
            if isinstance(exc, httpx2.ConnectTimeout):
                detail = f"could not connect within {self.timeout:g} s"
            elif reading:
                detail = f"the answer stalled for {self.timeout:g} s"
            else:
                detail = f"no answer within {self.timeout:g} s"
            return self._late(detail)
        untrusted = _untrusted(exc)
        if untrusted is not None:
            msg = (
                f"the upstream {self.base_url} presented a certificate the gateway does not trust "
                f"({untrusted.verify_message}): give its CA with --upstream-ca-bundle PATH (or SSL_CERT_FILE)"
            )
            return GatewayError(502, msg, "upstream_unreachable")
        # httpcore's parse errors quote the upstream's bytes, which may echo the key.
        return GatewayError(
            502, f"could not reach the upstream {self.base_url}: {redact(str(exc))}", "upstream_unreachable"
        )

    async def _send(self, method: str, path: str, headers: Mapping[str, str], body: bytes = b"") -> httpx2.Response:
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                msg = f"the header {name!r} for the upstream contains a line break"
                raise self._failed(ValueError(msg))
        note_secret(headers)
        sent = dict(headers)
        if body:
            sent["Content-Type"] = "application/json"
        request = self._client.build_request(method, self.base_url + path, content=body or None, headers=sent)
        try:
            try:
                response = await self._client.send(request, stream=True)
            except httpx2.RemoteProtocolError as exc:
                # The upstream may close an idle keep-alive connection just as it is reused: that
                # request never reached it (no byte came back), so it is sent once more.
                if str(exc) != _STALE:
                    raise
                response = await self._client.send(request, stream=True)
        except (httpx2.HTTPError, OSError, ssl.SSLError) as exc:
            raise self._failed(exc) from _cause(exc)
        if "transfer-encoding" in response.headers and "content-length" in response.headers:
            # HTTP/1.1 forbids both; a proxy and the upstream that disagree on framing is how answers get smuggled.
            await response.aclose()
            msg = f"the upstream {self.base_url} answered with both Transfer-Encoding and Content-Length, which HTTP forbids"
            raise GatewayError(502, msg, "upstream_error")
        return response

    async def _read(self, response: httpx2.Response) -> bytes:
        # Counted as it arrives, not after ``aread()``: an answer over the limit must not fill the memory first.
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_big()
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_body:
                    raise self._too_big()
        except (httpx2.HTTPError, OSError) as exc:
            raise self._failed(exc, reading=True) from _cause(exc)
        return bytes(body)

    async def _error_answer(self, response: httpx2.Response) -> GatewayError:
        raw = _redacted(response, await self._read(response))
        if response.status_code < 400:
            # Not followed: a chat request re-sent elsewhere could lose its body or its key.
            where = redact(response.headers.get("location", "an unnamed place"))
            msg = (
                f"the upstream {self.base_url} answered HTTP {response.status_code}, a redirect to {where}: "
                "give the gateway the final URL as its upstream"
            )
            return GatewayError(502, msg, "upstream_error", code=str(response.status_code))
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        err = GatewayError(response.status_code, "", "upstream_error")
        err.body = upstream_error_body(response.status_code, payload, self.base_url)
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            err.headers["Retry-After"] = retry_after
        return err

    async def chat(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """POST ``/chat/completions`` (not streamed) and return the decoded answer.

        Raises:
            GatewayError: the upstream answered an error (its status and body) or a redirect (502), could
                not be reached (502), did not answer whole within the timeout (504), answered more than
                ``max_body`` bytes (502), or answered something other than a JSON object (502).
        """
        payload, raw = await self._post("/chat/completions", body, headers)
        if not isinstance(payload, dict):
            msg = f"the upstream {self.base_url} answered JSON that is not a chat completion: {raw}"
            raise GatewayError(502, msg, "upstream_error")
        return payload

    async def responses(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """POST ``/responses`` (not streamed), for upstreams with their own Responses API; the decoded answer.

        Raises:
            GatewayError: as :meth:`chat`.
        """
        payload, raw = await self._post("/responses", body, headers)
        if not isinstance(payload, dict) or not isinstance(payload.get("output"), list):
            msg = f"the upstream {self.base_url} answered JSON that is not a response object: {raw}"
            raise GatewayError(502, msg, "upstream_error")
        return payload

    async def _post(self, path: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[Any, str]:
        """The decoded answer, and its first bytes quoted (without the key) for an error message."""
        # One deadline over the whole exchange: httpx2's read timeout restarts at every byte, so an
        # upstream that trickles its answer would never trip it.
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._send("POST", path, headers, json.dumps(body).encode())
                async with aclosing(response):
                    if response.status_code >= 300:
                        raise await self._error_answer(response)
                    raw = await self._read(response)
        except TimeoutError as exc:
            raise self._late(f"no answer within {self.timeout:g} s") from exc
        try:
            payload = json.loads(raw)
        except ValueError:
            msg = f"the upstream {self.base_url} answered non-JSON: {_quoted(response, raw)}"
            raise GatewayError(502, msg, "upstream_error") from None
        return payload, "" if isinstance(payload, dict) else _quoted(response, raw)

    @asynccontextmanager
    async def stream_chat(
        self, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """POST a streamed ``/chat/completions``; yields an iterator over the decoded events.

        Leaving the block closes the connection, which stops the upstream's generation.

        Raises:
            GatewayError: as :meth:`chat`, before the first event.
        """
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._send("POST", "/chat/completions", headers, json.dumps(body).encode())
        except TimeoutError as exc:
            raise self._late(f"no answer within {self.timeout:g} s") from exc
        # Closed, not returned to the pool, unless the stream was read to its end: the upstream
        # stops generating when the gateway leaves early.
        async with aclosing(response):
            if response.status_code >= 300:
                try:
                    async with asyncio.timeout(self.timeout):
                        error = await self._error_answer(response)
                except TimeoutError as exc:
                    raise self._late(f"no answer within {self.timeout:g} s") from exc
                raise error
            yield self._events(response)

    async def _events(self, response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
        # The events are forwarded, not interpreted as errors here: an upstream error event must
        # reach the client as the upstream sent it (the key aside). The timeout runs from one line
        # to the next (an event's data or a keep-alive comment), not from byte to byte, and only
        # while waiting on the upstream, never while the consumer works on an event.
        async with aclosing(self._lines(response)) as lines:
            while True:
                try:
                    async with asyncio.timeout(self.timeout):
                        line = await anext(lines, None)
                except TimeoutError as exc:
                    raise self._late(f"no event for {self.timeout:g} s") from exc
                if line is None:
                    return
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                if data:
                    event = json.loads(data)
                    if isinstance(event, dict):
                        yield event

    async def _lines(self, response: httpx2.Response) -> AsyncGenerator[bytes, None]:
        # Split here rather than with ``aiter_lines()``: the byte limit must apply before a line
        # ends, or one endless line would fill the memory.
        pending = b""
        total = 0
        secret = note_secret(response.request.headers).encode("latin-1")
        try:
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > self.max_body:
                    raise self._too_big()
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    if line := line.strip():
                        yield line.replace(secret, REDACTED.encode()) if secret and secret in line else line
        except (httpx2.HTTPError, OSError) as exc:
            raise self._failed(exc, reading=True) from _cause(exc)
        if line := pending.strip():
            yield line

    async def get(self, path: str, headers: Mapping[str, str]) -> tuple[int, Any]:
        """GET a path under the base URL; the status and the decoded body."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._send("GET", path, headers)
                async with aclosing(response):
                    raw = _redacted(response, await self._read(response))
        except TimeoutError as exc:
            raise self._late(f"no answer within {self.timeout:g} s") from exc
        try:
            return response.status_code, json.loads(raw)
        except ValueError:
            return response.status_code, raw.decode("utf-8", "replace")

    async def probe(self, headers: Mapping[str, str], timeout: float = 2.0) -> dict[str, Any]:
        """``GET /models`` within ``timeout`` seconds: whether the upstream answers, for ``/health``."""

        async def models() -> int:
            response = await self._client.get(self.base_url + "/models", headers=headers)
            return response.status_code

        try:
            status = await asyncio.wait_for(models(), timeout)
        except (httpx2.HTTPError, OSError, ValueError, asyncio.TimeoutError) as exc:
            return {"url": self.base_url, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"url": self.base_url, "ok": status < 400, "status": status}
