"""fail_policy: "closed" raises the typed error; "open" returns the draft flagged, with a warning."""

from __future__ import annotations

import warnings

import pytest
from llama_index.core import SummaryIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.chat_engine import SimpleChatEngine
from llamaindex_fakes import DraftLLM, FakeAligner, draft_for

from diffpo_integrations.core import AlignerConnectionError, ConfigurationError, OverloadedError
from diffpo_integrations.llama_index import (
    DiffPOChatEngine,
    DiffPOFailOpenWarning,
    DiffPOLLM,
    DiffPOQueryEngine,
    DiffPOResponsePostprocessor,
)

DRAFT = "Seven is a prime number, and so is eleven."
DOWN = AlignerConnectionError("connection refused", endpoint="http://127.0.0.1:9")
WARNING = "DiffPO alignment failed, returning the draft unaligned (fail_policy='open'): AlignerConnectionError: connection refused"


def _flagged(draft: str) -> dict[str, object]:
    return {
        "draft": draft,
        "kept_prefix": "",
        "kept_prefix_tokens": 0,
        "generated_tokens": 0,
        "finish_reason": "error",
        "aligned": False,
        "error": "AlignerConnectionError: connection refused",
        "latency_s": 0.0,
        "endpoint": "http://127.0.0.1:9",
        "timings": {},
        "details": {},
    }


def test_closed_is_the_default_and_raises_the_typed_error() -> None:
    post = DiffPOResponsePostprocessor(FakeAligner(fail=DOWN))
    with pytest.raises(AlignerConnectionError, match=r"^connection refused$") as info:
        post.postprocess(Response(DRAFT), "Name a prime.")
    assert info.value is DOWN


async def test_closed_raises_async_and_while_streaming() -> None:
    post = DiffPOResponsePostprocessor(FakeAligner(fail=DOWN), fail_policy="closed")
    with pytest.raises(AlignerConnectionError, match=r"^connection refused$"):
        await post.apostprocess(Response(DRAFT), "Name a prime.")
    stream = post.postprocess(StreamingResponse(iter([DRAFT])), "Name a prime.")
    with pytest.raises(AlignerConnectionError, match=r"^connection refused$"):
        list(stream.response_gen)


def test_open_returns_the_draft_flagged() -> None:
    post = DiffPOResponsePostprocessor(FakeAligner(fail=DOWN), fail_policy="open")
    with pytest.warns(DiffPOFailOpenWarning) as record:
        out = post.postprocess(Response(DRAFT, metadata={"k": 1}), "Name a prime.")
    assert str(record[0].message) == WARNING
    assert out.response == DRAFT
    assert out.metadata == {"k": 1, "diffpo": _flagged(DRAFT)}


async def test_open_async() -> None:
    post = DiffPOResponsePostprocessor(FakeAligner(fail=DOWN), fail_policy="open")
    with pytest.warns(DiffPOFailOpenWarning, match="AlignerConnectionError: connection refused"):
        out = await post.apostprocess(Response(DRAFT), "Name a prime.")
    assert out.metadata is not None
    assert out.metadata["diffpo"] == _flagged(DRAFT)


def test_open_stream_failing_before_any_piece_streams_the_draft() -> None:
    post = DiffPOResponsePostprocessor(FakeAligner(fail=DOWN), fail_policy="open")
    out = post.postprocess(StreamingResponse(iter(["Seven is a prime", " number, and so is eleven."])), "q")
    with pytest.warns(DiffPOFailOpenWarning):
        pieces = list(out.response_gen)
    assert pieces == [DRAFT]
    assert out.metadata is not None
    assert out.metadata["diffpo"] == _flagged(DRAFT)


def test_open_stream_failing_after_a_piece_raises() -> None:
    post = DiffPOResponsePostprocessor(FakeAligner(fail=DOWN, fail_after=2), fail_policy="open")
    out = post.postprocess(StreamingResponse(iter([DRAFT])), "q")
    pieces: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fail-open warning: the stream cannot fall back any more
        with pytest.raises(AlignerConnectionError, match=r"^connection refused$"):
            pieces.extend(out.response_gen)
    assert pieces == ["Seven", " is"]


async def test_open_async_stream_after_a_piece_raises() -> None:
    llm = DiffPOLLM(llm=DraftLLM(), aligner=FakeAligner(fail=DOWN, fail_after=1), fail_policy="open")
    pieces: list[str | None] = []

    async def consume() -> None:
        async for chunk in await llm.astream_complete("Name a prime."):
            pieces.append(chunk.delta)

    with pytest.raises(AlignerConnectionError, match=r"^connection refused$"):
        await consume()
    assert pieces == ["Draft"]


def test_llm_open_and_closed() -> None:
    closed = DiffPOLLM(llm=DraftLLM(), aligner=FakeAligner(fail=OverloadedError("busy", retry_after=1.0)))
    with pytest.raises(OverloadedError, match=r"^busy$"):
        closed.chat([ChatMessage(role="user", content="Name a prime.")])
    opened = DiffPOLLM(llm=DraftLLM(), aligner=FakeAligner(fail=DOWN), fail_policy="open")
    with pytest.warns(DiffPOFailOpenWarning, match=r"fail_policy='open'"):
        response = opened.complete("Name a prime.")
    assert response.text == draft_for("Name a prime.")
    assert response.additional_kwargs["diffpo"] == _flagged(draft_for("Name a prime."))
    with pytest.warns(DiffPOFailOpenWarning):
        chunks = list(opened.stream_chat([ChatMessage(role="user", content="Name a prime.")]))
    assert [c.delta for c in chunks] == [chunks[-1].message.content]
    assert chunks[-1].additional_kwargs["diffpo"]["aligned"] is False


def test_query_engine_open_keeps_nodes(index: SummaryIndex) -> None:
    engine = DiffPOQueryEngine(
        index.as_query_engine(llm=DraftLLM()), aligner=FakeAligner(fail=DOWN), fail_policy="open"
    )
    with pytest.warns(DiffPOFailOpenWarning):
        response = engine.query("What does DiffPO align?")
    assert len(response.source_nodes) == 3
    assert response.metadata is not None
    assert response.metadata["diffpo"]["aligned"] is False
    assert response.response == response.metadata["diffpo"]["draft"]


async def test_chat_engine_open_astream() -> None:
    chat = DiffPOChatEngine(
        SimpleChatEngine.from_defaults(llm=DraftLLM()), aligner=FakeAligner(fail=DOWN), fail_policy="open"
    )
    response = await chat.astream_chat("Name a prime.")
    with pytest.warns(DiffPOFailOpenWarning):
        pieces = [p async for p in response.async_response_gen()]
    assert len(pieces) == 1
    assert response.metadata["diffpo"]["aligned"] is False
    assert response.metadata["diffpo"]["error"] == "AlignerConnectionError: connection refused"


def test_bad_policy_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="fail_policy must be 'open' or 'closed', got 'maybe'"):
        DiffPOResponsePostprocessor(FakeAligner(), fail_policy="maybe")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigurationError, match=r"^aligner='http://x' is a URL, not an aligner: pass aligner=TGIAligner\('http://x'\)"
    ):
        DiffPOResponsePostprocessor("http://x")  # type: ignore[arg-type]
