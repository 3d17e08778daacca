"""Summary figures of a judgments file, as FastChat's ``show_result.py`` computes them, with bootstrap intervals.

Single mode: a model's score is the mean of its valid grades (score -1, FastChat's mark of an
unreadable judgment, is left out and counted as ``unparsed``); per turn, per category, and overall
(the mean over all valid grades of both turns, FastChat's "Average").

Pairwise mode: games with an ``error`` verdict in either order are left out (and counted); a game
is a win only when both orders name the same winner; a ``tie`` verdict or two verdicts that disagree
count as a tie (FastChat counts position-inconsistent games as ties; ``inconsistent`` says how
many). ``win_rate`` is wins over games (FastChat's ``win_rate``), ``win_rate_adjusted`` counts a tie
as half a win. ``ci95`` is a percentile bootstrap interval over questions and turns (1000 resamples,
seeded, so a summary is reproducible).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from diffpo_integrations.evaluation.judging import is_api_error, judgment_key
from diffpo_integrations.evaluation.mtbench import Question

__all__ = ["bootstrap_ci", "format_summary", "latest_rows", "pair_outcome", "summarize_judgments"]

_RESAMPLES = 1000


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[Sequence[float]], float] = statistics.fmean,
    *,
    resamples: int = _RESAMPLES,
    seed: int = 0,
) -> list[float] | None:
    """A 95% percentile-bootstrap interval of ``statistic`` over ``values``; ``None`` for no values.

    Example:
        >>> bootstrap_ci([1.0, 1.0, 1.0])
        [1.0, 1.0]
    """
    if not values:
        return None
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    cuts = statistics.quantiles(stats, n=40, method="inclusive")
    return [round(cuts[0], 4), round(cuts[-1], 4)]


def latest_rows(rows: Sequence[Mapping[str, Any]], judge_model: str | None = None) -> list[Mapping[str, Any]]:
    """One line per judgment (the last one when a file holds several), of one judge model if given."""
    by_key: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for row in rows:
        if judge_model is not None and (row.get("judge") or [None])[0] != judge_model:
            continue
        by_key[judgment_key(row)] = row
    return list(by_key.values())


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _single(rows: Sequence[Mapping[str, Any]], categories: Mapping[str, str]) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name in dict.fromkeys(str(r["model"]) for r in rows):
        mine = [r for r in rows if r["model"] == name]
        errors = [r for r in mine if is_api_error(r)]
        valid = [r for r in mine if not is_api_error(r) and r.get("score") != -1]
        scores = [float(r["score"]) for r in valid]
        per_cat: dict[str, list[float]] = {}
        for r in valid:
            per_cat.setdefault(categories.get(str(r["question_id"]), ""), []).append(float(r["score"]))
        models[name] = {
            "score": _mean(scores),
            "turns": [_mean([float(r["score"]) for r in valid if r.get("turn") == t]) for t in (1, 2)],
            "n": len(valid),
            "categories": {c: _mean(v) for c, v in sorted(per_cat.items()) if c},
            "unparsed": len(mine) - len(valid) - len(errors),
            "errors": len(errors),
            "ci95": bootstrap_ci(scores),
        }
    return models


def pair_outcome(row: Mapping[str, Any], model_a: str) -> str:
    """A pairwise line from ``model_a``'s side: ``win``, ``loss``, ``tie``, ``inconsistent`` or ``error``."""
    g1, g2 = row.get("g1_winner"), row.get("g2_winner")
    if g1 == "error" or g2 == "error":
        return "error"
    if g1 != g2:
        return "inconsistent"
    if g1 == "tie":
        return "tie"
    winner = row["model_1"] if g1 == "model_1" else row["model_2"]
    return "win" if winner == model_a else "loss"


