"""Running the gateway with uvicorn in the foreground."""

from __future__ import annotations

import httpx2

from diffpo_integrations.backends._loop import set_client_factory
from diffpo_integrations.backends._net import RoutedTransport, ssl_context
from diffpo_integrations.gateway.app import create_gateway_app
from diffpo_integrations.gateway.config import GatewayConfig

__all__ = ["aligner_client", "run_gateway"]


def aligner_client(config: GatewayConfig) -> httpx2.AsyncClient:
    """The aligner leg's client: the upstream leg's proxy rule, and ``aligner_ca_bundle`` for HTTPS aligners."""
    transport = RoutedTransport(
        proxy=config.upstream_proxy, use_env=config.proxy_env, verify=ssl_context(config.aligner_ca_bundle)
    )
    return httpx2.AsyncClient(timeout=None, follow_redirects=False, trust_env=False, transport=transport)


def run_gateway(config: GatewayConfig) -> None:
    """Serve the gateway until interrupted (Ctrl-C stops gracefully)."""
    import uvicorn

    set_client_factory(lambda: aligner_client(config))

    uvicorn.run(
        create_gateway_app(config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=10,
    )
