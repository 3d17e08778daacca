"""DiffPOQueryEngine and DiffPOSynthesizer in a RAG pipeline, in every sync, async and streaming form."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import PromptTemplate, QueryBundle, SummaryIndex, get_response_synthesizer
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.chat_engine import CondenseQuestionChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llamaindex_fakes import DraftLLM, FakeAligner

from diffpo_integrations.llama_index import DiffPOQueryEngine, DiffPOSynthesizer

Q = "What does DiffPO align?"


def _engine(kind: str, index: SummaryIndex, aligner: FakeAligner, llm: Any, streaming: bool) -> Any:
    """The same pipeline aligned by the query-engine wrapper or by the synthesizer wrapper."""
    if kind == "engine":
        return DiffPOQueryEngine(index.as_query_engine(llm=llm, streaming=streaming), aligner=aligner)
    synth = DiffPOSynthesizer(get_response_synthesizer(llm=llm, streaming=streaming), aligner=aligner)
    return index.as_query_engine(llm=llm, response_synthesizer=synth)


def _plain(index: SummaryIndex, llm: Any) -> Response:
    response = index.as_query_engine(llm=llm).query(Q)
    assert isinstance(response, Response)
    return response


def _expected(draft: str) -> str:
    return FakeAligner().align([("user", Q)], draft).text


@pytest.fixture(params=["engine", "synthesizer"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["draft", "mock"])
def base(request: pytest.FixtureRequest) -> Any:
    return DraftLLM() if request.param == "draft" else MockLLM(max_tokens=12)


def test_query(kind: str, index: SummaryIndex, aligner: FakeAligner, base: Any) -> None:
    plain = _plain(index, base)
    response = _engine(kind, index, aligner, base, streaming=False).query(Q)
    assert type(response) is Response
    assert response.response == _expected(plain.response or "")
    assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in plain.source_nodes]
    assert response.metadata is not None
    assert {k: v for k, v in response.metadata.items() if k != "diffpo"} == plain.metadata
    assert response.metadata["diffpo"]["draft"] == (plain.response or "").strip()
    assert response.metadata["diffpo"]["aligned"] is True


async def test_aquery(kind: str, index: SummaryIndex, aligner: FakeAligner, base: Any) -> None:
    plain = _plain(index, base)
    response = await _engine(kind, index, aligner, base, streaming=False).aquery(Q)
    assert type(response) is Response
    assert response.response == _expected(plain.response or "")
    assert len(response.source_nodes) == len(plain.source_nodes)


def test_streaming_query(kind: str, index: SummaryIndex, aligner: FakeAligner, base: Any) -> None:
    plain = _plain(index, base)
    response = _engine(kind, index, aligner, base, streaming=True).query(Q)
    assert type(response) is StreamingResponse
    pieces = list(response.response_gen)
    assert len(pieces) > 1
    assert "".join(pieces) == _expected(plain.response or "")
    assert len(response.source_nodes) == len(plain.source_nodes)
    assert response.metadata is not None
    assert response.metadata["diffpo"]["aligned"] is True


async def test_async_streaming_query(kind: str, index: SummaryIndex, aligner: FakeAligner, base: Any) -> None:
    plain = _plain(index, base)
    response = await _engine(kind, index, aligner, base, streaming=True).aquery(Q)
    assert type(response) is AsyncStreamingResponse
    pieces = [p async for p in response.async_response_gen()]
    assert len(pieces) > 1
    assert "".join(pieces) == _expected(plain.response or "")
    assert response.metadata is not None
    assert response.metadata["diffpo"]["draft"] == (plain.response or "").strip()


def test_wrapped_engine_keeps_prompts_and_retrieval(index: SummaryIndex, aligner: FakeAligner, llm: DraftLLM) -> None:
    inner = index.as_query_engine(llm=llm)
    engine = DiffPOQueryEngine(inner, aligner=aligner)
    assert engine.get_prompts().keys() == inner.get_prompts().keys()
    engine.update_prompts({"response_synthesizer:text_qa_template": PromptTemplate("{context_str}|{query_str}")})
    assert inner.get_prompts()["response_synthesizer:text_qa_template"].get_template() == "{context_str}|{query_str}"
    assert len(engine.retrieve(QueryBundle(Q))) == 3


def test_synthesizer_is_a_drop_in(index: SummaryIndex, aligner: FakeAligner, llm: DraftLLM) -> None:
    inner = get_response_synthesizer(llm=llm)
    synth = DiffPOSynthesizer(inner, aligner=aligner)
    engine = RetrieverQueryEngine(index.as_retriever(), response_synthesizer=synth)
    assert engine.get_prompts().keys() == index.as_query_engine(llm=llm).get_prompts().keys()
    assert synth.callback_manager is inner.callback_manager
    assert synth._llm is inner._llm
    synth._streaming = True
    assert inner._streaming is True
    assert engine.query(Q).metadata is not None


def test_synthesizer_is_a_real_base_synthesizer(aligner: FakeAligner, llm: DraftLLM) -> None:
    # Initialised as a BaseSynthesizer (from the inner one's settings), not a proxy of its attributes.
    inner = get_response_synthesizer(llm=llm)
    synth = DiffPOSynthesizer(inner, aligner=aligner)
    assert synth._prompt_helper is inner._prompt_helper
    assert synth._chat_prompt_helper is inner._chat_prompt_helper
    assert (synth._empty_response, synth._output_cls) == (inner._empty_response, inner._output_cls)
    assert hasattr(inner, "_text_qa_template")
    assert not hasattr(synth, "_text_qa_template")


def test_synthesizer_get_response(aligner: FakeAligner, llm: DraftLLM) -> None:
    synth = DiffPOSynthesizer(get_response_synthesizer(llm=llm, response_mode="simple_summarize"), aligner=aligner)
    draft = get_response_synthesizer(llm=llm, response_mode="simple_summarize").get_response(Q, ["a chunk"])
    assert synth.get_response(Q, ["a chunk"]) == _expected(str(draft))


def test_empty_retrieval_sentinel_is_not_aligned(aligner: FakeAligner, llm: DraftLLM) -> None:
    synth = DiffPOSynthesizer(get_response_synthesizer(llm=llm), aligner=aligner)
    response = synth.synthesize(Q, nodes=[])
    assert isinstance(response, Response)
    assert response.response == "Empty Response"
    assert aligner.requests == []


def test_condense_question_engine_streams_through_the_synthesizer(
    index: SummaryIndex, aligner: FakeAligner, llm: DraftLLM
) -> None:
    # CondenseQuestionChatEngine flips the synthesizer's ``_streaming`` flag for stream_chat.
    synth = DiffPOSynthesizer(get_response_synthesizer(llm=llm), aligner=aligner)
    chat = CondenseQuestionChatEngine.from_defaults(
        query_engine=index.as_query_engine(llm=llm, response_synthesizer=synth), llm=llm
    )
    pieces = list(chat.stream_chat(Q).response_gen)
    assert len(pieces) > 1
    assert "[aligned" in "".join(pieces)
    assert synth._streaming is False
