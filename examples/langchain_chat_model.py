"""``ChatDiffPO``: any chat model with its answers aligned, over two conversation turns.

The second turn's aligner conversation holds the base model's *own* first answer (read from the
first reply's ``response_metadata["diffpo"]["draft"]``), as the official MT-bench inference does.
Offline demo against ``diffpo serve`` (SmolLM2-135M-Instruct stands in for a DiffPO checkpoint and
also plays the base model):

    diffpo serve &
    DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/langchain_chat_model.py
"""

from __future__ import annotations

import os

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import ChatDiffPO

ALIGNER_URL = os.environ.get("DIFFPO_ALIGNER_URL", "http://127.0.0.1:8080")
BASE_URL = os.environ.get("DIFFPO_BASE_URL", ALIGNER_URL)


def main() -> None:
    base = ChatOpenAI(base_url=f"{BASE_URL}/v1", api_key="not-needed", model="base", temperature=0, max_tokens=40)
    model = ChatDiffPO(llm=base, aligner=TGIAligner(ALIGNER_URL, max_new_tokens=40))

    history = [SystemMessage(content="You are a concise assistant."), HumanMessage(content="Name a prime number.")]
    for turn, follow_up in enumerate(["Why is it prime?", None], start=1):
        reply = model.invoke(history)
        print(f"turn {turn} draft:  ", reply.response_metadata["diffpo"]["draft"])
        print(f"turn {turn} aligned:", reply.content)
        print(f"turn {turn} usage:  ", reply.usage_metadata)
        if follow_up is None:
            break
        history += [reply, HumanMessage(content=follow_up)]


if __name__ == "__main__":
    main()
