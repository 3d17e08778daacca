"""``diffpo bench gateway``: what the gateway adds over calling the upstream directly, alignment off.

Both legs run against the same delay server (a canned chat answer after a fixed delay), the gateway
in its own process, so each figure is the gateway's own cost: the median added latency of one
call, and how 64 concurrent calls scale through the gateway compared with the upstream alone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2

__all__ = ["GatewayBenchResult", "format_gateway_table", "gateway_process", "run_gateway_bench"]

_BODY = {"model": "delay-server", "messages": [{"role": "user", "content": "Is seven a prime number?"}]}
_OFF = {"x-diffpo-align": "off"}
_SINGLES_PER_ROUND = 5
TARGET_ADDED_MS = 1.5
TARGET_CONCURRENCY_RATIO = 1.1


@dataclass(frozen=True)
class GatewayBenchResult:
    """Figures of one run (milliseconds)."""

    delay_ms: float
    iterations: int
    concurrency: int
    direct_ms: float
    """Median of one call straight to the upstream."""
    gateway_ms: float
    """Median of one call through the gateway, alignment off."""
    direct_round_ms: tuple[float, float]
    """One call, then ``concurrency`` calls at once, straight to the upstream (medians over rounds)."""
    gateway_round_ms: tuple[float, float]
    """The same through the gateway."""

    @property
    def added_ms(self) -> float:
        """Median latency the gateway adds to one call."""
        return self.gateway_ms - self.direct_ms

    @property
    def concurrency_ratio(self) -> float:
        """(gateway concurrent / single) over (direct concurrent / single): 1.0 means no extra queueing."""
        direct = self.direct_round_ms[1] / self.direct_round_ms[0]
        gateway = self.gateway_round_ms[1] / self.gateway_round_ms[0]
        return gateway / direct


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gateway_process(upstream_url: str, *, timeout: float = 60.0) -> Iterator[str]:
    """Run ``diffpo gateway`` in front of ``upstream_url`` in a child process; yield its base URL.

    The aligner URL points at a closed port: the benchmark turns alignment off per request.
    """
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "diffpo_integrations.cli",
        "gateway",
        "--upstream",
        upstream_url,
        "--aligner-url",
        f"http://127.0.0.1:{_free_port()}",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                msg = f"diffpo gateway exited with status {proc.returncode} during start-up"
                raise RuntimeError(msg)
            try:
                if httpx2.get(url + "/v1/models", timeout=2.0, trust_env=False).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                msg = f"diffpo gateway did not start within {timeout:.0f} s"
                raise RuntimeError(msg)
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _paired_medians_ms(direct: str, gateway: str, iterations: int, warmup: int) -> tuple[float, float]:
    """Median of one call straight to the upstream and of one through the gateway, the two interleaved.

    Interleaved, each pair in alternating order: a drift of the machine's speed over the run (other
    tenants, frequency changes) then shifts both medians alike instead of showing up as overhead.
    """
    times: dict[str, list[float]] = {direct: [], gateway: []}
    headers = {direct: {}, gateway: _OFF}
    with httpx2.Client(timeout=30.0, trust_env=False) as client:
        for i in range(warmup + iterations):
            for url in (direct, gateway) if i % 2 == 0 else (gateway, direct):
                start = time.perf_counter()
                response = client.post(url + "/v1/chat/completions", json=_BODY, headers=headers[url])
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                if i >= warmup:
                    times[url].append(elapsed)
    return statistics.median(times[direct]) * 1000, statistics.median(times[gateway]) * 1000


async def _paired_rounds_ms(
    direct: str, gateway: str, concurrency: int, rounds: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """For each leg: one call, then ``concurrency`` calls at once (medians over rounds, legs interleaved)."""
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=2 * concurrency)
    async with httpx2.AsyncClient(timeout=60.0, limits=limits, trust_env=False) as client:

        async def call(url: str) -> None:
            headers = _OFF if url == gateway else {}
            (await client.post(url + "/v1/chat/completions", json=_BODY, headers=headers)).raise_for_status()

        singles: dict[str, list[float]] = {direct: [], gateway: []}
        bursts: dict[str, list[float]] = {direct: [], gateway: []}
        # Open every connection first, so the rounds time requests, not TCP handshakes.
        for url in (direct, gateway):
            await asyncio.gather(*(call(url) for _ in range(concurrency)))
        for r in range(rounds):
            for url in (direct, gateway) if r % 2 == 0 else (gateway, direct):
                # Several single calls a round: the ratio divides by their median, so it must not be one sample.
                for _ in range(_SINGLES_PER_ROUND):
                    start = time.perf_counter()
                    await call(url)
                    singles[url].append(time.perf_counter() - start)
                start = time.perf_counter()
                await asyncio.gather(*(call(url) for _ in range(concurrency)))
                bursts[url].append(time.perf_counter() - start)

    def medians(url: str) -> tuple[float, float]:
        return statistics.median(singles[url]) * 1000, statistics.median(bursts[url]) * 1000

    return medians(direct), medians(gateway)


def run_gateway_bench(
    upstream_url: str,
    gateway_url: str,
    *,
    delay_ms: float,
    iterations: int = 200,
    warmup: int = 20,
    concurrency: int = 64,
    rounds: int = 10,
) -> GatewayBenchResult:
    """Time direct and gateway calls against the same upstream, the two legs interleaved call by call."""
    direct_ms, gateway_ms = _paired_medians_ms(upstream_url, gateway_url, iterations, warmup)
    direct_round, gateway_round = asyncio.run(_paired_rounds_ms(upstream_url, gateway_url, concurrency, rounds))
    return GatewayBenchResult(delay_ms, iterations, concurrency, direct_ms, gateway_ms, direct_round, gateway_round)


def format_gateway_table(result: GatewayBenchResult) -> str:
    """The figures as a plain-text table, each with its target."""
    added_ok = "ok" if result.added_ms <= TARGET_ADDED_MS else "OVER"
    ratio_ok = "ok" if result.concurrency_ratio <= TARGET_CONCURRENCY_RATIO else "OVER"
    d1, dn = result.direct_round_ms
    g1, gn = result.gateway_round_ms
    rows = [
        f"gateway overhead, alignment off (upstream delay {result.delay_ms:g} ms, {result.iterations} calls)",
        f"  median one call      direct {result.direct_ms:8.2f} ms   gateway {result.gateway_ms:8.2f} ms",
        f"  added by the gateway {result.added_ms:+8.2f} ms   (target <= {TARGET_ADDED_MS:g} ms: {added_ok})",
        f"  {result.concurrency} concurrent calls  direct {dn:8.1f} ms ({dn / d1:.2f}x one call)   "
        f"gateway {gn:8.1f} ms ({gn / g1:.2f}x one call)",
        f"  gateway ratio / direct ratio {result.concurrency_ratio:.2f}x   "
        f"(target <= {TARGET_CONCURRENCY_RATIO:g}x: {ratio_ok})",
    ]
    return "\n".join(rows)
