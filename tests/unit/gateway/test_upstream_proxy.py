"""The upstream leg behind a real forward proxy (proxy.py, started here on loopback), to an HTTPS upstream."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from scripted_upstream import ok, read_request, scripted

from diffpo_integrations.gateway.config import GatewayConfig
from diffpo_integrations.gateway.serve import aligner_client
from diffpo_integrations.gateway.upstream import Upstream
from diffpo_integrations.gateway.wire import GatewayError

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class ForwardProxy:
    """proxy.py in a subprocess; ``log()`` is its access log so far."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.log()


@pytest.fixture
def forward_proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    port_file, log_path = tmp_path / "port", tmp_path / "proxy.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        env.pop(name, None)
    command = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    command += ["--num-workers", "1", "--num-acceptors", "1", "--plugins", "proxy_plugins.LoopbackTestNames"]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"proxy.py did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield ForwardProxy(f"http://127.0.0.1:{port_file.read_text().strip()}", log_path)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    authority = trustme.CA()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("upstream.test").configure_cert(server_side)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    return server_side, str(bundle)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while await read_request(reader):
        writer.write(ok(b'{"id": "via"}'))


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_https_proxy_tunnels_an_https_upstream_with_connect(
    forward_proxy: ForwardProxy, tls: tuple[ssl.SSLContext, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", forward_proxy.url)
    async with scripted(answer, ssl_context=tls[0], host="upstream.test") as server:
        upstream = Upstream(server.url + "/v1", timeout=10, ca_bundle=tls[1])
        got = await upstream.chat(BODY, {})
        await upstream.aclose()
    port = server.url.rsplit(":", 1)[1]
    assert got == {"id": "via"}
    assert f"CONNECT upstream.test:{port}" in await asyncio.to_thread(forward_proxy.wait_for, "CONNECT")


async def test_no_proxy_naming_the_upstream_keeps_the_proxy_out(
    forward_proxy: ForwardProxy, tls: tuple[ssl.SSLContext, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", forward_proxy.url)
    monkeypatch.setenv("NO_PROXY", "upstream.test")
    async with scripted(answer, ssl_context=tls[0], host="upstream.test") as server:
        upstream = Upstream(server.url + "/v1", timeout=10, ca_bundle=tls[1])
        # Direct, the gateway itself must resolve upstream.test, which only the proxy knows: unreachable.
        with pytest.raises(GatewayError) as info:
            await upstream.chat(BODY, {})
        await upstream.aclose()
    assert info.value.status == 502
    assert str(info.value).startswith(f"could not reach the upstream {server.url}/v1: ")
    await asyncio.sleep(0.5)
    assert "upstream.test" not in forward_proxy.log()
    assert server.connections == 0


async def test_the_upstream_proxy_option_wins_over_the_environment(
    forward_proxy: ForwardProxy, tls: tuple[ssl.SSLContext, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    async with scripted(answer, ssl_context=tls[0], host="upstream.test") as server:
        upstream = Upstream(server.url + "/v1", timeout=10, ca_bundle=tls[1], proxy=forward_proxy.url)
        got = await upstream.chat(BODY, {})
        await upstream.aclose()
    assert got == {"id": "via"}
    port = server.url.rsplit(":", 1)[1]
    assert f"CONNECT upstream.test:{port}" in await asyncio.to_thread(forward_proxy.wait_for, "CONNECT")


async def test_a_loopback_upstream_goes_direct_even_with_a_proxy_set(
    forward_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    async with scripted(answer) as server:
        upstream = Upstream(server.url + "/v1", timeout=10)
        got = await upstream.chat(BODY, {})
        await upstream.aclose()
    assert got == {"id": "via"}
    await asyncio.sleep(0.5)
    assert "127.0.0.1:" + server.url.rsplit(":", 1)[1] not in forward_proxy.log()


async def test_the_aligner_leg_follows_the_same_proxy_setting_and_its_own_ca_bundle(
    forward_proxy: ForwardProxy, tls: tuple[ssl.SSLContext, str]
) -> None:
    async with scripted(answer, ssl_context=tls[0], host="upstream.test") as server:
        config = GatewayConfig(
            upstream="http://127.0.0.1:9",
            aligner_urls=[server.url],
            upstream_proxy=forward_proxy.url,
            aligner_ca_bundle=tls[1],
        )
        async with aligner_client(config) as client:
            response = await client.post(server.url + "/generate", json={"inputs": "hi"})
    assert (response.status_code, response.json()) == (200, {"id": "via"})
    port = server.url.rsplit(":", 1)[1]
    assert f"CONNECT upstream.test:{port}" in await asyncio.to_thread(forward_proxy.wait_for, "CONNECT")
