"""The judge's part of the HTML reports: per-category chart, pairwise result, each judgment beside its answers.

Everything is inline (an SVG drawn here, the shared stylesheet), nothing is fetched, and every text
from the data is HTML-escaped. :func:`write_judge_report` writes the page ``diffpo judge --report``
asks for; :func:`judge_sections` and :func:`turn_judgments_html` put the same pieces into the
``diffpo eval`` report.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffpo_integrations.evaluation.judge_summary import pair_outcome
from diffpo_integrations.evaluation.mtbench import BaseAnswer, Question
from diffpo_integrations.evaluation.report_style import CSS

__all__ = [
    "category_chart_svg",
    "judge_sections",
    "pairwise_category_rates",
    "render_judge_report",
    "turn_judgments_html",
    "write_judge_report",
]

_BAR, _GAP, _LABEL, _WIDTH = 14, 10, 110, 560


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: Sequence[float] | None, digits: int) -> str:
    return "" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def category_chart_svg(series: Mapping[str, Mapping[str, float | None]], *, top: float, title: str) -> str:
    """A grouped horizontal bar chart: one group per category, one bar per series (model or pair).

    Args:
        series: series name -> category -> value (``None`` draws no bar).
        top: the value at the right edge (10 for MT-bench grades, 1 for win rates).
        title: the chart's accessible title.
    """
    categories = sorted({c for values in series.values() for c in values})
    names = list(series)
    if not categories or not names:
        return ""
    group = len(names) * _BAR + _GAP
    legend_h = 18 * len(names)
    height = legend_h + len(categories) * group + 24
    plot = _WIDTH - _LABEL - 50
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>'
    ]
    for i, name in enumerate(names):
        ly = 4 + 18 * i
        parts.append(
            f'<rect class="s{i % 4}" x="{_LABEL}" y="{ly}" width="12" height="12"/>'
            f'<text x="{_LABEL + 18}" y="{ly + 11}">{_e(name)}</text>'
        )
    for tick in range(5):
        x: float = _LABEL + plot * tick / 4
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{legend_h}" x2="{x:.1f}" y2="{height - 18}"/>'
            f'<text class="tick" x="{x:.1f}" y="{height - 4}" text-anchor="middle">{top * tick / 4:g}</text>'
        )
    for ci, category in enumerate(categories):
        y0 = legend_h + ci * group + _GAP / 2
        parts.append(f'<text x="{_LABEL - 6}" y="{y0 + group / 2}" text-anchor="end">{_e(category)}</text>')
        for si, name in enumerate(names):
            value = series[name].get(category)
            if value is None:
                continue
            y = y0 + si * _BAR
            w: float = plot * max(0.0, min(value, top)) / top
            parts.append(
                f'<rect class="s{si % 4}" x="{_LABEL}" y="{y:.1f}" width="{w:.1f}" height="{_BAR - 2}">'
                f"<title>{_e(name)} · {_e(category)}: {_f(value)}</title></rect>"
                f'<text class="val" x="{_LABEL + w + 4:.1f}" y="{y + _BAR - 4:.1f}">{_f(value)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def pairwise_category_rates(
    rows: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]], categories: Mapping[str, str]
) -> dict[str, dict[str, float | None]]:
    """Per pair and category, ``model_a``'s win rate (ties counting half), games with errors left out."""
    out: dict[str, dict[str, float | None]] = {}
    for p in pairs:
        a, b = p["model_a"], p["model_b"]
        tally: dict[str, list[float]] = {}
        for r in rows:
            if "model_1" not in r or {r["model_1"], r["model_2"]} != {a, b}:
                continue
            outcome = pair_outcome(r, a)
            if outcome != "error":
                point = 1.0 if outcome == "win" else 0.0 if outcome == "loss" else 0.5
                tally.setdefault(categories.get(str(r["question_id"]), "?"), []).append(point)
        out[f"{a} vs {b}"] = {c: sum(v) / len(v) for c, v in sorted(tally.items())}
    return out


