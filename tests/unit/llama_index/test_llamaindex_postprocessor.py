"""DiffPOResponsePostprocessor over every LlamaIndex response type, sync, async and streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import AsyncStreamingResponse, PydanticResponse, Response, StreamingResponse
from llama_index.core.chat_engine.types import AgentChatResponse
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llamaindex_fakes import FakeAligner
from pydantic import BaseModel

from diffpo_integrations.core import Message
from diffpo_integrations.llama_index import DEFAULT_CONTEXT_TEMPLATE, DiffPOResponsePostprocessor

DRAFT = "Paris is the capital of France, as everyone knows."
NODES = [NodeWithScore(node=TextNode(text="Paris is in France.", id_="n1"), score=0.5)]


def _gen() -> Iterator[str]:
    yield from ["Paris is the capital", " of France, as", " everyone knows."]


async def _agen() -> AsyncIterator[str]:
    for piece in _gen():
        yield piece


def _expected(question: str) -> str:
    return FakeAligner().align([("user", question)], DRAFT).text


def test_response_aligned_keeps_nodes_and_metadata(aligner: FakeAligner) -> None:
    post = DiffPOResponsePostprocessor(aligner)
    response = Response(DRAFT, source_nodes=NODES, metadata={"n1": {"page": 3}})
    out = post.postprocess(response, "Capital of France?")
    assert type(out) is Response
    assert out.response == _expected("Capital of France?")
    assert out.source_nodes == NODES
    assert out.metadata is not None
    assert out.metadata["n1"] == {"page": 3}
    assert out.metadata["diffpo"]["draft"] == DRAFT
    assert out.metadata["diffpo"]["aligned"] is True
    assert out.metadata["diffpo"]["kept_prefix"] == "Paris is the"
    assert response.response == DRAFT  # the input object is left as it was


async def test_apostprocess_response(aligner: FakeAligner) -> None:
    post = DiffPOResponsePostprocessor(aligner)
    out = await post.apostprocess(Response(DRAFT, source_nodes=NODES), QueryBundle("Capital of France?"))
    assert out.response == _expected("Capital of France?")
    assert out.source_nodes == NODES


def test_streaming_response_yields_pieces_lazily(aligner: FakeAligner) -> None:
    post = DiffPOResponsePostprocessor(aligner)
    out = post.postprocess(StreamingResponse(_gen(), source_nodes=NODES, metadata={}), "Capital of France?")
    assert type(out) is StreamingResponse
    assert aligner.requests == []  # nothing is read before the caller iterates
    pieces = list(out.response_gen)
    assert len(pieces) > 1
    assert "".join(pieces) == _expected("Capital of France?")
    assert out.source_nodes == NODES
    assert out.metadata is not None
    assert out.metadata["diffpo"]["draft"] == DRAFT


async def test_async_streaming_response(aligner: FakeAligner) -> None:
    post = DiffPOResponsePostprocessor(aligner)
    out = await post.apostprocess(AsyncStreamingResponse(_agen(), source_nodes=NODES), "Capital of France?")
    assert type(out) is AsyncStreamingResponse
    pieces = [p async for p in out.async_response_gen()]
    assert len(pieces) > 1
    assert "".join(pieces) == _expected("Capital of France?")
    assert out.metadata is not None
    assert out.metadata["diffpo"]["aligned"] is True
    assert (await out.get_response()).response == _expected("Capital of France?")


def test_sync_postprocess_keeps_async_streams_async(aligner: FakeAligner) -> None:
    post = DiffPOResponsePostprocessor(aligner)
    out = post.postprocess(AsyncStreamingResponse(_agen()), "Capital of France?")
    assert type(out) is AsyncStreamingResponse


def test_already_consumed_streaming_response(aligner: FakeAligner) -> None:
    response = StreamingResponse(_gen())
    assert str(response) == DRAFT
    out = DiffPOResponsePostprocessor(aligner).postprocess(response, "Capital of France?")
    assert str(out) == _expected("Capital of France?")


def test_pydantic_response_passes_through(aligner: FakeAligner) -> None:
    class City(BaseModel):
        name: str

    response = PydanticResponse(City(name="Paris"), source_nodes=NODES)
    assert DiffPOResponsePostprocessor(aligner).postprocess(response, "Capital?") is response
    assert aligner.requests == []


def test_include_context_puts_nodes_in_the_user_turn(aligner: FakeAligner) -> None:
    post = DiffPOResponsePostprocessor(aligner, include_context=True)
    post.postprocess(Response(DRAFT, source_nodes=NODES), "Capital of France?")
    expected = DEFAULT_CONTEXT_TEMPLATE.format(context_str="Paris is in France.", query_str="Capital of France?")
    assert aligner.requests[-1].messages == [Message(role="user", content=expected)]


def test_without_context_the_aligner_sees_the_query_only(aligner: FakeAligner) -> None:
    DiffPOResponsePostprocessor(aligner).postprocess(Response(DRAFT, source_nodes=NODES), "Capital of France?")
    assert aligner.requests[-1].messages == [Message(role="user", content="Capital of France?")]


def test_chat_response_with_history(aligner: FakeAligner) -> None:
    chat = [
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hello!"),
        ChatMessage(role="user", content="Capital of France?"),
    ]
    out = DiffPOResponsePostprocessor(aligner).postprocess(AgentChatResponse(DRAFT, source_nodes=NODES), chat)
    assert isinstance(out, AgentChatResponse)
    assert (
        out.response
        == FakeAligner().align([("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?")], DRAFT).text
    )
    assert out.source_nodes == NODES
    assert out.metadata is not None
    assert out.metadata["diffpo"]["draft"] == DRAFT


def test_unknown_response_type_is_refused(aligner: FakeAligner) -> None:
    with pytest.raises(TypeError, match="cannot align a str"):
        DiffPOResponsePostprocessor(aligner).postprocess("text", "q")


def test_options_reach_the_aligner(aligner: FakeAligner) -> None:
    post = DiffPOResponsePostprocessor(aligner, align_options={"keep_prefix_tokens": 1, "max_new_tokens": 9})
    out = post.postprocess(Response(DRAFT), "q")
    assert aligner.requests[-1].keep_prefix_tokens == 1
    assert aligner.requests[-1].max_new_tokens == 9
    assert out.metadata is not None
    assert out.metadata["diffpo"]["kept_prefix"] == "Paris"


def test_draft_is_stripped_before_aligning(aligner: FakeAligner) -> None:
    DiffPOResponsePostprocessor(aligner).postprocess(Response(f"\n  {DRAFT}  \n"), "q")
    assert aligner.requests[-1].draft == DRAFT
