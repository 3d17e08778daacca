"""``diffpo align``: align one draft answer and print it beside the draft."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from diffpo_integrations.cli._common import add_aligner_args, fail, make_aligner
from diffpo_integrations.core.errors import DiffPOError
from diffpo_integrations.core.repetition import finish_label
from diffpo_integrations.core.types import AlignResult

__all__ = ["register", "run", "side_by_side"]


def register(sub: Any) -> None:
    """Add the ``align`` subcommand."""
    parser = sub.add_parser("align", help="align one draft answer", description="Align one draft answer to a question.")
    q = parser.add_mutually_exclusive_group(required=True)
    q.add_argument("--question", "-q", help="the user's question")
    q.add_argument("--question-file", type=Path, help="file holding the question")
    d = parser.add_mutually_exclusive_group(required=True)
    d.add_argument("--draft", "-d", help="the base model's draft answer")
    d.add_argument("--draft-file", type=Path, help="file holding the draft ('-' for stdin)")
    parser.add_argument("--system", help="system message of the conversation")
    parser.add_argument("--json", action="store_true", help="print the AlignResult as JSON")
    parser.add_argument("--stream", action="store_true", help="print the aligned answer as it is produced")
    add_aligner_args(parser)
    parser.set_defaults(run=run)


def _read(value: str | None, path: Path | None) -> str:
    if value is not None:
        return value
    assert path is not None
    if str(path) == "-":
        import sys

        return sys.stdin.read()
    return path.read_text(encoding="utf-8")


def side_by_side(result: AlignResult, width: int = 100) -> str:
    """Draft and aligned answer in two columns, then the metadata, for a terminal."""
    col = (width - 3) // 2
    left = textwrap.wrap(result.draft, col) or [""]
    right = textwrap.wrap(result.text, col) or [""]
    rows = [f"{'DRAFT':<{col}} | ALIGNED", f"{'-' * col}-+-{'-' * col}"]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        rows.append(f"{a:<{col}} | {b}")
    meta = (
        f"kept prefix: {result.kept_prefix_tokens} tokens ({result.kept_prefix!r}), generated {result.generated_tokens} tokens, "
        f"finish: {finish_label(result)}, latency: {result.latency_s * 1000:.0f} ms, endpoint: {result.endpoint}"
    )
    return "\n".join([*rows, "", meta])


def run(args: argparse.Namespace) -> int:
    """Run ``diffpo align``."""
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": _read(args.question, args.question_file)})
    draft = _read(args.draft, args.draft_file)
    try:
        aligner = make_aligner(args)
        if args.stream:
            result = None
            for chunk in aligner.stream(messages, draft):
                print(chunk.text, end="", flush=True)
                result = chunk.result or result
            print()
            assert result is not None
        else:
            result = aligner.align(messages, draft)
    except DiffPOError as exc:
        return fail(f"{type(exc).__name__}: {exc}", status=1)
    if args.json:
        print(json.dumps(result.model_dump(), indent=2))
    elif not args.stream:
        print(side_by_side(result))
    return 0
