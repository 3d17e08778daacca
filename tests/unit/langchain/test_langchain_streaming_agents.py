"""Agents and graphs as a chat UI streams them: LangGraph ``messages`` mode, ``astream_events``, tracing."""

from __future__ import annotations

import operator
from itertools import chain, repeat
from typing import Annotated, Any, TypedDict
from uuid import UUID

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import AIMessage, AIMessageChunk, AnyMessage, BaseMessage, HumanMessage
from langchain_core.outputs import LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.tools import tool
from langchain_fakes import DRAFT, USAGE, EchoAligner, ScriptedChatModel, draft_message, echo_text
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages

from diffpo_integrations.core.errors import ConfigurationError, ConversationNotFoundError
from diffpo_integrations.core.types import Message
from diffpo_integrations.langchain import ChatDiffPO, DiffPOAlign, DiffPOMiddleware

CALL = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}
QUESTION = "Weather in Paris?"
GROUNDED = [
    Message(role="user", content=f'{QUESTION}\n\nTool result (get_weather {{"city": "Paris"}}): Sunny in Paris, 21 C.')
]
ALIGNED = echo_text(GROUNDED, DRAFT, 2)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}, 21 C."


def agent_model() -> ScriptedChatModel:
    answers = [AIMessage(content="", tool_calls=[CALL], id="turn-1"), draft_message(DRAFT, id="turn-2")]
    return ScriptedChatModel(messages=chain(answers, repeat(answers[-1])))


def _messages_stream(app: Any, inputs: dict[str, Any]) -> list[tuple[BaseMessage, dict[str, Any]]]:
    return list(app.stream(inputs, stream_mode="messages"))


def _texts_by_id(events: list[tuple[BaseMessage, dict[str, Any]]]) -> dict[str | None, str]:
    texts: dict[str | None, str] = {}
    for message, _meta in events:
        if isinstance(message, AIMessage) and message.text:
            texts[message.id] = texts.get(message.id, "") + message.text
    return texts


def _tool_calls_streamed(events: list[tuple[BaseMessage, dict[str, Any]]]) -> list[str]:
    names: list[str] = []
    for message, _meta in events:
        if isinstance(message, AIMessageChunk):
            names += [c["name"] for c in message.tool_call_chunks if c.get("name")]
        elif isinstance(message, AIMessage):
            names += [c["name"] for c in message.tool_calls]
    return names


# -- defect 3: the messages stream shows the aligned answer once, the draft never -------------


@pytest.mark.parametrize("wiring", ["chat_model", "middleware"])
def test_agent_messages_stream_shows_the_aligned_answer_once(wiring: str, aligner: EchoAligner) -> None:
    if wiring == "chat_model":
        agent = create_agent(ChatDiffPO(llm=agent_model(), aligner=aligner), [get_weather])
    else:
        agent = create_agent(agent_model(), [get_weather], middleware=[DiffPOMiddleware(aligner)])
    events = _messages_stream(agent, {"messages": [HumanMessage(content=QUESTION)]})
    texts = _texts_by_id(events)
    assert list(texts.values()) == [ALIGNED]
    assert DRAFT not in "".join(m.text for m, _ in events if isinstance(m, AIMessage))
    assert _tool_calls_streamed(events) == ["get_weather"]
    assert len([m for m, meta in events if meta["langgraph_node"] == "model" and m.text]) > 3  # tokens, not one message


@pytest.mark.parametrize("wiring", ["chat_model", "middleware"])
async def test_agent_astream_messages(wiring: str, aligner: EchoAligner) -> None:
    if wiring == "chat_model":
        agent = create_agent(ChatDiffPO(llm=agent_model(), aligner=aligner), [get_weather])
    else:
        agent = create_agent(agent_model(), [get_weather], middleware=[DiffPOMiddleware(aligner)])
    events = [e async for e in agent.astream({"messages": [HumanMessage(content=QUESTION)]}, stream_mode="messages")]
    assert list(_texts_by_id(events).values()) == [ALIGNED]
    assert _tool_calls_streamed(events) == ["get_weather"]


