"""FastChat's judge prompts: the shipped file, the choice per category and turn, filling, parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffpo_integrations.core.errors import InputError
from diffpo_integrations.data import judge_prompts_path, mt_bench_reference_path
from diffpo_integrations.evaluation import load_answers
from diffpo_integrations.evaluation.judge_prompts import (
    check_prompts,
    fill_pair,
    fill_single,
    load_judge_prompts,
    parse_rating,
    parse_verdict,
    prompt_name,
)

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "mt-bench"


def test_shipped_judge_data_is_fastchats() -> None:
    prompts = load_judge_prompts(judge_prompts_path())
    assert sorted(prompts) == [
        "pair-math-v1",
        "pair-math-v1-multi-turn",
        "pair-v2",
        "pair-v2-multi-turn",
        "single-math-v1",
        "single-math-v1-multi-turn",
        "single-v1",
        "single-v1-multi-turn",
    ]
    assert prompts["single-v1"].system_prompt == "You are a helpful assistant."
    assert prompts["single-v1"].output_format == "[[rating]]"
    assert prompts["pair-v2"].output_format == "[[A]]"
    refs = load_answers(mt_bench_reference_path())
    assert sorted(refs) == list(range(101, 131))
    if SHARED.exists():  # the files ship unchanged
        assert judge_prompts_path().read_bytes() == (SHARED / "judge_prompts.jsonl").read_bytes()
        assert mt_bench_reference_path().read_bytes() == (SHARED / "reference_answer_gpt-4.jsonl").read_bytes()
    notice = (judge_prompts_path().parent / "NOTICE").read_text(encoding="utf-8")
    assert "Apache License, Version 2.0" in notice
    assert "judge_prompts.jsonl" in notice
    assert "mt_bench_reference_answer_gpt-4.jsonl" in notice


@pytest.mark.parametrize(
    ("mode", "category", "turn", "expected"),
    [
        ("single", "writing", 1, "single-v1"),
        ("single", "writing", 2, "single-v1-multi-turn"),
        ("single", "math", 1, "single-math-v1"),
        ("single", "reasoning", 2, "single-math-v1-multi-turn"),
        ("single", "coding", 1, "single-math-v1"),
        ("single", "stem", 2, "single-v1-multi-turn"),
        ("pairwise", "roleplay", 1, "pair-v2"),
        ("pairwise", "humanities", 2, "pair-v2-multi-turn"),
        ("pairwise", "coding", 1, "pair-math-v1"),
        ("pairwise", "math", 2, "pair-math-v1-multi-turn"),
        ("pairwise", "arena-hard-200", 1, "pair-math-v1"),
    ],
)
def test_prompt_name(mode: str, category: str, turn: int, expected: str) -> None:
    assert prompt_name(mode, category, turn) == expected  # type: ignore[arg-type]


def test_fill_single_turn_one_and_two() -> None:
    prompts = load_judge_prompts(judge_prompts_path())
    one = fill_single(prompts["single-v1"], ["Q1", "Q2"], ["A1", "A2"], 1, None)
    assert one.endswith("[Question]\nQ1\n\n[The Start of Assistant's Answer]\nA1\n[The End of Assistant's Answer]")
    two = fill_single(prompts["single-v1-multi-turn"], ["Q1", "Q2"], ["A1", "A2"], 2, None)
    assert "### User:\nQ1\n\n### Assistant A:\nA1\n\n### User:\nQ2\n\n### Assistant A:\nA2" in two
    math = fill_single(prompts["single-math-v1-multi-turn"], ["Q1", "Q2"], ["A1", "A2"], 2, ["R1", "R2"])
    assert "### User:\nQ1\n\n### Reference answer:\nR1\n\n### User:\nQ2\n\n### Reference answer:\nR2" in math
    # Answers holding braces are inserted as they are (str.format does not re-read the values).
    assert "{x}" in fill_single(prompts["single-v1"], ["Q1"], ["def f(): return {x}"], 1, None)


def test_fill_pair_puts_answer_a_first() -> None:
    prompts = load_judge_prompts(judge_prompts_path())
    text = fill_pair(prompts["pair-math-v1"], ["Q1"], ["first"], ["second"], 1, ["ref"])
    assert text == (
        "[User Question]\nQ1\n\n[The Start of Reference Answer]\nref\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant A's Answer]\nfirst\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\nsecond\n[The End of Assistant B's Answer]"
    )


@pytest.mark.parametrize(
    ("judgment", "score"),
    [
        ("Helpful and accurate. Rating: [[8]]", 8),
        ("Rating: [[8.5]]", 8.5),
        ("Rating: [7]", 7),  # FastChat's backup pattern
        ("[3] points made; overall [[9]]", 9),  # the double-bracket form wins wherever it is
        ("Rating: 8/10", -1),
        ("Rating: [[eight]]", -1),
        ("", -1),
    ],
)
def test_parse_rating(judgment: str, score: float) -> None:
    assert parse_rating(judgment) == score
    assert type(parse_rating(judgment)) is type(score)


@pytest.mark.parametrize(
    ("judgment", "verdict"),
    [
        ("Assistant A is better. [[A]]", "A"),
        ("[[B]]", "B"),
        ("Equally good: [[C]]", "tie"),
        ("Not [[B]] but [[A]]", "A"),  # FastChat checks [[A]] first
        ("A is better", "error"),
        ("[A]", "error"),
    ],
)
def test_parse_verdict(judgment: str, verdict: str) -> None:
    assert parse_verdict(judgment) == verdict


def test_check_prompts_names_what_is_missing(tmp_path: Path) -> None:
    prompts = load_judge_prompts(judge_prompts_path())
    check_prompts(prompts, "single")
    check_prompts(prompts, "pairwise")
    without = {k: v for k, v in prompts.items() if k != "pair-math-v1-multi-turn"}
    with pytest.raises(InputError, match="the judge prompts have no 'pair-math-v1-multi-turn'"):
        check_prompts(without, "pairwise")
    swapped = {**prompts, "single-v1": prompts["pair-v2"]}
    with pytest.raises(InputError, match="judge prompt 'single-v1' is of type 'pairwise'"):
        check_prompts(swapped, "single")
    broken = tmp_path / "p.jsonl"
    broken.write_text('{"name": "x", "type": "single"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="judge prompt 'x' lacks the field 'system_prompt'"):
        load_judge_prompts(broken)
