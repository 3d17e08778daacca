"""MT-bench data in FastChat's formats: questions, model answers, and the aligned answers ``diffpo eval`` writes.

FastChat formats (``fastchat/llm_judge``):

- question: ``{"question_id", "category", "turns": [user turn 1, user turn 2], "reference"?}``
- model answer: ``{"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [...]}], "tstamp"}``

An aligned answer is a model answer (so FastChat's judge reads it unchanged) with one extra field,
``"diffpo"``, that FastChat ignores: ``{"base_model_id", "turns": [AlignResult.metadata() or null per
turn], "messages"?}`` (``null`` for a turn that was not aligned and holds the base answer as is;
``messages`` only for ``--input`` rows, which have no question file to rebuild the conversation from).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffpo_integrations.core.errors import InputError

__all__ = [
    "AlignedRecord",
    "BaseAnswer",
    "Job",
    "Question",
    "TurnJob",
    "answer_record",
    "base_answer_record",
    "build_job",
    "load_answers",
    "load_plain_inputs",
    "load_questions",
    "new_answer_id",
    "read_jsonl",
    "read_records",
    "rewrite_records",
    "turn_messages",
]

QuestionId = int | str

_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass(frozen=True)
class Question:
    """One MT-bench question: its id, category and the user turns."""

    question_id: QuestionId
    category: str
    turns: list[str]


@dataclass(frozen=True)
class BaseAnswer:
    """A base model's answers to one question (``choices[0]["turns"]`` of a FastChat model answer)."""

    question_id: QuestionId
    model_id: str
    turns: list[str]


@dataclass(frozen=True)
class TurnJob:
    """One alignment: turn ``index`` of a question, its conversation and the draft to align."""

    index: int
    messages: list[dict[str, str]]
    draft: str


@dataclass(frozen=True)
class Job:
    """Everything needed to write one output line: the turns to align and the ones copied as they are."""

    question_id: QuestionId
    category: str
    base_model_id: str
    turns: list[TurnJob | str]
    """Per turn: a :class:`TurnJob` to align, or the base answer kept unaligned (a ``str``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Added to the record's ``diffpo`` field (``messages`` for plain inputs)."""