def _interval_svg(rate: float | None, ci: Sequence[float] | None) -> str:
    if rate is None:
        return ""
    w = 160
    lo, hi = (ci or [rate, rate])[0], (ci or [rate, rate])[1]
    return (
        f'<svg class="ci" viewBox="0 0 {w} 14" width="{w}" height="14" role="img" '
        f'aria-label="win rate {rate:.3f}, 95% interval {lo:.3f} to {hi:.3f}" xmlns="http://www.w3.org/2000/svg">'
        f'<line class="grid" x1="{w / 2}" y1="0" x2="{w / 2}" y2="14"/>'
        f'<line class="range" x1="{lo * w:.1f}" y1="7" x2="{hi * w:.1f}" y2="7"/>'
        f'<circle class="s0" cx="{rate * w:.1f}" cy="7" r="4"/></svg>'
    )


def _pairwise_html(pairs: Sequence[Mapping[str, Any]]) -> str:
    if not pairs:
        return ""
    head = (
        "<tr><th>Model A</th><th>Model B</th><th>Win</th><th>Loss</th><th>Tie</th><th>Win rate (95% CI)</th>"
        "<th></th><th>Inconsistent</th><th>Unparsed</th><th>Errors</th></tr>"
    )
    body = "".join(
        f"<tr><td>{_e(p['model_a'])}</td><td>{_e(p['model_b'])}</td><td>{p['win']}</td><td>{p['loss']}</td>"
        f"<td>{p['tie']}</td><td>{_f(p['win_rate'], 3)} "
        f"{_ci(p['ci95'], 3)}</td>"
        f"<td>{_interval_svg(p['win_rate'], p['ci95'])}</td><td>{p.get('inconsistent', 0)}</td>"
        f"<td>{p.get('unparsed', 0)}</td><td>{p.get('errors', 0)}</td></tr>"
        for p in pairs
    )
    note = (
        "<p class='note'>A win counts only when the judge prefers the same answer in both orders; a tie "
        "verdict, or two orders that disagree (inconsistent), count as a tie. The interval is a bootstrap over "
        "questions and turns.</p>"
    )
    return f'<div class="scroll"><table class="index"><thead>{head}</thead><tbody>{body}</tbody></table></div>{note}'


def _scores_html(models: Mapping[str, Mapping[str, Any]]) -> str:
    if not models:
        return ""
    head = "<tr><th>Model</th><th>Score</th><th>Turn 1</th><th>Turn 2</th><th>95% CI</th><th>n</th><th>Unparsed</th><th>Errors</th></tr>"
    body = "".join(
        f"<tr><td>{_e(name)}</td><td>{_f(m['score'])}</td><td>{_f(m['turns'][0])}</td><td>{_f(m['turns'][1])}</td>"
        f"<td>{_ci(m.get('ci95'), 2)}</td><td>{m['n']}</td>"
        f"<td>{m['unparsed']}</td><td>{m.get('errors', 0)}</td></tr>"
        for name, m in models.items()
    )
    return f'<div class="scroll"><table class="index"><thead>{head}</thead><tbody>{body}</tbody></table></div>'


def judge_sections(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], questions: Sequence[Question]) -> str:
    """The judge's summary section: scores or pairwise results, and the per-category chart."""
    categories = {str(q.question_id): q.category for q in questions}
    models = summary.get("models") or {}
    pairs = summary.get("pairwise") or []
    if models:
        series = {name: dict(m["categories"]) for name, m in models.items()}
        chart = category_chart_svg(series, top=10, title="Judge score per category")
    else:
        chart = category_chart_svg(
            pairwise_category_rates(rows, pairs, categories), top=1, title="Win rate per category (ties count half)"
        )
    judge = f"{summary.get('judge_model') or 'judge'} ({summary.get('mode')})"
    return (
        f'<section class="judge"><h2>Judge: {_e(judge)}</h2>{_scores_html(models)}{_pairwise_html(pairs)}'
        f"<h3>Per category</h3>{chart or '<p>No valid judgments yet.</p>'}</section>"
    )


