"""The embedded TGI-compatible server: ``create_app``, ``ServerConfig``, ``run_server``.

Needs the ``server`` extra (``pip install 'diffpo-integrations[server]'``). Routes: TGI's
``/generate``, ``/generate_stream``, ``POST /``, ``/tokenize``, ``/health``, ``/info``, ``/metrics``;
OpenAI's ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``; and ``POST /diffpo/align``.

Example:
    >>> from diffpo_integrations.server import ServerConfig, run_server  # doctest: +SKIP
    >>> run_server(ServerConfig(port=8080))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffpo_integrations.server.app import create_app
    from diffpo_integrations.server.config import DecodeMethod, ServerConfig
    from diffpo_integrations.server.serve import run_server, serve_in_thread

__all__ = ["DecodeMethod", "ServerConfig", "create_app", "run_server", "serve_in_thread"]

# Loaded on first use, so that ``diffpo_integrations.server.flags`` (the CLI's parser) imports
# neither the web stack nor torch.
_WHERE = {
    "create_app": "app",
    "DecodeMethod": "config",
    "ServerConfig": "config",
    "run_server": "serve",
    "serve_in_thread": "serve",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