def _pairs_seen(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for r in rows:
        pair = (str(r["model_1"]), str(r["model_2"]))
        if pair not in pairs and pair[::-1] not in pairs:
            pairs.append(pair)
    return pairs


def _pairwise(rows: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]] | None) -> list[dict[str, Any]]:
    out = []
    for a, b in pairs if pairs is not None else _pairs_seen(rows):
        games = [r for r in rows if {r["model_1"], r["model_2"]} == {a, b}]
        outcomes = [pair_outcome(r, a) for r in games]
        played = [o for o in outcomes if o != "error"]
        win, loss = played.count("win"), played.count("loss")
        tie = len(played) - win - loss
        n = len(played)
        out.append(
            {
                "model_a": a,
                "model_b": b,
                "win": win,
                "loss": loss,
                "tie": tie,
                "win_rate": round(win / n, 4) if n else None,
                "ci95": bootstrap_ci([1.0 if o == "win" else 0.0 for o in played]),
                "win_rate_adjusted": round((win + 0.5 * tie) / n, 4) if n else None,
                "n": n,
                "inconsistent": outcomes.count("inconsistent"),
                "unparsed": sum(1 for r in games if not is_api_error(r) and pair_outcome(r, a) == "error"),
                "errors": sum(1 for r in games if is_api_error(r)),
            }
        )
    return out


def summarize_judgments(
    rows: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    judge_model: str | None = None,
    questions: Sequence[Question] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The ``--summary`` figures of judgment lines.

    Args:
        rows: lines of a judgments file (a later line for the same judgment wins).
        mode: ``single`` or ``pairwise``.
        judge_model: only this judge's lines (default: all; named in the summary when they share one).
        questions: give each question's category, for the per-category scores.
        pairs: pairwise: the ``(model_a, model_b)`` pairs, win/loss/tie from ``model_a``'s side
            (default: the pairs in the file, ``model_1`` first).

    Returns:
        ``{"judge_model", "mode", "models": {name: {"score", "turns", "n", "categories", "unparsed",
        "errors", "ci95"}}, "pairwise": [{"model_a", "model_b", "win", "loss", "tie", "win_rate", "ci95",
        "win_rate_adjusted", "n", "inconsistent", "unparsed", "errors"}]}``; in pairwise mode ``models``
        is empty, in single mode ``pairwise`` is.
    """
    latest = latest_rows(rows, judge_model)
    if judge_model is None:
        judges = {str((r.get("judge") or ["?"])[0]) for r in latest}
        judge_model = judges.pop() if len(judges) == 1 else None
    categories = {str(q.question_id): q.category for q in questions or []}
    if mode == "single":
        single_rows = [r for r in latest if "model" in r]
        return {"judge_model": judge_model, "mode": mode, "models": _single(single_rows, categories), "pairwise": []}
    pair_rows = [r for r in latest if "model_1" in r]
    return {"judge_model": judge_model, "mode": mode, "models": {}, "pairwise": _pairwise(pair_rows, pairs)}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: Sequence[float] | None, digits: int = 2) -> str:
    return "n/a" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    lines = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]
    return "\n".join(line.rstrip() for line in lines)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as the plain-text tables ``diffpo judge`` prints."""
    parts = [f"judge: {summary.get('judge_model') or 'any'} ({summary['mode']})"]
    models = summary.get("models") or {}
    if models:
        body = [
            [
                name,
                _fmt(m["score"]),
                _fmt(m["turns"][0]),
                _fmt(m["turns"][1]),
                str(m["n"]),
                str(m["unparsed"]),
                str(m.get("errors", 0)),
                _ci(m.get("ci95")),
            ]
            for name, m in sorted(models.items(), key=lambda kv: -(kv[1]["score"] or -1))
        ]
        parts.append(_table(["model", "score", "turn 1", "turn 2", "n", "unparsed", "errors", "95% CI"], body))
        cats = sorted({c for m in models.values() for c in m["categories"]})
        if cats:
            names = list(models)
            rows = [[c, *(_fmt(models[n]["categories"].get(c)) for n in names)] for c in cats]
            parts.append(_table(["category", *names], rows))
    pairs = summary.get("pairwise") or []
    if pairs:
        body = [
            [
                f"{p['model_a']} vs {p['model_b']}",
                str(p["win"]),
                str(p["loss"]),
                str(p["tie"]),
                _fmt(p["win_rate"], 3),
                _ci(p["ci95"], 3),
                _fmt(p.get("win_rate_adjusted"), 3),
                str(p.get("inconsistent", 0)),
                str(p.get("unparsed", 0)),
                str(p.get("errors", 0)),
            ]
            for p in pairs
        ]
        header = ["pair", "win", "loss", "tie", "win rate", "95% CI", "adjusted", "inconsistent", "unparsed", "errors"]
        parts.append(_table(header, body))
    return "\n\n".join(parts)
