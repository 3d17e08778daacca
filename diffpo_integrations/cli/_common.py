"""Helpers shared by the subcommands: friendly hints for missing extras, aligner construction."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from diffpo_integrations.core.aligner import DEFAULT_KEEP_PREFIX_TOKENS, DEFAULT_MAX_NEW_TOKENS, BaseAligner

__all__ = ["add_aligner_args", "fail", "make_aligner"]


def fail(message: str, status: int = 2) -> int:
    """Print ``message`` to stderr as the command's error and return ``status``."""
    print(f"diffpo: error: {message}", file=sys.stderr)
    return status


def add_aligner_args(parser: argparse.ArgumentParser) -> None:
    """Options that choose and configure the aligner, shared by ``align``, ``eval`` and ``bench``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--aligner-url",
        "--url",
        dest="aligner_url",
        help="aligner server (default $DIFFPO_ALIGNER_URL or http://127.0.0.1:8080)",
    )
    where.add_argument(
        "--model", help="run the aligner in-process from this model (folder, .gguf or hub id; 'default' for SmolLM2)"
    )
    parser.add_argument("--template", help="aligner chat template: gemma, llama3, chatml, smollm2 or a tokenizer path")
    parser.add_argument(
        "--keep-prefix-tokens",
        type=int,
        default=DEFAULT_KEEP_PREFIX_TOKENS,
        help="draft tokens kept verbatim (default %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="tokens the aligner may add (default %(default)s)",
    )
    parser.add_argument("--prompt-mode", choices=["official", "clean"], default="official")
    parser.add_argument("--prefix-sampling", choices=["fixed", "paper"], default="fixed")
    parser.add_argument("--seed", type=int, default=0)


def make_aligner(args: argparse.Namespace) -> BaseAligner:
    """Build the aligner the options ask for: a server URL, or an in-process model."""
    common: dict[str, Any] = {
        "template": args.template,
        "keep_prefix_tokens": args.keep_prefix_tokens,
        "max_new_tokens": args.max_new_tokens,
        "prompt_mode": args.prompt_mode,
        "prefix_sampling": args.prefix_sampling,
        "seed": args.seed,
    }
    if getattr(args, "model", None):
        try:
            from diffpo_integrations.backends.local import LocalAligner
        except ImportError as exc:
            msg = f"--model needs the local extra: pip install 'diffpo-integrations[local]' ({exc})"
            raise SystemExit(fail(msg)) from exc
        return LocalAligner(model=None if args.model == "default" else args.model, **common)
    from diffpo_integrations.backends.tgi import TGIAligner

    return TGIAligner(args.aligner_url, **common)
