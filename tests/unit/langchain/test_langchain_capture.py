"""Prompt capture: each alignment finds its own conversation through retries, fallbacks, branches,
nesting and concurrency, and the registry is empty once the runs end."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from operator import itemgetter

from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel, FakeMessagesListChatModel
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_fakes import DRAFT, EchoAligner, ScriptedChatModel, draft_message, echo_text, expected_text

from diffpo_integrations.core.types import Message
from diffpo_integrations.langchain import DiffPOAlign
from diffpo_integrations.langchain._capture import PROMPT_CAPTURE


def test_with_retry_all_forms(
    prompt: ChatPromptTemplate, make_llm: Callable[..., ScriptedChatModel], aligner: EchoAligner
) -> None:
    # The model's parent run is the retry run, not the sequence that holds the alignment step.
    # (RunnableRetry retries invoke and batch; a stream goes through once.)
    for form in ("invoke", "stream", "batch"):
        llm = make_llm()
        llm.failures = 0 if form == "stream" else 1
        chain = (
            prompt | llm.with_retry(stop_after_attempt=2, wait_exponential_jitter=False) | DiffPOAlign(aligner=aligner)
        )
        if form == "invoke":
            text = chain.invoke({"question": "Retry?"}).content
        elif form == "stream":
            text = "".join(c.content for c in chain.stream({"question": "Retry?"}))
        else:
            [out] = chain.batch([{"question": "Retry?"}])
            text = out.content
        assert text == expected_text("Retry?"), form
        assert len(llm.calls) == (1 if form == "stream" else 2)


async def test_with_retry_async(prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    llm.failures = 1
    chain = prompt | llm.with_retry(stop_after_attempt=2, wait_exponential_jitter=False) | DiffPOAlign(aligner=aligner)
    assert (await chain.ainvoke({"question": "Retry?"})).content == expected_text("Retry?")
    assert "".join([c.content async for c in chain.astream({"question": "Again?"})]) == expected_text("Again?")


def test_with_fallbacks(
    prompt: ChatPromptTemplate, make_llm: Callable[..., ScriptedChatModel], aligner: EchoAligner
) -> None:
    broken = make_llm()
    broken.failures = 10
    chain = prompt | broken.with_fallbacks([make_llm()]) | DiffPOAlign(aligner=aligner)
    assert chain.invoke({"question": "Fallback?"}).content == expected_text("Fallback?")
    assert "".join(c.content for c in chain.stream({"question": "Stream?"})) == expected_text("Stream?")


def test_parallel_branches_each_find_their_own(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    def branch(system: str) -> object:
        p = ChatPromptTemplate.from_messages([("system", system), ("human", "{question}")])
        return p | llm | DiffPOAlign(aligner=aligner)

    chain = RunnableParallel(a=branch("Branch A."), b=branch("Branch B."))
    out = chain.invoke({"question": "Which?"})
    assert out["a"].content == expected_text("Which?", system="Branch A.")
    assert out["b"].content == expected_text("Which?", system="Branch B.")
    streamed: dict[str, str] = {"a": "", "b": ""}
    for piece in chain.stream({"question": "Which?"}):
        for key, chunk in piece.items():
            streamed[key] += chunk.content
    assert streamed == {"a": out["a"].content, "b": out["b"].content}


def test_two_models_under_one_ancestor_pick_the_one_that_wrote_the_draft(aligner: EchoAligner) -> None:
    pa = ChatPromptTemplate.from_messages([("human", "first {question}")])
    pb = ChatPromptTemplate.from_messages([("human", "second {question}")])
    la = ScriptedChatModel(messages=iter(["Answer A is this one."]))
    lb = ScriptedChatModel(messages=iter(["Answer B is that one."]))
    chain = RunnableParallel(a=pa | la, b=pb | lb) | itemgetter("a") | DiffPOAlign(aligner=aligner)
    out = chain.invoke({"question": "Q"})
    assert out.content == expected_text("first Q", "Answer A is this one.", system=None)


def test_nested_chains(prompt: ChatPromptTemplate, llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    inner = prompt | llm
    wrapped = RunnableLambda(lambda x: inner.invoke(x))
    chain = RunnableLambda(lambda x: x) | (wrapped | (RunnableLambda(lambda m: m) | DiffPOAlign(aligner=aligner)))
    assert chain.invoke({"question": "Nested?"}).content == expected_text("Nested?")
    outer = RunnableLambda(lambda x: chain.invoke(x))
    assert outer.invoke({"question": "Deeper?"}).content == expected_text("Deeper?")


async def test_sixteen_concurrent_async_chains(prompt: ChatPromptTemplate) -> None:
    aligner = EchoAligner(delay=0.01)
    llm = FakeListChatModel(responses=[DRAFT], sleep=0.005)
    chain = prompt | llm | DiffPOAlign(aligner=aligner)
    outs = await asyncio.gather(*(chain.ainvoke({"question": f"Question {i}"}) for i in range(16)))
    assert [o.content for o in outs] == [expected_text(f"Question {i}") for i in range(16)]
    assert aligner.peak > 1

    async def streamed(i: int) -> str:
        return "".join([c.content async for c in chain.astream({"question": f"Stream {i}"})])

    texts = await asyncio.gather(*(streamed(i) for i in range(16)))
    assert texts == [expected_text(f"Stream {i}") for i in range(16)]


def test_threaded_batch(prompt: ChatPromptTemplate, aligner: EchoAligner) -> None:
    llm = FakeMessagesListChatModel(responses=[draft_message()])
    chain = prompt | llm | DiffPOAlign(aligner=aligner)
    outs = chain.batch([{"question": f"T{i}"} for i in range(16)], {"max_concurrency": 8})
    assert [o.content for o in outs] == [expected_text(f"T{i}") for i in range(16)]


def test_completion_llms_are_captured_too(aligner: EchoAligner) -> None:
    chain = PromptTemplate.from_template("Say {x}") | FakeListLLM(responses=[DRAFT]) | DiffPOAlign(aligner=aligner)
    assert chain.invoke({"x": "hi"}) == echo_text([Message(role="user", content="Say hi")], DRAFT, 2)


async def test_registry_is_empty_after_many_runs(
    prompt: ChatPromptTemplate, make_llm: Callable[..., ScriptedChatModel], aligner: EchoAligner
) -> None:
    chain = prompt | make_llm() | DiffPOAlign(aligner=aligner)
    failing = prompt | make_llm() | DiffPOAlign(aligner=aligner, conversation=None)
    early = prompt | make_llm() | DiffPOAlign(aligner=aligner, stream_policy="early")
    for i in range(20):
        chain.invoke({"question": f"{i}"})
        list(chain.stream({"question": f"{i}"}))
        list(early.stream({"question": f"{i}"}))
        await chain.ainvoke({"question": f"{i}"})
        [c async for c in early.astream({"question": f"{i}"})]
    chain.batch([{"question": f"{i}"} for i in range(20)])
    await chain.abatch([{"question": f"{i}"} for i in range(20)])
    broken = make_llm()
    broken.failures = 5
    for _ in range(5):
        with contextlib.suppress(ValueError):
            (prompt | broken | DiffPOAlign(aligner=aligner)).invoke({"question": "x"})
    # A stream abandoned half way ends (with an error) once it is closed or collected.
    stream = failing.stream({"question": "abandoned"})
    next(stream)
    stream.close()
    gc.collect()
    assert PROMPT_CAPTURE.size() == 0
