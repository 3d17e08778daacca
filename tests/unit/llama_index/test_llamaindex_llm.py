"""DiffPOLLM: every chat and completion form aligned; tools, structured output and metadata untouched."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from llama_index.core import PromptTemplate, Settings, SummaryIndex
from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import LLM, MockLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llamaindex_fakes import DraftLLM, FakeAligner, draft_for, multiply, tool_then_answer
from pydantic import BaseModel

from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.llama_index import DiffPOFunctionCallingLLM, DiffPOLLM

USER = [ChatMessage(role="user", content="Name a prime.")]


def _expected(question: str, draft: str) -> str:
    return FakeAligner().align([("user", question)], draft).text


def _chat_draft(llm: LLM) -> str:
    return (llm.chat(USER).message.content or "").strip()


def test_chat(aligner: FakeAligner, llm: DraftLLM) -> None:
    response = DiffPOLLM(llm=llm, aligner=aligner).chat(USER)
    assert isinstance(response, ChatResponse)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == _expected("Name a prime.", _chat_draft(llm))
    assert response.additional_kwargs["diffpo"]["draft"] == _chat_draft(llm)


async def test_achat(aligner: FakeAligner, llm: DraftLLM) -> None:
    response = await DiffPOLLM(llm=llm, aligner=aligner).achat(USER)
    assert response.message.content == _expected("Name a prime.", _chat_draft(llm))


def test_stream_chat(aligner: FakeAligner, llm: DraftLLM) -> None:
    chunks = list(DiffPOLLM(llm=llm, aligner=aligner).stream_chat(USER))
    assert len([c for c in chunks if c.delta]) > 1
    assert "".join(c.delta or "" for c in chunks) == _expected("Name a prime.", _chat_draft(llm))
    assert chunks[-1].message.content == _expected("Name a prime.", _chat_draft(llm))
    assert chunks[-1].additional_kwargs["diffpo"]["aligned"] is True


async def test_astream_chat(aligner: FakeAligner, llm: DraftLLM) -> None:
    chunks = [c async for c in await DiffPOLLM(llm=llm, aligner=aligner).astream_chat(USER)]
    assert len(chunks) > 1
    assert chunks[-1].message.content == _expected("Name a prime.", _chat_draft(llm))


def test_complete(aligner: FakeAligner) -> None:
    response = DiffPOLLM(llm=MockLLM(max_tokens=10), aligner=aligner).complete("Name a prime.")
    assert response.text == _expected("Name a prime.", MockLLM(max_tokens=10).complete("Name a prime.").text)
    assert response.additional_kwargs["diffpo"]["kept_prefix"] == "text text text"


async def test_acomplete(aligner: FakeAligner) -> None:
    response = await DiffPOLLM(llm=DraftLLM(), aligner=aligner).acomplete("Name a prime.")
    assert response.text == _expected("Name a prime.", draft_for("Name a prime."))


def test_stream_complete(aligner: FakeAligner) -> None:
    chunks = list(DiffPOLLM(llm=DraftLLM(), aligner=aligner).stream_complete("Name a prime."))
    assert len(chunks) > 1
    assert chunks[-1].text == "".join(c.delta or "" for c in chunks)
    assert chunks[-1].text == DiffPOLLM(llm=DraftLLM(), aligner=FakeAligner()).complete("Name a prime.").text


async def test_astream_complete(aligner: FakeAligner) -> None:
    chunks = [c async for c in await DiffPOLLM(llm=DraftLLM(), aligner=aligner).astream_complete("Name a prime.")]
    assert len(chunks) > 1
    assert chunks[-1].text == _expected("Name a prime.", draft_for("Name a prime."))


def test_metadata_and_prompt_settings_mirror_the_inner_llm(aligner: FakeAligner) -> None:
    inner = DraftLLM(chat_model=True, system_prompt="Be brief.")
    llm = DiffPOLLM(llm=inner, aligner=aligner)
    assert llm.metadata == inner.metadata
    assert llm.system_prompt == "Be brief."
    assert llm.callback_manager is inner.callback_manager
    assert type(llm) is DiffPOLLM
    # One class for every inner LLM: tools need a function-calling one, and say so.
    assert isinstance(llm, FunctionCallingLLM)
    assert llm.metadata.is_function_calling_model is False
    with pytest.raises(
        ConfigurationError, match=r"^the wrapped DraftLLM is not a FunctionCallingLLM, so it cannot call tools"
    ):
        llm.chat_with_tools([FunctionTool.from_defaults(multiply)], "What is 6 times 7?")
    assert DiffPOLLM.class_name() == "DiffPOLLM"


def test_copies_share_the_aligner(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=MockFunctionCallingLLM(), aligner=aligner)
    for clone in (llm.model_copy(), llm.model_copy(deep=True), copy.deepcopy(llm)):
        assert type(clone) is DiffPOFunctionCallingLLM
        assert clone.aligner is aligner
    plain = DiffPOLLM(llm=DraftLLM(), aligner=aligner)
    assert copy.deepcopy(plain).complete("x").text == plain.complete("x").text


def test_llm_callbacks_fire(aligner: FakeAligner) -> None:
    debug = LlamaDebugHandler()
    llm = DiffPOLLM(llm=DraftLLM(), aligner=aligner, callback_manager=CallbackManager([debug]))
    list(llm.stream_complete("Name a prime."))
    llm.chat(USER)
    assert len(debug.get_event_pairs(CBEventType.LLM)) >= 2


def test_usable_as_settings_llm_in_a_query_engine(index: SummaryIndex, aligner: FakeAligner) -> None:
    Settings.llm = DiffPOLLM(llm=DraftLLM(), aligner=aligner)
    response = index.as_query_engine().query("What does DiffPO align?")
    assert "[aligned" in str(response)
    assert len(response.source_nodes) == 3
    # The QA prompt (context and query) is the user turn the aligner saw.
    assert "What does DiffPO align?" in aligner.requests[-1].messages[-1].content


def test_in_a_chat_engine_history_goes_back_to_drafts(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=DraftLLM(chat_model=True), aligner=aligner)
    chat = SimpleChatEngine.from_defaults(llm=llm)
    first = chat.chat("Name a prime.")
    chat.chat("And another one?")
    # The engine's memory holds the aligned answer; the aligner sees the draft behind it.
    assert chat.chat_history[1].content == first.response
    assert aligner.requests[-1].messages[1].content == aligner.requests[0].draft


def test_structured_predict_goes_to_the_inner_llm(aligner: FakeAligner) -> None:
    class Prime(BaseModel):
        value: int

    class JSONLLM(DraftLLM):
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            return CompletionResponse(text='{"value": 7}')

    llm = DiffPOLLM(llm=JSONLLM(), aligner=aligner)
    assert llm.structured_predict(Prime, PromptTemplate("Name a prime.")) == Prime(value=7)
    assert llm.as_structured_llm(Prime).complete("Name a prime.").raw == Prime(value=7)
    assert aligner.requests == []


# -- function calling --------------------------------------------------------------------------


def test_function_calling_inner_gives_a_function_calling_wrapper(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=MockFunctionCallingLLM(response_generator=tool_then_answer), aligner=aligner)
    assert isinstance(llm, DiffPOFunctionCallingLLM)
    assert isinstance(llm, FunctionCallingLLM)
    assert llm.metadata.is_function_calling_model is True


def test_tool_calls_pass_through_untouched(aligner: FakeAligner) -> None:
    inner = MockFunctionCallingLLM(response_generator=tool_then_answer)
    llm = DiffPOLLM(llm=inner, aligner=aligner)
    tool = FunctionTool.from_defaults(multiply)
    expected = inner.chat_with_tools([tool], user_msg="What is 6 times 7?")
    response = llm.chat_with_tools([tool], user_msg="What is 6 times 7?")
    assert response.message == expected.message
    assert "diffpo" not in response.additional_kwargs
    streamed = list(llm.stream_chat_with_tools([tool], user_msg="What is 6 times 7?"))
    assert [c.message for c in streamed] == [expected.message]
    selections = llm.get_tool_calls_from_response(response)
    assert [(s.tool_name, s.tool_kwargs) for s in selections] == [("multiply", {"a": 6, "b": 7})]
    assert aligner.requests == []


async def test_function_agent_final_answer_is_aligned(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=MockFunctionCallingLLM(response_generator=tool_then_answer), aligner=aligner)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    handler = agent.run("What is 6 times 7?")
    deltas = [ev.delta async for ev in handler.stream_events() if isinstance(ev, AgentStream) and ev.delta]
    result = await handler
    assert len(aligner.requests) == 1
    assert aligner.requests[0].draft == "The product is 42."
    grounded = 'What is 6 times 7?\n\nTool result (multiply {"a": 6, "b": 7}): 42'
    assert [(m.role, m.content) for m in aligner.requests[0].messages] == [("user", grounded)]
    assert result.response.content == _expected(grounded, "The product is 42.")
    assert "".join(deltas) == result.response.content
    assert len(deltas) > 1
