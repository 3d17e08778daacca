"""DiffPOLLM in agents and as ``Settings.llm``: only what the user reads is aligned, tool results reach the aligner."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Settings, SummaryIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.program import LLMTextCompletionProgram
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.selectors import LLMSingleSelector
from llama_index.core.tools import FunctionTool, QueryEngineTool
from llamaindex_fakes import FakeAligner, multiply, tool_then_answer
from pydantic import BaseModel, Field
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

from diffpo_integrations.core import ConfigurationError, Message
from diffpo_integrations.llama_index import (
    AlignedDraftEvent,
    DiffPOAlignAndContinue,
    DiffPOAlignStep,
    DiffPOLLM,
    DiffPOQueryEngine,
    DiffPOResponsePostprocessor,
    DraftAnswerEvent,
)

QUESTION = "What is 6 times 7?"
ANSWER = "The product is 42."


GROUNDED = [Message(role="user", content=f'{QUESTION}\n\nTool result (multiply {{"a": 6, "b": 7}}): 42')]


async def test_function_agent_shows_the_tool_result_to_the_aligner(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=MockFunctionCallingLLM(response_generator=tool_then_answer), aligner=aligner)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    result = await agent.run(QUESTION)
    assert [(r.messages, r.draft) for r in aligner.requests] == [(GROUNDED, ANSWER)]
    assert result.response.content == aligner.align(GROUNDED, ANSWER).text


def test_chat_history_with_tool_turns_keeps_the_results(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=MockFunctionCallingLLM(response_generator=tool_then_answer), aligner=aligner)
    history = [
        ChatMessage(role="system", content="Use tools."),
        ChatMessage(role="user", content=QUESTION),
        tool_then_answer([]),
        ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "call-1"}),
    ]
    llm.chat(history)
    expected = [Message(role="system", content="Use tools."), *GROUNDED]
    assert [r.messages for r in aligner.requests] == [expected]


# -- Settings.llm: internal calls pass through ------------------------------------------------


class RoutingLLM(CustomLLM):
    """A base model that answers a selector with JSON, a condense prompt with a question, else a sentence."""

    prompts: list[str] = Field(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="routing-llm")

    def _answer(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if "choice" in prompt and "reason" in prompt:
            return '[{"choice": 1, "reason": "It is about primes."}]'
        if "standalone question" in prompt.lower():
            return "Which prime follows seven?"
        if '"name"' in prompt or "schema" in prompt.lower():
            return '{"name": "seven"}'
        return "Eleven is the prime after seven."

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._answer(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._answer(prompt)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()


def test_router_selector_is_not_aligned(aligner: FakeAligner, index: SummaryIndex) -> None:
    Settings.llm = DiffPOLLM(llm=RoutingLLM(), aligner=aligner)
    tools = [
        QueryEngineTool.from_defaults(index.as_query_engine(), description="Questions about primes."),
        QueryEngineTool.from_defaults(index.as_query_engine(), description="Questions about DiffPO."),
    ]
    engine = RouterQueryEngine(selector=LLMSingleSelector.from_defaults(), query_engine_tools=tools)
    response = engine.query("Which prime follows seven?")
    assert [r.draft for r in aligner.requests] == ["Eleven is the prime after seven."]
    # At the LLM level the user turn is the whole QA prompt (retrieved context and question).
    assert aligner.requests[0].messages[-1].content.endswith("Query: Which prime follows seven?\nAnswer: ")
    assert str(response) == aligner.align(aligner.requests[0].messages, "Eleven is the prime after seven.").text


def test_condensed_question_is_not_aligned(aligner: FakeAligner, index: SummaryIndex) -> None:
    base = RoutingLLM()
    Settings.llm = DiffPOLLM(llm=base, aligner=aligner)
    history = [ChatMessage(role="user", content="Name a prime."), ChatMessage(role="assistant", content="Seven.")]
    engine = CondensePlusContextChatEngine.from_defaults(index.as_retriever(), chat_history=history)
    engine.chat("And the next one?")
    # One alignment: the final answer. The condensed question reached retrieval as the base model wrote it.
    assert [r.draft for r in aligner.requests] == ["Eleven is the prime after seven."]


class Name(BaseModel):
    name: str


def test_text_completion_program_is_not_aligned(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=RoutingLLM(), aligner=aligner)
    program = LLMTextCompletionProgram.from_defaults(output_cls=Name, prompt_template_str="A name for {x}.", llm=llm)
    assert program(x="a prime") == Name(name="seven")
    assert aligner.requests == []


class ReActScript(CustomLLM):
    """A chat model that writes ReAct steps: first an action, then the final answer."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="react-script", is_chat_model=True)

    def _text(self, messages: list[ChatMessage]) -> str:
        if any((m.content or "").startswith("Observation:") for m in messages):
            return f"Thought: I can answer without using any more tools.\nAnswer: {ANSWER}"
        return 'Thought: I need a tool.\nAction: multiply\nAction Input: {"a": 6, "b": 7}'

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role="assistant", content=self._text(list(messages))))

    @llm_chat_callback()
    def stream_chat(self, messages: Any, **kwargs: Any) -> ChatResponseGen:
        text = self._text(list(messages))

        def gen() -> ChatResponseGen:
            done = ""
            for word in text.split(" "):
                delta = word if not done else " " + word
                done += delta
                yield ChatResponse(message=ChatMessage(role="assistant", content=done), delta=delta)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError


async def test_react_agent_aligns_only_the_final_answer(aligner: FakeAligner) -> None:
    llm = DiffPOLLM(llm=ReActScript(), aligner=aligner)
    agent = ReActAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    result = await agent.run(QUESTION)
    assert [(r.messages, r.draft) for r in aligner.requests] == [(GROUNDED, ANSWER)]
    assert result.response.content == aligner.align(GROUNDED, ANSWER).text


# -- smaller fixes -----------------------------------------------------------------------------

URL_ERROR = r"^aligner='http://127\.0\.0\.1:8080' is a URL, not an aligner: pass aligner=TGIAligner\('http://127\.0\.0\.1:8080'\)"


def test_a_url_string_as_aligner_names_tgialigner(index: SummaryIndex) -> None:
    with pytest.raises(ConfigurationError, match=URL_ERROR):
        DiffPOLLM(llm=RoutingLLM(), aligner="http://127.0.0.1:8080")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=URL_ERROR):
        DiffPOQueryEngine(index.as_query_engine(), aligner="http://127.0.0.1:8080")  # type: ignore[arg-type]


async def test_draft_event_takes_chat_messages_with_tool_results(aligner: FakeAligner) -> None:
    class Flow(DiffPOAlignStep, Workflow):
        @step
        async def draft(self, ev: StartEvent) -> DraftAnswerEvent:
            history = [
                ChatMessage(role="user", content=QUESTION),
                tool_then_answer([]),
                ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "call-1"}),
            ]
            return DraftAnswerEvent(messages=history, draft=ANSWER)

    result = await Flow(aligner=aligner, stream_alignment=False).run()
    assert [r.messages for r in aligner.requests] == [GROUNDED]
    assert result.text == aligner.align(GROUNDED, ANSWER).text


async def test_aligned_answer_can_go_to_a_later_step(aligner: FakeAligner) -> None:
    class Flow(DiffPOAlignAndContinue, Workflow):
        @step
        async def draft(self, ev: StartEvent) -> DraftAnswerEvent:
            return DraftAnswerEvent(query=QUESTION, draft=ANSWER)

        @step
        async def cite(self, ev: AlignedDraftEvent) -> StopEvent:
            return StopEvent(result=f"{ev.text} [source: calculator]")

    result = await Flow(aligner=aligner).run()
    expected = aligner.align([("user", QUESTION)], ANSWER).text
    assert result == f"{expected} [source: calculator]"


def test_response_postprocessor_in_node_postprocessors_says_where_it_goes(
    aligner: FakeAligner, index: SummaryIndex
) -> None:
    engine = index.as_query_engine(node_postprocessors=[DiffPOResponsePostprocessor(aligner)])
    with pytest.raises(ConfigurationError, match=r"^DiffPOResponsePostprocessor aligns answers, not retrieved nodes"):
        engine.query(QUESTION)