AlignedRecord = dict[str, Any]
"""One line of the output file (a FastChat model answer plus the ``diffpo`` field)."""


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping blank lines.

    Raises:
        InputError: a line is not a JSON object (the message names the file and line).
    """
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                msg = f"{path}:{number}: not valid JSON ({exc.msg})"
                raise InputError(msg) from exc
            if not isinstance(row, dict):
                msg = f"{path}:{number}: expected a JSON object, got {type(row).__name__}"
                raise InputError(msg)
            rows.append(row)
    return rows


def read_records(path: str | os.PathLike[str], *, repair: bool = False) -> list[AlignedRecord]:
    """Read an output file; a missing file reads as empty.

    A process killed mid-write can leave a partial last line. With ``repair`` that line is cut off
    the file (so appending after it stays valid JSON lines); without, it is ignored.

    Raises:
        InputError: a line other than the last is broken.
    """
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    records: list[AlignedRecord] = []
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline + 1
        raw = data[pos:end]
        if raw.strip():
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError as exc:
                if data[end:].strip():
                    msg = f"{path}: the line at byte {pos} is not valid JSON ({exc.msg}); fix or remove it"
                    raise InputError(msg) from exc
                if repair:
                    with open(p, "r+b") as f:
                        f.truncate(pos)
                return records
        pos = end
    if repair and data and not data.endswith(b"\n"):
        # A complete last line without its newline: the next append must not glue onto it.
        with open(p, "ab") as f:
            f.write(b"\n")
    return records


def rewrite_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Replace a JSON-lines file's content with ``records``, atomically.

    Written to a temporary file beside it, then renamed over it: an interrupt leaves either the
    old or the new file, never a mix.
    """
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, p)


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read FastChat's ``question.jsonl``.

    Raises:
        InputError: a row lacks ``question_id`` or ``turns``.
    """
    out: list[Question] = []
    for row in read_jsonl(path):
        turns = row.get("turns")
        if "question_id" not in row or not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            msg = f"{path}: question rows need 'question_id' and 'turns' (a list of strings); got keys {sorted(row)}"
            raise InputError(msg)
        out.append(Question(row["question_id"], str(row.get("category", "")), list(turns)))
    return out


def load_answers(path: str | os.PathLike[str]) -> dict[QuestionId, BaseAnswer]:
    """Read a FastChat model-answer file, keyed by question id (a later line for the same id wins).

    Raises:
        InputError: a row is not a model answer.
    """
    out: dict[QuestionId, BaseAnswer] = {}
    for row in read_jsonl(path):
        try:
            turns = row["choices"][0]["turns"]
            qid = row["question_id"]
        except (KeyError, IndexError, TypeError) as exc:
            msg = f"{path}: model-answer rows need 'question_id' and 'choices[0][\"turns\"]'; got keys {sorted(row)}"
            raise InputError(msg) from exc
        out[qid] = BaseAnswer(qid, str(row.get("model_id", "base")), [str(t) for t in turns])
    return out


def load_plain_inputs(path: str | os.PathLike[str]) -> list[Job]:
    """Read a JSONL of ``{"prompt", "draft"}`` rows (``id`` optional) as one-turn jobs.

    ``prompt`` is the user's text, or a list of ``{"role", "content"}`` messages ending with the user
    turn the draft answers. Rows without ``id`` (or ``question_id``) are numbered from 1.

    Raises:
        InputError: a row lacks ``prompt`` or ``draft``, or two rows share an id.
    """
    jobs: list[Job] = []
    seen: set[QuestionId] = set()
    for number, row in enumerate(read_jsonl(path), 1):
        prompt, draft = row.get("prompt"), row.get("draft")
        if prompt is None or not isinstance(draft, str):
            msg = f"{path}: row {number} needs 'prompt' (text or messages) and 'draft' (text)"
            raise InputError(msg)
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
            messages = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in prompt]
        else:
            msg = f"{path}: row {number}: 'prompt' must be a string or a list of role/content messages"
            raise InputError(msg)
        qid: QuestionId = row.get("id", row.get("question_id", number))
        if qid in seen:
            msg = f"{path}: row {number}: id {qid!r} appears twice; ids key resuming, so they must be unique"
            raise InputError(msg)
        seen.add(qid)
        jobs.append(
            Job(
                question_id=qid,
                category=str(row.get("category", "")),
                base_model_id=str(row.get("model_id", "base")),
                turns=[TurnJob(0, messages, draft)],
                extra={"messages": messages},
            )
        )
    return jobs


def turn_messages(user_turns: Sequence[str], base_turns: Sequence[str], index: int) -> list[dict[str, str]]:
    """The conversation of turn ``index`` as the official inference builds it.

    Earlier user turns alternate with the *base* model's original earlier answers (not the aligned
    ones), then the current user turn.

    Example:
        >>> [m["content"] for m in turn_messages(["q1", "q2"], ["a1", "a2"], 1)]
        ['q1', 'a1', 'q2']
    """
    messages: list[dict[str, str]] = []
    for i in range(index):
        messages.append({"role": "user", "content": user_turns[i]})
        messages.append({"role": "assistant", "content": base_turns[i]})
    messages.append({"role": "user", "content": user_turns[index]})
    return messages


def build_job(question: Question, base: BaseAnswer, align_turns: Iterable[int]) -> Job:
    """The job of one MT-bench question: turns in ``align_turns`` (0-based) are aligned, the rest copied.

    Raises:
        InputError: the base answer has fewer turns than the question.
    """
    if len(base.turns) < len(question.turns):
        msg = (
            f"question {question.question_id}: the base answer has {len(base.turns)} turns, "
            f"the question {len(question.turns)}"
        )
        raise InputError(msg)
    wanted = set(align_turns)
    turns: list[TurnJob | str] = []
    for i, draft in enumerate(base.turns[: len(question.turns)]):
        if i in wanted:
            turns.append(TurnJob(i, turn_messages(question.turns, base.turns, i), draft))
        else:
            turns.append(draft)
    return Job(question.question_id, question.category, base.model_id, turns)


def new_answer_id() -> str:
    """A 22-character id in the style of FastChat's ``shortuuid.uuid()``."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(22))


def answer_record(
    job: Job, answers: Sequence[str], metadata: Sequence[dict[str, Any] | None], model_id: str
) -> AlignedRecord:
    """The output line for a finished job: a FastChat model answer plus the ``diffpo`` field."""
    record: AlignedRecord = {
        "question_id": job.question_id,
        "answer_id": new_answer_id(),
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(answers)}],
        "tstamp": time.time(),
    }
    if job.category:
        record["category"] = job.category
    record["diffpo"] = {"base_model_id": job.base_model_id, "turns": list(metadata), **job.extra}
    return record


def base_answer_record(question: Question, answers: Sequence[str], model_id: str) -> AlignedRecord:
    """A FastChat model answer for drafts generated by ``--draft-model``."""
    return {
        "question_id": question.question_id,
        "answer_id": new_answer_id(),
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(answers)}],
        "tstamp": time.time(),
        "category": question.category,
    }
