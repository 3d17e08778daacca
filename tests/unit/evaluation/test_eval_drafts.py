"""``diffpo eval --draft-model``: drafts from a LangChain chat model, saved and reused."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from evaluation_helpers import align_bodies, read_lines

from diffpo_integrations.backends.testing import MockTGIServer
from diffpo_integrations.cli import main
from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.evaluation.drafts import load_object, message_text

MODULE = """
from langchain_core.language_models.fake_chat_models import FakeListChatModel

CALLS = []

class CountingModel(FakeListChatModel):
    async def ainvoke(self, input, config=None, **kwargs):
        CALLS.append([m[1] for m in input])
        return await super().ainvoke(input, config, **kwargs)

llm = CountingModel(responses=[f"Draft answer number {i}, with several words in it." for i in range(40)])
"""


@pytest.fixture
def draft_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "eval_draft_models.py").write_text(textwrap.dedent(MODULE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("eval_draft_models", None)
    return "eval_draft_models:llm"


def test_drafts_are_generated_saved_and_reused(tmp_path: Path, server: MockTGIServer, draft_module: str) -> None:
    out = tmp_path / "aligned.jsonl"
    args = ["eval", "--draft-model", draft_module, "--draft-model-id", "fake-base", "--out", str(out)]
    args += ["--aligner-url", "http://mock-tgi", "--limit", "2", "--concurrency", "1", "--no-progress"]
    assert main(args) == 0

    drafts = read_lines(tmp_path / "aligned.drafts.jsonl")
    assert [d["question_id"] for d in drafts] == [81, 82]
    assert {d["model_id"] for d in drafts} == {"fake-base"}
    calls = sys.modules["eval_draft_models"].CALLS
    assert len(calls) == 4
    # The base model answers turn 2 after its own turn-1 answer, as FastChat's gen_model_answer does.
    assert calls[1][1] == drafts[0]["choices"][0]["turns"][0]

    bodies = align_bodies(server)
    turn2 = next(b for b in bodies if len(b["messages"]) == 3)
    assert turn2["messages"][1]["content"] in {d["choices"][0]["turns"][0] for d in drafts}
    lines = read_lines(out)
    assert {r["model_id"] for r in lines} == {"fake-base-diffpo"}

    # Resuming with one more question generates drafts for that question only.
    args[args.index("2")] = "3"
    assert main(args) == 0
    assert len(calls) == 6
    assert [d["question_id"] for d in read_lines(tmp_path / "aligned.drafts.jsonl")] == [81, 82, 83]


def test_load_object_errors() -> None:
    with pytest.raises(ConfigurationError, match="module:attribute"):
        load_object("no_colon")
    with pytest.raises(ConfigurationError, match="could not import"):
        load_object("no_such_module_here:llm")
    with pytest.raises(ConfigurationError, match="without arguments"):
        load_object("json:dumps")
    with pytest.raises(ConfigurationError, match="not a LangChain chat model"):
        load_object("json:decoder")


def test_message_text() -> None:
    from langchain_core.messages import AIMessage

    assert message_text("plain") == "plain"
    assert message_text(AIMessage(content="hi")) == "hi"
    assert message_text(AIMessage(content=[{"type": "text", "text": "a"}, "b"])) == "ab"