def _verdict(winner: str, row: Mapping[str, Any]) -> str:
    return str(row.get(winner, winner))


def turn_judgments_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every judgment of one question's turn: single grades, or both pairwise games and the outcome."""
    parts = []
    for r in rows:
        judge = " / ".join(str(x) for x in r.get("judge") or [])
        if "model" in r:
            score = r.get("score")
            bad = "error" in r or score == -1
            label = "API error" if "error" in r else "unparsed (-1)" if score == -1 else f"score {score}"
            cls = ' class="bad"' if bad else ""
            parts.append(
                f'<div class="judgment"><div class="role">{_e(judge)} on {_e(r["model"])}: '
                f"<span{cls}>{_e(label)}</span></div>"
                f'<div class="text">{_e(r.get("error") or r.get("judgment", ""))}</div></div>'
            )
        else:
            m1 = str(r["model_1"])
            outcome = pair_outcome(r, m1)
            text = {
                "win": f"{m1} wins",
                "loss": f"{r['model_2']} wins",
                "tie": "tie",
                "inconsistent": "tie (the two orders disagree)",
                "error": "no verdict (unparsed or API error)",
            }[outcome]
            games = "".join(
                f"<details><summary>Game {g}: A = {_e(a)}, B = {_e(b)} · verdict: "
                f"{_e(_verdict(str(r.get(f'g{g}_winner')), r))}</summary>"
                f'<div class="text">{_e(r.get(f"g{g}_judgment", ""))}</div></details>'
                for g, a, b in ((1, m1, r["model_2"]), (2, r["model_2"], m1))
            )
            cls = ' class="bad"' if outcome == "error" else ""
            parts.append(
                f'<div class="judgment"><div class="role">{_e(judge)}: <span{cls}>{_e(text)}</span></div>{games}</div>'
            )
    return "".join(parts)


def _by_turn(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    out: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault((str(r["question_id"]), int(r.get("turn", 1))), []).append(r)
    return out


def render_judge_report(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    questions: Sequence[Question],
    answers: Mapping[str, Mapping[Any, BaseAnswer]],
    *,
    title: str = "DiffPO judge report",
) -> str:
    """The ``diffpo judge`` report: summary, chart, then each turn's answers with their judgments."""
    grouped = _by_turn(rows)
    articles = []
    for q in questions:
        for turn in (1, 2):
            judged = grouped.get((str(q.question_id), turn))
            if not judged:
                continue
            asks = "".join(
                f'<div class="ask"><div class="role">user · turn {i + 1}</div><div class="text">{_e(t)}</div></div>'
                for i, t in enumerate(q.turns[:turn])
            )
            cols = "".join(
                f'<div class="col"><h4>{_e(name)}</h4>'
                f'<div class="text">{_e(a[q.question_id].turns[turn - 1] if q.question_id in a else "")}</div></div>'
                for name, a in answers.items()
            )
            articles.append(
                f'<article class="turn" id="q{_e(q.question_id)}-t{turn}"><h3>Question {_e(q.question_id)} · turn '
                f"{turn} <span class=tag>{_e(q.category)}</span></h3>{asks}"
                f'<div class="cols">{cols}</div>{turn_judgments_html(judged)}</article>'
            )
    info = f"{', '.join(answers)} · generated {time.strftime('%Y-%m-%d %H:%M')}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{_e(title)}</h1><p class='note'>{_e(info)}</p></header>"
        f"{judge_sections(summary, rows, questions)}<section><h2>Judgments</h2>"
        f"{''.join(articles) or '<p>No judgments yet.</p>'}</section></main></body></html>\n"
    )


def write_judge_report(
    report: str | os.PathLike[str],
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    questions: Sequence[Question],
    answers: Mapping[str, Mapping[Any, BaseAnswer]],
) -> None:
    """Write :func:`render_judge_report` to ``report``."""
    path = Path(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_judge_report(summary, rows, questions, answers), encoding="utf-8")
