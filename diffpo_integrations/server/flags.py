"""The embedded server's command-line flags, shared by ``diffpo serve`` and ``python -m diffpo_integrations.server``.

It imports argparse and core only, and the package's ``__init__`` loads the app lazily, so the
CLI builds its parser from here on a machine without the ``server`` extra (``diffpo gateway``
reads its key files with :func:`read_api_key_file` too).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

from diffpo_integrations.core.types import DecodeMethod

__all__ = ["add_server_arguments", "read_api_key_file", "server_options"]


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """The key stored in ``path`` (surrounding whitespace and the final newline dropped).

    Raises:
        ValueError: the file cannot be read or holds no key.
    """
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = f"cannot read the API key file {str(path)!r}: {exc.strerror or exc}"
        raise ValueError(msg) from None
    if not value:
        msg = f"the API key file {str(path)!r} is empty: write the key on its first line"
        raise ValueError(msg)
    return value


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's flags: one set for ``diffpo serve`` and ``python -m diffpo_integrations.server``."""
    parser.add_argument(
        "--model", default=None, help="model folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=None,
        help="generations running at once, batched or not (default 8)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="generations sharing each forward pass (1: one at a time; default 8; at most --max-concurrent-requests)",
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads for the model (default: torch's)")
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=None,
        help="requests that may wait for a free slot; past them the server answers 429 (default 120)",
    )
    parser.add_argument("--max-input-tokens", type=int, default=None)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument(
        "--api-key",
        default=None,
        help="require this bearer token (visible in the process list: prefer --api-key-file or DIFFPO_API_KEY)",
    )
    parser.add_argument("--api-key-file", default=None, help="require the bearer token stored in this file")
    parser.add_argument(
        "--max-body-size",
        dest="max_body_bytes",
        type=int,
        default=None,
        help="largest request body in bytes; larger ones get 413 (default 2097152, as TGI)",
    )
    parser.add_argument(
        "--header-timeout",
        dest="header_timeout_s",
        type=float,
        default=None,
        help="seconds a connection may take to send a request head, or stay silent in a body (default 10)",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        dest="keep_alive_timeout_s",
        type=float,
        default=None,
        help="seconds an idle connection stays open between requests (default 5)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections at most; keep it below `ulimit -n` (default 256)",
    )
    parser.add_argument("--method", default=None, choices=list(get_args(DecodeMethod)), help="default decoding method")
    parser.add_argument("--trust-remote-code", action="store_true", help="let transformers run the model's own code")
    parser.add_argument("--log-level", default=None, help="uvicorn's log level (default info)")


def server_options(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The flags set on the command line that name one of ``fields`` (``ServerConfig``'s); the rest keep its defaults.

    Raises:
        ValueError: ``--api-key-file`` cannot be read, or both key flags are given.
    """
    names = set(fields)
    options = {k: v for k, v in vars(args).items() if k in names and v is not None and v is not False}
    key_file = getattr(args, "api_key_file", None)
    if key_file is not None:
        if "api_key" in options:
            msg = "give the API key once: --api-key or --api-key-file, not both"
            raise ValueError(msg)
        options["api_key"] = read_api_key_file(key_file)
    return options
