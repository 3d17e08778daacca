"""DiffPOAlign: every calling form, input form, metadata, tool calls and the explicit conversation API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, RemoveMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_fakes import (
    DRAFT,
    USAGE,
    EchoAligner,
    ScriptedChatModel,
    diffpo_meta,
    draft_message,
    echo_text,
    expected_metadata,
    expected_text,
)

from diffpo_integrations.core.errors import ConversationNotFoundError, InputError
from diffpo_integrations.core.types import Message
from diffpo_integrations.langchain import DiffPOAlign

NOT_FOUND = (
    "DiffPOAlign could not find the conversation that produced this draft: no chat model ran in the "
    "same chain before it. Run it after the model in one chain (prompt | llm | DiffPOAlign()), or pass "
    'the conversation explicitly: invoke it with {"messages": [...], "draft": ...}, or build it with '
    "DiffPOAlign(conversation=[...])."
)


class Recorder(BaseCallbackHandler):
    """Records chain starts (name, tags) of the runs it sees."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, list[str]]] = []

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.starts.append((kwargs.get("name") or "", list(kwargs.get("tags") or [])))


def assert_aligned(message: Any, question: str, draft: str = DRAFT) -> None:
    assert isinstance(message, AIMessage)
    assert message.content == expected_text(question, draft)
    assert message.id == "draft-1"
    assert message.usage_metadata == USAGE
    assert message.response_metadata["model_name"] == "fake-base"
    assert message.response_metadata["finish_reason"] == "stop"
    assert diffpo_meta(message) == expected_metadata(draft)


def test_invoke_aligns_with_the_captured_conversation(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner
) -> None:
    out = (prompt | llm | DiffPOAlign(aligner=aligner)).invoke({"question": "Name a prime."})
    assert_aligned(out, "Name a prime.")
    assert aligner.calls == [
        ([Message(role="system", content="You are terse."), Message(role="user", content="Name a prime.")], DRAFT)
    ]


async def test_ainvoke(prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    out = await (prompt | llm | DiffPOAlign(aligner=aligner)).ainvoke({"question": "Name a prime."})
    assert_aligned(out, "Name a prime.")


def test_batch_aligns_each_input_with_its_own_conversation(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner
) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=aligner)
    questions = [f"Question {i}?" for i in range(6)]
    outs = chain.batch([{"question": q} for q in questions], {"max_concurrency": 3})
    assert [o.content for o in outs] == [expected_text(q) for q in questions]


async def test_abatch_is_concurrent_and_bounded() -> None:
    aligner = EchoAligner(delay=0.05)
    align = DiffPOAlign(aligner=aligner)
    inputs = [{"messages": [("user", f"Q{i}")], "draft": DRAFT} for i in range(8)]
    outs = await align.abatch(inputs, {"max_concurrency": 3})
    assert [o["aligned"] for o in outs] == [expected_text(f"Q{i}", system=None) for i in range(8)]
    assert aligner.peak == 3
    aligner.peak = 0
    await align.abatch(inputs)
    assert aligner.peak == 8


def test_stream_yields_aligned_pieces_that_merge_to_the_invoke_result(
    prompt: ChatPromptTemplate, make_llm: Callable[..., ScriptedChatModel], aligner: EchoAligner
) -> None:
    chain = prompt | make_llm() | DiffPOAlign(aligner=aligner)
    chunks = list(chain.stream({"question": "Name a prime."}))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[0].content == "Seven is"  # the kept prefix first, as the aligner sends it
    assert len(chunks) > 3
    assert [c.chunk_position for c in chunks] == [None] * (len(chunks) - 1) + ["last"]
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert_aligned(merged, "Name a prime.")
    invoked = (prompt | make_llm() | DiffPOAlign(aligner=aligner)).invoke({"question": "Name a prime."})
    assert merged.content == invoked.content
    assert diffpo_meta(merged) == diffpo_meta(invoked)


async def test_astream(prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    chunks = [c async for c in (prompt | llm | DiffPOAlign(aligner=aligner)).astream({"question": "Name a prime."})]
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert chunks[-1].chunk_position == "last"
    assert_aligned(merged, "Name a prime.")


def test_aligned_tokens_leave_as_the_aligner_produces_them(prompt: ChatPromptTemplate, llm: ScriptedChatModel) -> None:
    log: list[str] = []

    class LoggingAligner(EchoAligner):
        def _stream(self, request: Any) -> Any:
            for i, chunk in enumerate(super()._stream(request)):
                log.append(f"aligner {i}")
                yield chunk

    for _ in (prompt | llm | DiffPOAlign(aligner=LoggingAligner())).stream({"question": "Q"}):
        log.append("out")
    n = len([x for x in log if x.startswith("aligner")])
    # Each piece reaches the caller before the aligner produces the next one.
    assert log[: 2 * n - 1] == [x for i in range(n - 1) for x in (f"aligner {i}", "out")] + [f"aligner {n - 1}"]


async def test_astream_events_show_the_alignment_step(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner
) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=aligner)
    events = [e async for e in chain.astream_events({"question": "Q"}, version="v2")]
    streamed = [e["data"]["chunk"] for e in events if e["event"] == "on_chain_stream" and e["name"] == "DiffPOAlign"]
    assert "".join(c.content for c in streamed) == expected_text("Q")
    ends = [e for e in events if e["event"] == "on_chain_end" and e["name"] == "DiffPOAlign"]
    assert len(ends) == 1
    assert ends[0]["data"]["output"].content == expected_text("Q")


