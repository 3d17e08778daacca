"""The LlamaIndex examples run offline against the mock TGI transport and print draft vs aligned."""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path

import pytest

from diffpo_integrations.backends.testing import mock_tgi

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NAMES = ["llamaindex_rag", "llamaindex_chat", "llamaindex_agent", "llamaindex_workflow"]


@pytest.mark.parametrize("name", NAMES)
def test_example_runs(name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", "http://mock-tgi")
    monkeypatch.delenv("DIFFPO_BASE_URL", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    with mock_tgi() as server:
        result = module["main"]()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    out = capsys.readouterr().out
    assert "draft:" in out
    assert "aligned: " in out
    assert "(aligned " in out  # the mock aligner's continuation
    assert "SmolLM2-135M-Instruct stands in for a DiffPO checkpoint" in out
    assert any(r.url.path == "/diffpo/align" for r in server.requests)
    if name == "llamaindex_agent":
        assert 'user: What is 6 times 7?\n\nTool result (multiply {"a": 6, "b": 7}): 42\n' in out
