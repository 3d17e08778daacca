"""The embedded server's command-line flags, shared by ``diffpo serve`` and ``python -m diffpo_integrations.server``.

A leaf module (argparse and core only): the CLI and the server both import it, so neither imports
the other, and building the CLI's parser does not need the ``server`` extra.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any, get_args

from diffpo_integrations.core.types import DecodeMethod

__all__ = ["add_server_arguments", "server_options"]


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's flags: one set for ``diffpo serve`` and ``python -m diffpo_integrations.server``."""
    parser.add_argument(
        "--model", default=None, help="model folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-concurrent-requests", type=int, default=None)
    parser.add_argument(
        "--max-batch-size", type=int, default=None, help="generations decoded together (1: one at a time; default 8)"
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads for the model (default: torch's)")
    parser.add_argument("--max-waiting", type=int, default=None, help="queued requests before answering 429")
    parser.add_argument("--max-input-tokens", type=int, default=None)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--api-key", default=None, help="require this bearer token (or set DIFFPO_API_KEY)")
    parser.add_argument("--method", default=None, choices=list(get_args(DecodeMethod)), help="default decoding method")
    parser.add_argument("--trust-remote-code", action="store_true", help="let transformers run the model's own code")
    parser.add_argument("--log-level", default=None, help="uvicorn's log level (default info)")


def server_options(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The flags set on the command line that name one of ``fields`` (``ServerConfig``'s); the rest keep its defaults."""
    names = set(fields)
    return {k: v for k, v in vars(args).items() if k in names and v is not None and v is not False}
