"""Evaluation: align MT-bench (or any) drafts in FastChat's format, report the differences, measure overhead.

- :mod:`~diffpo_integrations.evaluation.mtbench`: FastChat question and model-answer files.
- :mod:`~diffpo_integrations.evaluation.runner`: the resumable, concurrent alignment loop (``diffpo eval``).
- :mod:`~diffpo_integrations.evaluation.report`: the self-contained HTML report.
- :mod:`~diffpo_integrations.evaluation.overhead`: the plugin-overhead benchmark (``diffpo bench overhead``).
"""

from diffpo_integrations.evaluation.diff import Segment, WordDiff, word_diff
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
    "BaseAnswer",
    "EvalSummary",
    "Job",
    "PendingJob",
    "Question",
    "ReportRow",
    "Segment",
    "TurnJob",
    "WordDiff",
    "arun_eval",
    "build_job",
    "collect_rows",
    "file_jobs",
    "load_answers",
    "load_plain_inputs",
    "load_questions",
    "plain_jobs",
    "read_records",
    "record_failed",
    "render_report",
    "run_eval",
    "summarize",
    "turn_messages",
    "word_diff",
    "write_report",
]
