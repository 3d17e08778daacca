"""``python -m diffpo_integrations.server``: run the embedded server (``diffpo serve`` does the same)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffpo_integrations.server.config import ServerConfig
from diffpo_integrations.server.flags import add_server_arguments, server_options
from diffpo_integrations.server.serve import run_server

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line into a :class:`ServerConfig` and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m diffpo_integrations.server", description=__doc__)
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    run_server(ServerConfig(**server_options(args, ServerConfig.model_fields)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
