"""``diffpo judge``: grade MT-bench answers with any OpenAI-compatible judge, as FastChat's ``llm_judge`` does.

Examples::

    export DIFFPO_JUDGE_API_KEY=sk-...
    diffpo judge --answers llama-3-it-vanilla --answers llama-3-diffpo.jsonl \\
        --judge-url https://api.openai.com/v1 --judge-model gpt-4 --mode single \\
        --out judgments.jsonl --summary summary.json --report judged.html
    diffpo judge --answers llama-3-diffpo.jsonl --answers llama-3-it-vanilla --mode pairwise \\
        --judge-url http://127.0.0.1:8000 --judge-model Qwen/Qwen2.5-72B-Instruct --out pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffpo_integrations.cli._common import fail
from diffpo_integrations.core.errors import DiffPOError
from diffpo_integrations.data import (
    MT_BENCH_ANSWERS,
    judge_prompts_path,
    mt_bench_answers_path,
    mt_bench_questions_path,
    mt_bench_reference_path,
)

__all__ = ["JudgeJob", "add_judge_client_args", "answers_source", "judge_and_report", "register", "run"]

_TURNS = {"1": (1,), "2": (2,), "both": (1, 2)}


def register(sub: Any) -> None:
    """Add the ``judge`` subcommand."""
    parser = sub.add_parser(
        "judge",
        help="grade MT-bench answers with a judge model (FastChat's llm_judge: single grades or pairwise)",
        description=(
            "Judge FastChat model-answer files with any OpenAI-compatible chat endpoint, with FastChat's judge "
            "prompts and rules, and write the judgments in FastChat's format. Resumable: judgments already in "
            "--out are skipped (failed API calls are tried again)."
        ),
    )
    src = parser.add_argument_group("what to judge")
    src.add_argument(
        "--answers",
        action="append",
        required=True,
        metavar="[NAME=]FILE",
        help=(
            "a FastChat model-answer file (repeat for several models; the model is named after the file, or "
            f"NAME=), or a shipped name: {', '.join(MT_BENCH_ANSWERS)}"
        ),
    )
    src.add_argument("--questions", type=Path, help="FastChat question.jsonl (default: the shipped MT-bench questions)")
    src.add_argument(
        "--reference",
        type=Path,
        help="reference answers for math, reasoning and coding (default: FastChat's GPT-4 references)",
    )
    src.add_argument("--judge-prompts", type=Path, help="judge prompts (default: FastChat's judge_prompts.jsonl)")
    src.add_argument("--mode", choices=["single", "pairwise"], default="single", help="default %(default)s")
    src.add_argument(
        "--baseline",
        metavar="NAME",
        help="pairwise: compare every other model with this one (default: every pair, in --answers order)",
    )
    src.add_argument("--turns", choices=sorted(_TURNS), default="both", help="turns to judge (default both)")
    src.add_argument("--limit", type=int, help="only the first N questions")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="judgments, FastChat JSONL (appended to when resuming)")
    out.add_argument("--summary", type=Path, help="also write the summary figures here (JSON)")
    out.add_argument("--report", type=Path, help="also write an HTML report with every judgment")
    run_group = parser.add_argument_group("running")
    run_group.add_argument("--concurrency", type=int, default=8, help="judge calls in flight (default %(default)s)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_judge_client_args(parser, required=True)
    parser.set_defaults(run=run)


def add_judge_client_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The judge endpoint options, shared by ``judge`` and ``eval``."""
    group = parser.add_argument_group("judge")
    group.add_argument(
        "--judge-url",
        required=required,
        help="OpenAI-compatible server of the judge (https://api.openai.com/v1, a vLLM or TGI URL, diffpo serve)",
    )
    group.add_argument("--judge-model", required=required, help="judge model name (e.g. gpt-4)")
    group.add_argument(
        "--judge-key-env",
        default="DIFFPO_JUDGE_API_KEY",
        metavar="VAR",
        help="environment variable holding the judge's API key (default %(default)s; unset: no key sent)",
    )
    group.add_argument(
        "--judge-max-tokens", type=int, default=2048, help="judgment token limit (default %(default)s, FastChat's)"
    )
    group.add_argument("--judge-max-retries", type=int, default=6, help="retries of a failed call (default 6)")
    group.add_argument("--judge-timeout", type=float, default=300.0, help="seconds per judge call (default 300)")


def answers_source(value: str) -> tuple[str, Path]:
    """The model name and file of an ``--answers`` value: ``NAME=FILE``, a file, or a shipped name.

    Raises:
        FileNotFoundError: no such file or shipped name.
    """
    path = Path(value)
    if not path.exists() and "=" in value:
        name, _, rest = value.partition("=")
        return name, answers_source(rest)[1]
    if path.exists():
        return path.stem, path
    name = value.removeprefix("mt_bench_").removesuffix(".jsonl")
    if name in MT_BENCH_ANSWERS:
        return name, mt_bench_answers_path(name)
    msg = f"no answers file {value!r} (shipped names: {', '.join(MT_BENCH_ANSWERS)})"
    raise FileNotFoundError(msg)