async def test_astream_events_tell_draft_tokens_from_aligned_ones(aligner: EchoAligner) -> None:
    model = ChatDiffPO(llm=ScriptedChatModel(messages=iter([draft_message()])), aligner=aligner)
    draft, aligned = "", ""
    async for event in model.astream_events([HumanMessage(content="Name a prime.")], version="v2"):
        if event["event"] != "on_chat_model_stream":
            continue
        if "diffpo:draft" in event["tags"]:
            draft += event["data"]["chunk"].text
        elif "diffpo:aligner" not in event["tags"]:
            aligned += event["data"]["chunk"].text
    assert draft == DRAFT
    assert aligned == echo_text([Message(role="user", content="Name a prime.")], DRAFT, 2)


async def test_middleware_astream_events_tell_draft_tokens_from_aligned_ones(aligner: EchoAligner) -> None:
    agent = create_agent(agent_model(), [get_weather], middleware=[DiffPOMiddleware(aligner)])
    draft, aligned = "", ""
    async for event in agent.astream_events({"messages": [HumanMessage(content=QUESTION)]}, version="v2"):
        if event["event"] == "on_chat_model_stream" and "diffpo:draft" in event["tags"]:
            draft += event["data"]["chunk"].text
        elif event["event"] == "on_chat_model_stream" and "diffpo:aligner" in event["tags"]:
            aligned += event["data"]["chunk"].text
    assert (draft, aligned) == (DRAFT, ALIGNED)


def align_graph(model_answer: AIMessage, aligner: EchoAligner) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda state: {"messages": [model_answer]})
    graph.add_node("align", DiffPOAlign(aligner=aligner))
    graph.add_edge(START, "model")
    graph.add_edge("model", "align")
    graph.add_edge("align", END)
    return graph.compile()


def test_align_node_streams_its_tokens_and_replaces_the_draft(aligner: EchoAligner) -> None:
    app = align_graph(draft_message(), aligner)
    events = _messages_stream(app, {"messages": [HumanMessage(content="Name a prime.", id="q")]})
    aligned = echo_text([Message(role="user", content="Name a prime.")], DRAFT, 2)
    from_align = [(m, meta) for m, meta in events if meta["langgraph_node"] == "align"]
    assert len(from_align) > 3  # streamed token by token
    assert _texts_by_id(from_align) == {"draft-1-aligned": aligned}
    state = app.invoke({"messages": [HumanMessage(content="Name a prime.", id="q")]})
    assert [(m.id, m.text) for m in state["messages"]] == [("q", "Name a prime."), ("draft-1-aligned", aligned)]


# -- defect 4: a node returns updates only ------------------------------------------------------


class LoggedState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    log: Annotated[list[str], operator.add]


def test_align_node_returns_nothing_on_a_tool_call_turn(aligner: EchoAligner) -> None:
    graph = StateGraph(LoggedState)
    call = AIMessage(content="", tool_calls=[CALL], id="turn-1")
    graph.add_node("model", lambda state: {"messages": [call], "log": ["model"]})
    graph.add_node("align", DiffPOAlign(aligner=aligner))
    graph.add_edge(START, "model")
    graph.add_edge("model", "align")
    graph.add_edge("align", END)
    state = graph.compile().invoke({"messages": [HumanMessage(content=QUESTION, id="q")], "log": ["start"]})
    assert state["log"] == ["start", "model"]
    assert [m.id for m in state["messages"]] == ["q", "turn-1"]
    assert aligner.calls == []


def test_align_node_returns_nothing_for_an_answer_already_aligned(aligner: EchoAligner) -> None:
    first = DiffPOAlign(aligner=aligner).invoke({"messages": [HumanMessage(content="Name a prime."), draft_message()]})
    aligned = next(m for m in first["messages"] if isinstance(m, AIMessage))
    again = DiffPOAlign(aligner=aligner).invoke({"messages": [HumanMessage(content="Name a prime."), aligned]})
    assert again == {}
    assert len(aligner.calls) == 1


# -- defect 5: capture never guesses ------------------------------------------------------------


