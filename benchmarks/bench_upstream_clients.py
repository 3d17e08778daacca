"""CPU per request of the two candidate clients for the gateway's upstream leg: httpx2 and aiohttp.

Both send the gateway's upstream request (a small chat completion, JSON body, keep-alive pool of
64) to the benchmark delay server with no delay, in one process, interleaved: ``--repeats`` rounds,
each timing ``--calls`` sequential calls and ``--rounds`` bursts of 64 concurrent calls per client.
Prints milliseconds of this process's CPU and of wall time per call, the time of one burst, and the
ratio aiohttp / httpx2 of each. The delay server runs in its own process, so its CPU is not counted.

    python benchmarks/bench_upstream_clients.py --calls 1500 --repeats 2

Needs aiohttp (``pip install aiohttp``; the test group has it). ``diffpo bench gateway`` measures
what the whole gateway adds; this script isolates the client's share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx2

from diffpo_integrations.backends._net import RoutedTransport, ssl_context
from diffpo_integrations.evaluation.delay_server import delay_server

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Name a prime number."}]}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer unused"}
CONCURRENCY = 64

Call = Callable[[], Awaitable[None]]


async def _httpx2(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    limits = httpx2.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    client = httpx2.AsyncClient(
        timeout=httpx2.Timeout(30),
        follow_redirects=False,
        trust_env=False,
        transport=RoutedTransport(verify=ssl_context(), limits=limits),
    )

    async def call() -> None:
        response = await client.send(client.build_request("POST", url, content=BODY, headers=HEADERS), stream=True)
        await response.aread()
        await response.aclose()

    return call, client.aclose


async def _aiohttp(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY, ssl=ssl_context()),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30),
        trust_env=False,
    )

    async def call() -> None:
        async with session.post(url, data=BODY, headers=HEADERS, allow_redirects=False) as response:
            await response.read()

    return call, session.close


async def _measure(
    make: Callable[[str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]], url: str, calls: int, rounds: int
) -> tuple[float, float, float]:
    call, close = await make(url)
    try:
        for _ in range(50):
            await call()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            await call()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        burst = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(call() for _ in range(CONCURRENCY)))
        burst = time.perf_counter() - burst
    finally:
        await close()
    return cpu / calls * 1e3, wall / calls * 1e3, burst / rounds * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500, help="sequential calls per client and repeat")
    parser.add_argument("--rounds", type=int, default=20, help="bursts of 64 concurrent calls per client and repeat")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats")
    args = parser.parse_args()
    clients = {"httpx2": _httpx2, "aiohttp": _aiohttp}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in clients}
    with delay_server(0.0) as base:
        url = base + "/v1/chat/completions"
        for _ in range(args.repeats):
            for name, make in clients.items():
                figures[name].append(asyncio.run(_measure(make, url, args.calls, args.rounds)))
    medians = {
        name: [statistics.median(column) for column in zip(*rows, strict=True)] for name, rows in figures.items()
    }
    print(f"{'client':8s} {'CPU ms/call':>12s} {'wall ms/call':>13s} {'64 at once ms':>14s}")
    for name, (cpu, wall, burst) in medians.items():
        print(f"{name:8s} {cpu:12.3f} {wall:13.3f} {burst:14.1f}")
    (a_cpu, a_wall, a_burst), (x_cpu, x_wall, x_burst) = medians["aiohttp"], medians["httpx2"]
    print(
        f"aiohttp / httpx2: CPU {a_cpu / x_cpu:.2f}x, wall {a_wall / x_wall:.2f}x, 64 at once {a_burst / x_burst:.2f}x"
    )


if __name__ == "__main__":
    main()
