"""``diffpo eval`` end to end against the mock TGI: FastChat format, official turn-2 conversation, resuming."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from evaluation_helpers import ScriptedAligner, align_bodies, read_lines, stable

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import MockTGIServer
from diffpo_integrations.cli import main
from diffpo_integrations.data import MT_BENCH_ANSWERS, mt_bench_answers_path, mt_bench_questions_path
from diffpo_integrations.evaluation import file_jobs, read_records, run_eval

BASE = "llama-3-it-vanilla"


def _eval(out: Path, *extra: str) -> int:
    return main(
        ["eval", "--answers", BASE, "--out", str(out), "--aligner-url", "http://mock-tgi", "--no-progress", *extra]
    )


def test_shipped_data_is_complete() -> None:
    assert sum(1 for _ in mt_bench_questions_path().open()) == 80
    for name in MT_BENCH_ANSWERS:
        path = mt_bench_answers_path(name)
        assert sum(1 for _ in path.open()) == 80
        assert path.stat().st_size < 1_000_000


def test_three_questions_in_fastchat_format(
    tmp_path: Path, server: MockTGIServer, questions: list[Any], base_answers: dict[Any, Any]
) -> None:
    out = tmp_path / "aligned.jsonl"
    assert _eval(out, "--limit", "3", "--concurrency", "1") == 0

    lines = read_lines(out)
    assert [r["question_id"] for r in lines] == [81, 82, 83]
    for record in lines:
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp", "category", "diffpo"}
        assert record["model_id"] == "llama-3--diffpo"  # the shipped file's model_id is "llama-3-"
        assert len(record["answer_id"]) == 22
        assert isinstance(record["tstamp"], float)
        assert record["choices"][0]["index"] == 0
        assert len(record["choices"][0]["turns"]) == 2
        assert record["diffpo"]["base_model_id"] == "llama-3-"
        assert [m["aligned"] for m in record["diffpo"]["turns"]] == [True, True]
    assert len({r["answer_id"] for r in lines}) == 3

    # The server saw each turn's conversation as the official inference builds it: turn 2 follows
    # the BASE model's turn-1 answer, and its draft is the base model's turn-2 answer.
    bodies = align_bodies(server)
    assert len(bodies) == 6
    for q in questions[:3]:
        base = base_answers[q.question_id].turns
        turn1 = {"messages": [{"role": "user", "content": q.turns[0]}], "draft": base[0]}
        turn2 = {
            "messages": [
                {"role": "user", "content": q.turns[0]},
                {"role": "assistant", "content": base[0]},
                {"role": "user", "content": q.turns[1]},
            ],
            "draft": base[1],
        }
        seen = [{"messages": b["messages"], "draft": b["draft"]} for b in bodies]
        assert turn1 in seen
        assert turn2 in seen

    # The answers are exactly what the aligner returns for those conversations.
    direct = TGIAligner("http://mock-tgi")
    for record, q in zip(lines, questions[:3], strict=True):
        base = base_answers[q.question_id].turns
        expect1 = direct.align([("user", q.turns[0])], base[0]).text
        expect2 = direct.align([("user", q.turns[0]), ("assistant", base[0]), ("user", q.turns[1])], base[1]).text
        assert record["choices"][0]["turns"] == [expect1, expect2]
        assert record["diffpo"]["turns"][1]["draft"] == base[1]


def test_model_id_and_single_turn(tmp_path: Path, server: MockTGIServer, base_answers: dict[Any, Any]) -> None:
    out = tmp_path / "t2.jsonl"
    assert _eval(out, "--limit", "2", "--turns", "2", "--model-id", "llama3-diffpo-9b") == 0
    lines = read_lines(out)
    assert {r["model_id"] for r in lines} == {"llama3-diffpo-9b"}
    for r in lines:
        # Turn 1 is the base answer as it was; only turn 2 went through the aligner.
        assert r["choices"][0]["turns"][0] == base_answers[r["question_id"]].turns[0]
        assert r["diffpo"]["turns"][0] is None
        assert r["diffpo"]["turns"][1]["aligned"] is True
    assert len(align_bodies(server)) == 2


def test_resume_skips_done_questions(tmp_path: Path, server: MockTGIServer) -> None:
    out = tmp_path / "aligned.jsonl"
    assert _eval(out, "--limit", "2") == 0
    assert len(align_bodies(server)) == 4
    server.requests.clear()

    assert _eval(out, "--limit", "3") == 0
    assert len(align_bodies(server)) == 2  # only question 83
    assert sorted(r["question_id"] for r in read_lines(out)) == [81, 82, 83]

    server.requests.clear()
    assert _eval(out, "--limit", "3") == 0
    assert align_bodies(server) == []
    assert len(read_lines(out)) == 3


def test_interrupt_keeps_finished_lines(
    tmp_path: Path, aligner: TGIAligner, server: MockTGIServer, questions: list[Any], base_answers: dict[Any, Any]
) -> None:
    out = tmp_path / "aligned.jsonl"
    jobs = file_jobs(questions[:5], base_answers, [0, 1])
    k = 2
    scripted = ScriptedAligner(aligner, interrupt_at=2 * k + 1)  # Ctrl-C during question k + 1
    with pytest.raises(KeyboardInterrupt):
        run_eval(scripted, jobs, out, concurrency=1, progress=False)

    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = read_lines(out)
    assert [r["question_id"] for r in lines] == [81, 82]
    assert all(len(r["choices"][0]["turns"]) == 2 for r in lines)

    summary = run_eval(aligner, jobs, out, concurrency=1, progress=False)
    assert (summary.skipped, summary.written) == (2, 3)
    assert [r["question_id"] for r in read_lines(out)] == [81, 82, 83, 84, 85]
    assert read_lines(out)[:2] == lines  # the lines finished before the interrupt are untouched


def test_cli_interrupt_exit_status(tmp_path: Path, aligner: TGIAligner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "diffpo_integrations.cli.evaluate.make_aligner", lambda _: ScriptedAligner(aligner, interrupt_at=3)
    )
    out = tmp_path / "aligned.jsonl"
    assert _eval(out, "--limit", "3", "--concurrency", "1") == 130
    assert [r["question_id"] for r in read_lines(out)] == [81]


def test_partial_last_line_is_repaired(tmp_path: Path, server: MockTGIServer) -> None:
    out = tmp_path / "aligned.jsonl"
    assert _eval(out, "--limit", "1") == 0
    with out.open("a", encoding="utf-8") as f:
        f.write('{"question_id": 82, "answer_id": "tru')  # a process killed mid-write
    assert len(read_records(out)) == 1
    assert _eval(out, "--limit", "2") == 0
    assert [r["question_id"] for r in read_lines(out)] == [81, 82]


def test_concurrency_gives_the_same_output(tmp_path: Path, server: MockTGIServer) -> None:
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert _eval(one, "--limit", "6", "--concurrency", "1") == 0
    assert _eval(many, "--limit", "6", "--concurrency", "8") == 0
    key = lambda r: r["question_id"]  # noqa: E731
    assert [stable(r) for r in sorted(read_lines(one), key=key)] == [
        stable(r) for r in sorted(read_lines(many), key=key)
    ]


def test_failures_fail_open_and_retry(
    tmp_path: Path, aligner: TGIAligner, server: MockTGIServer, questions: list[Any], base_answers: dict[Any, Any]
) -> None:
    out = tmp_path / "aligned.jsonl"
    jobs = file_jobs(questions[:3], base_answers, [0, 1])
    bad = base_answers[82].turns[1]
    summary = run_eval(ScriptedAligner(aligner, fail_drafts=(bad,)), jobs, out, progress=False)
    assert (summary.written, summary.aligned_turns, summary.failed_turns) == (3, 5, 1)
    failed = next(r for r in read_lines(out) if r["question_id"] == 82)
    assert failed["choices"][0]["turns"][1] == bad  # the draft, flagged
    meta = failed["diffpo"]["turns"][1]
    assert (meta["aligned"], meta["finish_reason"]) == (False, "error")
    assert meta["error"].startswith("GenerationError")

    summary = run_eval(aligner, jobs, out, progress=False, retry_failed=True)
    assert (summary.skipped, summary.written, summary.failed_turns) == (2, 1, 0)
    lines = read_lines(out)
    assert sorted(r["question_id"] for r in lines) == [81, 82, 83]
    assert all(m["aligned"] for r in lines for m in r["diffpo"]["turns"])


def test_plain_prompt_draft_input(tmp_path: Path, server: MockTGIServer) -> None:
    rows = [
        {"prompt": "Name a prime number.", "draft": "7 is a prime number, as it has no divisors but 1 and 7."},
        {
            "id": "chat-1",
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of France?"},
            ],
            "draft": "The capital of France is Paris.",
        },
        {"prompt": "Say hi.", "draft": "Hi there! How can I help you today?"},
    ]
    src = tmp_path / "drafts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "aligned.jsonl"
    status = main(["eval", "--input", str(src), "--out", str(out), "--aligner-url", "http://mock-tgi", "--no-progress"])
    assert status == 0
    lines = {r["question_id"]: r for r in read_lines(out)}
    assert set(lines) == {1, "chat-1", 3}
    direct = TGIAligner("http://mock-tgi")
    assert lines[1]["choices"][0]["turns"] == [direct.align([("user", rows[0]["prompt"])], rows[0]["draft"]).text]
    assert lines["chat-1"]["diffpo"]["messages"] == rows[1]["prompt"]
    assert lines["chat-1"]["model_id"] == "base-diffpo"
    bodies = align_bodies(server)
    assert {"messages": rows[1]["prompt"], "draft": rows[1]["draft"]} in [
        {"messages": b["messages"], "draft": b["draft"]} for b in bodies
    ]


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--out", str(tmp_path / "o.jsonl"), "--no-progress"]) == 1
    assert "pass --answers" in capsys.readouterr().err
    assert main(["eval", "--answers", "no-such-file.jsonl", "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "llama-3-it-vanilla" in capsys.readouterr().err
    assert main(["eval", "--report-only", "--out", str(tmp_path / "missing.jsonl")]) == 2
