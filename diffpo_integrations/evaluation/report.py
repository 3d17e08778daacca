"""The HTML report of an evaluation: draft and aligned answer side by side, differences highlighted.

One self-contained file (inline CSS, no script, nothing fetched from the network), readable on a
phone (the two columns stack below 700 px) and on a desktop. Every text from the data is
HTML-escaped, so a draft holding ``<script>`` shows as text.
"""

from __future__ import annotations

import html
import os
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffpo_integrations.evaluation.diff import WordDiff, word_diff
from diffpo_integrations.evaluation.mtbench import (
    AlignedRecord,
    BaseAnswer,
    Question,
    load_answers,
    load_questions,
    read_records,
    turn_messages,
)
from diffpo_integrations.evaluation.report_style import CSS

__all__ = ["ReportRow", "collect_rows", "render_report", "summarize", "write_report"]


@dataclass(frozen=True)
class ReportRow:
    """One aligned turn as the report shows it."""

    question_id: int | str
    category: str
    turn: int
    """0-based turn index."""
    messages: list[dict[str, str]]
    """The conversation the draft answers (its last message is the user turn)."""
    draft: str
    aligned: str
    meta: dict[str, Any]
    """``AlignResult.metadata()`` recorded for the turn."""
    diff: WordDiff = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "diff", word_diff(self.draft, self.aligned))

    @property
    def failed(self) -> bool:
        """Whether the alignment failed (the answer is the draft, unaligned)."""
        return not self.meta.get("aligned", True)


def collect_rows(
    records: Sequence[AlignedRecord],
    questions: Mapping[int | str, Question] | None = None,
    base: Mapping[int | str, BaseAnswer] | None = None,
) -> list[ReportRow]:
    """Turn output lines into report rows, rebuilding each turn's conversation.

    The conversation of an MT-bench turn comes from the question's user turns and the base model's
    earlier answers (``base`` when given, else the drafts recorded in the line); an ``--input`` row
    carries its own messages.
    """
    rows: list[ReportRow] = []
    for record in sorted(records, key=lambda r: (str(type(r.get("question_id"))), r.get("question_id"))):
        qid = record["question_id"]
        answers: list[str] = list(record["choices"][0]["turns"])
        extra = record.get("diffpo") or {}
        metas: list[dict[str, Any] | None] = list(extra.get("turns") or [None] * len(answers))
        question = (questions or {}).get(qid)
        base_turns = list(base[qid].turns) if base and qid in base else []
        # An unaligned turn holds the base answer itself; an aligned one recorded its draft.
        recorded = [m["draft"] if m else a for m, a in zip(metas, answers, strict=False)]
        earlier = base_turns or recorded
        category = str(record.get("category") or (question.category if question else ""))
        for i, meta in enumerate(metas):
            if meta is None or i >= len(answers):
                continue
            if "messages" in extra:
                messages = list(extra["messages"])
            elif question is not None and i < len(question.turns):
                messages = turn_messages(question.turns, earlier, i)
            else:
                messages = [{"role": "user", "content": "(question not found: pass --questions)"}]
            draft = str(meta.get("draft") or (base_turns[i] if i < len(base_turns) else ""))
            rows.append(ReportRow(qid, category, i, messages, draft, answers[i], dict(meta)))
    return rows


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(rows: Sequence[ReportRow]) -> dict[str, Any]:
    """The report's summary figures (also useful on their own, e.g. in CI logs)."""
    ok = [r for r in rows if not r.failed]
    passes = [r.meta["details"]["forward_passes"] for r in ok if "forward_passes" in (r.meta.get("details") or {})]
    generated = [int(r.meta.get("generated_tokens") or 0) for r in ok]
    latencies = [float(r.meta.get("latency_s") or 0.0) for r in rows]
    return {
        "questions": len({r.question_id for r in rows}),
        "turns": len(rows),
        "aligned": len(ok),
        "failed": len(rows) - len(ok),
        "errors": dict(Counter((r.meta.get("error") or "").split(":")[0] for r in rows if r.failed)),
        "kept_share_mean": statistics.fmean([r.diff.kept_share for r in ok]) if ok else None,
        "kept_prefix_tokens_mean": statistics.fmean([int(r.meta.get("kept_prefix_tokens") or 0) for r in ok])
        if ok
        else None,
        "generated_tokens_mean": statistics.fmean(generated) if generated else None,
        "length_change_median": _median([r.diff.length_change for r in ok]),
        "draft_words_mean": statistics.fmean([r.diff.draft_words for r in ok]) if ok else None,
        "aligned_words_mean": statistics.fmean([r.diff.aligned_words for r in ok]) if ok else None,
        "latency_median_s": _median(latencies),
        "latency_p90_s": statistics.quantiles(latencies, n=10)[-1] if len(latencies) >= 2 else _median(latencies),
        "forward_passes_total": sum(passes) if passes else None,
        "forward_passes_per_token": sum(passes) / max(1, sum(generated)) if passes else None,
        "finish_reasons": dict(Counter(str(r.meta.get("finish_reason")) for r in rows)),
        "endpoints": sorted({str(r.meta.get("endpoint")) for r in rows if r.meta.get("endpoint")}),
    }


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.0f}%" if signed else f"{value * 100:.0f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _segments(segments: Sequence[Any]) -> str:
    tags = {"same": "span", "del": "del", "ins": "ins"}
    return "".join(f"<{tags[s.kind]}>{_e(s.text)}</{tags[s.kind]}>" for s in segments)


def _anchor(row: ReportRow) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in str(row.question_id))
    return f"q{safe}-t{row.turn + 1}"


