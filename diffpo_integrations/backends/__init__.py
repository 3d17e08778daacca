"""Aligner backends: TGI (and the embedded server), OpenAI-compatible servers, in-process, pools."""

from diffpo_integrations.backends._loop import close_http_clients, set_client_factory, use_client_factory
from diffpo_integrations.backends._net import RoutedTransport, proxy_for, ssl_context
from diffpo_integrations.backends.openai_compat import OpenAICompatAligner
from diffpo_integrations.backends.pool import AlignerPool, CircuitState, EndpointStats
from diffpo_integrations.backends.tgi import DEFAULT_ALIGNER_URL, TGIAligner, default_aligner_url

__all__ = [
    "DEFAULT_ALIGNER_URL",
    "AlignerPool",
    "CircuitState",
    "EndpointStats",
    "OpenAICompatAligner",
    "RoutedTransport",
    "TGIAligner",
    "close_http_clients",
    "default_aligner_url",
    "proxy_for",
    "set_client_factory",
    "ssl_context",
    "use_client_factory",
]
