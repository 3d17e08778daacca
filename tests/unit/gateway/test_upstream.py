"""The upstream leg on aiohttp against scripted loopback upstreams: pooling, retries, redirects, timeouts, TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme
from scripted_upstream import ok, read_request, scripted

from diffpo_integrations.backends._net import proxy_for
from diffpo_integrations.gateway.upstream import Upstream
from diffpo_integrations.gateway.wire import GatewayError

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader):
            writer.write(ok(b'{"id": "x"}'))

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=5)
        answers = [await upstream.chat(BODY, {}) for _ in range(3)]
        await upstream.aclose()
    assert answers == [{"id": "x"}] * 3
    assert server.connections == 1


async def test_a_stale_pooled_connection_is_retried_once_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(b'{"n": %d}' % n))
        await writer.drain()
        await read_request(reader)  # the first connection closes without answering its second request

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=5)
        first = await upstream.chat(BODY, {})
        second = await upstream.chat(BODY, {})
        await upstream.aclose()
    assert (first, second, server.connections) == ({"n": 1}, {"n": 2}, 2)


async def test_a_redirect_is_not_followed_and_names_the_location() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://elsewhere.example/v1\r\nContent-Length: 0\r\n\r\n"
        )

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=5)
        with pytest.raises(GatewayError) as info:
            await upstream.chat(BODY, {})
        await upstream.aclose()
    assert (info.value.status, str(info.value)) == (
        502,
        f"the upstream {server.url}/v1 answered HTTP 307, a redirect to https://elsewhere.example/v1: "
        "give the gateway the final URL as its upstream",
    )
    assert server.connections == 1


async def test_a_stream_that_stalls_is_a_504_after_the_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        event = b'data: {"n": 1}\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(30)

    async with scripted(handler) as server:
        upstream = Upstream(server.url + "/v1", timeout=0.3)
        seen: list[dict[str, object]] = []

        async def read_all() -> None:
            async with upstream.stream_chat(BODY, {}) as events:
                async for event in events:
                    seen.append(event)

        with pytest.raises(GatewayError) as info:
            await read_all()
        await upstream.aclose()
    assert seen == [{"n": 1}]
    assert (info.value.status, str(info.value)) == (
        504,
        f"the upstream {server.url}/v1 did not answer in time: no event for 0.3 s",
    )


def _tls(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    authority = trustme.CA()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_side)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    return server_side, str(bundle)


async def test_a_private_ca_upstream_needs_the_ca_bundle_and_the_error_says_which_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server_side, bundle = _tls(tmp_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader):
            writer.write(ok(b'{"id": "tls"}'))

    async with scripted(handler, ssl_context=server_side) as server:
        untrusting = Upstream(server.url + "/v1", timeout=5)
        with pytest.raises(GatewayError) as info:
            await untrusting.chat(BODY, {})
        await untrusting.aclose()
        trusting = Upstream(server.url + "/v1", timeout=5, ca_bundle=bundle)
        answer = await trusting.chat(BODY, {})
        await trusting.aclose()
    assert info.value.status == 502
    assert str(info.value) == (
        f"the upstream {server.url}/v1 presented a certificate the gateway does not trust "
        "(unable to get local issuer certificate): give its CA with --upstream-ca-bundle PATH (or SSL_CERT_FILE)"
    )
    assert answer == {"id": "tls"}


ENV = {
    "HTTPS_PROXY": "http://corp:3128",
    "http_proxy": "http://plain:8080",
    "NO_PROXY": "internal.example,.corp.example",
}


@pytest.mark.parametrize(
    ("url", "kwargs", "expected"),
    [
        ("https://api.example.com/v1", {}, "http://corp:3128"),
        ("http://api.example.com/v1", {}, "http://plain:8080"),
        ("https://internal.example/v1", {}, None),
        ("https://gpu.corp.example/v1", {}, None),
        ("http://127.0.0.1:8080", {"proxy": "http://explicit:1"}, None),
        ("http://localhost:8080", {}, None),
        ("http://[::1]:8080", {}, None),
        ("https://api.example.com/v1", {"proxy": "http://explicit:1"}, "http://explicit:1"),
        ("https://internal.example/v1", {"proxy": "http://explicit:1"}, None),
        ("https://api.example.com/v1", {"use_env": False}, None),
        ("https://internal.example/v1", {"proxy": "http://explicit:1", "use_env": False}, "http://explicit:1"),
    ],
)
def test_the_proxy_rule_of_both_legs(url: str, kwargs: dict[str, object], expected: str | None) -> None:
    assert proxy_for(url, environ=ENV, **kwargs) == expected  # type: ignore[arg-type]


def test_lower_case_wins_and_all_proxy_is_the_fallback() -> None:
    environ = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "ALL_PROXY": "socks-less:3"}
    assert proxy_for("https://a.example", environ=environ) == "http://lower:2"
    assert proxy_for("http://a.example", environ=environ) == "http://socks-less:3"
    assert proxy_for("http://a.example", environ={"NO_PROXY": "*", "ALL_PROXY": "http://x:1"}) is None


@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("https://vllm.example:8443/v1", "vllm.example:8443", None),
        ("https://gpu.vllm.example:8443/v1", ".vllm.example:8443", None),
        # A port-qualified entry spares that port only: the same host on another port goes through the proxy.
        ("https://vllm.example/v1", "vllm.example:8443", "http://corp:3128"),
        ("https://vllm.example:9000/v1", "vllm.example:8443", "http://corp:3128"),
        ("https://VLLM.Example/v1", " other.example , .vllm.EXAMPLE ", None),
        ("https://notvllm.example/v1", "vllm.example", "http://corp:3128"),
    ],
)
def test_no_proxy_entries_with_ports_case_and_spaces(url: str, no_proxy: str, expected: str | None) -> None:
    assert proxy_for(url, environ={"HTTPS_PROXY": "http://corp:3128", "NO_PROXY": no_proxy}) == expected


async def test_a_cookie_the_upstream_sets_is_not_sent_with_later_requests() -> None:
    # The pool serves every client of the gateway: one client's upstream session must not become another's.
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while request := await read_request(reader):
            seen.append(request)
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: session=alice; Path=/\r\n"
                b'Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{"id": "x"}'
            )

    # Named, not an IP address: aiohttp's cookie jar keeps no cookie from an IP address.
    async with scripted(handler, host="localhost") as server:
        upstream = Upstream(server.url + "/v1", timeout=5)
        answers = [await upstream.chat(BODY, {}) for _ in range(2)]
        await upstream.aclose()
    assert answers == [{"id": "x"}] * 2
    assert [b"cookie:" in request.lower() for request in seen] == [False, False]
