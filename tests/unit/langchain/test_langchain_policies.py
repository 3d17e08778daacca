"""Stream policies (full draft vs early) and fail policies (closed vs open) on every component."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import ChatPromptTemplate
from langchain_fakes import DRAFT, USAGE, EchoAligner, FailingAligner, ScriptedChatModel, diffpo_meta, expected_text

from diffpo_integrations.core.errors import AlignerError, ConfigurationError, ConversationNotFoundError, InputError
from diffpo_integrations.langchain import FAIL_OPEN_EVENT, ChatDiffPO, DiffPOAlign, FailOpenWarning

UNALIGNED = {
    "draft": DRAFT,
    "kept_prefix": "",
    "kept_prefix_tokens": 0,
    "generated_tokens": 0,
    "finish_reason": "error",
    "aligned": False,
    "error": "AlignerError: aligner down",
    "endpoint": "fake://echo",
    "timings": {},
    "details": {},
}


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))


def merge(chunks: list[Any]) -> Any:
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    return merged


# -- stream policy -------------------------------------------------------------------------------


def test_full_draft_reads_the_whole_draft(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner
) -> None:
    list((prompt | llm | DiffPOAlign(aligner=aligner)).stream({"question": "Q"}))
    assert llm.served == len(DRAFT.split()) * 2 - 1  # words and the spaces between them


def test_early_stops_reading_the_base_model_and_gives_the_same_answer(
    prompt: ChatPromptTemplate, make_llm: Callable[..., ScriptedChatModel], aligner: EchoAligner
) -> None:
    full_llm, early_llm = make_llm(), make_llm()
    full = merge(list((prompt | full_llm | DiffPOAlign(aligner=aligner)).stream({"question": "Q"})))
    early = merge(
        list((prompt | early_llm | DiffPOAlign(aligner=aligner, stream_policy="early")).stream({"question": "Q"}))
    )
    assert early.content == full.content == expected_text("Q")
    # keep_prefix_tokens=2: three complete words ("Seven is a ") are enough.
    assert early_llm.served == 6
    assert full_llm.served == len(DRAFT.split()) * 2 - 1
    meta = diffpo_meta(early)
    assert meta["draft"] == "Seven is a "
    assert meta["details"] == {"draft_complete": False}
    assert early.usage_metadata is None  # the draft's usage is not known once reading stopped


async def test_early_async(prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=aligner, stream_policy="early")
    text = "".join([c.content async for c in chain.astream({"question": "Q"})])
    assert text == expected_text("Q")
    assert llm.served == 6


def test_early_on_chat_diffpo(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    model = ChatDiffPO(llm=llm, aligner=aligner, stream_policy="early")
    text = "".join(c.content for c in model.stream([("system", "You are terse."), ("human", "Q")]))
    assert text == expected_text("Q")
    assert llm.served == 6


def test_early_needs_a_fixed_prefix(prompt: ChatPromptTemplate, llm: ScriptedChatModel) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=EchoAligner(prefix_sampling="paper"), stream_policy="early")
    with pytest.raises(ConfigurationError, match="stream_policy='early' needs a fixed kept prefix"):
        list(chain.stream({"question": "Q"}))
    fixed = (
        prompt
        | llm
        | DiffPOAlign(aligner=EchoAligner(prefix_sampling="paper"), stream_policy="early", keep_prefix_tokens=2)
    )
    assert "".join(c.content for c in fixed.stream({"question": "Q"})) == expected_text("Q")


def test_bad_policies_are_configuration_errors(aligner: EchoAligner) -> None:
    with pytest.raises(ConfigurationError, match="stream_policy must be"):
        DiffPOAlign.model_construct(aligner=aligner, stream_policy="sometimes").alignment  # noqa: B018


# -- fail policy ---------------------------------------------------------------------------------


def test_fail_closed_raises_the_typed_error(prompt: ChatPromptTemplate, llm: ScriptedChatModel) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=FailingAligner())
    with pytest.raises(AlignerError, match=r"^aligner down$") as err:
        chain.invoke({"question": "Q"})
    assert err.value.status == 503
    with pytest.raises(AlignerError, match=r"^aligner down$"):
        list(chain.stream({"question": "Q"}))


def test_fail_open_returns_the_flagged_draft_warns_and_sends_an_event(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel
) -> None:
    events = Events()
    chain = prompt | llm | DiffPOAlign(aligner=FailingAligner(), fail_policy="open")
    with pytest.warns(
        FailOpenWarning,
        match=r"^DiffPO returned the draft unaligned \(fail_policy='open'\): AlignerError: aligner down$",
    ):
        out = chain.invoke({"question": "Q"}, {"callbacks": [events]})
    assert out.content == DRAFT
    assert out.id == "draft-1"
    assert out.usage_metadata == USAGE
    assert diffpo_meta(out) == UNALIGNED
    [(name, data)] = events.events
    assert name == FAIL_OPEN_EVENT
    assert {k: v for k, v in data.items() if k != "latency_s"} == UNALIGNED


async def test_fail_open_async(prompt: ChatPromptTemplate, llm: ScriptedChatModel) -> None:
    events = Events()
    chain = prompt | llm | DiffPOAlign(aligner=FailingAligner(), fail_policy="open")
    with pytest.warns(FailOpenWarning):
        out = await chain.ainvoke({"question": "Q"}, {"callbacks": [events]})
    assert out.content == DRAFT
    assert diffpo_meta(out) == UNALIGNED
    assert [n for n, _ in events.events] == [FAIL_OPEN_EVENT]


@pytest.mark.parametrize("policy", ["full_draft", "early"])
def test_fail_open_stream_before_any_text_streams_the_whole_draft(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, policy: str
) -> None:
    events = Events()
    chain = prompt | llm | DiffPOAlign(aligner=FailingAligner(), fail_policy="open", stream_policy=policy)
    with pytest.warns(FailOpenWarning):
        chunks = list(chain.stream({"question": "Q"}, {"callbacks": [events]}))
    merged = merge(chunks)
    assert merged.content == DRAFT
    assert [c.chunk_position for c in chunks].count("last") == 1
    assert chunks[-1].chunk_position == "last"
    assert merged.usage_metadata == USAGE  # once, not twice
    assert merged.response_metadata["model_name"] == "fake-base"
    assert diffpo_meta(merged) == UNALIGNED
    assert [n for n, _ in events.events] == [FAIL_OPEN_EVENT]


async def test_fail_open_astream_before_any_text(prompt: ChatPromptTemplate, llm: ScriptedChatModel) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=FailingAligner(), fail_policy="open", stream_policy="early")
    with pytest.warns(FailOpenWarning):
        chunks = [c async for c in chain.astream({"question": "Q"})]
    merged = merge(chunks)
    assert merged.content == DRAFT
    assert diffpo_meta(merged) == UNALIGNED


def test_fail_open_stream_after_text_raises(prompt: ChatPromptTemplate, llm: ScriptedChatModel) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=FailingAligner(after=2), fail_policy="open")
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fail-open warning either: the error is raised
        with pytest.raises(AlignerError, match=r"^aligner down$"):
            seen.extend(chunk.content for chunk in chain.stream({"question": "Q"}))
    assert "".join(seen) == expected_text("Q")[: len("".join(seen))]
    assert len(seen) == 2


def test_fail_open_covers_bad_drafts_but_not_wiring_errors(
    prompt: ChatPromptTemplate, make_llm: Callable[..., ScriptedChatModel]
) -> None:
    refuses = FailingAligner(InputError("the draft is empty"))
    # The whitespace draft is refused when the request is built, before the aligner is called.
    with pytest.raises(InputError, match=r"^the draft is empty or whitespace: pass the base model's answer text"):
        (prompt | make_llm("   ") | DiffPOAlign(aligner=refuses)).invoke({"question": "Q"})
    with pytest.warns(FailOpenWarning, match=r"InputError: the draft is empty or whitespace: "):
        out = (prompt | make_llm("   ") | DiffPOAlign(aligner=refuses, fail_policy="open")).invoke({"question": "Q"})
    assert out.content == "   "
    # A missing conversation is a wiring mistake: fail-open does not hide it.
    with pytest.raises(ConversationNotFoundError):
        DiffPOAlign(aligner=refuses, fail_policy="open").invoke(DRAFT)


def test_fail_open_on_chat_diffpo(llm: ScriptedChatModel) -> None:
    events = Events()
    model = ChatDiffPO(llm=llm, aligner=FailingAligner(), fail_policy="open")
    with pytest.warns(FailOpenWarning):
        out = model.invoke("Q", {"callbacks": [events]})
    assert out.content == DRAFT
    assert diffpo_meta(out) == UNALIGNED
    assert [n for n, _ in events.events] == [FAIL_OPEN_EVENT]
    with pytest.warns(FailOpenWarning):
        chunks = list(model.stream("Q"))
    assert merge(chunks).content == DRAFT
    assert chunks[-1].chunk_position == "last"
    with pytest.raises(AlignerError):
        ChatDiffPO(llm=llm, aligner=FailingAligner()).invoke("Q")


async def test_fail_open_on_chat_diffpo_async(llm: ScriptedChatModel) -> None:
    events = Events()
    model = ChatDiffPO(llm=llm, aligner=FailingAligner(), fail_policy="open")
    with pytest.warns(FailOpenWarning):
        out = await model.ainvoke("Q", {"callbacks": [events]})
    assert diffpo_meta(out) == UNALIGNED
    assert [n for n, _ in events.events] == [FAIL_OPEN_EVENT]
    with pytest.warns(FailOpenWarning):
        chunks = [c async for c in model.astream("Q")]
    assert merge(chunks).content == DRAFT
