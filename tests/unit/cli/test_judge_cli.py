"""``diffpo judge`` and ``diffpo eval --judge-url`` against a scripted judge on loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffpo_integrations.backends.testing import mock_tgi
from diffpo_integrations.cli import main
from diffpo_integrations.data import mt_bench_questions_path
from diffpo_integrations.evaluation import load_questions
from diffpo_integrations.evaluation.judge_testing import ScriptedJudge, serve_judge


def sides(user: str) -> tuple[str, str]:
    """Assistant A's and assistant B's parts of a pairwise prompt (one-turn or multi-turn)."""
    b = user.index("The Start of Assistant B")
    return user[user.index("The Start of Assistant A") : b], user[b:]


def grade(system: str, user: str) -> str:
    """Grades the 'good' model 8 and anything else 5; in pairwise prompts prefers the good answer."""
    if "[[A]]" in system:
        a, b = sides(user)
        if "<good" in a:
            return "A is better. [[A]]"
        if "<good" in b:
            return "B is better. [[B]]"
        return "Same. [[C]]"
    return "Good. Rating: [[8]]" if "<good" in user else "Weak. Rating: [[5]]"


@pytest.fixture
def judge() -> ScriptedJudge:
    return ScriptedJudge(grade)


@pytest.fixture
def url(judge: ScriptedJudge) -> Iterator[str]:
    with serve_judge(judge) as base:
        yield base


def write_answers(path: Path, name: str, ids: list[int]) -> Path:
    rows = [
        {"question_id": i, "model_id": name, "choices": [{"index": 0, "turns": [f"<{name} {i}.1>", f"<{name} {i}.2>"]}]}
        for i in ids
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def judge_args(url: str, out: Path, *extra: str) -> list[str]:
    return ["judge", "--judge-url", url, "--judge-model", "scripted", "--out", str(out), "--no-progress", *extra]


def test_single_mode_writes_judgments_summary_table_and_report(
    tmp_path: Path, judge: ScriptedJudge, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_answers(tmp_path / "good.jsonl", "good", [81, 82])
    bad = write_answers(tmp_path / "b.jsonl", "bad", [81, 82])
    out, summary_path, report = tmp_path / "j.jsonl", tmp_path / "s.json", tmp_path / "r.html"
    extra = ["--answers", str(good), "--answers", f"bad={bad}", "--limit", "2"]
    status = main(judge_args(url, out, *extra, "--summary", str(summary_path), "--report", str(report)))
    captured = capsys.readouterr()
    assert status == 0
    rows = read(out)
    assert len(rows) == 8
    assert {(r["model"], r["question_id"], r["turn"]) for r in rows} == {
        (m, q, t) for m in ("good", "bad") for q in (81, 82) for t in (1, 2)
    }
    assert all(r["judge"] == ["scripted", "single-v1" if r["turn"] == 1 else "single-v1-multi-turn"] for r in rows)
    assert len(judge.requests) == 8

    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["judge_model"] == "scripted"
    assert summary["mode"] == "single"
    assert summary["pairwise"] == []
    g, b = summary["models"]["good"], summary["models"]["bad"]
    assert (g["score"], g["turns"], g["n"], g["categories"], g["unparsed"]) == (8.0, [8.0, 8.0], 4, {"writing": 8.0}, 0)
    assert (b["score"], b["turns"], b["n"], b["categories"], b["unparsed"]) == (5.0, [5.0, 5.0], 4, {"writing": 5.0}, 0)
    assert g["ci95"] == [8.0, 8.0]

    assert "judge: scripted (single)" in captured.out
    assert re.search(r"^good\s+8\.00\s+8\.00\s+8\.00\s+4\s+0\s+0", captured.out, re.M)
    assert re.search(r"^bad\s+5\.00\s+5\.00\s+5\.00\s+4\s+0\s+0", captured.out, re.M)
    assert f"{out}: 8 judgments written, 0 already done, 0 unparsed, 0 API errors" in captured.err

    page = report.read_text(encoding="utf-8")
    assert page.count("<svg") == 1
    assert "Judge score per category" in page
    # Nothing is fetched: the only URL is the SVG namespace.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    # Each judgment sits in its turn's article, after the answers it judged (escaped).
    article = page[page.index('id="q81-t2"') :]
    article = article[: article.index("</article>")]
    assert article.index("&lt;good 81.2&gt;") < article.index("Good. Rating: [[8]]")
    assert article.index("&lt;bad 81.2&gt;") < article.index("Weak. Rating: [[5]]")

    # Resuming: nothing left to judge, the figures are the same.
    judge.requests.clear()
    assert main(judge_args(url, out, *extra, "--summary", str(summary_path))) == 0
    assert judge.requests == []
    assert f"{out}: 0 judgments written, 8 already done" in capsys.readouterr().err
    assert json.loads(summary_path.read_text(encoding="utf-8")) == summary


def test_pairwise_against_a_baseline(tmp_path: Path, judge: ScriptedJudge, url: str) -> None:
    files = [write_answers(tmp_path / f"{n}.jsonl", n, [81, 111]) for n in ("good", "mid", "bad")]
    out, summary_path, report = tmp_path / "p.jsonl", tmp_path / "s.json", tmp_path / "r.html"
    args = [a for f in files for a in ("--answers", str(f))]
    args += ["--questions", str(_two_questions(tmp_path)), "--mode", "pairwise", "--baseline", "bad"]
    assert main(judge_args(url, out, *args, "--summary", str(summary_path), "--report", str(report))) == 0
    rows = read(out)
    assert len(rows) == 8  # 2 pairs x 2 questions x 2 turns, each judged in both orders
    assert len(judge.requests) == 16
    assert {(r["model_1"], r["model_2"]) for r in rows} == {("good", "bad"), ("mid", "bad")}
    math = [r for r in rows if r["question_id"] == 111]
    assert {r["judge"][1] for r in math} == {"pair-math-v1", "pair-math-v1-multi-turn"}
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["models"] == {}
    good, mid = summary["pairwise"]
    assert (good["model_a"], good["model_b"], good["win"], good["loss"], good["tie"]) == ("good", "bad", 4, 0, 0)
    assert (good["win_rate"], good["ci95"]) == (1.0, [1.0, 1.0])
    assert (mid["model_a"], mid["model_b"], mid["win"], mid["loss"], mid["tie"]) == ("mid", "bad", 0, 0, 4)
    page = report.read_text(encoding="utf-8")
    assert "Win rate per category" in page
    assert "good wins" in page
    assert "Game 2: A = bad, B = good" in page


def _two_questions(tmp_path: Path) -> Path:
    path = tmp_path / "q.jsonl"
    keep = [q for q in load_questions(mt_bench_questions_path()) if q.question_id in (81, 111)]
    path.write_text(
        "".join(
            json.dumps({"question_id": q.question_id, "category": q.category, "turns": q.turns}) + "\n" for q in keep
        ),
        encoding="utf-8",
    )
    return path


def test_api_errors_exit_1_and_are_retried_next_time(
    tmp_path: Path, judge: ScriptedJudge, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_answers(tmp_path / "good.jsonl", "good", [81])
    out = tmp_path / "j.jsonl"
    judge.failures.extend([503, 503])
    args = judge_args(
        url, out, "--answers", str(good), "--limit", "1", "--judge-max-retries", "0", "--concurrency", "1"
    )
    assert main(args) == 1
    assert "2 API errors" in capsys.readouterr().err
    assert [r["judgment"] for r in read(out)] == ["$ERROR$", "$ERROR$"]
    assert main(args) == 0
    assert sorted(r["score"] for r in read(out)) == [8, 8]


def test_bad_key_stops_with_a_clear_message(
    tmp_path: Path, judge: ScriptedJudge, url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "wrong")
    judge.failures.extend([401] * 4)
    good = write_answers(tmp_path / "good.jsonl", "good", [81])
    args = judge_args(url, tmp_path / "j.jsonl", "--answers", str(good), "--limit", "1", "--judge-key-env", "MY_KEY")
    assert main(args) == 1
    assert "diffpo: error: ConfigurationError: the judge at" in capsys.readouterr().err
    assert judge.requests[0]["model"] == "scripted"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--answers", "llama-3-it-vanilla", "--baseline", "x"], "--baseline is for --mode pairwise"),
        (["--answers", "nope.jsonl"], "no answers file 'nope.jsonl'"),
        (["--answers", "llama-3-it-vanilla", "--answers", "llama-3-it-vanilla"], "two --answers files are named"),
        (["--answers", "llama-3-it-vanilla", "--mode", "pairwise"], "pairwise judging needs two answer files"),
        (
            [
                "--answers",
                "llama-3-it-vanilla",
                "--answers",
                "mistral-it-vanilla",
                "--mode",
                "pairwise",
                "--baseline",
                "x",
            ],
            "--baseline 'x' is none of the models",
        ),
    ],
)
def test_bad_arguments(tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(judge_args("http://127.0.0.1:9", tmp_path / "j.jsonl", *extra))
    assert status in (1, 2)
    assert message in capsys.readouterr().err


def test_missing_answers_name_the_questions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    partial = write_answers(tmp_path / "p.jsonl", "p", [81])
    assert main(judge_args("http://127.0.0.1:9", tmp_path / "j.jsonl", "--answers", str(partial), "--limit", "3")) == 1
    assert "model 'p' has no answer to 2 of the 3 questions (82, 83); answer them first" in capsys.readouterr().err


def test_eval_aligns_then_judges_draft_against_aligned(
    tmp_path: Path, judge: ScriptedJudge, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    judge.reply = lambda system, user: "[[A]]" if "(aligned" in sides(user)[0] else "[[B]]"
    out, report = tmp_path / "llama-3-diffpo.jsonl", tmp_path / "report.html"
    args = ["eval", "--answers", "llama-3-it-vanilla", "--limit", "2", "--turns", "1", "--out", str(out)]
    args += ["--aligner-url", "http://mock-tgi", "--report", str(report), "--no-progress"]
    args += ["--judge-url", url, "--judge-model", "scripted"]
    with mock_tgi():
        assert main(args) == 0
    judged = read(tmp_path / "llama-3-diffpo.judgments.jsonl")
    assert [(r["question_id"], r["turn"]) for r in sorted(judged, key=lambda r: r["question_id"])] == [(81, 1), (82, 1)]
    for r in judged:
        assert (r["model_1"], r["model_2"]) == ("llama-3-diffpo", "llama-3-it-vanilla")
        assert (r["g1_winner"], r["g2_winner"]) == ("model_1", "model_1")
        assert r["judge"] == ["scripted", "pair-v2"]
    assert len(judge.requests) == 4
    summary = json.loads((tmp_path / "llama-3-diffpo.judge.json").read_text(encoding="utf-8"))
    (p,) = summary["pairwise"]
    assert (p["model_a"], p["model_b"], p["win"], p["loss"], p["tie"], p["win_rate"]) == (
        "llama-3-diffpo",
        "llama-3-it-vanilla",
        2,
        0,
        0,
        1.0,
    )
    assert "llama-3-diffpo vs llama-3-it-vanilla    2     0    0" in capsys.readouterr().out
    page = report.read_text(encoding="utf-8")
    assert "Judge: scripted (pairwise)" in page
    turn = page[page.index('id="q81-t1"') :]
    turn = turn[: turn.index("</article>")]
    assert turn.index("Aligned (DiffPO)") < turn.index("llama-3-diffpo wins")
    # --report-only rebuilds the same judge sections from the files.
    report.unlink()
    with mock_tgi():
        assert (
            main(
                ["eval", "--report-only", "--answers", "llama-3-it-vanilla", "--out", str(out), "--report", str(report)]
            )
            == 0
        )
    rebuilt = report.read_text(encoding="utf-8")
    assert "llama-3-diffpo wins" in rebuilt
    assert "Judge: scripted (pairwise)" in rebuilt


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge-url", "http://127.0.0.1:9"], "--judge-url and --judge-model go together"),
        (["--judge-model", "m"], "--judge-url and --judge-model go together"),
    ],
)
def test_eval_judge_options_go_together(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--answers", "llama-3-it-vanilla", "--out", str(tmp_path / "o.jsonl"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_eval_judge_refuses_plain_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drafts = tmp_path / "d.jsonl"
    drafts.write_text('{"prompt": "hi", "draft": "hello"}\n', encoding="utf-8")
    args = ["eval", "--input", str(drafts), "--out", str(tmp_path / "o.jsonl")]
    assert main([*args, "--judge-url", "http://127.0.0.1:9", "--judge-model", "m"]) == 2
    assert "--input rows have none" in capsys.readouterr().err
