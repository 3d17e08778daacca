"""The upstream key never leaves the gateway in an error, even when the upstream echoes the request back."""

from __future__ import annotations

import asyncio
import json

import pytest
from scripted_upstream import read_request, scripted

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
