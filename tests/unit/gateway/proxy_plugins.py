"""A proxy.py plugin for the forward-proxy tests: names ending in ``.test`` resolve to loopback.

The gateway sends loopback targets direct, so the tests name their upstream ``upstream.test``; only
the proxy resolves it.
"""

from __future__ import annotations

from proxy.http.proxy import HttpProxyBasePlugin

__all__ = ["LoopbackTestNames"]


class LoopbackTestNames(HttpProxyBasePlugin):  # type: ignore[misc]
    """Resolves ``*.test`` to 127.0.0.1; every other name as usual."""

    def resolve_dns(self, host: str, port: int) -> tuple[str | None, None]:
        return ("127.0.0.1" if host.endswith(".test") else None), None
