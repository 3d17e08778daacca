"""DiffPOAlignStep: a workflow's final answer aligned, streamed as events, with the fail policy."""

from __future__ import annotations

import pytest
from llamaindex_fakes import FakeAligner, draft_for
from workflows import Workflow, step
from workflows.events import StartEvent

from diffpo_integrations.core import GenerationError
from diffpo_integrations.llama_index import (
    AlignedAnswerDeltaEvent,
    AlignedAnswerEvent,
    DiffPOAlignStep,
    DiffPOFailOpenWarning,
    DraftAnswerEvent,
)


class AnswerFlow(DiffPOAlignStep, Workflow):
    @step
    async def draft(self, ev: StartEvent) -> DraftAnswerEvent:
        history = list(ev.get("history", []))
        messages = [*history, {"role": "user", "content": ev.query}] if history else []
        return DraftAnswerEvent(query=ev.query, messages=messages, draft=draft_for(ev.query), extra={"id": 7})


async def test_final_answer_is_aligned_and_streamed(aligner: FakeAligner) -> None:
    handler = AnswerFlow(aligner=aligner, timeout=10).run(query="Name a prime.")
    deltas = [ev.delta async for ev in handler.stream_events() if isinstance(ev, AlignedAnswerDeltaEvent)]
    result = await handler
    expected = FakeAligner().align([("user", "Name a prime.")], draft_for("Name a prime.")).text
    assert isinstance(result, AlignedAnswerEvent)
    assert result.text == expected == str(result) == result.result
    assert len(deltas) > 1
    assert "".join(deltas) == expected
    assert result.draft == draft_for("Name a prime.")
    assert result.diffpo["aligned"] is True
    assert result.extra == {"id": 7}


async def test_one_call_alignment_and_history(aligner: FakeAligner) -> None:
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    flow = AnswerFlow(aligner=aligner, stream_alignment=False, timeout=10)
    result = await flow.run(query="Name a prime.", history=history)
    expected = FakeAligner().align([*history, ("user", "Name a prime.")], draft_for("Name a prime.")).text
    assert result.text == expected
    assert len(aligner.requests[-1].messages) == 3


async def test_fail_policies() -> None:
    broken = FakeAligner(fail=GenerationError("CUDA out of memory"))
    with pytest.raises(GenerationError, match=r"^CUDA out of memory$"):
        await AnswerFlow(aligner=broken, timeout=10).run(query="Name a prime.")
    with pytest.warns(DiffPOFailOpenWarning, match="GenerationError: CUDA out of memory"):
        result = await AnswerFlow(aligner=broken, fail_policy="open", timeout=10).run(query="Name a prime.")
    assert result.text == draft_for("Name a prime.")
    assert result.diffpo["aligned"] is False
    assert result.diffpo["error"] == "GenerationError: CUDA out of memory"
