"""Every wrapper in every form, as scenarios that run against any aligner (mock transport or live server).

Each scenario runs a LlamaIndex pipeline with a deterministic base LLM and returns an
:class:`Outcome`: what the user got, and the conversation and draft the aligner should have been
given. The tests then check the answer against ``aligner.align(conversation, draft)`` directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from llama_index.core import Document, SummaryIndex, get_response_synthesizer
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.chat_engine import SimpleChatEngine
from llamaindex_fakes import DraftLLM, draft_for
from workflows import Workflow, step
from workflows.events import StartEvent

from diffpo_integrations.core import Aligner
from diffpo_integrations.llama_index import (
    AlignedAnswerDeltaEvent,
    DiffPOAlignStep,
    DiffPOChatEngine,
    DiffPOLLM,
    DiffPOQueryEngine,
    DiffPOResponsePostprocessor,
    DiffPOSynthesizer,
    DraftAnswerEvent,
)

QUESTION = "What does DiffPO do to an answer?"
DOCS = ["DiffPO aligns the answer of any base model after the fact.", "It keeps a prefix of the draft."]


@dataclass
class Outcome:
    text: str
    conversation: list[tuple[str, str]]
    draft: str
    metadata: dict[str, Any]
    pieces: list[str] | None = None
    source_nodes: int = 0
    expected_source_nodes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


Scenario = Callable[[Aligner], Awaitable[Outcome]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


def _index() -> SummaryIndex:
    return SummaryIndex.from_documents([Document(text=t) for t in DOCS])


def _plain_answer() -> Response:
    response = _index().as_query_engine(llm=DraftLLM()).query(QUESTION)
    assert isinstance(response, Response)
    return response


async def _read(response: Any) -> tuple[str, list[str] | None]:
    if isinstance(response, Response):
        return response.response or "", None
    if isinstance(response, StreamingResponse):
        pieces = list(response.response_gen)
        return "".join(pieces), pieces
    assert isinstance(response, AsyncStreamingResponse)
    pieces = [p async for p in response.async_response_gen()]
    return "".join(pieces), pieces


async def _query(engine: Any, is_async: bool) -> Outcome:
    plain = _plain_answer()
    response = await engine.aquery(QUESTION) if is_async else engine.query(QUESTION)
    text, pieces = await _read(response)
    return Outcome(
        text, [("user", QUESTION)], (plain.response or "").strip(), response.metadata, pieces,
        len(response.source_nodes), len(plain.source_nodes),
    )  # fmt: skip


def _register_query_scenarios() -> None:
    for is_async in (False, True):
        for streaming in (False, True):
            form = ("a" if is_async else "") + ("stream" if streaming else "query")

            async def engine(aligner: Aligner, is_async: bool = is_async, streaming: bool = streaming) -> Outcome:
                inner = _index().as_query_engine(llm=DraftLLM(), streaming=streaming)
                return await _query(DiffPOQueryEngine(inner, aligner=aligner), is_async)

            async def synth(aligner: Aligner, is_async: bool = is_async, streaming: bool = streaming) -> Outcome:
                inner = get_response_synthesizer(llm=DraftLLM(), streaming=streaming)
                wrapped = DiffPOSynthesizer(inner, aligner=aligner)
                return await _query(_index().as_query_engine(llm=DraftLLM(), response_synthesizer=wrapped), is_async)

            async def post(aligner: Aligner, is_async: bool = is_async, streaming: bool = streaming) -> Outcome:
                engine = _index().as_query_engine(llm=DraftLLM(), streaming=streaming)
                pp = DiffPOResponsePostprocessor(aligner)
                if is_async:
                    response = await pp.apostprocess(await engine.aquery(QUESTION), QUESTION)
                else:
                    response = pp.postprocess(engine.query(QUESTION), QUESTION)
                plain = _plain_answer()
                text, pieces = await _read(response)
                return Outcome(
                    text, [("user", QUESTION)], (plain.response or "").strip(), response.metadata, pieces,
                    len(response.source_nodes), len(plain.source_nodes),
                )  # fmt: skip

            SCENARIOS[f"query_engine.{form}"] = engine
            SCENARIOS[f"synthesizer.{form}"] = synth
            SCENARIOS[f"postprocessor.{form}"] = post


_register_query_scenarios()

TURNS = ["Name a prime number.", "Why is it prime?"]


def _register_chat_scenarios() -> None:
    for method in ("chat", "achat", "stream_chat", "astream_chat"):

        async def run(aligner: Aligner, method: str = method) -> Outcome:
            chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=DraftLLM()), aligner=aligner)
            pieces: list[str] | None = None
            for turn in TURNS:
                result = getattr(chat, method)(turn)
                response = await result if method.startswith("a") else result
                if method == "stream_chat":
                    pieces = list(response.response_gen)
                elif method == "astream_chat":
                    pieces = [p async for p in response.async_response_gen()]
            plain = SimpleChatEngine.from_defaults(llm=DraftLLM())
            drafts = [plain.chat(t).response.strip() for t in TURNS]
            convo = [("user", TURNS[0]), ("assistant", drafts[0]), ("user", TURNS[1])]
            text = "".join(pieces) if pieces is not None else response.response
            return Outcome(text, convo, drafts[1], response.metadata, pieces)

        SCENARIOS[f"chat_engine.{method}"] = run


_register_chat_scenarios()

USER = [ChatMessage(role="user", content=QUESTION)]


def _register_llm_scenarios() -> None:
    for method in ("chat", "achat", "stream_chat", "astream_chat"):

        async def chat(aligner: Aligner, method: str = method) -> Outcome:
            llm = DiffPOLLM(llm=DraftLLM(), aligner=aligner)
            result = getattr(llm, method)(USER)
            if method == "chat":
                response, pieces = result, None
            elif method == "achat":
                response, pieces = await result, None
            else:
                gen = await result if method == "astream_chat" else result
                chunks = [c async for c in gen] if method == "astream_chat" else list(gen)
                response, pieces = chunks[-1], [c.delta for c in chunks if c.delta]
            draft = (DraftLLM().chat(USER).message.content or "").strip()
            text = response.message.content or ""
            return Outcome(text, [("user", QUESTION)], draft, response.additional_kwargs, pieces)

        SCENARIOS[f"llm.{method}"] = chat

    for method in ("complete", "acomplete", "stream_complete", "astream_complete"):

        async def complete(aligner: Aligner, method: str = method) -> Outcome:
            llm = DiffPOLLM(llm=DraftLLM(), aligner=aligner)
            result = getattr(llm, method)(QUESTION)
            if method == "complete":
                response, pieces = result, None
            elif method == "acomplete":
                response, pieces = await result, None
            else:
                gen = await result if method == "astream_complete" else result
                chunks = [c async for c in gen] if method == "astream_complete" else list(gen)
                response, pieces = chunks[-1], [c.delta for c in chunks if c.delta]
            return Outcome(response.text, [("user", QUESTION)], draft_for(QUESTION), response.additional_kwargs, pieces)

        SCENARIOS[f"llm.{method}"] = complete


_register_llm_scenarios()


class _AnswerFlow(DiffPOAlignStep, Workflow):
    @step
    async def draft(self, ev: StartEvent) -> DraftAnswerEvent:
        return DraftAnswerEvent(query=ev.query, draft=draft_for(ev.query))


def _register_workflow_scenarios() -> None:
    for streamed in (True, False):

        async def run(aligner: Aligner, streamed: bool = streamed) -> Outcome:
            handler = _AnswerFlow(aligner=aligner, stream_alignment=streamed, timeout=120).run(query=QUESTION)
            deltas = [ev.delta async for ev in handler.stream_events() if isinstance(ev, AlignedAnswerDeltaEvent)]
            result = await handler
            pieces = deltas if streamed else None
            return Outcome(result.text, [("user", QUESTION)], draft_for(QUESTION), {"diffpo": result.diffpo}, pieces)

        SCENARIOS["workflow." + ("stream" if streamed else "run")] = run


_register_workflow_scenarios()


def check(outcome: Outcome, aligner: Aligner) -> None:
    """The shared assertions: aligned text equals a direct ``aligner.align``; pieces; nodes; metadata."""
    expected = aligner.align(outcome.conversation, outcome.draft)
    assert outcome.text == expected.text
    if outcome.pieces is not None:
        assert len(outcome.pieces) > 1
        assert "".join(outcome.pieces) == expected.text
    assert outcome.source_nodes == outcome.expected_source_nodes
    assert outcome.metadata["diffpo"]["aligned"] is True
    assert outcome.metadata["diffpo"]["draft"] == outcome.draft
    assert outcome.metadata["diffpo"]["kept_prefix"] == expected.kept_prefix
