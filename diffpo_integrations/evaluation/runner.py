"""The evaluation loop: align every pending turn concurrently, append one line per finished question.

Resumable by construction: a question's line is written (one ``write`` of a whole line, then a
flush) as soon as all its turns are aligned, and questions already in the output file are skipped
on the next run. An interrupt therefore loses only the questions in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.errors import ConfigurationError, DiffPOError, InputError
from diffpo_integrations.core.types import AlignResult
from diffpo_integrations.evaluation.mtbench import (
    AlignedRecord,
    BaseAnswer,
    Job,
    Question,
    TurnJob,
    answer_record,
    build_job,
    read_records,
    rewrite_records,
)

__all__ = ["EvalSummary", "PendingJob", "arun_eval", "file_jobs", "plain_jobs", "record_failed", "run_eval"]

T = TypeVar("T")
JobFactory = Callable[[asyncio.Semaphore], Awaitable[Job]]


@dataclass(frozen=True)
class PendingJob:
    """A question still to do: its id, how many turns it aligns, and how to get its :class:`Job`.

    ``make`` receives the run's semaphore, so a job that first generates its drafts (``--draft-model``)
    shares the concurrency limit with the alignments.
    """

    question_id: int | str
    align_count: int
    make: JobFactory


@dataclass(frozen=True)
class EvalSummary:
    """What one run did."""

    out: Path
    selected: int
    """Questions asked for (after ``limit``)."""
    skipped: int
    """Questions already in the output file."""
    written: int
    """Lines appended by this run."""
    aligned_turns: int
    failed_turns: int
    """Turns whose alignment failed; their line holds the draft, flagged ``aligned: false``."""


def _ready(job: Job) -> JobFactory:
    async def make(_: asyncio.Semaphore) -> Job:
        return job

    return make


def file_jobs(
    questions: Sequence[Question], answers: Mapping[int | str, BaseAnswer], align_turns: Sequence[int]
) -> list[PendingJob]:
    """Jobs for questions whose drafts come from a model-answer file.

    Raises:
        InputError: some questions have no base answer.
    """
    missing = [q.question_id for q in questions if q.question_id not in answers]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        msg = f"{len(missing)} questions have no base answer in the answers file: {shown}"
        raise InputError(msg)
    out = []
    for q in questions:
        job = build_job(q, answers[q.question_id], align_turns)
        out.append(PendingJob(q.question_id, sum(isinstance(t, TurnJob) for t in job.turns), _ready(job)))
    return out


def plain_jobs(jobs: Sequence[Job]) -> list[PendingJob]:
    """Wrap ready jobs (from :func:`~diffpo_integrations.evaluation.mtbench.load_plain_inputs`)."""
    return [PendingJob(j.question_id, sum(isinstance(t, TurnJob) for t in j.turns), _ready(j)) for j in jobs]


def record_failed(record: AlignedRecord) -> bool:
    """Whether any aligned turn of an output line failed (and holds the draft instead)."""
    turns = (record.get("diffpo") or {}).get("turns") or []
    return any(isinstance(m, dict) and not m.get("aligned", True) for m in turns)


def _progress(total: int, enabled: bool, *, desc: str = "aligning", unit: str = "turn") -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a convenience; the cli extra brings tqdm
        return None
    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr)


def _resume(out: Path, retry_failed: bool) -> set[int | str]:
    """Ids already done in ``out``; drops failed lines first when they are to be retried."""
    records = read_records(out, repair=True)
    if retry_failed and any(record_failed(r) for r in records):
        kept = [r for r in records if not record_failed(r)]
        rewrite_records(out, kept)
        records = kept
    return {r["question_id"] for r in records if "question_id" in r}


async def arun_eval(
    aligner: Aligner,
    jobs: Sequence[PendingJob],
    out: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    concurrency: int = 4,
    progress: bool = True,
    retry_failed: bool = False,
    options: Mapping[str, Any] | None = None,
) -> EvalSummary:
    """Align every pending job not yet in ``out`` and append its line.

    Args:
        aligner: any aligner; its ``aalign`` is called, at most ``concurrency`` at a time.
        jobs: from :func:`file_jobs`, :func:`plain_jobs` or a draft generator.
        out: the output file (FastChat model-answer JSONL); created, or resumed when it exists.
        model_id: the output ``model_id``; default ``<base model_id>-diffpo``.
        concurrency: alignments (and draft generations) in flight at once.
        progress: show a tqdm bar on stderr.
        retry_failed: redo questions whose earlier line records a failed turn.
        options: keyword options passed to every ``aalign`` call (``max_new_tokens`` ...).

    Raises:
        ConfigurationError: the aligner is misconfigured (raised at once: every turn would fail).
        KeyboardInterrupt: passed on; finished lines are already on disk.
    """
    if concurrency < 1:
        msg = f"concurrency must be >= 1, got {concurrency}"
        raise ConfigurationError(msg)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(path, retry_failed)
    todo = [j for j in jobs if j.question_id not in done]
    semaphore = asyncio.Semaphore(concurrency)
    bar = _progress(sum(j.align_count for j in todo), progress)
    counts = {"written": 0, "aligned": 0, "failed": 0}
    queue: asyncio.Queue[PendingJob] = asyncio.Queue()
    for j in todo:
        queue.put_nowait(j)
    endpoint = getattr(aligner, "endpoint", None)
    call_options = dict(options or {})

    async def align_turn(turn: TurnJob) -> AlignResult:
        async with semaphore:
            try:
                result = await aligner.aalign(turn.messages, turn.draft, **call_options)
            except ConfigurationError:
                raise
            except DiffPOError as exc:
                # Fail open, as the plugin does: the line keeps the draft and says why.
                result = AlignResult.unaligned(turn.draft, exc, endpoint=endpoint)
        counts["aligned" if result.aligned else "failed"] += 1
        if bar is not None:
            bar.update(1)
            if not result.aligned:
                bar.set_postfix(failed=counts["failed"])
        return result

    def write(f: IO[str], job: Job, results: list[AlignResult]) -> None:
        it = iter(results)
        answers: list[str] = []
        meta: list[dict[str, Any] | None] = []
        for turn in job.turns:
            if isinstance(turn, TurnJob):
                r = next(it)
                answers.append(r.text)
                meta.append(r.metadata())
            else:
                answers.append(turn)
                meta.append(None)
        record = answer_record(job, answers, meta, model_id or f"{job.base_model_id}-diffpo")
        # One write of a whole line, flushed: an interrupt never leaves half a line behind.
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        counts["written"] += 1

    async def worker(f: IO[str]) -> None:
        # Each worker finishes one question at a time, so few questions are ever half done.
        while not queue.empty():
            pending = queue.get_nowait()
            job = await pending.make(semaphore)
            results = await _all_or_cancel([align_turn(t) for t in job.turns if isinstance(t, TurnJob)])
            write(f, job, results)

    try:
        # Appending a line to a local file takes microseconds: a thread hop would cost more than it saves.
        with open(path, "a", encoding="utf-8") as f:  # noqa: ASYNC230
            await _all_or_cancel([worker(f) for _ in range(min(concurrency, len(todo)))])
    finally:
        if bar is not None:
            bar.close()
    return EvalSummary(
        out=path,
        selected=len(jobs),
        skipped=len(jobs) - len(todo),
        written=counts["written"],
        aligned_turns=counts["aligned"],
        failed_turns=counts["failed"],
    )


async def _all_or_cancel(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Like ``gather``, but the first error cancels the others (no orphan keeps writing to a closed file)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
    for t in tasks:
        error = t.exception() if t.done() and not t.cancelled() else None
        if error is not None:
            raise error
    return [t.result() for t in tasks]


def run_eval(
    aligner: Aligner,
    jobs: Sequence[PendingJob],
    out: str | os.PathLike[str],
    **kwargs: Any,
) -> EvalSummary:
    """Synchronous :func:`arun_eval` (runs its own event loop)."""
    return asyncio.run(arun_eval(aligner, jobs, out, **kwargs))
