"""Running the gateway with uvicorn in the foreground."""

from __future__ import annotations

import httpx2

from diffpo_integrations.backends._loop import set_client_factory
from diffpo_integrations.backends._net import RoutedTransport, ssl_context
from diffpo_integrations.gateway.app import create_gateway_app
from diffpo_integrations.gateway.config import GatewayConfig

__all__ = ["run_gateway"]


def run_gateway(config: GatewayConfig) -> None:
    """Serve the gateway until interrupted (Ctrl-C stops gracefully)."""
    import uvicorn

    set_client_factory(
        lambda: httpx2.AsyncClient(
            timeout=None,
            follow_redirects=False,
            trust_env=False,
            transport=RoutedTransport(
                proxy=config.upstream_proxy, use_env=config.proxy_env, verify=ssl_context(config.aligner_ca_bundle)
            ),
        )
    )

    uvicorn.run(
        create_gateway_app(config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=10,
    )
