"""The embedded TGI-compatible server: ``create_app``, ``ServerConfig``, ``run_server``.

Needs the ``server`` extra (``pip install 'diffpo-integrations[server]'``). Routes: TGI's
``/generate``, ``/generate_stream``, ``POST /``, ``/tokenize``, ``/health``, ``/info``, ``/metrics``;
OpenAI's ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``; and ``POST /diffpo/align``.

Example:
    >>> from diffpo_integrations.server import ServerConfig, run_server  # doctest: +SKIP
    >>> run_server(ServerConfig(port=8080))  # doctest: +SKIP
"""

from diffpo_integrations.server.app import create_app
from diffpo_integrations.server.config import DecodeMethod, ServerConfig
from diffpo_integrations.server.serve import run_server, serve_in_thread

__all__ = ["DecodeMethod", "ServerConfig", "create_app", "run_server", "serve_in_thread"]
