"""Every LangChain component against the live embedded server: the same answers as TGIAligner.align."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_live import MAX_TOKENS, base_model
from langchain_openai import ChatOpenAI

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import ChatDiffPO, DiffPOAlign, DiffPOMiddleware

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful assistant."
QUESTION = "Name a prime number."
CONVERSATION = [("system", SYSTEM), ("user", QUESTION)]
PROMPT = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])


def merge(chunks: list[Any]) -> Any:
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    return merged


@pytest.fixture(scope="module")
def draft(live_url: str) -> AIMessage:
    message = base_model(live_url).invoke([SystemMessage(content=SYSTEM), HumanMessage(content=QUESTION)])
    assert isinstance(message, AIMessage)
    assert message.text.strip()
    return message


@pytest.fixture(scope="module")
def expected(live_url: str, draft: AIMessage) -> str:
    return TGIAligner(live_url, max_new_tokens=MAX_TOKENS).align(CONVERSATION, draft.text).text


def test_chain_sync_forms(live_llm: ChatOpenAI, live_aligner: TGIAligner, draft: AIMessage, expected: str) -> None:
    chain = PROMPT | live_llm | DiffPOAlign(aligner=live_aligner)
    out = chain.invoke({"question": QUESTION})
    assert out.content == expected
    meta = out.response_metadata["diffpo"]
    assert (meta["draft"], meta["aligned"], meta["endpoint"]) == (draft.text, True, live_aligner.endpoint)
    assert out.usage_metadata is not None
    assert out.response_metadata["model_name"]
    streamed = merge(list(chain.stream({"question": QUESTION})))
    assert streamed.content == expected
    assert streamed.response_metadata["diffpo"]["draft"] == draft.text
    assert [o.content for o in chain.batch([{"question": QUESTION}] * 2)] == [expected, expected]


async def test_chain_async_forms(live_llm: ChatOpenAI, live_aligner: TGIAligner, expected: str) -> None:
    chain = PROMPT | live_llm | DiffPOAlign(aligner=live_aligner)
    assert (await chain.ainvoke({"question": QUESTION})).content == expected
    assert merge([c async for c in chain.astream({"question": QUESTION})]).content == expected
    outs = await chain.abatch([{"question": QUESTION}] * 2)
    assert [o.content for o in outs] == [expected, expected]


def test_default_aligner_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, live_url: str, live_llm: ChatOpenAI, draft: AIMessage
) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", live_url)
    expected = TGIAligner().align(CONVERSATION, draft.text).text
    assert (PROMPT | live_llm | DiffPOAlign()).invoke({"question": QUESTION}).content == expected


def test_early_policy_gives_the_same_answer(live_llm: ChatOpenAI, live_aligner: TGIAligner, draft: AIMessage) -> None:
    # Two kept tokens: three complete words of the draft are enough, so reading stops early.
    expected = live_aligner.align(CONVERSATION, draft.text, keep_prefix_tokens=2).text
    chain = PROMPT | live_llm | DiffPOAlign(aligner=live_aligner, stream_policy="early", keep_prefix_tokens=2)
    out = merge(list(chain.stream({"question": QUESTION})))
    assert out.content == expected
    meta = out.response_metadata["diffpo"]
    assert meta["details"]["draft_complete"] is False
    assert draft.text.startswith(meta["draft"])
    assert len(meta["draft"]) < len(draft.text)


def test_chat_model(live_llm: ChatOpenAI, live_aligner: TGIAligner, draft: AIMessage, expected: str) -> None:
    model = ChatDiffPO(llm=live_llm, aligner=live_aligner)
    messages = [SystemMessage(content=SYSTEM), HumanMessage(content=QUESTION)]
    with get_usage_metadata_callback() as usage:
        out = model.invoke(messages)
    assert out.content == expected
    # The base model's tokens are counted once, on its own run; the aligner's on the aligner's run.
    assert out.usage_metadata is None
    assert usage.usage_metadata[draft.response_metadata["model_name"]] == draft.usage_metadata
    assert usage.usage_metadata[live_aligner.endpoint]["output_tokens"] > 0
    chunks = list(model.stream(messages))
    assert merge(chunks).content == expected
    assert chunks[-1].chunk_position == "last"


async def test_chat_model_async_and_multi_turn(live_llm: ChatOpenAI, live_aligner: TGIAligner, expected: str) -> None:
    model = ChatDiffPO(llm=live_llm, aligner=live_aligner)
    first = await model.ainvoke([SystemMessage(content=SYSTEM), HumanMessage(content=QUESTION)])
    assert first.content == expected
    history = [SystemMessage(content=SYSTEM), HumanMessage(content=QUESTION), first, HumanMessage(content="Why?")]
    second = await model.ainvoke(history)
    base_first = first.response_metadata["diffpo"]["draft"]
    conversation = [*CONVERSATION, ("assistant", base_first), ("user", "Why?")]
    assert second.content == live_aligner.align(conversation, second.response_metadata["diffpo"]["draft"]).text


def test_agent_middleware(live_aligner: TGIAligner) -> None:
    final = "It is sunny in Paris, so a light jacket is enough."

    class Scripted(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    agent = create_agent(
        Scripted(messages=iter([AIMessage(content=final)])),
        system_prompt=SYSTEM,
        middleware=[DiffPOMiddleware(live_aligner)],
    )
    state = agent.invoke({"messages": [HumanMessage(content="What should I wear in Paris?")]})
    expected = live_aligner.align([("system", SYSTEM), ("user", "What should I wear in Paris?")], final).text
    assert state["messages"][-1].content == expected