@dataclass(frozen=True)
class JudgeJob:
    """Everything one judging run needs, whichever command asked for it."""

    mode: str
    models: dict[str, Path]
    """Model name -> answers file, in the order given."""
    out: Path
    questions: Path | None = None
    reference: Path | None = None
    judge_prompts: Path | None = None
    pairs: list[tuple[str, str]] | None = None
    turns: tuple[int, ...] = (1, 2)
    limit: int | None = None
    concurrency: int = 8
    progress: bool = True
    summary: Path | None = None
    report: Path | None = None


def _client(args: argparse.Namespace) -> Any:
    from diffpo_integrations.evaluation.judge_client import JudgeClient

    return JudgeClient(
        args.judge_url,
        args.judge_model,
        api_key_env=args.judge_key_env,
        max_tokens=args.judge_max_tokens,
        max_retries=args.judge_max_retries,
        timeout=args.judge_timeout,
    )


def judge_and_report(args: argparse.Namespace, job: JudgeJob) -> tuple[Any, dict[str, Any]]:
    """Judge, print the summary table, write the summary and report files; returns the run and summary."""
    from diffpo_integrations.evaluation.judge_prompts import load_judge_prompts
    from diffpo_integrations.evaluation.judge_summary import format_summary, summarize_judgments
    from diffpo_integrations.evaluation.judging import Mode, judgment_key, match_key, plan_matches, run_judge
    from diffpo_integrations.evaluation.mtbench import load_answers, load_questions, read_records

    questions = load_questions(job.questions or mt_bench_questions_path())[: job.limit]
    answers = {name: load_answers(path) for name, path in job.models.items()}
    references = load_answers(job.reference or mt_bench_reference_path())
    prompts = load_judge_prompts(job.judge_prompts or judge_prompts_path())
    mode: Mode = "pairwise" if job.mode == "pairwise" else "single"
    matches = plan_matches(mode, questions, answers, prompts, references=references, pairs=job.pairs, turns=job.turns)
    run = run_judge(lambda: _client(args), matches, job.out, concurrency=job.concurrency, progress=job.progress)
    planned = {match_key(args.judge_model, m) for m in matches}
    rows = [r for r in read_records(job.out) if judgment_key(r) in planned]
    pairs = job.pairs
    if mode == "pairwise" and pairs is None:
        names = list(job.models)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    summary = summarize_judgments(rows, mode=mode, judge_model=args.judge_model, questions=questions, pairs=pairs)
    print(
        f"{run.out}: {run.written} judgments written, {run.skipped} already done, "
        f"{run.unparsed} unparsed, {run.errors} API errors",
        file=sys.stderr,
    )
    print(format_summary(summary))
    if job.summary:
        job.summary.parent.mkdir(parents=True, exist_ok=True)
        job.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if job.report:
        from diffpo_integrations.evaluation.judge_report import write_judge_report

        write_judge_report(job.report, summary, rows, questions, answers)
        print(f"report: {job.report}", file=sys.stderr)
    return run, summary


def _pairs(names: Sequence[str], baseline: str | None) -> list[tuple[str, str]] | None:
    if baseline is None:
        return None
    if baseline not in names:
        msg = f"--baseline {baseline!r} is none of the models: {', '.join(names)}"
        raise FileNotFoundError(msg)
    return [(name, baseline) for name in names if name != baseline]


def run(args: argparse.Namespace) -> int:
    """Run ``diffpo judge``; exits 1 when some judge calls still failed (run it again to retry them)."""
    if args.limit is not None and args.limit < 0:
        return fail("--limit must be >= 0")
    if args.baseline and args.mode != "pairwise":
        return fail("--baseline is for --mode pairwise")
    try:
        models: dict[str, Path] = {}
        for value in args.answers:
            name, path = answers_source(value)
            if name in models:
                return fail(f"two --answers files are named {name!r}; name them apart with NAME=FILE")
            models[name] = path
        job = JudgeJob(
            mode=args.mode,
            models=models,
            out=args.out,
            questions=args.questions,
            reference=args.reference,
            judge_prompts=args.judge_prompts,
            pairs=_pairs(list(models), args.baseline),
            turns=_TURNS[args.turns],
            limit=args.limit,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            summary=args.summary,
            report=args.report,
        )
        judged, _ = judge_and_report(args, job)
    except (DiffPOError, FileNotFoundError) as exc:
        return fail(f"{type(exc).__name__}: {exc}", status=1)
    return 1 if judged.errors else 0