def _summary_html(s: dict[str, Any]) -> str:
    cards = [
        ("Questions", str(s["questions"])),
        ("Turns aligned", f"{s['aligned']} / {s['turns']}"),
        ("Failures", str(s["failed"])),
        ("Draft words kept", _pct(s["kept_share_mean"])),
        ("Kept prefix", f"{_num(s['kept_prefix_tokens_mean'])} tokens"),
        ("Generated", f"{_num(s['generated_tokens_mean'], 0)} tokens"),
        ("Length change (median)", _pct(s["length_change_median"], signed=True)),
        ("Latency median / p90", f"{_ms(s['latency_median_s'])} / {_ms(s['latency_p90_s'])}"),
    ]
    if s["forward_passes_total"] is not None:
        cards.append(
            ("Forward passes", f"{s['forward_passes_total']} ({_num(s['forward_passes_per_token'], 2)} per token)")
        )
    items = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in cards
    )
    extra = []
    if s["errors"]:
        extra.append("Errors: " + ", ".join(f"{_e(k)}: {v}" for k, v in s["errors"].items()))
    extra.append("Finish reasons: " + ", ".join(f"{_e(k)}: {v}" for k, v in s["finish_reasons"].items()))
    if s["endpoints"]:
        extra.append("Aligner: " + ", ".join(_e(x) for x in s["endpoints"]))
    notes = "".join(f"<p class='note'>{x}</p>" for x in extra)
    return f'<section class="summary"><h2>Summary</h2><div class="cards">{items}</div>{notes}</section>'


