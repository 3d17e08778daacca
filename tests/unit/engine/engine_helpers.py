"""Helpers shared by the engine tests: tiny random models and MT-bench draft cases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path
from diffpo_integrations.engine import tiny_random_model

"""MT-bench questions and two base models' answers (FastChat format), read-only project data."""


@cache
def tiny(arch: str, seed: int) -> Any:
    """A tiny random model, built once per (architecture, seed) for the whole session."""
    return tiny_random_model(arch, seed)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DraftCase:
    """One MT-bench turn-1 question with a base model's answer as the draft."""

    question_id: int
    prompt_ids: list[int]
    """Generation prompt plus the first 5 draft tokens (the kept prefix)."""
    draft_ids: list[int]
    """The rest of the answer, tokenised in context (ends with the end-of-turn token)."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def mt_bench_cases(
    tokenizer: Any, source: str = "llama-3-it-vanilla", count: int = 5, keep: int = 5
) -> list[DraftCase]:
    """Prompt and draft token ids for the first ``count`` MT-bench turn-1 questions.

    The draft is tokenised in context (the templated conversation with the answer as the
    assistant turn); the prompt is the generation prompt plus its first ``keep`` tokens.
    """
    questions = {q["question_id"]: q["turns"][0] for q in _read_jsonl(mt_bench_questions_path())}
    cases = []
    for record in _read_jsonl(mt_bench_answers_path(source))[:count]:
        user = [{"role": "user", "content": questions[record["question_id"]]}]
        answer = {"role": "assistant", "content": record["choices"][0]["turns"][0]}
        generation = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tokenizer.apply_chat_template([*user, answer], tokenize=True, return_dict=False)
        assert full[: len(generation)] == generation, "the generation prompt must prefix the templated answer"
        cut = len(generation) + keep
        cases.append(DraftCase(record["question_id"], full[:cut], full[cut:]))
    return cases
