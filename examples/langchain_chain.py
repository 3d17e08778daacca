"""Align an API chat model's answer in a chain: ``prompt | ChatOpenAI(...) | DiffPOAlign()``.

Offline demo: ``diffpo serve`` plays both parts. Its OpenAI-compatible route is the base model
(reached through ``langchain_openai.ChatOpenAI``, the real API client) and its TGI route is the
aligner. SmolLM2-135M-Instruct stands in for a DiffPO checkpoint, so the "aligned" answer below
is SmolLM2's continuation of the kept draft prefix, not DiffPO's.

    diffpo serve &
    DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/langchain_chain.py

``DIFFPO_BASE_URL`` points the base model elsewhere (any OpenAI-compatible server); it defaults
to the aligner's server.
"""

from __future__ import annotations

import os

from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import DiffPOAlign

ALIGNER_URL = os.environ.get("DIFFPO_ALIGNER_URL", "http://127.0.0.1:8080")
BASE_URL = os.environ.get("DIFFPO_BASE_URL", ALIGNER_URL)


def main() -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "You are a helpful assistant."), ("human", "{question}")])
    llm = ChatOpenAI(base_url=f"{BASE_URL}/v1", api_key="not-needed", model="base", temperature=0, max_tokens=48)
    # TGIAligner() reads DIFFPO_ALIGNER_URL; a short budget keeps the CPU demo quick.
    chain = prompt | llm | DiffPOAlign(aligner=TGIAligner(max_new_tokens=48))

    answer = chain.invoke({"question": "Give me one tip for brewing good coffee."})
    meta = answer.response_metadata["diffpo"]
    print("draft:  ", meta["draft"])
    print("aligned:", answer.content)
    print(f"kept prefix: {meta['kept_prefix']!r}  aligned: {meta['aligned']}  endpoint: {meta['endpoint']}")


if __name__ == "__main__":
    main()
