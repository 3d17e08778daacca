"""ChatDiffPO: aligned answers, multi-turn conversations, streaming chunks, tools and structured output."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_fakes import (
    DRAFT,
    EchoAligner,
    ScriptedChatModel,
    diffpo_meta,
    draft_message,
    expected_metadata,
    expected_text,
)
from pydantic import BaseModel

from diffpo_integrations.core.types import Message
from diffpo_integrations.langchain import ChatDiffPO

QUESTION = [SystemMessage(content="You are terse."), HumanMessage(content="Name a prime.")]
TOOL_CALL = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}


class Answer(BaseModel):
    """An answer."""

    value: int


def merge(chunks: list[Any]) -> Any:
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    return merged


def assert_aligned(message: Any) -> None:
    assert message.content == expected_text("Name a prime.")
    assert message.id == "draft-1"
    # The wrapped model's run reports its tokens; repeating them here would count them twice.
    assert message.usage_metadata is None
    assert message.response_metadata["model_name"] == "fake-base"
    assert diffpo_meta(message) == expected_metadata()


def test_invoke_keeps_the_base_answer_metadata(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    assert_aligned(ChatDiffPO(llm=llm, aligner=aligner).invoke(QUESTION))


async def test_ainvoke_and_abatch(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    model = ChatDiffPO(llm=llm, aligner=aligner)
    assert_aligned(await model.ainvoke(QUESTION))
    outs = await model.abatch([[HumanMessage(content=f"Q{i}")] for i in range(4)])
    assert [o.content for o in outs] == [expected_text(f"Q{i}", system=None) for i in range(4)]


def test_stream_chunks_merge_with_plus_and_end_with_last(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    chunks = list(ChatDiffPO(llm=llm, aligner=aligner).stream(QUESTION))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 3
    assert [c.chunk_position for c in chunks] == [None] * (len(chunks) - 1) + ["last"]
    assert_aligned(merge(chunks))


async def test_astream(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    chunks = [c async for c in ChatDiffPO(llm=llm, aligner=aligner).astream(QUESTION)]
    assert chunks[-1].chunk_position == "last"
    assert_aligned(merge(chunks))


def test_streaming_flag_routes_invoke_through_the_stream(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    out = ChatDiffPO(llm=llm, aligner=aligner, streaming=True).invoke(QUESTION)
    assert_aligned(out)
    assert llm.served > 0


def test_second_turn_sees_the_first_turn_base_answer(make_llm: Any, aligner: EchoAligner) -> None:
    llm = make_llm(draft_message("First base answer here."), draft_message("Second base answer here.", id="d2"))
    model = ChatDiffPO(llm=llm, aligner=aligner)
    first = model.invoke([HumanMessage(content="Turn one?")])
    assert first.content != "First base answer here."
    second = model.invoke([HumanMessage(content="Turn one?"), first, HumanMessage(content="Turn two?")])
    assert aligner.calls[-1] == (
        [
            Message(role="user", content="Turn one?"),
            Message(role="assistant", content="First base answer here."),
            Message(role="user", content="Turn two?"),
        ],
        "Second base answer here.",
    )
    # The base model itself gets the history as the caller passed it.
    assert llm.calls[-1][1].content == first.content
    assert second.id == "d2"


def test_tool_calls_pass_through(make_llm: Any, aligner: EchoAligner) -> None:
    call = draft_message("", tool_calls=[TOOL_CALL])
    llm = make_llm(call)
    model = ChatDiffPO(llm=llm, aligner=aligner).bind_tools([Answer])
    out = model.invoke("Weather in Paris?")
    assert out.tool_calls == [TOOL_CALL]
    assert "diffpo" not in out.response_metadata
    streamed = merge(list(model.stream("Weather in Paris?")))
    assert streamed.tool_calls == [TOOL_CALL]
    assert aligner.calls == []


def test_bind_tools_delegates_and_still_aligns_answers(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    bound = ChatDiffPO(llm=llm, aligner=aligner).bind_tools([Answer], tool_choice="auto")
    assert bound.kwargs["tools"][0]["function"]["name"] == "Answer"  # type: ignore[attr-defined]
    assert bound.kwargs["tool_choice"] == "auto"  # type: ignore[attr-defined]
    assert bound.invoke(QUESTION).content == expected_text("Name a prime.")


def test_structured_output_is_the_inner_models(make_llm: Any, aligner: EchoAligner) -> None:
    call = AIMessage(content="", tool_calls=[{"name": "Answer", "args": {"value": 7}, "id": "c1", "type": "tool_call"}])
    structured = ChatDiffPO(llm=make_llm(call), aligner=aligner).with_structured_output(Answer)
    assert structured.invoke("Name a prime.") == Answer(value=7)
    assert aligner.calls == []


def test_identity_params_are_the_inner_models(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    model = ChatDiffPO(llm=llm, aligner=aligner)
    assert model._llm_type == "generic-fake-chat-model"
    assert model._get_ls_params(stop=["x"]) == llm._get_ls_params(stop=["x"])
    assert model._identifying_params == {
        **llm._identifying_params,
        "diffpo_aligner": repr(aligner),
        "diffpo_fail_policy": "closed",
    }


def test_stop_reaches_the_wrapped_model(aligner: EchoAligner) -> None:
    seen: list[Any] = []

    class StopRecorder(ScriptedChatModel):
        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
            seen.append(stop)
            return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    model = ChatDiffPO(llm=StopRecorder(messages=iter([DRAFT, DRAFT])), aligner=aligner, stop=["END"])
    model.invoke("Q")
    model.invoke("Q", stop=["HALT"])
    assert seen == [["END"], ["HALT"]]


def test_the_wrapped_model_runs_as_a_child_run(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    from langchain_core.tracers.context import collect_runs

    with collect_runs() as cb:
        ChatDiffPO(llm=llm, aligner=aligner).invoke("Q")
    [run] = cb.traced_runs
    assert run.name == "ChatDiffPO"
    assert [child.name for child in run.child_runs] == ["ScriptedChatModel"]
