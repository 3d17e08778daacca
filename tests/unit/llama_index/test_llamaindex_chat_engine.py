"""DiffPOChatEngine: chat, achat, stream_chat, astream_chat; multi-turn history with the base model's drafts."""

from __future__ import annotations

from typing import Any

from llama_index.core import SummaryIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.chat_engine import ContextChatEngine, SimpleChatEngine
from llama_index.core.chat_engine.types import AgentChatResponse, StreamingAgentChatResponse
from llama_index.core.llms import MockLLM
from llamaindex_fakes import DraftLLM, FakeAligner

from diffpo_integrations.llama_index import DiffPOChatEngine

TURNS = ["Name a prime.", "And another one?", "Why are they prime?"]


def _plain_drafts(llm: Any) -> list[str]:
    """The base model's answers to TURNS, from the unwrapped engine."""
    engine = SimpleChatEngine.from_defaults(llm=llm)
    return [engine.chat(t).response.strip() for t in TURNS]


def _expected(drafts: list[str]) -> list[str]:
    """The aligned answers: each turn aligned with earlier user turns and the earlier *drafts*."""
    out, history = [], []
    for turn, draft in zip(TURNS, drafts, strict=True):
        out.append(FakeAligner().align([*history, ("user", turn)], draft).text)
        history += [("user", turn), ("assistant", draft)]
    return out


def test_chat_multi_turn(aligner: FakeAligner, llm: DraftLLM) -> None:
    chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=llm), aligner=aligner)
    answers = []
    for turn in TURNS:
        response = chat.chat(turn)
        assert type(response) is AgentChatResponse
        answers.append(response.response)
    drafts = _plain_drafts(DraftLLM())
    assert answers == _expected(drafts)
    assert [len(r.messages) for r in aligner.requests] == [1, 3, 5]
    # The inner memory keeps the drafts, which the base model and the aligner both condition on.
    assert [m.content for m in chat.chat_history][1::2] == drafts
    assert response.metadata is not None
    assert response.metadata["diffpo"]["draft"] == drafts[-1]


async def test_achat_multi_turn(aligner: FakeAligner, llm: DraftLLM) -> None:
    chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=llm), aligner=aligner)
    answers = [(await chat.achat(t)).response for t in TURNS]
    assert answers == _expected(_plain_drafts(DraftLLM()))


def test_stream_chat_multi_turn(aligner: FakeAligner, llm: DraftLLM) -> None:
    chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=llm), aligner=aligner)
    answers = []
    for turn in TURNS:
        response = chat.stream_chat(turn)
        assert isinstance(response, StreamingAgentChatResponse)
        pieces = list(response.response_gen)
        assert len(pieces) > 1
        assert "".join(pieces) == response.response
        answers.append(response.response)
        assert response.metadata["diffpo"]["aligned"] is True
    assert answers == _expected(_plain_drafts(DraftLLM()))


async def test_astream_chat_multi_turn(aligner: FakeAligner, llm: DraftLLM) -> None:
    chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=llm), aligner=aligner)
    answers = []
    for turn in TURNS:
        response = await chat.astream_chat(turn)
        pieces = [p async for p in response.async_response_gen()]
        assert len(pieces) > 1
        answers.append("".join(pieces))
    assert answers == _expected(_plain_drafts(DraftLLM()))


def test_mock_llm_stream_equals_chat(aligner: FakeAligner) -> None:
    # MockLLM echoes its prompt with trailing whitespace: drafts are stripped on both paths. (Later
    # turns differ in LlamaIndex itself: its memory stores streamed answers stripped, others not.)
    chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=MockLLM()), aligner=aligner)
    streamed = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=MockLLM()), aligner=FakeAligner())
    assert "".join(streamed.stream_chat(TURNS[0]).response_gen) == chat.chat(TURNS[0]).response


def test_explicit_history_and_reset(aligner: FakeAligner, llm: DraftLLM) -> None:
    chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=llm), aligner=aligner)
    history = [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello there.")]
    chat.chat("Name a prime.", chat_history=history)
    assert [(m.role, m.content) for m in aligner.requests[-1].messages] == [
        ("user", "Hi"),
        ("assistant", "Hello there."),
        ("user", "Name a prime."),
    ]
    chat.reset()
    assert chat.chat_history == []


def test_context_chat_engine_keeps_source_nodes(index: SummaryIndex, aligner: FakeAligner, llm: DraftLLM) -> None:
    inner = ContextChatEngine.from_defaults(retriever=index.as_retriever(), llm=llm)
    response = DiffPOChatEngine(inner, aligner=aligner, include_context=True).chat("What does DiffPO align?")
    assert len(response.source_nodes) == 3
    assert len(response.sources) == 1
    assert "DiffPO aligns the answer" in aligner.requests[-1].messages[-1].content
