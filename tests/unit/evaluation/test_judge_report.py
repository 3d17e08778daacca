"""The judge's HTML: the inline SVG chart, the pairwise interval, judgments escaped beside their answers."""

from __future__ import annotations

import re

from diffpo_integrations.evaluation import BaseAnswer, Question
from diffpo_integrations.evaluation.judge_report import (
    category_chart_svg,
    pairwise_category_rates,
    render_judge_report,
    turn_judgments_html,
)
from diffpo_integrations.evaluation.judge_summary import summarize_judgments


def test_chart_draws_one_bar_per_model_and_category_to_scale() -> None:
    svg = category_chart_svg({"a": {"math": 5.0, "writing": 10.0}, "b": {"math": 2.5}}, top=10, title="Scores")
    assert svg.startswith('<svg class="chart"')
    assert svg.endswith("</svg>")
    bars = re.findall(r'<rect class="s(\d)" x="110" y="[\d.]+" width="([\d.]+)" height="12">', svg)
    # The plot is 400 units wide: 10 fills it, 5 half of it; b has no writing bar.
    assert sorted((int(s), float(w)) for s, w in bars) == [(0, 200.0), (0, 400.0), (1, 100.0)]
    assert "<title>b · math: 2.50</title>" in svg
    assert category_chart_svg({}, top=10, title="x") == ""


def test_pairwise_category_rates_count_ties_half() -> None:
    rows = [
        {"question_id": 1, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_1", "turn": 1},
        {"question_id": 1, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_2", "turn": 2},
        {"question_id": 2, "model_1": "a", "model_2": "b", "g1_winner": "model_2", "g2_winner": "model_2", "turn": 1},
        {"question_id": 2, "model_1": "a", "model_2": "b", "g1_winner": "error", "g2_winner": "model_2", "turn": 2},
    ]
    rates = pairwise_category_rates(rows, [{"model_a": "a", "model_b": "b"}], {"1": "math", "2": "writing"})
    assert rates == {"a vs b": {"math": 0.75, "writing": 0.0}}


def test_judgments_are_escaped_and_labelled() -> None:
    html = turn_judgments_html(
        [
            {"model": "m", "judge": ["j", "single-v1"], "judgment": "<script>alert(1)</script> [[7]]", "score": 7},
            {"model": "n", "judge": ["j", "single-v1"], "judgment": "no grade", "score": -1},
            {"model": "o", "judge": ["j", "single-v1"], "judgment": "$ERROR$", "score": -1, "error": "HTTP 500"},
        ]
    )
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; [[7]]" in html
    assert "j / single-v1 on m: <span>score 7</span>" in html
    assert 'j / single-v1 on n: <span class="bad">unparsed (-1)</span>' in html
    assert 'j / single-v1 on o: <span class="bad">API error</span></div><div class="text">HTTP 500</div>' in html


def test_report_shows_the_pairwise_interval() -> None:
    questions = [Question(1, "math", ["q1", "q2"])]
    rows = [
        {
            "question_id": 1,
            "model_1": "a",
            "model_2": "b",
            "g1_winner": "model_1",
            "g2_winner": "model_1",
            "judge": ["j", "pair-math-v1"],
            "g1_judgment": "A wins [[A]]",
            "g2_judgment": "B wins [[B]]",
            "turn": 1,
        }
    ]
    summary = summarize_judgments(rows, mode="pairwise", judge_model="j")
    answers = {"a": {1: BaseAnswer(1, "a", ["ans a", "x"])}, "b": {1: BaseAnswer(1, "b", ["ans b", "y"])}}
    page = render_judge_report(summary, rows, questions, answers)
    assert "<td>1.000 [1.000, 1.000]</td>" in page
    assert 'aria-label="win rate 1.000, 95% interval 1.000 to 1.000"' in page
    assert "Game 1: A = a, B = b · verdict: a" in page
    assert "Game 2: A = b, B = a · verdict: a" in page
    assert page.index("ans a") < page.index("a wins")
