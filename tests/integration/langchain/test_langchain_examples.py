"""The LangChain examples and the user guide's code run against the live embedded server."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted([*(ROOT / "examples").glob("langchain_*.py"), *(ROOT / "examples").glob("langgraph_*.py")])


def test_every_example_is_run() -> None:
    assert [p.name for p in EXAMPLES] == [
        "langchain_agent.py",
        "langchain_chain.py",
        "langchain_chat_model.py",
        "langchain_langgraph.py",
        "langchain_streaming.py",
        "langgraph_streaming_agent.py",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_prints_draft_and_aligned(
    path: Path, live_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", live_url)
    monkeypatch.setenv("DIFFPO_BASE_URL", live_url)
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert re.search(r"draft[^\n]*:", out), out
    assert re.search(r"aligned[^\n]*: \S", out), out
    if path.stem == "langchain_streaming":
        assert "same answer: True" in out
    if path.stem == "langgraph_streaming_agent":
        # The chat UI saw the tool call once and the aligned answer once, never the draft's tokens.
        assert out.count("tool call: get_weather") == 1
        assert "draft tokens hidden from the stream: True" in out
        streamed = out.split("as a chat UI renders it\n", 1)[1].split("\ndraft:", 1)[0]
        aligned = re.search(r"^aligned: (.*)$", out, flags=re.M)
        assert aligned is not None
        assert streamed.rstrip("\n").endswith(aligned.group(1))


def test_user_guide_code_runs(live_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", live_url)
    text = (ROOT / "docs" / "langchain.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    namespace: dict[str, object] = {"__name__": "langchain_guide"}
    for block in blocks:
        exec(compile(block, "docs/langchain.md", "exec"), namespace)