def test_with_config_callbacks_and_tags_reach_the_step(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner
) -> None:
    recorder = Recorder()
    align = DiffPOAlign(aligner=aligner).with_config(run_name="aligner", tags=["diffpo"])
    out = (prompt | llm | align).invoke({"question": "Q"}, {"callbacks": [recorder], "tags": ["outer"]})
    assert out.content == expected_text("Q")
    assert ("aligner", ["seq:step:3", "diffpo", "outer"]) in recorder.starts


def test_string_input_gives_string_output(aligner: EchoAligner) -> None:
    chain = RunnableLambda(lambda q: [HumanMessage(content=q)]) | ScriptedChatModel(messages=iter([draft_message()]))
    out = (chain | (lambda m: m.content) | DiffPOAlign(aligner=aligner)).invoke("Q")
    assert out == expected_text("Q", system=None)
    pieces = list(DiffPOAlign(aligner=aligner, conversation=[("user", "Q")]).stream(DRAFT))
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == expected_text("Q", system=None)


def test_dict_input_with_a_draft_gives_the_dict_with_the_aligned_answer(aligner: EchoAligner) -> None:
    align = DiffPOAlign(aligner=aligner)
    value = {"messages": [("system", "You are terse."), ("user", "Q")], "draft": DRAFT}
    assert align.invoke(value) == {**value, "aligned": expected_text("Q")}
    as_message = align.invoke({**value, "draft": draft_message()})
    assert_aligned(as_message["aligned"], "Q")
    # Streaming a dict gives one chunk: the conversation must be complete first.
    assert list(align.stream(value)) == [{**value, "aligned": expected_text("Q")}]


def test_langgraph_state_input_replaces_the_draft(aligner: EchoAligner) -> None:
    state = {"messages": [HumanMessage(content="Q", id="h1"), draft_message()]}
    out = DiffPOAlign(aligner=aligner).invoke(state)
    assert list(out) == ["messages"]
    # The update removes the draft and adds the answer under a new id, which LangGraph streams as new.
    remove, aligned = out["messages"]
    assert isinstance(remove, RemoveMessage)
    assert remove.id == "draft-1"
    assert aligned.id == "draft-1-aligned"
    assert aligned.content == expected_text("Q", system=None)


def test_fixed_conversation_is_used_instead_of_capture(aligner: EchoAligner) -> None:
    align = DiffPOAlign(aligner=aligner, conversation=[("user", "Fixed question")])
    out = align.invoke(draft_message())
    assert out.content == expected_text("Fixed question", system=None)


def test_tool_calls_pass_through_unaligned(
    prompt: ChatPromptTemplate, make_llm: Callable[..., ScriptedChatModel], aligner: EchoAligner
) -> None:
    call = draft_message("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}])
    assert DiffPOAlign(aligner=aligner).invoke(call) is call
    chunks = list((prompt | make_llm(call) | DiffPOAlign(aligner=aligner)).stream({"question": "Q"}))
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert merged.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}
    ]
    assert "diffpo" not in merged.response_metadata
    assert aligner.calls == []


def test_without_a_conversation_the_error_says_how_to_pass_one(aligner: EchoAligner) -> None:
    with pytest.raises(ConversationNotFoundError) as err:
        DiffPOAlign(aligner=aligner).invoke(AIMessage(content=DRAFT))
    assert str(err.value) == NOT_FOUND
    with pytest.raises(ConversationNotFoundError):
        list(DiffPOAlign(aligner=aligner).stream(AIMessage(content=DRAFT)))


async def test_async_without_a_conversation_raises(aligner: EchoAligner) -> None:
    with pytest.raises(ConversationNotFoundError):
        await DiffPOAlign(aligner=aligner).ainvoke(AIMessage(content=DRAFT))


def test_unknown_input_is_an_input_error(aligner: EchoAligner) -> None:
    with pytest.raises(InputError, match="DiffPOAlign takes an AIMessage, a string"):
        DiffPOAlign(aligner=aligner).invoke(42)


def test_default_aligner_is_built_lazily_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffpo_integrations.backends import TGIAligner

    monkeypatch.setenv("DIFFPO_ALIGNER_URL", "http://aligner.test:8080")
    align = DiffPOAlign()
    assert align.aligner is None
    assert align.aligner_url == "http://aligner.test:8080"
    built = align.alignment.aligner
    assert isinstance(built, TGIAligner)
    assert built.base_url == "http://aligner.test:8080"
    assert align.alignment is align.alignment


def test_keep_prefix_tokens_is_passed_to_the_aligner(aligner: EchoAligner) -> None:
    out = DiffPOAlign(aligner=aligner, keep_prefix_tokens=4).invoke({"messages": [("user", "Q")], "draft": DRAFT})
    assert out["aligned"] == echo_text([Message(role="user", content="Q")], DRAFT, 4)


async def test_sixteen_concurrent_streams_stay_apart(prompt: ChatPromptTemplate, aligner: EchoAligner) -> None:
    async def one(i: int) -> str:
        llm = ScriptedChatModel(messages=iter([draft_message(f"Draft {i} is here.")]))
        chain = prompt | llm | DiffPOAlign(aligner=aligner)
        return "".join([c.content async for c in chain.astream({"question": f"Q{i}"})])

    outs = await asyncio.gather(*(one(i) for i in range(16)))
    assert outs == [expected_text(f"Q{i}", f"Draft {i} is here.") for i in range(16)]
