"""FastChat's MT-bench judge prompts: which one a question's turn gets, how it is filled, how its answer is read.

The rules are those of ``fastchat/llm_judge`` (``common.py``, ``gen_judgment.py``):

- The math, reasoning and coding categories (:data:`NEED_REF_CATS`) use the reference-based prompts
  (``single-math-v1``, ``pair-math-v1``), which quote a reference answer; the others use ``single-v1`` /
  ``pair-v2``. Turn 2 uses the ``-multi-turn`` variant, which shows both user turns and both answers
  (and both reference answers).
- The judge is asked with the prompt's ``system_prompt`` as the system message and the filled
  ``prompt_template`` as the one user message, at temperature 0 with ``max_tokens`` 2048.
- A single grade is the first ``[[x]]`` in the judgment, else the first ``[x]``; none gives -1.
- A pairwise verdict is ``A`` if ``[[A]]`` appears, else ``B`` for ``[[B]]``, else ``tie`` for ``[[C]]``,
  else ``error``.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from diffpo_integrations.core.errors import InputError
from diffpo_integrations.evaluation.mtbench import read_jsonl

__all__ = [
    "NEED_REF_CATS",
    "JudgePrompt",
    "check_prompts",
    "Verdict",
    "fill_pair",
    "fill_single",
    "load_judge_prompts",
    "parse_rating",
    "parse_verdict",
    "prompt_name",
]

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
"""Categories judged against a reference answer (FastChat's ``NEED_REF_CATS``)."""

Mode = Literal["single", "pairwise"]
Verdict = Literal["A", "B", "tie", "error"]

# FastChat's patterns, in its order: the double-bracket form wins over the single-bracket backup.
_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class JudgePrompt:
    """One line of ``judge_prompts.jsonl``."""

    name: str
    type: str
    """``single`` or ``pairwise``."""
    system_prompt: str
    prompt_template: str
    output_format: str
    """``[[rating]]`` (single) or ``[[A]]`` (pairwise)."""


def load_judge_prompts(path: str | os.PathLike[str]) -> dict[str, JudgePrompt]:
    """Read a FastChat ``judge_prompts.jsonl``, keyed by prompt name.

    Raises:
        InputError: a line lacks one of the fields a judge prompt needs.
    """
    prompts: dict[str, JudgePrompt] = {}
    for row in read_jsonl(path):
        try:
            prompt = JudgePrompt(
                name=str(row["name"]),
                type=str(row["type"]),
                system_prompt=str(row["system_prompt"]),
                prompt_template=str(row["prompt_template"]),
                output_format=str(row["output_format"]),
            )
        except KeyError as exc:
            msg = f"{path}: judge prompt {row.get('name', '?')!r} lacks the field {exc}"
            raise InputError(msg) from exc
        prompts[prompt.name] = prompt
    return prompts


def prompt_name(mode: Mode, category: str, turn: int) -> str:
    """The FastChat judge prompt for a question's ``category`` and ``turn`` (1 or 2).

    Example:
        >>> prompt_name("single", "math", 2), prompt_name("pairwise", "writing", 1)
        ('single-math-v1-multi-turn', 'pair-v2')
    """
    names = {"single": ("single-v1", "single-math-v1"), "pairwise": ("pair-v2", "pair-math-v1")}[mode]
    base = names[category in NEED_REF_CATS]
    return f"{base}-multi-turn" if turn == 2 else base


def _reference_fields(reference: Sequence[str] | None, turn: int) -> dict[str, str]:
    if reference is None:
        return {}
    fields = {"ref_answer_1": reference[0]}
    if turn == 2:
        fields["ref_answer_2"] = reference[1]
    return fields


def fill_single(
    prompt: JudgePrompt, questions: Sequence[str], answer: Sequence[str], turn: int, reference: Sequence[str] | None
) -> str:
    """The user message of a single-answer grading of ``turn`` (1 or 2).

    Args:
        prompt: the judge prompt chosen by :func:`prompt_name`.
        questions: the question's user turns.
        answer: the model's answers, one per turn.
        turn: 1 shows turn 1 alone; 2 shows both turns (the ``-multi-turn`` templates).
        reference: the reference answers, for the math prompts; ``None`` for the others.
    """
    extra = _reference_fields(reference, turn)
    if turn == 2:
        return prompt.prompt_template.format(
            question_1=questions[0], question_2=questions[1], answer_1=answer[0], answer_2=answer[1], **extra
        )
    return prompt.prompt_template.format(question=questions[0], answer=answer[0], **extra)


def fill_pair(
    prompt: JudgePrompt,
    questions: Sequence[str],
    answer_a: Sequence[str],
    answer_b: Sequence[str],
    turn: int,
    reference: Sequence[str] | None,
) -> str:
    """The user message of a pairwise comparison of ``turn``: ``answer_a`` is shown as assistant A."""
    extra = _reference_fields(reference, turn)
    if turn == 2:
        return prompt.prompt_template.format(
            question_1=questions[0],
            question_2=questions[1],
            answer_a_1=answer_a[0],
            answer_b_1=answer_b[0],
            answer_a_2=answer_a[1],
            answer_b_2=answer_b[1],
            **extra,
        )
    return prompt.prompt_template.format(question=questions[0], answer_a=answer_a[0], answer_b=answer_b[0], **extra)


def parse_rating(judgment: str) -> float | int:
    """The grade in a single-answer judgment, or -1 when there is none (FastChat's rule).

    Example:
        >>> parse_rating("Good. Rating: [[8]]"), parse_rating("Rating: [7.5]"), parse_rating("Rating: 8")
        (8, 7.5, -1)
    """
    match = _ONE_SCORE.search(judgment) or _ONE_SCORE_BACKUP.search(judgment)
    if match is None:
        return -1
    value = ast.literal_eval(match.group(1))
    return value if isinstance(value, int | float) else -1


def parse_verdict(judgment: str) -> Verdict:
    """The verdict of a pairwise judgment: ``A``, ``B``, ``tie`` (``[[C]]``) or ``error`` (none found).

    Checked in FastChat's order, so a judgment naming both ``[[A]]`` and ``[[B]]`` counts as ``A``.
    """
    if "[[A]]" in judgment:
        return "A"
    if "[[B]]" in judgment:
        return "B"
    if "[[C]]" in judgment:
        return "tie"
    return "error"


def check_prompts(prompts: Mapping[str, JudgePrompt], mode: Mode) -> None:
    """Check that every prompt ``mode`` may choose is present, of the right type and format.

    Raises:
        InputError: one is missing or is not what FastChat's judge expects.
    """
    expected = ("single", "[[rating]]") if mode == "single" else ("pairwise", "[[A]]")
    for category in ("writing", "math"):
        for turn in (1, 2):
            name = prompt_name(mode, category, turn)
            prompt = prompts.get(name)
            if prompt is None:
                msg = f"the judge prompts have no {name!r}; use FastChat's judge_prompts.jsonl (the default)"
                raise InputError(msg)
            if (prompt.type, prompt.output_format) != expected:
                msg = (
                    f"judge prompt {name!r} is of type {prompt.type!r} with output format "
                    f"{prompt.output_format!r}; {mode} judging needs {expected}"
                )
                raise InputError(msg)
