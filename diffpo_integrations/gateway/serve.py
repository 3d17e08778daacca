"""Running the gateway with uvicorn in the foreground."""

from __future__ import annotations

from diffpo_integrations.gateway.app import create_gateway_app
from diffpo_integrations.gateway.config import GatewayConfig

__all__ = ["run_gateway"]


def run_gateway(config: GatewayConfig) -> None:
    """Serve the gateway until interrupted (Ctrl-C stops gracefully)."""
    import uvicorn

    uvicorn.run(
        create_gateway_app(config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=10,
    )
