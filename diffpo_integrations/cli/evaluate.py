"""``diffpo eval``: align MT-bench answers (or any drafts) into FastChat's format, and report on them.

Examples::

    diffpo eval --answers llama-3-it-vanilla --out llama-3-diffpo.jsonl --report report.html
    diffpo eval --input drafts.jsonl --out aligned.jsonl
    diffpo eval --report-only --out llama-3-diffpo.jsonl --answers llama-3-it-vanilla --report report.html
    diffpo eval --answers llama-3-it-vanilla --out llama-3-diffpo.jsonl --report report.html \
        --judge-url https://api.openai.com/v1 --judge-model gpt-4   # then judge draft against aligned
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from diffpo_integrations.cli._common import add_aligner_args, fail, make_aligner
from diffpo_integrations.cli.judge import JudgeJob, add_judge_client_args, answers_source, judge_and_report
from diffpo_integrations.core.errors import DiffPOError
from diffpo_integrations.data import MT_BENCH_ANSWERS, mt_bench_questions_path

__all__ = ["register", "resolve_answers", "run"]

_TURNS = {"1": [0], "2": [1], "both": [0, 1]}
_JUDGE_HELP = (
    "With --judge-url and --judge-model, the aligned answers are then judged against the drafts (FastChat's "
    "pairwise judge, both orders): the judgments go to OUT.judgments.jsonl, the figures to OUT.judge.json and "
    "the report."
)


def register(sub: Any) -> None:
    """Add the ``eval`` subcommand."""
    parser = sub.add_parser(
        "eval",
        help="align MT-bench answers (FastChat format) or a JSONL of drafts; write an HTML report",
        description=(
            "Align every turn of a base model's MT-bench answers as the official DiffPO inference does, and "
            "write the aligned answers in FastChat's model-answer format, ready for its GPT-4 judge. "
            "Resumable: questions already in --out are skipped. " + _JUDGE_HELP
        ),
    )
    src = parser.add_argument_group("what to align")
    src.add_argument(
        "--questions",
        type=Path,
        default=None,
        help="FastChat question.jsonl (default: the MT-bench questions shipped with the package)",
    )
    src.add_argument(
        "--answers",
        help=(
            "the base model's answers, a FastChat model-answer file, or a shipped name: "
            f"{', '.join(MT_BENCH_ANSWERS)}. With --draft-model: where the generated drafts are saved"
        ),
    )
    src.add_argument("--input", type=Path, help='a JSONL of {"prompt", "draft"} rows (instead of MT-bench)')
    src.add_argument(
        "--draft-model",
        metavar="MODULE:ATTRIBUTE",
        help="generate the drafts with this LangChain chat model (an importable object, class or factory)",
    )
    src.add_argument("--draft-model-id", help="model_id of the generated drafts (default: the model's name)")
    src.add_argument("--turns", choices=sorted(_TURNS), default="both", help="turns to align (default both)")
    src.add_argument("--limit", type=int, default=None, help="only the first N questions (or input rows)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="aligned answers, JSONL (appended to when resuming)")
    out.add_argument("--model-id", help="model_id of the aligned answers (default: '<base model_id>-diffpo')")
    out.add_argument("--report", type=Path, help="also write the HTML report here")
    out.add_argument("--report-only", action="store_true", help="only (re)write the report from --out")
    run_group = parser.add_argument_group("running")
    run_group.add_argument("--concurrency", type=int, default=4, help="alignments in flight (default %(default)s)")
    run_group.add_argument("--retry-failed", action="store_true", help="redo questions with a failed turn in --out")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_aligner_args(parser)
    add_judge_client_args(parser, required=False)
    parser.set_defaults(run=run)


def resolve_answers(value: str) -> Path:
    """A model-answer file path, or the shipped file of that name.

    Raises:
        FileNotFoundError: neither exists.
    """
    return answers_source(value)[1]


def _judgments_path(out: Path) -> Path:
    return out.with_name(out.stem + ".judgments.jsonl")


def _report(args: argparse.Namespace, answers: Path | None, judge_summary: dict[str, Any] | None = None) -> None:
    from diffpo_integrations.evaluation.report import write_report

    target = args.report or args.out.with_suffix(".html")
    questions = None if args.input else (args.questions or mt_bench_questions_path())
    judgments = _judgments_path(args.out)
    if judge_summary is None and judgments.exists() and not args.input:
        from diffpo_integrations.evaluation.judge_summary import summarize_judgments
        from diffpo_integrations.evaluation.mtbench import load_questions, read_records

        qs = load_questions(questions or mt_bench_questions_path())
        judge_summary = summarize_judgments(read_records(judgments), mode="pairwise", questions=qs)
    summary = write_report(
        target,
        args.out,
        questions=questions,
        answers=answers,
        judgments=judgments if judge_summary is not None else None,
        judge_summary=judge_summary,
    )
    print(
        f"report: {target} ({summary['turns']} turns, {summary['failed']} failed)",
        file=sys.stderr,
    )


def _jobs(args: argparse.Namespace) -> tuple[list[Any], Path | None]:
    """The pending jobs, and the base-answer file the report should read."""
    from diffpo_integrations.evaluation.mtbench import load_answers, load_plain_inputs, load_questions
    from diffpo_integrations.evaluation.runner import file_jobs, plain_jobs

    if args.input:
        return plain_jobs(load_plain_inputs(args.input)[: args.limit]), None
    questions = load_questions(args.questions or mt_bench_questions_path())[: args.limit]
    turns = _TURNS[args.turns]
    if args.draft_model:
        from diffpo_integrations.evaluation.drafts import ChatModelDrafts, load_object

        save = Path(args.answers) if args.answers else args.out.with_name(args.out.stem + ".drafts.jsonl")
        drafts = ChatModelDrafts(load_object(args.draft_model), save, model_id=args.draft_model_id)
        return drafts.jobs(questions, turns), save
    if not args.answers:
        msg = (
            "pass --answers (a FastChat model-answer file, or a shipped name: "
            f"{', '.join(MT_BENCH_ANSWERS)}), --draft-model MODULE:ATTRIBUTE, or --input drafts.jsonl"
        )
        raise FileNotFoundError(msg)
    answers = resolve_answers(args.answers)
    return file_jobs(questions, load_answers(answers), turns), answers


def _judge(args: argparse.Namespace, answers: Path) -> tuple[int, dict[str, Any]]:
    """Judge the aligned answers against the drafts; returns the API errors left and the summary."""
    draft_name = answers_source(str(answers))[0] if args.draft_model else answers_source(args.answers)[0]
    aligned_name = args.out.stem if args.out.stem != draft_name else f"{args.out.stem}-aligned"
    job = JudgeJob(
        mode="pairwise",
        models={aligned_name: args.out, draft_name: answers},
        out=_judgments_path(args.out),
        questions=args.questions,
        pairs=[(aligned_name, draft_name)],
        turns=tuple(i + 1 for i in _TURNS[args.turns]),
        limit=args.limit,
        concurrency=args.concurrency,
        progress=not args.no_progress,
        summary=args.out.with_name(args.out.stem + ".judge.json"),
    )
    judged, summary = judge_and_report(args, job)
    return judged.errors, summary


def run(args: argparse.Namespace) -> int:
    """Run ``diffpo eval``; exits 1 when some turns failed (their lines hold the draft, flagged).

    With a judge, it also exits 1 when some judge calls still failed (running it again retries them).
    """
    if args.input and (args.answers or args.draft_model):
        return fail("--input replaces --answers and --draft-model; pass one of them")
    if bool(args.judge_url) != bool(args.judge_model):
        return fail("--judge-url and --judge-model go together: pass both to judge, or neither")
    if args.judge_url and args.input:
        return fail("--judge-url judges MT-bench answers against their questions; --input rows have none")
    if args.limit is not None and args.limit < 0:
        return fail("--limit must be >= 0")
    try:
        if args.report_only:
            if not args.out.exists():
                return fail(f"{args.out} does not exist: run diffpo eval without --report-only first")
            _report(args, resolve_answers(args.answers) if args.answers else None)
            return 0
        jobs, answers = _jobs(args)
        from diffpo_integrations.evaluation.runner import run_eval

        aligner = make_aligner(args)
        summary = run_eval(
            aligner,
            jobs,
            args.out,
            model_id=args.model_id,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            retry_failed=args.retry_failed,
        )
        print(
            f"{summary.out}: {summary.written} questions written, {summary.skipped} already done, "
            f"{summary.aligned_turns} turns aligned, {summary.failed_turns} failed",
            file=sys.stderr,
        )
        judge_errors, judge_summary = _judge(args, answers) if args.judge_url and answers else (0, None)
        if args.report:
            _report(args, answers, judge_summary)
    except (DiffPOError, FileNotFoundError) as exc:
        return fail(f"{type(exc).__name__}: {exc}", status=1)
    return 1 if summary.failed_turns or judge_errors else 0
