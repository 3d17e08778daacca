"""Stream aligned tokens as the aligner produces them, with both stream policies.

- ``stream_policy="full_draft"`` (default) waits for the whole draft, then streams the aligned answer.
- ``stream_policy="early"`` starts the aligner once the kept draft prefix has surely arrived and
  stops reading the base model: the same answer, sooner.

Offline demo against ``diffpo serve`` (SmolLM2-135M-Instruct stands in for a DiffPO checkpoint and
also plays the base model):

    diffpo serve &
    DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/langchain_streaming.py
"""

from __future__ import annotations

import os
import time

from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import DiffPOAlign

ALIGNER_URL = os.environ.get("DIFFPO_ALIGNER_URL", "http://127.0.0.1:8080")
BASE_URL = os.environ.get("DIFFPO_BASE_URL", ALIGNER_URL)


def main() -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    llm = ChatOpenAI(base_url=f"{BASE_URL}/v1", api_key="not-needed", model="base", temperature=0, max_tokens=48)
    aligner = TGIAligner(ALIGNER_URL, max_new_tokens=48)
    question = {"question": "Describe the ocean in two sentences."}
    answers = {}
    for policy in ("full_draft", "early"):
        chain = prompt | llm | DiffPOAlign(aligner=aligner, stream_policy=policy)
        start = time.perf_counter()
        first = None
        full = None
        print(f"[{policy}] aligned: ", end="", flush=True)
        for chunk in chain.stream(question):
            if first is None and chunk.content:
                first = time.perf_counter() - start
            print(chunk.content, end="", flush=True)
            full = chunk if full is None else full + chunk
        assert full is not None
        answers[policy] = full.content
        print(f"\n[{policy}] draft seen by the aligner: {full.response_metadata['diffpo']['draft']!r}")
        print(f"[{policy}] first aligned token after {first or 0.0:.2f} s")
    print("same answer:", answers["full_draft"] == answers["early"])


if __name__ == "__main__":
    main()
