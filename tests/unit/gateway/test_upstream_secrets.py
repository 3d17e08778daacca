"""The upstream key never leaves the gateway in an error, even when the upstream echoes the request back."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from gateway_fakes import MESSAGES, served_gateway
from hostile_upstreams import HOSTILE, MAX_BODY
from pydantic import SecretStr
from scripted_upstream import read_request, scripted, scripted_in_thread

from diffpo_integrations.backends.testing import mock_tgi
from diffpo_integrations.gateway import GatewayConfig
from diffpo_integrations.gateway.redaction import note_secret
from diffpo_integrations.gateway.upstream import Upstream
from diffpo_integrations.gateway.wire import GatewayError

KEY = "sk-upstream-s3cret-4242"
HEADERS = {"Authorization": f"Bearer {KEY}"}


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while request := await read_request(reader):
        body = json.dumps({"error": {"message": "bad key", "request": request.decode("latin-1")}}).encode()
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


async def test_an_upstream_that_echoes_the_key_in_its_error_body_is_redacted() -> None:
    async with scripted(echo) as server:
        upstream = Upstream(server.url + "/v1", timeout=5)
        with pytest.raises(GatewayError) as info:
            await upstream.chat({"model": "m", "messages": []}, HEADERS)
        status, payload = await upstream.get("/models", HEADERS)
        await upstream.aclose()
    assert info.value.status == 401
    seen = json.dumps(info.value.body) + str(info.value) + repr(info.value) + json.dumps(payload)
    assert KEY not in seen
    assert "Bearer [redacted]" in json.dumps(info.value.body)
    assert status == 401
    assert "Bearer [redacted]" in json.dumps(payload)


def _token(request: bytes) -> bytes:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"authorization":
            return value.strip().partition(b" ")[2]
    return b"none"


def _echoed(request: bytes) -> bytes:
    # The key first, so that even a message quoting the first bytes of an answer would show it.
    return b"you sent the key %s with %s" % (_token(request), request)


def _plain(status: bytes, body: bytes, kind: bytes = b"text/plain") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (status, kind, len(body), body)


ECHOES: dict[str, Callable[[bytes], bytes]] = {
    "echo-openai-error": lambda r: _plain(
        b"401 Unauthorized",
        json.dumps({"error": {"message": _echoed(r).decode("latin-1")}}).encode(),
        b"application/json",
    ),
    "echo-plain-error": lambda r: _plain(b"500 Oops", _echoed(r)),
    "echo-non-json": lambda r: _plain(b"200 OK", _echoed(r)),
    "echo-json-not-an-object": lambda r: _plain(
        b"200 OK", json.dumps([_echoed(r).decode("latin-1")]).encode(), b"application/json"
    ),
    "echo-reason-phrase": lambda r: b"HTTP/1.1 401 %s\r\nContent-Length: 0\r\n\r\n" % _token(r),
    "echo-malformed-header": lambda r: b"HTTP/1.1 200 OK\r\nBad header %s\r\n\r\n" % _token(r),
    "echo-redirect": lambda r: (
        b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/v1?key=%s\r\nContent-Length: 0\r\n\r\n" % _token(r)
    ),
    "echo-stream-error-event": lambda r: _plain(
        b"200 OK",
        b"data: %s\n\ndata: [DONE]\n\n" % json.dumps({"error": {"message": _echoed(r).decode("latin-1")}}).encode(),
        b"text/event-stream",
    ),
}
"""Upstreams that send the request back, headers and key included, in every place an answer can hold it."""


async def leaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    # The case is the request's model, so one upstream plays them all.
    while request := await read_request(reader):
        if request.startswith(b"GET /v1/models "):
            writer.write(_plain(b"200 OK", _echoed(request)))
            continue
        case = json.loads(request.partition(b"\r\n\r\n")[2])["model"]
        if case in ECHOES:
            writer.write(ECHOES[case](request))
            await writer.drain()
        else:
            await HOSTILE[case](reader, writer)
            return


CASES = [*HOSTILE, *ECHOES]


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    # The chain a traceback shows: the cause, else the context unless ``raise ... from None`` hid it.
    while exc is not None:
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


async def _raised(url: str, headers: dict[str, str]) -> list[tuple[str, str]]:
    """What the upstream leg raises for each case: every exception of each chain, its text and args."""
    upstream = Upstream(url, timeout=0.5, max_body=MAX_BODY)
    seen = [("repr(Upstream)", repr(upstream)), ("str(Upstream)", str(upstream))]
    for case in CASES:
        for streamed in (False, True):
            try:
                if streamed:
                    async with upstream.stream_chat({"model": case, "messages": []}, headers) as events:
                        seen += [(f"{case} event", json.dumps(e)) async for e in events]
                else:
                    await upstream.chat({"model": case, "messages": []}, headers)
            except GatewayError as exc:
                for link in _chain(exc):
                    seen.append((f"{case} exception", f"{link!s} {link!r} {link.args!r}"))
                seen.append((f"{case} error body", json.dumps(exc.body)))
    await upstream.aclose()
    return seen


@pytest.mark.parametrize("source", ["upstream-api-key", "forwarded-authorization"])
def test_the_upstream_key_leaks_nowhere(source: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    options: dict[str, Any] = (
        {"upstream_api_key": SecretStr(KEY)} if source == "upstream-api-key" else {"forward_authorization": True}
    )
    client_headers = {} if source == "upstream-api-key" else HEADERS
    places: list[tuple[str, str]] = []
    with mock_tgi(), scripted_in_thread(leaky) as server:
        config = GatewayConfig(
            upstream=server.url,
            aligner_urls=["http://mock-tgi"],
            upstream_timeout=0.5,
            max_upstream_body=MAX_BODY,
            log_level="debug",
            **options,
        )
        places += [("repr(GatewayConfig)", repr(config)), ("str(GatewayConfig)", str(config))]
        with (
            served_gateway(config) as gateway_url,
            httpx2.Client(base_url=gateway_url, headers=client_headers) as client,
        ):
            for case in CASES:
                for extra in ({}, {"stream": True}):
                    answer = client.post("/v1/chat/completions", json={"model": case, "messages": MESSAGES, **extra})
                    places.append((f"{case} {extra} answer", f"{answer.headers} {answer.text}"))
                answer = client.post("/v1/responses", json={"model": case, "input": "hi"})
                places.append((f"{case} responses answer", f"{answer.headers} {answer.text}"))
            for path in ("/v1/models", "/health", "/metrics"):
                answer = client.get(path)
                places.append((f"GET {path}", f"{answer.headers} {answer.text}"))
        places += asyncio.run(_raised(config.upstream, HEADERS))
    places += [(f"log {r.name}", f"{r.getMessage()} {r.args!r} {r.exc_text}") for r in caplog.records]
    assert {r.name.split(".")[0] for r in caplog.records} >= {"uvicorn", "httpx2", "httpcore2"}
    assert " | ".join(sorted({where for where, text in places if KEY in text})) == ""
    # The upstream did send the key back, and in each of these places it was redacted, not missed.
    echoed = {where for where, text in places if "[redacted]" in text}
    assert {
        "echo-openai-error error body",
        "echo-plain-error error body",
        "echo-non-json exception",
        "echo-json-not-an-object exception",
        "echo-malformed-header exception",
        "echo-redirect exception",
        "echo-stream-error-event event",
        "GET /v1/models",
    } <= echoed, sorted(echoed)


@pytest.mark.parametrize("logger", ["aiohttp.client", "aiohttp.internal"])
async def test_the_upstream_clients_log_records_are_redacted(logger: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await Upstream("http://127.0.0.1:9/v1", timeout=1).aclose()  # building one installs the filter
    note_secret(HEADERS)
    logging.getLogger(logger).debug("Error while closing: %r", ValueError(f"bad header {KEY}"))
    note_secret({})
    logging.getLogger(logger).debug("later %s", KEY)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        (logger, "Error while closing: ValueError('bad header [redacted]')"),
        (logger, f"later {KEY}"),
    ]
