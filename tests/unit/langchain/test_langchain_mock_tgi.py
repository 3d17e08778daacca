"""Every component against TGIAligner over a mock TGI transport: the same answers as TGIAligner.align."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_fakes import DRAFT, USAGE, ScriptedChatModel, draft_message

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import MockTGIServer, mock_tgi
from diffpo_integrations.core.errors import ServerValidationError
from diffpo_integrations.langchain import ChatDiffPO, DiffPOAlign, DiffPOMiddleware, FailOpenWarning

URL = "http://mock-tgi"
CONVERSATION = [("system", "You are terse."), ("user", "Name a prime.")]


@pytest.fixture(params=[True, False], ids=["align-route", "plain-tgi"])
def server(request: pytest.FixtureRequest) -> Iterator[MockTGIServer]:
    with mock_tgi(align_route=request.param) as server:
        yield server


@pytest.fixture
def tgi(server: MockTGIServer) -> TGIAligner:
    return TGIAligner(URL, template="chatml", max_retries=0)


@pytest.fixture
def expected(tgi: TGIAligner) -> str:
    text = tgi.align(CONVERSATION, DRAFT).text
    assert text != DRAFT
    return text


def merge(chunks: list[Any]) -> Any:
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    return merged


def test_chain_all_sync_forms(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, tgi: TGIAligner, expected: str
) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=tgi)
    out = chain.invoke({"question": "Name a prime."})
    assert out.content == expected
    assert out.id == "draft-1"
    assert out.usage_metadata == USAGE
    meta = out.response_metadata["diffpo"]
    assert (meta["draft"], meta["aligned"], meta["endpoint"]) == (DRAFT, True, URL)
    assert [o.content for o in chain.batch([{"question": "Name a prime."}] * 2)] == [expected, expected]
    streamed = merge(list(chain.stream({"question": "Name a prime."})))
    assert streamed.content == expected
    assert streamed.response_metadata["diffpo"]["draft"] == DRAFT


async def test_chain_async_forms(
    prompt: ChatPromptTemplate, llm: ScriptedChatModel, tgi: TGIAligner, expected: str
) -> None:
    chain = prompt | llm | DiffPOAlign(aligner=tgi)
    assert (await chain.ainvoke({"question": "Name a prime."})).content == expected
    assert merge([c async for c in chain.astream({"question": "Name a prime."})]).content == expected
    assert [o.content for o in await chain.abatch([{"question": "Name a prime."}] * 3)] == [expected] * 3


def test_default_aligner_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, prompt: ChatPromptTemplate, llm: ScriptedChatModel
) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", URL)
    with mock_tgi():  # the embedded server's route: no template needed
        expected = TGIAligner().align(CONVERSATION, DRAFT).text
        assert (prompt | llm | DiffPOAlign()).invoke({"question": "Name a prime."}).content == expected


def test_early_policy_gives_the_full_draft_answer(
    prompt: ChatPromptTemplate, make_llm: Any, tgi: TGIAligner, expected: str
) -> None:
    early_llm = make_llm()
    chain = prompt | early_llm | DiffPOAlign(aligner=tgi, stream_policy="early")
    assert merge(list(chain.stream({"question": "Name a prime."}))).content == expected
    # keep_prefix_tokens=6: seven complete words (and the spaces after them) of 25 pieces are read.
    assert early_llm.served == 14
    assert len(DRAFT.split()) * 2 - 1 == 25


def test_chat_model(llm: ScriptedChatModel, tgi: TGIAligner, expected: str) -> None:
    model = ChatDiffPO(llm=llm, aligner=tgi)
    messages = [SystemMessage(content="You are terse."), HumanMessage(content="Name a prime.")]
    assert model.invoke(messages).content == expected
    chunks = list(model.stream(messages))
    assert merge(chunks).content == expected
    assert chunks[-1].chunk_position == "last"


async def test_chat_model_async(llm: ScriptedChatModel, tgi: TGIAligner, expected: str) -> None:
    model = ChatDiffPO(llm=llm, aligner=tgi)
    messages = [SystemMessage(content="You are terse."), HumanMessage(content="Name a prime.")]
    assert (await model.ainvoke(messages)).content == expected
    assert merge([c async for c in model.astream(messages)]).content == expected


def test_agent_middleware(tgi: TGIAligner, expected: str) -> None:
    agent = create_agent(
        ScriptedChatModel(messages=iter([draft_message()])),
        system_prompt="You are terse.",
        middleware=[DiffPOMiddleware(tgi)],
    )
    state = agent.invoke({"messages": [HumanMessage(content="Name a prime.")]})
    assert state["messages"][-1].content == expected


def test_server_errors_follow_the_fail_policy(prompt: ChatPromptTemplate, make_llm: Any) -> None:
    with mock_tgi(failures=[422, 422]):
        tgi = TGIAligner(URL, template="chatml", max_retries=0)
        with pytest.raises(ServerValidationError, match=r"^mock failure 422$"):
            (prompt | make_llm() | DiffPOAlign(aligner=tgi)).invoke({"question": "Q"})
        with pytest.warns(FailOpenWarning, match=r"ServerValidationError: mock failure 422$"):
            out = (prompt | make_llm() | DiffPOAlign(aligner=tgi, fail_policy="open")).invoke({"question": "Q"})
    assert isinstance(out, AIMessage)
    assert out.content == DRAFT
    meta = out.response_metadata["diffpo"]
    assert (meta["aligned"], meta["error"], meta["endpoint"]) == (False, "ServerValidationError: mock failure 422", URL)
