"""What one gateway process holds: settings, the upstream client, the aligner, admission and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.gateway.config import GatewayConfig
from diffpo_integrations.gateway.metrics import GatewayMetrics
from diffpo_integrations.gateway.upstream import Upstream
from diffpo_integrations.gateway.wire import GatewayError

__all__ = ["Admission", "GatewayState", "build_aligner"]


def build_aligner(config: GatewayConfig) -> BaseAligner:
    """One :class:`TGIAligner`, or an :class:`AlignerPool` over several, bounded by ``aligner_timeout``."""
    from diffpo_integrations.backends.pool import AlignerPool
    from diffpo_integrations.backends.tgi import TGIAligner

    common: dict[str, Any] = {
        "template": config.template,
        "keep_prefix_tokens": config.keep_prefix_tokens,
        "max_new_tokens": config.max_new_tokens,
        "prompt_mode": config.prompt_mode,
    }
    if len(config.aligner_urls) == 1:
        return TGIAligner(config.aligner_urls[0], deadline=config.aligner_timeout, **common)
    # The pool's failover is the retry: members give up at once instead of after their own backoff.
    members = [TGIAligner(url, max_retries=0, **common) for url in config.aligner_urls]
    return AlignerPool(members, deadline=config.aligner_timeout)


class Admission:
    """At most ``limit`` requests inside, ``waiting`` more queued; past that a 429 with ``Retry-After``."""

    def __init__(self, limit: int, waiting: int, retry_after_s: int = 1) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._capacity = limit + waiting
        self._inside = 0
        self.retry_after_s = retry_after_s

    @property
    def inside(self) -> int:
        """Requests running or waiting now."""
        return self._inside

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request's place for the block.

        Raises:
            GatewayError: 429 when the gateway is full.
        """
        if self._inside >= self._capacity:
            msg = f"the gateway is at capacity ({self._capacity} requests running or waiting); retry later"
            raise GatewayError(
                429, msg, "overloaded", code="overloaded", headers={"Retry-After": str(self.retry_after_s)}
            )
        self._inside += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._inside -= 1


class GatewayState:
    """Everything a route needs; built in the app's lifespan so clients live on the serving event loop."""

    def __init__(
        self,
        config: GatewayConfig,
        aligner: BaseAligner,
    ) -> None:
        self.config = config
        self.aligner = aligner
        self.upstream = Upstream(config.upstream, timeout=config.upstream_timeout)
        self.admission = Admission(config.max_concurrent_requests, config.max_waiting)
        self.metrics = GatewayMetrics()

    def upstream_headers(self, client_headers: Any) -> dict[str, str]:
        """Headers for the upstream leg: its own key, or the client's ``Authorization`` when forwarded."""
        headers: dict[str, str] = {}
        if self.config.forward_authorization and "authorization" in client_headers:
            headers["Authorization"] = client_headers["authorization"]
        elif self.config.upstream_api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.upstream_api_key.get_secret_value()}"
        return headers

    async def aligner_health(self) -> dict[str, Any]:
        """Whether the aligner (each pool member) answers ``GET /health``."""
        acheck = getattr(self.aligner, "acheck_health", None)
        if acheck is not None:
            members = await acheck()
            return {"endpoint": self.aligner.endpoint, "ok": any(members.values()), "members": members}
        from huggingface_hub import get_async_session

        try:
            # The aligner's own HTTP stack, so the probe sees what an alignment would.
            async with get_async_session() as session:
                ok = (await session.get(f"{self.aligner.endpoint}/health", timeout=2.0)).status_code == 200
        except Exception as exc:  # refused, reset, timed out: all mean "not serving"
            return {"endpoint": self.aligner.endpoint, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"endpoint": self.aligner.endpoint, "ok": ok}

    async def aclose(self) -> None:
        """Close the upstream pool and stop the aligner pool's health checks."""
        await self.upstream.aclose()
        close = getattr(self.aligner, "close", None)
        if close is not None:
            close()
