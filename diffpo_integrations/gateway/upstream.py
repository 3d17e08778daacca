"""The upstream chat endpoint on ``aiohttp``: one keep-alive pool, failures turned into OpenAI-shaped gateway errors.

aiohttp rather than ``httpx2`` (the backends' client, and the aligner leg's) on this leg, chosen by
measurement: every gateway call pays the upstream client's per-request cost, and with
``diffpo bench gateway`` aiohttp's C parser and plain asyncio cost a fraction of httpx2's
pure-Python HTTP/1.1 stack (docs/benchmarks.md). Both legs still follow one network rule:
:func:`~diffpo_integrations.backends._net.proxy_for` decides the proxy and
:func:`~diffpo_integrations.backends._net.ssl_context` the trusted CAs.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from diffpo_integrations import __version__
from diffpo_integrations.backends._net import proxy_for, ssl_context
from diffpo_integrations.gateway.redaction import REDACTED, hide_secrets_in_logs, note_secret, redact
from diffpo_integrations.gateway.wire import GatewayError, upstream_error_body

__all__ = ["Upstream"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
"""Bytes an upstream answer may have (32 MiB): a whole answer, an error body, or a stream in total."""


def _links(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def _untrusted(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    for link in _links(exc):
        if isinstance(link, aiohttp.ClientConnectorCertificateError):
            link = link.certificate_error
        if isinstance(link, ssl.SSLCertVerificationError):
            return link
    return None


def _scrub(raw: bytes, secret: bytes) -> bytes:
    return raw.replace(secret, REDACTED.encode()) if secret and secret in raw else raw


def _redacted(response: aiohttp.ClientResponse, raw: bytes) -> bytes:
    # Some upstreams echo the request (headers included) in what they answer: the key must not
    # reach the client, the logs or an exception message through it.
    return _scrub(raw, note_secret(response.request_info.headers).encode("latin-1"))


def _cause(exc: BaseException) -> BaseException | None:
    """``exc`` as the cause to chain, unless it or its own chain quotes the key: then none, so no traceback shows it."""
    quoting = any(redact(f"{link!s} {link.args!r}") != f"{link!s} {link.args!r}" for link in _links(exc))
    return None if quoting else exc


def _quoted(response: aiohttp.ClientResponse, raw: bytes) -> str:
    """The first 200 bytes of an answer, for an error message, without the key."""
    return repr(_redacted(response, raw)[:200])


_BOTH_FRAMINGS = "Content-Length can't be present with Transfer-Encoding"
"""llhttp's reason for an answer with both headers (aiohttp's pure-Python parser lets it through)."""


def _reason(exc: BaseException) -> str:
    # aiohttp's parser errors print a status of their own and the URL around the reason, and
    # llhttp's spread it over lines with a caret under the bad byte: one line of it is what helps
    # in an error message. They quote the upstream's bytes, which may echo the key.
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) and exc.message else str(exc)
    lines = [line.strip() for line in str(text).splitlines()]
    return redact(" ".join(line for line in lines if line.strip("^")) or type(exc).__name__)


def _release(response: aiohttp.ClientResponse) -> None:
    # Back to the pool only when the answer was read to its end; otherwise the connection closes,
    # which is also what tells the upstream to stop generating.
    if response.content.at_eof():
        response.release()
    else:
        response.close()


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
    ) -> None:
        if not base_url.startswith(("http://", "https://")) or not urlsplit(base_url).hostname:
            msg = f"the upstream URL must start with http:// or https:// and name a host, got {base_url!r}"
            raise ValueError(msg)
        if max_body < 1:
            msg = f"max_body must be at least 1 byte, got {max_body}"
            raise ValueError(msg)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        # One origin, so one decision, taken from the environment as it is now (as the aligner leg's
        # RoutedTransport does); aiohttp tunnels an HTTPS upstream through the proxy with CONNECT.
        self._proxy = proxy_for(self.base_url, proxy=proxy, use_env=proxy_env)
        # A stream's wait is the per-event deadline of :meth:`_events`; aiohttp's own read timeout,
        # restarted at every byte, would only race it with a less precise message.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=None)
        hide_secrets_in_logs()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=ssl_context(ca_bundle)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            headers={"User-Agent": f"diffpo-gateway/{__version__}", "Accept": "*/*"},
            # The pool serves every client of the gateway: a cookie the upstream sets for one must
            # never go out with another's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._session.close()

    def _too_big(self) -> GatewayError:
        msg = f"the upstream {self.base_url} answered more than {self.max_body} bytes: raise --max-upstream-body"
        return GatewayError(502, msg, "upstream_error")

    def _late(self, detail: str) -> GatewayError:
        msg = f"the upstream {self.base_url} did not answer in time: {detail}"
        return GatewayError(504, msg, "upstream_timeout")

    def _failed(self, exc: BaseException, *, reading: bool = False) -> GatewayError:
        if isinstance(exc, TimeoutError):
            # aiohttp's timeouts say little: say which wait ran out.
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
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
        return GatewayError(
            502, f"could not reach the upstream {self.base_url}: {_reason(exc)}", "upstream_unreachable"
        )

    async def _send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b"", *, streamed: bool = False
    ) -> aiohttp.ClientResponse:
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                msg = f"the header {name!r} for the upstream contains a line break"
                raise self._failed(ValueError(msg))
        note_secret(headers)
        sent = dict(headers)
        if body:
            sent["Content-Type"] = "application/json"
        url = self.base_url + path
        options: dict[str, Any] = {
            "data": body or None,
            "headers": sent,
            "proxy": self._proxy,
            "allow_redirects": False,
        }
        if streamed:
            options["timeout"] = self._stream_timeout
        try:
            try:
                response = await self._session.request(method, url, **options)
            except aiohttp.ServerDisconnectedError:
                # The upstream may close an idle keep-alive connection just as it is reused: that
                # request got no answer, so it is sent once more (aiohttp itself retries only
                # idempotent methods, and a chat request is a POST).
                response = await self._session.request(method, url, **options)
        except aiohttp.ClientResponseError as exc:
            if str(exc.message).startswith(_BOTH_FRAMINGS):
                raise self._both_framings() from None
            raise self._failed(exc) from _cause(exc)
        except (aiohttp.ClientError, OSError, ssl.SSLError, TimeoutError) as exc:
            raise self._failed(exc) from _cause(exc)
        if "transfer-encoding" in response.headers and "content-length" in response.headers:
            response.close()
            raise self._both_framings()
        return response

    def _both_framings(self) -> GatewayError:
        # HTTP/1.1 forbids both; a proxy and the upstream that disagree on framing is how answers get smuggled.
        msg = (
            f"the upstream {self.base_url} answered with both Transfer-Encoding and Content-Length, which HTTP forbids"
        )
        return GatewayError(502, msg, "upstream_error")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        # Counted as it arrives, not after ``read()``: an answer over the limit must not fill the memory first.
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_big()
        body = bytearray()
        try:
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > self.max_body:
                    raise self._too_big()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._failed(exc, reading=True) from _cause(exc)
        return bytes(body)

    async def _error_answer(self, response: aiohttp.ClientResponse) -> GatewayError:
        raw = _redacted(response, await self._read(response))
        if response.status < 400:
            # Not followed: a chat request re-sent elsewhere could lose its body or its key.
            where = redact(response.headers.get("location", "an unnamed place"))
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
        # One deadline over the whole exchange: aiohttp's read timeout restarts at every byte, so an
        # upstream that trickles its answer would never trip it.
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._send("POST", path, headers, json.dumps(body).encode())
                try:
                    if response.status >= 300:
                        raise await self._error_answer(response)
                    raw = await self._read(response)
                finally:
                    _release(response)
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
                response = await self._send(
                    "POST", "/chat/completions", headers, json.dumps(body).encode(), streamed=True
                )
        except TimeoutError as exc:
            raise self._late(f"no answer within {self.timeout:g} s") from exc
        # Closed, not returned to the pool, unless the stream was read to its end: the upstream
        # stops generating when the gateway leaves early.
        try:
            if response.status >= 300:
                try:
                    async with asyncio.timeout(self.timeout):
                        error = await self._error_answer(response)
                except TimeoutError as exc:
                    raise self._late(f"no answer within {self.timeout:g} s") from exc
                raise error
            yield self._events(response)
        finally:
            _release(response)

    async def _events(self, response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
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

    async def _lines(self, response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
        # Split here rather than with aiohttp's line reader: the byte limit must apply before a line
        # ends, or one endless line would fill the memory.
        pending = b""
        total = 0
        secret = note_secret(response.request_info.headers).encode("latin-1")
        try:
            async for chunk in response.content.iter_any():
                # aiohttp hands over all it has buffered at once: the events within the limit are
                # still forwarded before the answer is cut off.
                over = total + len(chunk) > self.max_body
                chunk = chunk[: self.max_body - total] if over else chunk
                total += len(chunk)
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    if line := line.strip():
                        yield _scrub(line, secret)
                if over:
                    raise self._too_big()
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed(exc, reading=True) from _cause(exc)
        if line := pending.strip():
            yield _scrub(line, secret)

    async def get(self, path: str, headers: Mapping[str, str]) -> tuple[int, Any]:
        """GET a path under the base URL; the status and the decoded body."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._send("GET", path, headers)
                try:
                    raw = _redacted(response, await self._read(response))
                finally:
                    _release(response)
        except TimeoutError as exc:
            raise self._late(f"no answer within {self.timeout:g} s") from exc
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")

    async def probe(self, headers: Mapping[str, str], timeout: float = 2.0) -> dict[str, Any]:
        """``GET /models`` within ``timeout`` seconds: whether the upstream answers, for ``/health``."""

        async def models() -> int:
            async with self._session.get(
                self.base_url + "/models", headers=dict(headers), proxy=self._proxy, allow_redirects=False
            ) as response:
                await response.read()
                return response.status

        try:
            status = await asyncio.wait_for(models(), timeout)
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
            return {"url": self.base_url, "ok": False, "error": f"{type(exc).__name__}: {redact(str(exc))}"}
        return {"url": self.base_url, "ok": status < 400, "status": status}
