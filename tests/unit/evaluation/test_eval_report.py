"""The HTML report: differences, summary figures, escaping, self-containment, and the report-only CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from evaluation_helpers import read_lines

from diffpo_integrations.backends.testing import MockTGIServer
from diffpo_integrations.cli import main
from diffpo_integrations.evaluation import collect_rows, render_report, summarize, word_diff
from diffpo_integrations.evaluation.mtbench import Question

SCRIPT_DRAFT = "Sure! <script>alert('x')</script> & more text here."


def _record(
    qid: int, turns: list[str], metas: list[dict[str, Any] | None], category: str = "writing"
) -> dict[str, Any]:
    return {
        "question_id": qid,
        "answer_id": "a" * 22,
        "model_id": "base-diffpo",
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": 0.0,
        "category": category,
        "diffpo": {"base_model_id": "base", "turns": metas},
    }


def _meta(draft: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "draft": draft,
        "kept_prefix": draft[:5],
        "kept_prefix_tokens": 3,
        "generated_tokens": 10,
        "finish_reason": "eos_token",
        "aligned": True,
        "error": None,
        "latency_s": 0.25,
        "endpoint": "http://x",
        "timings": {},
        "details": {},
    }
    meta.update(extra)
    return meta


def test_word_diff_kinds_and_figures() -> None:
    d = word_diff("The cat sat on the mat.", "The cat sat quietly on the mat.")
    assert [(s.kind, s.text) for s in d.draft] == [("same", "The cat sat on the mat.")]
    assert ("ins", "quietly ") in [(s.kind, s.text) for s in d.aligned]
    assert (d.kept_share, d.draft_words, d.aligned_words) == (1.0, 6, 7)
    assert round(d.length_change, 3) == round(7 / 6 - 1, 3)
    e = word_diff("one two three four", "one four")
    assert [s.kind for s in e.draft] == ["same", "del", "same"]
    assert e.kept_share == 0.5
    assert "".join(s.text for s in e.draft) == "one two three four"  # renders the text exactly
    assert word_diff("", "x").kept_share == 1.0


def test_conversation_is_rebuilt_from_questions() -> None:
    q = Question(7, "math", ["first question", "second question"])
    records = [_record(7, ["aligned one", "aligned two"], [_meta("base one"), _meta("base two")])]
    rows = collect_rows(records, {7: q})
    assert [r.turn for r in rows] == [0, 1]
    assert [m["content"] for m in rows[1].messages] == ["first question", "base one", "second question"]
    assert rows[1].draft == "base two"
    # An unaligned turn holds the base answer itself, which the next turn's conversation uses.
    rows = collect_rows([_record(7, ["base one", "aligned two"], [None, _meta("base two")])], {7: q})
    assert [(r.turn, [m["content"] for m in r.messages]) for r in rows] == [
        (1, ["first question", "base one", "second question"])
    ]


def test_report_escapes_and_is_self_contained() -> None:
    q = Question(1, "coding", ["Write <b>bold</b> HTML?"])
    records = [_record(1, ["Sure! Here is safe text & more text here."], [_meta(SCRIPT_DRAFT)])]
    page = render_report(collect_rows(records, {1: q}), info="<i>run</i>")
    assert "<script>" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Write &lt;b&gt;bold&lt;/b&gt; HTML?" in page
    assert "&lt;i&gt;run&lt;/i&gt;" in page
    # Nothing is fetched: no external stylesheet, script, image, font or import.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page
    assert "url(" not in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "@media (max-width:700px)" in page
    assert "<del>" in page
    assert "<ins>" in page


def test_summary_figures() -> None:
    q = {i: Question(i, "stem", ["q"]) for i in (1, 2, 3)}
    records = [
        _record(1, ["kept words and new ones"], [_meta("kept words", details={"forward_passes": 4})]),
        _record(2, ["alpha beta"], [_meta("alpha beta gamma delta", details={"forward_passes": 6}, latency_s=0.5)]),
        _record(
            3,
            ["the draft"],
            [_meta("the draft", aligned=False, finish_reason="error", error="OverloadedError: busy", latency_s=1.0)],
        ),
    ]
    s = summarize(collect_rows(records, q))
    assert (s["questions"], s["turns"], s["aligned"], s["failed"]) == (3, 3, 2, 1)
    assert s["errors"] == {"OverloadedError": 1}
    assert s["kept_share_mean"] == 0.75  # 2/2 and 2/4 draft words kept
    assert s["forward_passes_total"] == 10
    assert s["forward_passes_per_token"] == 0.5
    assert s["latency_median_s"] == 0.5
    assert s["finish_reasons"] == {"eos_token": 2, "error": 1}
    page = render_report(collect_rows(records, q))
    assert "Forward passes" in page
    assert "Alignment failed, draft kept: OverloadedError: busy" in page


def test_report_from_cli(tmp_path: Path, server: MockTGIServer) -> None:
    out, report = tmp_path / "aligned.jsonl", tmp_path / "report.html"
    base = ["--answers", "mistral-it-vanilla", "--out", str(out)]
    assert main(["eval", *base, "--limit", "2", "--aligner-url", "http://mock-tgi", "--no-progress"]) == 0
    assert main(["eval", "--report-only", *base, "--report", str(report)]) == 0
    page = report.read_text(encoding="utf-8")
    first = read_lines(out)[0]
    assert "Question 81 · turn 2" in page
    assert first["choices"][0]["turns"][0].split("\n")[0][:30] in page
    assert "Turns aligned" in page
    assert page.count('class="turn"') == 4
    # Without --report, --report-only writes next to --out.
    assert main(["eval", "--report-only", "--out", str(out)]) == 0
    assert out.with_suffix(".html").exists()
