"""The "Judging from Python" example of docs/evaluation.md runs as written, against a scripted judge."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffpo_integrations.evaluation.judge_testing import ScriptedJudge, serve_judge

DOC = Path(__file__).resolve().parents[3] / "docs" / "evaluation.md"


def example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Judging from Python") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_python_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    judge = ScriptedJudge(lambda system, user: "Clear and vivid. Rating: [[9]]")
    with serve_judge(judge) as url:
        exec(compile(example().replace("http://127.0.0.1:8080", url), str(DOC), "exec"), {})
    (row,) = [json.loads(x) for x in (tmp_path / "judged.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (row["question_id"], row["model"], row["judge"], row["score"]) == (
        81,
        "llama-3-it-vanilla",
        ["judge", "single-v1"],
        9,
    )
    assert judge.requests[0]["max_tokens"] == 16
    assert re.search(r"^llama-3-it-vanilla\s+9\.00\s+9\.00\s+n/a\s+1\s+0\s+0", capsys.readouterr().out, re.M)
