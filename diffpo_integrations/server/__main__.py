"""``python -m diffpo_integrations.server``: run the embedded server (``diffpo serve`` does the same)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffpo_integrations.server.config import ServerConfig
from diffpo_integrations.server.serve import run_server

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line into a :class:`ServerConfig` and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m diffpo_integrations.server", description=__doc__)
    parser.add_argument("--model", default=None, help="model folder, .gguf file or hub id (default: SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-concurrent-requests", type=int, default=None)
    parser.add_argument("--max-batch-size", type=int, default=None, help="generations decoded together (default 8)")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads for the model")
    parser.add_argument("--max-waiting", type=int, default=None)
    parser.add_argument("--max-input-tokens", type=int, default=None)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--api-key", default=None, help="require this bearer token (default $DIFFPO_API_KEY)")
    parser.add_argument("--method", default=None, choices=["auto", "greedy", "speculative", "jacobi"])
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if v is not None}
    run_server(ServerConfig(**options))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