def _index_html(rows: Sequence[ReportRow]) -> str:
    body = []
    for r in rows:
        status = '<span class="bad">failed</span>' if r.failed else _e(r.meta.get("finish_reason", ""))
        body.append(
            f'<tr><td><a href="#{_anchor(r)}">{_e(r.question_id)}</a></td><td>{_e(r.category)}</td>'
            f"<td>{r.turn + 1}</td><td>{_pct(r.diff.kept_share)}</td><td>{_pct(r.diff.length_change, True)}</td>"
            f"<td>{_ms(float(r.meta.get('latency_s') or 0))}</td><td>{status}</td></tr>"
        )
    head = "<tr><th>Question</th><th>Category</th><th>Turn</th><th>Kept</th><th>Δ length</th><th>Latency</th><th>Finish</th></tr>"
    return (
        '<section><h2>Index</h2><div class="scroll"><table class="index">'
        f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _turn_html(row: ReportRow, judged: str = "") -> str:
    *earlier, current = row.messages
    history = ""
    if earlier:
        msgs = "".join(
            f'<div class="msg {_e(m.get("role", ""))}"><div class="role">{_e(m.get("role", ""))}</div>'
            f'<div class="text">{_e(m.get("content", ""))}</div></div>'
            for m in earlier
        )
        history = f"<details><summary>Conversation so far ({len(earlier)} messages)</summary>{msgs}</details>"
    meta = row.meta
    details = meta.get("details") or {}
    facts = [
        f"kept prefix: {_e(meta.get('kept_prefix_tokens', 0))} tokens",
        f"generated: {_e(meta.get('generated_tokens', 0))} tokens",
        f"draft words kept: {_pct(row.diff.kept_share)}",
        f"length: {row.diff.draft_words} → {row.diff.aligned_words} words ({_pct(row.diff.length_change, True)})",
        f"latency: {_ms(float(meta.get('latency_s') or 0))}",
        f"finish: {_e(meta.get('finish_reason', ''))}",
    ]
    if "forward_passes" in details:
        facts.append(f"forward passes: {_e(details['forward_passes'])}")
    error = f'<p class="bad">Alignment failed, draft kept: {_e(meta.get("error"))}</p>' if row.failed else ""
    return (
        f'<article class="turn" id="{_anchor(row)}">'
        f"<h3>Question {_e(row.question_id)} · turn {row.turn + 1}"
        f"{f' <span class=tag>{_e(row.category)}</span>' if row.category else ''}</h3>"
        f'{history}<div class="ask"><div class="role">user</div><div class="text">{_e(current.get("content", ""))}</div></div>'
        f'{error}<div class="cols">'
        f'<div class="col"><h4>Draft (base model)</h4><div class="text">{_segments(row.diff.draft)}</div></div>'
        f'<div class="col"><h4>Aligned (DiffPO)</h4><div class="text">{_segments(row.diff.aligned)}</div></div>'
        f'</div><p class="facts">{" · ".join(facts)}</p>{judged}</article>'
    )


def render_report(
    rows: Sequence[ReportRow],
    *,
    title: str = "DiffPO evaluation",
    info: str = "",
    judge: str = "",
    judgments: Mapping[tuple[str, int], str] | None = None,
) -> str:
    """The report as one HTML document.

    Args:
        rows: from :func:`collect_rows`.
        title: the page title.
        info: a line under the title (file names, model ids); escaped here.
        judge: the judge's summary section (HTML from
            :func:`~diffpo_integrations.evaluation.judge_report.judge_sections`), shown under the summary.
        judgments: per ``(question_id as str, 0-based turn)``, the HTML of that turn's judgments, shown
            under its answers.
    """
    summary = summarize(rows)
    legend = (
        '<p class="legend">Word-level differences: <span>kept</span> · <del>removed from the draft</del> · '
        "<ins>inserted by the aligner</ins></p>"
    )
    judged = judgments or {}
    turns = (
        "".join(_turn_html(r, judged.get((str(r.question_id), r.turn), "")) for r in rows)
        or "<p>No aligned turns in this file yet.</p>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{_e(title)}</h1><p class='note'>{_e(info)}</p></header>"
        f"{_summary_html(summary)}{judge}{legend}{_index_html(rows)}<section><h2>Answers</h2>{turns}</section>"
        "</main></body></html>\n"
    )


def write_report(
    report: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    questions: str | os.PathLike[str] | None = None,
    answers: str | os.PathLike[str] | None = None,
    title: str = "DiffPO evaluation",
    judgments: str | os.PathLike[str] | None = None,
    judge_summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read an output file (and optionally the questions and base answers), write the HTML report.

    With ``judgments`` (a judgments file of ``diffpo judge``) and its ``judge_summary``, the report also
    shows the judge's figures, its per-category chart, and each turn's judgments under its answers.

    Returns:
        The summary figures.
    """
    records = read_records(out)
    qmap = {q.question_id: q for q in load_questions(questions)} if questions else None
    base = load_answers(answers) if answers else None
    rows = collect_rows(records, qmap, base)
    models = sorted({str(r.get("model_id")) for r in records})
    info = f"{Path(out).name}: {', '.join(models) or 'no answers yet'} · generated {time.strftime('%Y-%m-%d %H:%M')}"
    judge, per_turn = "", {}
    if judgments is not None and judge_summary is not None:
        from diffpo_integrations.evaluation.judge_report import judge_sections, turn_judgments_html

        judged = read_records(judgments)
        judge = judge_sections(judge_summary, judged, list(qmap.values()) if qmap else [])
        grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for j in judged:
            grouped.setdefault((str(j["question_id"]), int(j.get("turn", 1)) - 1), []).append(j)
        per_turn = {key: turn_judgments_html(js) for key, js in grouped.items()}
    page = render_report(rows, title=title, info=info, judge=judge, judgments=per_turn)
    Path(report).write_text(page, encoding="utf-8")
    return summarize(rows)
