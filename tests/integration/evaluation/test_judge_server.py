"""``diffpo judge`` end to end with the embedded server as the judge (SmolLM2-135M-Instruct: a weak judge,
standing in for a GPT-4-class one) over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffpo_integrations.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from diffpo_integrations.server.testing import serve_in_thread, shared_app

    with serve_in_thread(shared_app()) as url:
        yield url


def test_weak_judge_finishes_with_its_unparsed_judgments_counted(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary_path, report = tmp_path / "j.jsonl", tmp_path / "s.json", tmp_path / "r.html"
    # Turn 1 of two questions, short judgments: quick on a CPU; the unit tests cover the rest.
    args = ["judge", "--answers", "mistral-it-vanilla", "--limit", "2", "--turns", "1", "--judge-max-tokens", "24"]
    args += ["--judge-url", base_url, "--judge-model", "smollm2", "--out", str(out), "--summary", str(summary_path)]
    args += ["--report", str(report), "--concurrency", "2", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["question_id"] for r in rows) == [81, 82]
    for r in rows:
        assert r["judge"] == ["smollm2", "single-v1"]
        assert r["judgment"] not in ("", "$ERROR$")
        assert "error" not in r
        assert r["score"] == -1 or r["score"] >= 0
    unparsed = sum(r["score"] == -1 for r in rows)
    m = json.loads(summary_path.read_text(encoding="utf-8"))["models"]["mistral-it-vanilla"]
    assert (m["unparsed"], m["n"], m["errors"]) == (unparsed, 2 - unparsed, 0)
    err = capsys.readouterr().err
    assert f"2 judgments written, 0 already done, {unparsed} unparsed, 0 API errors" in err
    assert report.read_text(encoding="utf-8").count('class="judgment"') == 2
