"""A LlamaIndex Workflow (retrieve, draft, align) whose final answer is aligned by DiffPO.

The workflow's own steps end with a ``DraftAnswerEvent``; the ``DiffPOAlignStep`` mixin adds the
step that aligns it, streams ``AlignedAnswerDeltaEvent`` pieces and stops with an
``AlignedAnswerEvent``. The aligner is at ``$DIFFPO_ALIGNER_URL``; SmolLM2-135M-Instruct stands in
for a DiffPO checkpoint.

Run: ``DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/llamaindex_workflow.py``
"""

from __future__ import annotations

import asyncio

from llama_index.core import Document, SummaryIndex
from llama_index.core.schema import NodeWithScore
from llamaindex_common import base_llm, make_aligner, show
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent

from diffpo_integrations.llama_index import (
    AlignedAnswerDeltaEvent,
    AlignedAnswerEvent,
    DiffPOAlignStep,
    DraftAnswerEvent,
)

DOCUMENTS = [
    "DiffPO aligns the answer of any base model after the fact.",
    "The aligner keeps a prefix of the draft and continues it greedily.",
]
QUESTION = "What does DiffPO keep of the draft?"


class Retrieved(Event):
    query: str
    nodes: list[NodeWithScore]


class RAGFlow(DiffPOAlignStep, Workflow):
    """Retrieve, let the base model draft, then align (the last step comes from DiffPOAlignStep)."""

    index = SummaryIndex.from_documents([Document(text=t) for t in DOCUMENTS])
    llm = base_llm()

    @step
    async def retrieve(self, ev: StartEvent) -> Retrieved:
        nodes = await self.index.as_retriever().aretrieve(ev.query)
        return Retrieved(query=ev.query, nodes=nodes)

    @step
    async def draft(self, ctx: Context, ev: Retrieved) -> DraftAnswerEvent:
        context = "\n".join(n.node.get_content() for n in ev.nodes)
        draft = await self.llm.acomplete(f"Context:\n{context}\nQuestion: {ev.query}")
        return DraftAnswerEvent(query=ev.query, draft=draft.text, extra={"sources": len(ev.nodes)})


async def main() -> None:
    handler = RAGFlow(aligner=make_aligner(), timeout=300).run(query=QUESTION)
    print("== streamed aligned answer: ", end="")
    async for event in handler.stream_events():
        if isinstance(event, AlignedAnswerDeltaEvent):
            print(event.delta, end="|", flush=True)
    print()
    result = await handler
    assert isinstance(result, AlignedAnswerEvent)
    show("workflow final answer", result.draft, result.text, result.diffpo)
    print(f"sources: {result.extra['sources']}")


if __name__ == "__main__":
    asyncio.run(main())
