"""One client cannot freeze, exhaust or starve the server (issue #13), against real servers over loopback.

Every attack here is bounded (a few MB, a few hundred connections, seconds) and targets 127.0.0.1.
``/health`` is probed while the attack runs; the worst latency is printed (the figures in
docs/reliability.md come from these prints) and checked against a generous bound: a stalled event
loop takes 7 s and more, a healthy one milliseconds.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from reliability_helpers import make_app, rss_mb

from diffpo_integrations.server.testing import serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEALTH_BOUND_S = 3.0
"""Generous: a probe that waits on a stalled event loop takes several seconds."""
MB = 1024 * 1024


class HealthProbe:
    """Polls ``/health`` from a thread; :attr:`worst` is the slowest answer (or wait) seen."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                # A fresh connection each time, as a load balancer's probe does.
                status = httpx2.get(f"{self.base_url}/health", timeout=30).status_code
                if status != 200:
                    self.failures.append(f"status {status}")
            except httpx2.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.latencies.append(time.perf_counter() - start)
            self._stop.wait(0.1)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=float("inf"))

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def check(self, case: str) -> None:
        print(f"\n/health under {case}: worst {self.worst * 1000:.0f} ms over {len(self.latencies)} probes")
        assert not self.failures, self.failures[:3]
        assert len(self.latencies) >= 2
        assert self.worst < HEALTH_BOUND_S


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _status_line(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def _send_until_answered(sock: socket.socket, pieces: Iterable[bytes]) -> None:
    """Send ``pieces`` until the server answers or closes.

    The server may answer and close while pieces are still in flight; writing after that fails
    (a broken pipe, a reset), and the answer is still in the socket to read. A server that stops
    reading without answering shows up when the caller reads the answer.
    """
    for piece in pieces:
        if select.select([sock], [], [], 0)[0]:
            return
        try:
            sock.sendall(piece)
        except OSError:
            return


def _head(path: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{size}\r\n\r\n".encode()


def _during(action: Callable[[], Any], base_url: str, case: str) -> Any:
    with HealthProbe(base_url) as probe:
        time.sleep(0.3)
        result = action()
        time.sleep(0.3)
    probe.check(case)
    return result


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(make_app()) as base_url:
        yield base_url


def test_a_large_tokenize_body_does_not_freeze_the_server(url: str) -> None:
    # Under the 2 MB body limit, far over what the model can take: refused without tokenizing.
    body = {"inputs": "0123456789 " * 180_000}  # one token per digit: the slowest text to tokenize
    r = _during(lambda: httpx2.post(f"{url}/tokenize", json=body, timeout=120), url, "a 2 MB /tokenize body")
    assert r.status_code == 422
    assert r.json()["error"].startswith("`inputs` must have less than 4096 tokens. Given: at least ")
    # An input the model can take is tokenized off the event loop.
    fits = {"inputs": "Hello world. " * 4000}
    r = _during(lambda: httpx2.post(f"{url}/tokenize", json=fits, timeout=120), url, "a 52 KB /tokenize body")
    assert r.status_code == 200
    assert len(r.json()) > 8000


def test_long_stop_sequences_do_not_freeze_the_server(url: str) -> None:
    stops = [("xy" * 125_000)[:-1] + str(i) for i in range(4)]  # 1 MB of stops, under the body limit
    body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 8, "stop": stops}

    def both() -> list[httpx2.Response]:
        whole = httpx2.post(f"{url}/v1/completions", json=body, timeout=120)
        streamed = httpx2.post(f"{url}/v1/completions", json={**body, "stream": True}, timeout=120)
        return [whole, streamed]

    whole, streamed = _during(both, url, "4 x 250 KB stop sequences")
    assert whole.status_code == streamed.status_code == 200
    assert whole.json()["usage"]["completion_tokens"] == 8
    assert "data: [DONE]" in streamed.text


def test_an_oversized_body_is_refused_before_it_is_read_whole(url: str) -> None:
    port = _port(url)
    with _raw(port) as sock:
        # Announce 10 MB, send 64 KB: the 413 must come without the rest.
        _send_until_answered(sock, [_head("/generate", 10 * MB) + b'{"inputs": "' + b"a" * 65_536])
        assert _status_line(sock) == "HTTP/1.1 413 Request Entity Too Large"
    with _raw(port) as sock:
        # No Content-Length: a chunked body is cut off once it passes the limit, before its end.
        sock.sendall(_head("/generate", None))
        piece = b"a" * 65_536
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        # 2.5 MB with no final chunk: a 413 here cannot have waited for the body's end. Loopback
        # buffers can take all of it before the server reads, so how much went out proves nothing.
        _send_until_answered(sock, [chunk] * 40)
        assert _status_line(sock) == "HTTP/1.1 413 Request Entity Too Large"


def test_ten_megabyte_bodies_leave_memory_flat(url: str) -> None:
    # A valid request: without the limit the server would parse it and tokenize 10 MB of digits.
    head, tail = b'{"inputs": "', b'"}'
    body = head + b"0123456789 " * ((10 * MB - len(head) - len(tail)) // 11) + tail

    def send_10mb(results: list[str]) -> None:
        with _raw(_port(url)) as sock:
            sock.sendall(_head("/generate", len(body)))
            _send_until_answered(sock, (body[start : start + 65_536] for start in range(0, len(body), 65_536)))
            try:
                results.append(_status_line(sock))
            except OSError as exc:  # reset after the 413 was sent and the socket closed
                results.append(f"reset: {exc}")

    before = rss_mb()

    def attack() -> list[str]:
        results: list[str] = []
        threads = [threading.Thread(target=send_10mb, args=(results,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        return results

    results = _during(attack, url, "4 x 10 MB /generate bodies")
    after = rss_mb()
    print(f"\nRSS before the 4 x 10 MB bodies: {before:.0f} MB, after: {after:.0f} MB ({after - before:+.0f} MB)")
    assert len(results) == 4
    assert all(r.startswith(("HTTP/1.1 413", "reset")) for r in results), results
    assert after - before < 200


def test_idle_and_slow_connections_are_closed_and_health_still_answers() -> None:
    app = make_app(max_connections=32, header_timeout_s=2.0)
    with serve_in_thread(app) as url:
        port = _port(url)
        idle = [_raw(port) for _ in range(100)]
        try:
            with HealthProbe(url) as probe:
                time.sleep(1.0)
            probe.check("100 idle connections (cap 32)")
            # The server closed those it had to make room for: at most the cap stay open.
            closed = sum(1 for s in idle if _closed_by_peer(s, within_s=0.5))
            assert closed >= 100 - 32
        finally:
            for sock in idle:
                sock.close()
        with _raw(port) as slow:
            # Slowloris: a request head that never ends, one byte at a time.
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            started = time.monotonic()
            closed_after = None
            while time.monotonic() - started < 10:
                try:
                    slow.sendall(b"a")
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                if _closed_by_peer(slow, within_s=0.3):
                    closed_after = time.monotonic() - started
                    break
            print(f"\nslow request head closed after {closed_after} s (header timeout 2 s)")
            assert closed_after is not None
            assert closed_after < 6
        with _raw(port) as silent:
            # A body that stops coming: the connection is closed after the same timeout.
            silent.sendall(_head("/generate", 1000) + b'{"inputs": "')
            started = time.monotonic()
            assert _closed_by_peer(silent, within_s=8)
            print(f"silent request body closed after {time.monotonic() - started:.1f} s")


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@contextmanager
def _server_process(file_limit: int) -> Iterator[str]:
    """``python -m diffpo_integrations.server`` with a low open-file limit, on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({file_limit}, {file_limit}))\n"
        "from diffpo_integrations.server.__main__ import main\n"
        f"sys.exit(main(['--port', '{port}', '--log-level', 'warning', '--num-threads', '1']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "the server process exited during start-up"
            try:
                if httpx2.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server process did not become healthy"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_more_connections_than_the_file_limit_do_not_shut_out_health_probes() -> None:
    # The server's own cap (256 by default) is lowered under `ulimit -n` 192 at start-up.
    with _server_process(file_limit=192) as url:
        port = _port(url)
        held = [_raw(port) for _ in range(300)]
        try:
            with HealthProbe(url) as probe:
                time.sleep(1.5)
            probe.check("300 half-open connections, ulimit -n 192")
        finally:
            for sock in held:
                sock.close()


def test_a_cancelled_jacobi_alignment_stops_the_server_work(url: str) -> None:
    import asyncio

    from reliability_helpers import metric, wait_idle

    from diffpo_integrations.backends import TGIAligner

    aligner = TGIAligner(url, method="jacobi", max_new_tokens=400, max_retries=0)
    before = metric(url, "diffpo_cancelled_requests_total")

    async def leave_after_2_s() -> float:
        task = asyncio.ensure_future(aligner.aalign([("user", "Count to fifty in words.")], "One, two, three."))
        await asyncio.sleep(2.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await wait_idle(url, within_s=30)

    freed = asyncio.run(leave_after_2_s())
    print(f"\nJacobi alignment cancelled after 2 s: the server was idle {freed:.2f} s later")
    assert metric(url, "diffpo_cancelled_requests_total") == before + 1


_COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
"""A raw prompt the model keeps continuing: no end of turn within 1000 tokens."""


def _sse_payloads(lines: list[str]) -> list[Any]:
    import json

    return [json.loads(line[5:]) for line in lines if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def test_shutdown_ends_unfinished_generations_with_an_error_a_client_understands() -> None:
    server = serve_in_thread(make_app(), graceful_shutdown_s=2)
    base = server.__enter__()
    results: dict[str, Any] = {}
    started = threading.Event()

    def whole() -> None:
        body = {"inputs": _COUNTING, "parameters": {"max_new_tokens": 1000}}
        results["whole"] = httpx2.post(f"{base}/generate", json=body, timeout=120)

    def stream(name: str, path: str, body: dict[str, Any]) -> None:
        lines: list[str] = []
        with httpx2.stream("POST", f"{base}{path}", json=body, timeout=120) as response:
            for line in response.iter_lines():
                lines.append(line)
                started.set()
        results[name] = _sse_payloads(lines)

    prompt = _COUNTING
    threads = [
        threading.Thread(target=whole),
        threading.Thread(
            target=stream,
            args=("tgi", "/generate_stream", {"inputs": prompt, "parameters": {"max_new_tokens": 1000}}),
        ),
        threading.Thread(
            target=stream,
            args=("openai", "/v1/completions", {"prompt": prompt, "max_tokens": 1000, "stream": True}),
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        assert started.wait(120)
        time.sleep(1.0)
    finally:
        server.__exit__(None, None, None)  # as SIGTERM does: should_exit, then the graceful period
    for thread in threads:
        thread.join(timeout=60)
    assert results["whole"].status_code == 500
    assert results["whole"].json()["error_type"] == "incomplete_generation"
    assert results["tgi"][-1]["error_type"] == "incomplete_generation"
    assert "token" in results["tgi"][0]
    assert results["openai"][-1].get("error") is not None
