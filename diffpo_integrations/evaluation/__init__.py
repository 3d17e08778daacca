"""Evaluation: align MT-bench (or any) drafts in FastChat's format, report the differences, measure overhead.

- :mod:`~diffpo_integrations.evaluation.mtbench`: FastChat question and model-answer files.
- :mod:`~diffpo_integrations.evaluation.runner`: the resumable, concurrent alignment loop (``diffpo eval``).
- :mod:`~diffpo_integrations.evaluation.report`: the self-contained HTML report.
- :mod:`~diffpo_integrations.evaluation.judging`: MT-bench judging as FastChat does it (``diffpo judge``), with
  :mod:`~diffpo_integrations.evaluation.judge_prompts`, :mod:`~diffpo_integrations.evaluation.judge_client`,
  :mod:`~diffpo_integrations.evaluation.judge_summary` and :mod:`~diffpo_integrations.evaluation.judge_report`.
- :mod:`~diffpo_integrations.evaluation.overhead`: the plugin-overhead benchmark (``diffpo bench overhead``).
"""

from diffpo_integrations.evaluation.diff import Segment, WordDiff, word_diff
from diffpo_integrations.evaluation.judge_client import JudgeClient, JudgeError
from diffpo_integrations.evaluation.judge_prompts import NEED_REF_CATS, JudgePrompt, load_judge_prompts, prompt_name
from diffpo_integrations.evaluation.judge_summary import format_summary, summarize_judgments
from diffpo_integrations.evaluation.judging import JudgeRun, Match, arun_judge, plan_matches, run_judge
from diffpo_integrations.evaluation.mtbench import (
    BaseAnswer,
    Job,
    Question,
    TurnJob,
    build_job,
    load_answers,
    load_plain_inputs,
    load_questions,
    read_records,
    turn_messages,
)
from diffpo_integrations.evaluation.report import ReportRow, collect_rows, render_report, summarize, write_report
from diffpo_integrations.evaluation.runner import (
    EvalSummary,
    PendingJob,
    arun_eval,
    file_jobs,
    plain_jobs,
    record_failed,
    run_eval,
)

__all__ = [
    "NEED_REF_CATS",
    "BaseAnswer",
    "EvalSummary",
    "Job",
    "JudgeClient",
    "JudgeError",
    "JudgePrompt",
    "JudgeRun",
    "Match",
    "PendingJob",
    "Question",
    "ReportRow",
    "Segment",
    "TurnJob",
    "WordDiff",
    "arun_eval",
    "arun_judge",
    "build_job",
    "collect_rows",
    "file_jobs",
    "format_summary",
    "load_answers",
    "load_judge_prompts",
    "load_plain_inputs",
    "load_questions",
    "plain_jobs",
    "plan_matches",
    "prompt_name",
    "read_records",
    "record_failed",
    "render_report",
    "run_eval",
    "run_judge",
    "summarize",
    "summarize_judgments",
    "turn_messages",
    "word_diff",
    "write_report",
]
