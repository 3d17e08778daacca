"""Helpers the reliability tests share: metrics, RSS, replicas that stop and restart on the same port.

Every server here binds 127.0.0.1 on a free port and is stopped by its context manager; every
client call runs under ``asyncio.wait_for`` so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx2

from diffpo_integrations.server import ServerConfig, create_app
from diffpo_integrations.server.testing import get_default_engine, serve_in_thread

NEW_TOKENS = 4
"""SmolLM2 makes ~30-50 tokens/s on 2 cores: a few tokens keep hundreds of requests within minutes."""


def rss_mb() -> float:
    """This process's resident memory in MB (the in-thread servers live here too).

    Freed heap memory is handed back to the system first (glibc's ``malloc_trim``), so the figure
    counts memory still held, not what the allocator keeps cached for reuse after a busy run.
    """
    _trim_heap()
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) / 1024


def _trim_heap() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


def metric(base_url: str, name: str, labels: str = "") -> float:
    """One value of the server's Prometheus ``/metrics`` (0 when the series does not exist yet)."""
    text = httpx2.get(f"{base_url}/metrics", timeout=10).text
    key = name + labels
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[1])
    return 0.0


async def wait_idle(base_url: str, within_s: float = 30.0) -> float:
    """Seconds until the server holds no admitted request (fails after ``within_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        admitted = await asyncio.to_thread(metric, base_url, "diffpo_admitted_requests")
        if admitted == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server at {base_url} still holds requests after {within_s} s")


def make_app(**config: Any) -> Any:
    """A fresh app (its own worker and limits) over the shared loaded model."""
    return create_app(get_default_engine(), ServerConfig(port=0, api_key=None, **config))


class Replica:
    """A server that can be stopped and started again on the same port, from any thread."""

    def __init__(self, app: Any, port: int = 0, graceful_shutdown_s: int = 5) -> None:
        self.app = app
        self.port = port
        self.graceful_shutdown_s = graceful_shutdown_s
        self.url = ""
        self._cm: AbstractContextManager[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> str:
        with self._lock:
            self._cm = serve_in_thread(self.app, port=self.port, graceful_shutdown_s=self.graceful_shutdown_s)
            self.url = self._cm.__enter__()
            self.port = int(self.url.rsplit(":", 1)[1])
            return self.url

    def stop(self) -> None:
        with self._lock:
            if self._cm is not None:
                cm, self._cm = self._cm, None
                cm.__exit__(None, None, None)
