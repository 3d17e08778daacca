"""Data files shipped with the package: MT-bench questions, two base models' answers, FastChat's judge data.

- ``mt_bench_questions.jsonl``: FastChat's MT-bench ``question.jsonl`` (80 two-turn questions, Apache-2.0).
- ``judge_prompts.jsonl``: FastChat's judge prompts (``single-v1``, ``pair-v2``, ``single-math-v1`` ...,
  Apache-2.0), the prompts ``diffpo judge`` sends.
- ``mt_bench_reference_answer_gpt-4.jsonl``: FastChat's GPT-4 reference answers for the math, reasoning
  and coding questions (Apache-2.0), which the math judge prompts quote.
- ``mt_bench_llama-3-it-vanilla.jsonl``, ``mt_bench_mistral-it-vanilla.jsonl``: answers of
  Llama-3-8B-Instruct and Mistral-7B-Instruct in FastChat's model-answer format, the drafts DiffPO's
  MT-bench evaluation aligns.

They ship inside the package (not only in the repository) so that ``diffpo eval`` runs from a plain
``pip install``. ``NOTICE`` beside them names their sources and licence.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = [
    "MT_BENCH_ANSWERS",
    "judge_prompts_path",
    "mt_bench_answers_path",
    "mt_bench_questions_path",
    "mt_bench_reference_path",
]

MT_BENCH_ANSWERS = ("llama-3-it-vanilla", "mistral-it-vanilla")
"""Names of the shipped base-model answer files (pass one as ``diffpo eval --answers NAME``)."""


def _path(name: str) -> Path:
    # The package is installed as plain files (wheel or editable), so the resource is a real path.
    return Path(str(resources.files(__name__).joinpath(name)))


def mt_bench_questions_path() -> Path:
    """Path of the shipped MT-bench ``question.jsonl``."""
    return _path("mt_bench_questions.jsonl")


def mt_bench_answers_path(name: str) -> Path:
    """Path of a shipped base-model answer file; ``name`` is one of :data:`MT_BENCH_ANSWERS`.

    Raises:
        KeyError: no such shipped file.
    """
    if name not in MT_BENCH_ANSWERS:
        msg = f"no shipped MT-bench answers named {name!r}; choose one of {list(MT_BENCH_ANSWERS)}"
        raise KeyError(msg)
    return _path(f"mt_bench_{name}.jsonl")


def judge_prompts_path() -> Path:
    """Path of the shipped FastChat ``judge_prompts.jsonl``."""
    return _path("judge_prompts.jsonl")


def mt_bench_reference_path() -> Path:
    """Path of the shipped GPT-4 reference answers (FastChat's ``reference_answer/gpt-4.jsonl``)."""
    return _path("mt_bench_reference_answer_gpt-4.jsonl")
