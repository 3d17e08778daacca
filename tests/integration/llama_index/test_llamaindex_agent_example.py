"""The LlamaIndex agent example against the live embedded server: the tool result reaches the aligner."""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_agent_example_shows_the_tool_result_to_the_aligner(
    live_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", live_url)
    monkeypatch.delenv("DIFFPO_BASE_URL", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = runpy.run_path(str(EXAMPLES / "llamaindex_agent.py"))
    asyncio.run(module["main"]())
    out = capsys.readouterr().out
    assert "draft:   The product of 6 and 7 is 42." in out
    assert "aligned: " in out
    assert 'user: What is 6 times 7?\n\nTool result (multiply {"a": 6, "b": 7}): 42\n' in out
