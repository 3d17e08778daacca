"""DiffPOMiddleware in a create_agent agent, and DiffPOAlign as a LangGraph node."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_fakes import DRAFT, EchoAligner, FailingAligner, ScriptedChatModel, diffpo_meta, draft_message, echo_text
from langgraph.graph import END, START, MessagesState, StateGraph

from diffpo_integrations.core.errors import AlignerError
from diffpo_integrations.core.types import Message
from diffpo_integrations.langchain import DiffPOAlign, DiffPOMiddleware, FailOpenWarning

CALL = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}
SYSTEM = "You answer weather questions."


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}, 21 C."


def agent_llm() -> ScriptedChatModel:
    return ScriptedChatModel(
        messages=iter([AIMessage(content="", tool_calls=[CALL], id="turn-1"), draft_message(DRAFT, id="turn-2")])
    )


# The aligner sees the tool result folded into the user turn it answers.
AGENT_CONVERSATION = [
    Message(role="system", content=SYSTEM),
    Message(
        role="user", content='Weather in Paris?\n\nTool result (get_weather {"city": "Paris"}): Sunny in Paris, 21 C.'
    ),
]


def test_middleware_aligns_the_final_answer_only(aligner: EchoAligner) -> None:
    agent = create_agent(agent_llm(), [get_weather], system_prompt=SYSTEM, middleware=[DiffPOMiddleware(aligner)])
    state = agent.invoke({"messages": [HumanMessage(content="Weather in Paris?")]})
    _human, call, result, answer = state["messages"]
    assert call.tool_calls == [CALL]
    assert "diffpo" not in call.response_metadata
    assert isinstance(result, ToolMessage)
    assert answer.id == "turn-2"
    assert answer.content == echo_text(AGENT_CONVERSATION, DRAFT, 2)
    assert diffpo_meta(answer)["aligned"] is True
    assert aligner.calls == [(AGENT_CONVERSATION, DRAFT)]


async def test_middleware_async(aligner: EchoAligner) -> None:
    agent = create_agent(agent_llm(), [get_weather], system_prompt=SYSTEM, middleware=[DiffPOMiddleware(aligner)])
    state = await agent.ainvoke({"messages": [HumanMessage(content="Weather in Paris?")]})
    assert state["messages"][-1].content == echo_text(AGENT_CONVERSATION, DRAFT, 2)


def test_middleware_fail_policies() -> None:
    closed = create_agent(agent_llm(), [get_weather], middleware=[DiffPOMiddleware(FailingAligner())])
    # LangGraph adds a note naming the task; the message itself is the aligner's.
    with pytest.raises(AlignerError, match=r"^aligner down\n"):
        closed.invoke({"messages": [HumanMessage(content="Weather in Paris?")]})
    opened = create_agent(
        agent_llm(), [get_weather], middleware=[DiffPOMiddleware(FailingAligner(), fail_policy="open")]
    )
    with pytest.warns(FailOpenWarning):
        state = opened.invoke({"messages": [HumanMessage(content="Weather in Paris?")]})
    assert state["messages"][-1].content == DRAFT
    assert diffpo_meta(state["messages"][-1])["aligned"] is False


def build_graph(llm: Any, aligner: EchoAligner) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda state: {"messages": [llm.invoke(state["messages"])]})
    graph.add_node("align", DiffPOAlign(aligner=aligner))
    graph.add_edge(START, "model")
    graph.add_edge("model", "align")
    graph.add_edge("align", END)
    return graph.compile()


def test_langgraph_node_replaces_the_draft(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    app = build_graph(llm, aligner)
    state = app.invoke({"messages": [HumanMessage(content="Name a prime.")]})
    _human, answer = state["messages"]
    assert answer.id == "draft-1-aligned"
    assert answer.content == echo_text([Message(role="user", content="Name a prime.")], DRAFT, 2)


async def test_langgraph_node_async(llm: ScriptedChatModel, aligner: EchoAligner) -> None:
    state = await build_graph(llm, aligner).ainvoke({"messages": [HumanMessage(content="Name a prime.")]})
    assert state["messages"][-1].content == echo_text([Message(role="user", content="Name a prime.")], DRAFT, 2)
