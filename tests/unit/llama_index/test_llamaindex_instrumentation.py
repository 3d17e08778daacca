"""Alignment shows up in LlamaIndex's instrumentation: a span, with start and end events carrying the metadata."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llamaindex_fakes import DraftLLM, FakeAligner
from pydantic import Field

from diffpo_integrations.core import AlignerConnectionError, AlignResult
from diffpo_integrations.llama_index import DiffPOAlignEndEvent, DiffPOAlignStartEvent, DiffPOLLM, DiffPOQueryEngine


class Collect(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, (DiffPOAlignStartEvent, DiffPOAlignEndEvent)):
            self.events.append(event)


@pytest.fixture
def handlers() -> Iterator[tuple[Collect, SimpleSpanHandler]]:
    root = get_dispatcher()
    events, spans = Collect(events=[]), SimpleSpanHandler()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    yield events, spans
    root.event_handlers.remove(events)
    root.span_handlers.remove(spans)


def _align_spans(spans: SimpleSpanHandler) -> list[Any]:
    return [s for s in spans.completed_spans if s.id_.startswith("DiffPOAlignment.")]


@pytest.mark.parametrize("form", ["chat", "achat", "stream_chat", "astream_chat"])
async def test_every_form_is_one_span_with_two_events(
    form: str, handlers: tuple[Collect, SimpleSpanHandler], aligner: FakeAligner
) -> None:
    events, spans = handlers
    llm = DiffPOLLM(llm=DraftLLM(), aligner=aligner)
    messages = [ChatMessage(role="user", content="Name a prime.")]
    if form == "chat":
        llm.chat(messages)
    elif form == "achat":
        await llm.achat(messages)
    elif form == "stream_chat":
        list(llm.stream_chat(messages))
    else:
        [c async for c in await llm.astream_chat(messages)]
    [span] = _align_spans(spans)
    start, end = events.events
    assert isinstance(start, DiffPOAlignStartEvent)
    assert isinstance(end, DiffPOAlignEndEvent)
    assert start.span_id == end.span_id == span.id_
    assert start.messages == [{"role": "user", "content": "Name a prime."}]
    assert start.caller == f"DiffPOLLM.{form}"
    assert end.aligned is True
    assert set(end.metadata) == set(AlignResult.model_fields) - {"text"}
    assert end.metadata["draft"] == aligner.requests[0].draft
    assert end.metadata["kept_prefix"] == " ".join(aligner.requests[0].draft.split()[:3])
    # The alignment span sits inside the LLM call's own span.
    assert span.parent_id is not None
    assert span.parent_id.startswith("DiffPOLLM.")


def test_stream_span_covers_the_whole_iteration(
    handlers: tuple[Collect, SimpleSpanHandler], aligner: FakeAligner, index: Any
) -> None:
    _, spans = handlers
    response = DiffPOQueryEngine(index.as_query_engine(llm=DraftLLM(), streaming=True), aligner=aligner).query("q")
    assert _align_spans(spans) == []  # not started: the stream is lazy
    pieces = list(response.response_gen)
    [span] = _align_spans(spans)
    assert span.duration >= 0
    assert len(pieces) > 1


def test_failure_drops_the_span(handlers: tuple[Collect, SimpleSpanHandler]) -> None:
    events, spans = handlers
    llm = DiffPOLLM(llm=DraftLLM(), aligner=FakeAligner(fail=AlignerConnectionError("down")))
    with pytest.raises(AlignerConnectionError):
        llm.complete("Name a prime.")
    assert _align_spans(spans) == []
    assert any(s.id_.startswith("DiffPOAlignment.align") for s in spans.dropped_spans)
    assert [type(e) for e in events.events] == [DiffPOAlignStartEvent]
