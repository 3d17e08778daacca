"""The demo (``./scripts/demo.sh``, i.e. ``examples/quickstart.py``) shows two readable answers and what to do next."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

from diffpo_integrations.core.repetition import most_repeated

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def _most_repeated_token_run(token_ids: list[int], n: int = 8) -> int:
    runs: dict[tuple[int, ...], int] = {}
    for i in range(len(token_ids) - n + 1):
        run = tuple(token_ids[i : i + n])
        runs[run] = runs.get(run, 0) + 1
    return max(runs.values(), default=0)


def test_the_demo_prints_two_answers_that_are_not_loops(
    live_url: str, loaded: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = runpy.run_path(str(QUICKSTART))
    results = demo["run"](live_url, demo["DEFAULT_QUESTION"], 128)
    out = capsys.readouterr().out

    assert len(results) == 2
    for result in results:
        assert result.aligned
        tokens = loaded.tokenizer(result.text, add_special_tokens=False)["input_ids"]
        # No run of 8 aligner tokens (or 8 words) said more than twice: the answer is not a loop.
        assert _most_repeated_token_run(tokens) <= 2, result.text
        assert most_repeated(result.text)[1] <= 2, result.text
        assert "(repeating)" not in out
    assert out.count("| ALIGNED") == 2
    assert out.rstrip().endswith(demo["NEXT_STEPS"])
    assert "diffpo serve --model RuizheChen/DiffPO-9B" in out


def test_the_old_default_question_is_a_loop_and_is_marked(live_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Question 81 is why the default changed: its aligned answer repeats "**Lava and Lava**" to the budget.
    demo = runpy.run_path(str(QUICKSTART))
    first = demo["run"](live_url, 81, 128)[0]
    assert first.finish_reason == "length"
    assert most_repeated(first.text)[1] > 2
    assert "finish: length (repeating)" in capsys.readouterr().out
