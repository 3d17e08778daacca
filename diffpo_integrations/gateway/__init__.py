"""``diffpo gateway``: an OpenAI-compatible endpoint that aligns any upstream chat model's answers.

Point any OpenAI client at the gateway instead of the upstream: it forwards each chat request
upstream, takes the answer as the draft, aligns it with the DiffPO aligner, and answers in
OpenAI's format. Needs the ``gateway`` extra (no torch): ``pip install 'diffpo-integrations[gateway]'``.

Example:
    >>> from diffpo_integrations.gateway import GatewayConfig, run_gateway  # doctest: +SKIP
    >>> run_gateway(GatewayConfig(upstream="http://127.0.0.1:8081/v1", aligner_urls=["http://127.0.0.1:8080"]))  # doctest: +SKIP
"""

from diffpo_integrations.gateway.app import create_gateway_app
from diffpo_integrations.gateway.config import GatewayConfig, StreamPolicy
from diffpo_integrations.gateway.serve import run_gateway

__all__ = ["GatewayConfig", "StreamPolicy", "create_gateway_app", "run_gateway"]
