"""The ``diffpo`` command: ``serve``, ``gateway``, ``align``, ``eval``, ``judge`` and ``bench``.

Each subcommand lives in its own module and registers itself with :func:`main`'s parser, so
the optional dependencies of one (the model for ``serve``) are imported only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from diffpo_integrations.cli import align, bench, evaluate, gateway, judge, serve

__all__ = ["build_parser", "main"]

_COMMANDS = [serve, gateway, align, evaluate, judge, bench]


def build_parser() -> argparse.ArgumentParser:
    """The ``diffpo`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="diffpo",
        description="DiffPO inference-time alignment: serve an aligner, run the gateway, align drafts, evaluate, judge, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,gateway,align,eval,judge,bench}")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffpo`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
