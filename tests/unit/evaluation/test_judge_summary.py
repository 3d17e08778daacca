"""Summary figures of judgments: FastChat's means and win counts, bootstrap intervals, the printed table."""

from __future__ import annotations

from typing import Any

import pytest

from diffpo_integrations.evaluation import Question
from diffpo_integrations.evaluation.judge_summary import bootstrap_ci, format_summary, summarize_judgments

QUESTIONS = [Question(81, "writing", ["a", "b"]), Question(111, "math", ["c", "d"]), Question(91, "roleplay", ["e"])]


def single(qid: int, turn: int, score: float, model: str = "x", judge: str = "j", **extra: Any) -> dict[str, Any]:
    return {"question_id": qid, "model": model, "judge": [judge, "single-v1"], "score": score, "turn": turn, **extra}


def pair(qid: int, turn: int, g1: str, g2: str, m1: str = "aligned", m2: str = "draft") -> dict[str, Any]:
    return {
        "question_id": qid,
        "model_1": m1,
        "model_2": m2,
        "g1_winner": g1,
        "g2_winner": g2,
        "judge": ["j", "pair-v2"],
        "g1_judgment": "",
        "g2_judgment": "",
        "turn": turn,
    }


def test_single_scores_per_model_turn_and_category() -> None:
    rows = [
        single(81, 1, 2),  # replaced by the later line for the same judgment
        single(81, 1, 8),
        single(81, 2, 6),
        single(111, 1, 4),
        single(111, 2, -1, judgment="no grade"),
        single(91, 1, -1, judgment="$ERROR$", error="HTTP 500"),
        single(81, 1, 10, model="y"),
        single(81, 1, 1, judge="other-judge"),
    ]
    summary = summarize_judgments(rows, mode="single", judge_model="j", questions=QUESTIONS)
    assert summary["judge_model"] == "j"
    assert summary["mode"] == "single"
    assert summary["pairwise"] == []
    x = summary["models"]["x"]
    assert x["score"] == 6.0
    assert x["turns"] == [6.0, 6.0]
    assert x["n"] == 3
    assert x["categories"] == {"math": 4.0, "writing": 7.0}
    assert (x["unparsed"], x["errors"]) == (1, 1)
    lo, hi = x["ci95"]
    assert 4.0 <= lo < 6.0 < hi <= 8.0
    y = summary["models"]["y"]
    assert (y["score"], y["turns"], y["n"], y["ci95"]) == (10.0, [10.0, None], 1, [10.0, 10.0])


def test_pairwise_counts_a_win_only_when_both_orders_agree() -> None:
    rows = [
        pair(81, 1, "model_1", "model_1"),  # aligned wins in both orders
        pair(81, 2, "model_2", "model_2"),  # draft wins in both orders
        pair(111, 1, "model_1", "model_2"),  # inconsistent: a tie
        pair(111, 2, "tie", "tie"),
        pair(91, 1, "model_1", "error"),  # left out
        pair(91, 2, "model_2", "model_2", m1="draft", m2="aligned"),  # the pair the other way round: aligned wins
    ]
    (p,) = summarize_judgments(rows, mode="pairwise", pairs=[("aligned", "draft")])["pairwise"]
    assert p["model_a"] == "aligned"
    assert p["model_b"] == "draft"
    assert (p["win"], p["loss"], p["tie"], p["n"]) == (2, 1, 2, 5)
    assert (p["inconsistent"], p["unparsed"], p["errors"]) == (1, 1, 0)
    assert p["win_rate"] == 0.4
    assert p["win_rate_adjusted"] == 0.6
    lo, hi = p["ci95"]
    assert 0.0 <= lo < 0.4 < hi <= 1.0
    # Without pairs, the file's own pairs, model_1 first.
    (seen,) = summarize_judgments(rows, mode="pairwise")["pairwise"]
    assert (seen["model_a"], seen["win"], seen["loss"]) == ("aligned", 2, 1)


def test_bootstrap_is_seeded_and_sensible() -> None:
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([3.0] * 20) == [3.0, 3.0]
    coin = [1.0, 0.0] * 50
    ci = bootstrap_ci(coin)
    assert ci == bootstrap_ci(coin)  # reproducible
    assert ci is not None
    lo, hi = ci
    # The normal approximation gives 0.5 +- 0.098 for 100 fair coin flips.
    assert 0.38 < lo < 0.46
    assert 0.54 < hi < 0.62


def test_table() -> None:
    rows = [single(81, 1, 8), single(81, 2, 6), single(111, 1, 4), single(111, 2, -1)]
    text = format_summary(summarize_judgments(rows, mode="single", judge_model="j", questions=QUESTIONS))
    assert text.splitlines()[0] == "judge: j (single)"
    assert "model  score  turn 1  turn 2  n  unparsed  errors        95% CI" in text
    ci = bootstrap_ci([8.0, 6.0, 4.0])
    assert ci is not None
    assert f"x       6.00    6.00    6.00  3         1       0  [{ci[0]:.2f}, {ci[1]:.2f}]" in text
    assert "math      4.00" in text
    assert "writing   7.00" in text
    pairs = summarize_judgments([pair(81, 1, "model_1", "model_1")], mode="pairwise")
    text = format_summary(pairs)
    assert (
        "aligned vs draft    1     0    0     1.000  [1.000, 1.000]     1.000             0         0       0" in text
    )


@pytest.mark.parametrize("mode", ["single", "pairwise"])
def test_empty(mode: str) -> None:
    summary = summarize_judgments([], mode=mode)
    assert summary == {"judge_model": None, "mode": mode, "models": {}, "pairwise": []}
    assert format_summary(summary) == f"judge: any ({mode})"
