"""MT-bench judging as FastChat's ``gen_judgment.py`` does it, over any OpenAI-compatible judge.

Single mode grades each model's answer to each turn (``single-v1`` ...). Pairwise mode judges each
pair of models twice per turn, once in each order (game 1 shows ``model_1`` as assistant A, game 2
shows ``model_2`` as A), so position bias cancels out; the summary counts a win only when both
games agree. Reference-based prompts quote the reference answer for the math, reasoning and coding
questions.

Output lines use FastChat's judgment format, so ``show_result.py`` reads them too:

- single: ``{"question_id", "model", "judge": [judge_model, prompt_name], "user_prompt", "judgment",
  "score", "turn", "tstamp"}``
- pairwise: ``{"question_id", "model_1", "model_2", "g1_winner", "g2_winner", "judge", "g1_user_prompt",
  "g1_judgment", "g2_user_prompt", "g2_judgment", "turn", "tstamp"}``, winners being ``model_1``,
  ``model_2``, ``tie`` or ``error``.

A judgment whose API call failed after its retries is recorded as FastChat records it (judgment
``$ERROR$``, score -1 or winner ``error``) with an extra ``error`` field saying why; the next run
judges it again. Every other line is kept, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffpo_integrations.core.errors import ConfigurationError, InputError
from diffpo_integrations.evaluation.judge_client import JudgeClient, JudgeError
from diffpo_integrations.evaluation.judge_prompts import (
    NEED_REF_CATS,
    JudgePrompt,
    check_prompts,
    fill_pair,
    fill_single,
    parse_rating,
    parse_verdict,
    prompt_name,
)
from diffpo_integrations.evaluation.mtbench import BaseAnswer, Question, read_records, rewrite_records
from diffpo_integrations.evaluation.runner import _all_or_cancel, _progress

__all__ = [
    "API_ERROR_OUTPUT",
    "JudgeRun",
    "Match",
    "Mode",
    "arun_judge",
    "is_api_error",
    "judgment_key",
    "match_key",
    "plan_matches",
    "run_judge",
]

API_ERROR_OUTPUT = "$ERROR$"
"""The judgment FastChat records when the judge API failed."""

Mode = Literal["single", "pairwise"]
QuestionId = int | str


@dataclass(frozen=True)
class Match:
    """One output line to produce: a turn of a question, judged for one model or one pair of models."""

    question: Question
    turn: int
    """1 or 2, as FastChat numbers turns."""
    prompt: JudgePrompt
    models: tuple[str, ...]
    """One model (single) or ``(model_1, model_2)`` (pairwise)."""
    answers: tuple[Sequence[str], ...]
    """Each model's answers to the question's turns."""
    reference: Sequence[str] | None
    """The reference answers, for the math prompts."""


@dataclass(frozen=True)
class JudgeRun:
    """What one judging run did."""

    out: Path
    planned: int
    skipped: int
    """Lines already in the output file."""
    written: int
    unparsed: int
    """Judgments written without a readable grade or verdict (score -1, winner ``error``)."""
    errors: int
    """Judgments whose API call failed after the retries (judged again on the next run)."""


def _check_answers(questions: Sequence[Question], models: Mapping[str, Mapping[QuestionId, BaseAnswer]]) -> None:
    for name, answers in models.items():
        missing = [q.question_id for q in questions if q.question_id not in answers]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            msg = (
                f"model {name!r} has no answer to {len(missing)} of the {len(questions)} questions ({shown}); "
                "answer them first, or judge fewer questions (--limit)"
            )
            raise InputError(msg)
        short = [q.question_id for q in questions if len(answers[q.question_id].turns) < len(q.turns)]
        if short:
            msg = f"model {name!r} answers fewer turns than asked for questions {short[:10]}"
            raise InputError(msg)


def _reference(question: Question, references: Mapping[QuestionId, BaseAnswer] | None, turn: int) -> list[str]:
    ref = (references or {}).get(question.question_id)
    if ref is None or len(ref.turns) < turn:
        msg = (
            f"question {question.question_id} ({question.category}) is judged against a reference answer, "
            "and the reference file has none for it; pass --reference (FastChat's GPT-4 references are "
            "the default for the shipped MT-bench questions)"
        )
        raise InputError(msg)
    return list(ref.turns)


def plan_matches(
    mode: Mode,
    questions: Sequence[Question],
    models: Mapping[str, Mapping[QuestionId, BaseAnswer]],
    prompts: Mapping[str, JudgePrompt],
    *,
    references: Mapping[QuestionId, BaseAnswer] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    turns: Sequence[int] = (1, 2),
) -> list[Match]:
    """Every judgment to make, in FastChat's order within each question and turn.

    Args:
        mode: ``single`` or ``pairwise``.
        questions: the questions to judge (only two-turn ones get turn 2, as in FastChat).
        models: each model's answers, keyed by the model's name (FastChat: the answer file's name).
        prompts: from :func:`~diffpo_integrations.evaluation.judge_prompts.load_judge_prompts`.
        references: reference answers for the math, reasoning and coding questions.
        pairs: pairwise only: ``(model_1, model_2)`` pairs; default every pair in ``models`` order.
        turns: which turns to judge (1, 2).

    Raises:
        InputError: an answer or reference is missing, a pair names an unknown model, or the prompts
            lack one this mode needs.
    """
    check_prompts(prompts, mode)
    _check_answers(questions, models)
    names = list(models)
    if mode == "pairwise":
        chosen = list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        unknown = sorted({m for pair in chosen for m in pair} - set(names))
        if unknown or any(a == b for a, b in chosen):
            msg = f"pairs must join two different models of {names}; got {chosen}"
            raise InputError(msg)
        if not chosen:
            msg = "pairwise judging needs two answer files (--answers A.jsonl --answers B.jsonl)"
            raise InputError(msg)
        groups: list[tuple[str, ...]] = [tuple(p) for p in chosen]
    else:
        groups = [(name,) for name in names]
    matches: list[Match] = []
    for q in questions:
        for turn in turns:
            if turn == 2 and len(q.turns) != 2:
                continue
            prompt = prompts[prompt_name(mode, q.category, turn)]
            reference = _reference(q, references, turn) if q.category in NEED_REF_CATS else None
            for group in groups:
                answers = tuple(list(models[m][q.question_id].turns) for m in group)
                matches.append(Match(q, turn, prompt, group, answers, reference))
    return matches


def judgment_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a judgment line: judge model, question, model(s) (a pair in either order), turn."""
    judge = row.get("judge") or ["", ""]
    if "model" in row:
        models: tuple[str, ...] = (str(row["model"]),)
    else:
        models = tuple(sorted((str(row.get("model_1")), str(row.get("model_2")))))
    return (str(judge[0]), str(row.get("question_id")), models, int(row.get("turn", 1)))


def match_key(judge_model: str, match: Match) -> tuple[Any, ...]:
    """:func:`judgment_key` of the line ``match`` will write."""
    models = match.models if len(match.models) == 1 else tuple(sorted(match.models))
    return (judge_model, str(match.question.question_id), models, match.turn)


def is_api_error(row: Mapping[str, Any]) -> bool:
    """Whether a line records a failed judge call (rather than a judgment, readable or not)."""
    return "error" in row or API_ERROR_OUTPUT in (row.get("judgment"), row.get("g1_judgment"), row.get("g2_judgment"))


def _resume(out: Path) -> set[tuple[Any, ...]]:
    """Keys already judged; lines recording an API error are dropped so that they are judged again."""
    rows = read_records(out, repair=True)
    if any(is_api_error(r) for r in rows):
        kept = [r for r in rows if not is_api_error(r)]
        rewrite_records(out, kept)
        rows = kept
    return {judgment_key(r) for r in rows}


async def _ask(client: JudgeClient, semaphore: asyncio.Semaphore, system: str, user: str) -> tuple[str, str | None]:
    """The judgment, or FastChat's error output and why."""
    async with semaphore:
        try:
            return await client.complete(system, user), None
        except JudgeError as exc:
            return API_ERROR_OUTPUT, str(exc)


async def _single(client: JudgeClient, semaphore: asyncio.Semaphore, m: Match) -> dict[str, Any]:
    user = fill_single(m.prompt, m.question.turns, m.answers[0], m.turn, m.reference)
    judgment, error = await _ask(client, semaphore, m.prompt.system_prompt, user)
    row: dict[str, Any] = {
        "question_id": m.question.question_id,
        "model": m.models[0],
        "judge": [client.model, m.prompt.name],
        "user_prompt": user,
        "judgment": judgment,
        "score": -1 if error else parse_rating(judgment),
        "turn": m.turn,
        "tstamp": time.time(),
    }
    if error:
        row["error"] = error
    return row


_G1 = {"A": "model_1", "B": "model_2"}
_G2 = {"A": "model_2", "B": "model_1"}


async def _pair(client: JudgeClient, semaphore: asyncio.Semaphore, m: Match) -> dict[str, Any]:
    system = m.prompt.system_prompt
    g1_user = fill_pair(m.prompt, m.question.turns, m.answers[0], m.answers[1], m.turn, m.reference)
    g2_user = fill_pair(m.prompt, m.question.turns, m.answers[1], m.answers[0], m.turn, m.reference)
    (g1, g1_error), (g2, g2_error) = await asyncio.gather(
        _ask(client, semaphore, system, g1_user), _ask(client, semaphore, system, g2_user)
    )
    g1_verdict = "error" if g1_error else parse_verdict(g1)
    g2_verdict = "error" if g2_error else parse_verdict(g2)
    row: dict[str, Any] = {
        "question_id": m.question.question_id,
        "model_1": m.models[0],
        "model_2": m.models[1],
        "g1_winner": _G1.get(g1_verdict, g1_verdict),
        "g2_winner": _G2.get(g2_verdict, g2_verdict),
        "judge": [client.model, m.prompt.name],
        "g1_user_prompt": g1_user,
        "g1_judgment": g1,
        "g2_user_prompt": g2_user,
        "g2_judgment": g2,
        "turn": m.turn,
        "tstamp": time.time(),
    }
    if g1_error or g2_error:
        row["error"] = g1_error or g2_error
    return row


def _unparsed(row: Mapping[str, Any]) -> bool:
    if "model" in row:
        return bool(row.get("score") == -1)
    return "error" in (row.get("g1_winner"), row.get("g2_winner"))


async def arun_judge(
    client: JudgeClient,
    matches: Sequence[Match],
    out: str | os.PathLike[str],
    *,
    concurrency: int = 8,
    progress: bool = True,
) -> JudgeRun:
    """Judge every match not yet in ``out``, appending one line per finished match.

    Args:
        client: the judge.
        matches: from :func:`plan_matches`.
        out: the judgments file (JSON lines); created, or resumed when it exists.
        concurrency: judge calls in flight at once.
        progress: show a tqdm bar on stderr.

    Raises:
        ConfigurationError: the judge refused the URL, model or key (raised at once: every call would fail).
        KeyboardInterrupt: passed on; finished lines are already on disk.
    """
    if concurrency < 1:
        msg = f"concurrency must be >= 1, got {concurrency}"
        raise ConfigurationError(msg)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(path)
    todo = [m for m in matches if match_key(client.model, m) not in done]
    semaphore = asyncio.Semaphore(concurrency)
    bar = _progress(len(todo), progress, desc="judging", unit="judgment")
    counts = {"written": 0, "unparsed": 0, "errors": 0}

    async def judge(f: Any, m: Match) -> None:
        row = await (_single(client, semaphore, m) if len(m.models) == 1 else _pair(client, semaphore, m))
        # One write of a whole line, flushed: an interrupt never leaves half a line behind.
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        counts["written"] += 1
        if "error" in row:
            counts["errors"] += 1
        elif _unparsed(row):
            counts["unparsed"] += 1
        if bar is not None:
            bar.update(1)
            if counts["unparsed"] or counts["errors"]:
                bar.set_postfix(unparsed=counts["unparsed"], errors=counts["errors"])

    try:
        # Appending a line to a local file takes microseconds: a thread hop would cost more than it saves.
        with open(path, "a", encoding="utf-8") as f:  # noqa: ASYNC230
            await _all_or_cancel([judge(f, m) for m in todo])
    finally:
        if bar is not None:
            bar.close()
    return JudgeRun(
        out=path,
        planned=len(matches),
        skipped=len(matches) - len(todo),
        written=counts["written"],
        unparsed=counts["unparsed"],
        errors=counts["errors"],
    )


def run_judge(
    client_factory: Callable[[], JudgeClient], matches: Sequence[Match], out: str | os.PathLike[str], **kwargs: Any
) -> JudgeRun:
    """Synchronous :func:`arun_judge`: ``client_factory()`` builds the client inside the event loop."""

    async def main() -> JudgeRun:
        async with client_factory() as client:
            return await arun_judge(client, matches, out, **kwargs)

    return asyncio.run(main())