def test_capture_refuses_to_guess_between_two_conversations(aligner: EchoAligner) -> None:
    pa = ChatPromptTemplate.from_messages([("human", "first {question}")])
    pb = ChatPromptTemplate.from_messages([("human", "second {question}")])
    la = ScriptedChatModel(messages=iter(["Answer A is this one."]))
    lb = ScriptedChatModel(messages=iter(["Answer B is that one."]))
    merge = RunnableLambda(lambda d: AIMessage(content=f"{d['a'].text} {d['b'].text}"))
    chain_ = RunnableParallel(a=pa | la, b=pb | lb) | merge | DiffPOAlign(aligner=aligner)
    with pytest.raises(ConversationNotFoundError, match=r"2 chat model runs .* could have written this draft"):
        chain_.invoke({"question": "Q"})
    assert aligner.calls == []


def test_capture_with_one_candidate_proceeds(aligner: EchoAligner) -> None:
    p = ChatPromptTemplate.from_messages([("human", "{question}")])
    lm = ScriptedChatModel(messages=iter(["Answer A is this one."]))
    chain_ = p | lm | RunnableLambda(lambda m: AIMessage(content=m.text.upper())) | DiffPOAlign(aligner=aligner)
    out = chain_.invoke({"question": "Q"})
    assert out.content == echo_text([Message(role="user", content="Q")], "ANSWER A IS THIS ONE.", 2)


# -- tracing -----------------------------------------------------------------------------------


class Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: dict[UUID, dict[str, Any]] = {}
        self.ends: dict[UUID, LLMResult] = {}

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        name = kwargs.get("name") or serialized.get("name") or serialized["id"][-1]
        self.starts[run_id] = {**kwargs, "name": name, "parent": kwargs.get("parent_run_id")}

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self.ends[run_id] = response


def test_aligner_call_is_a_child_model_run_and_usage_counts_once(aligner: EchoAligner) -> None:
    runs = Runs()
    model = ChatDiffPO(llm=ScriptedChatModel(messages=iter([draft_message()])), aligner=aligner)
    with get_usage_metadata_callback() as usage:
        message = model.invoke("Name a prime.", {"callbacks": [runs]})
    names = {run: start["name"] for run, start in runs.starts.items()}
    assert sorted(n or "" for n in names.values()) == ["ChatDiffPO", "DiffPOAligner", "ScriptedChatModel"]
    (aligner_run,) = [r for r, n in names.items() if n == "DiffPOAligner"]
    start = runs.starts[aligner_run]
    assert start["metadata"]["ls_provider"] == "diffpo"
    assert start["metadata"]["ls_model_name"] == "fake://echo"
    assert names[start["parent"]] == "ChatDiffPO"
    out = runs.ends[aligner_run].generations[0][0].message  # type: ignore[attr-defined]
    assert out.text == message.text
    assert out.usage_metadata == {"input_tokens": 2, "output_tokens": 7, "total_tokens": 9}
    # The base model's tokens are counted on its own run, the aligner's on the aligner's run.
    assert message.usage_metadata is None
    assert usage.usage_metadata == {
        "fake-base": {**USAGE},
        "fake://echo": {"input_tokens": 2, "output_tokens": 7, "total_tokens": 9},
    }


# -- aligner="http://..." ------------------------------------------------------------------------

URL_ERROR = r"^aligner='http://127\.0\.0\.1:8080' is a URL, not an aligner: pass aligner=TGIAligner\('http://127\.0\.0\.1:8080'\)"


def test_a_url_string_as_aligner_names_tgialigner() -> None:
    with pytest.raises(ConfigurationError, match=URL_ERROR):
        DiffPOAlign(aligner="http://127.0.0.1:8080")
    with pytest.raises(ConfigurationError, match=URL_ERROR):
        ChatDiffPO(llm=agent_model(), aligner="http://127.0.0.1:8080")
    with pytest.raises(ConfigurationError, match=URL_ERROR):
        DiffPOMiddleware("http://127.0.0.1:8080")  # type: ignore[arg-type]
