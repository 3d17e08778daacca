"""A LangGraph graph with an alignment node: model -> DiffPOAlign -> end.

``DiffPOAlign`` takes the graph state ``{"messages": [...]}`` whose last message is the draft and
returns ``{"messages": [aligned]}``; the aligned message keeps the draft's id, so the
``add_messages`` reducer replaces the draft in place. Offline demo against ``diffpo serve``
(SmolLM2-135M-Instruct stands in for a DiffPO checkpoint and also plays the base model):

    diffpo serve &
    DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/langchain_langgraph.py
"""

from __future__ import annotations

import os
from typing import Any

from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import DiffPOAlign

ALIGNER_URL = os.environ.get("DIFFPO_ALIGNER_URL", "http://127.0.0.1:8080")
BASE_URL = os.environ.get("DIFFPO_BASE_URL", ALIGNER_URL)


def build_graph() -> Any:
    llm = ChatOpenAI(base_url=f"{BASE_URL}/v1", api_key="not-needed", model="base", temperature=0, max_tokens=40)

    def model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", model)
    graph.add_node("align", DiffPOAlign(aligner=TGIAligner(ALIGNER_URL, max_new_tokens=40)))
    graph.add_edge(START, "model")
    graph.add_edge("model", "align")
    graph.add_edge("align", END)
    return graph.compile()


def main() -> None:
    state = build_graph().invoke({"messages": [("user", "Suggest a name for a friendly robot.")]})
    answer = state["messages"][-1]
    print("messages:", len(state["messages"]), "(the draft was replaced in place)")
    print("draft:  ", answer.response_metadata["diffpo"]["draft"])
    print("aligned:", answer.content)


if __name__ == "__main__":
    main()
