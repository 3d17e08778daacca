"""A small RAG pipeline over local documents, with answers aligned by DiffPO.

Two ways to add DiffPO to an existing pipeline, both shown here:

* change one argument: ``index.as_query_engine(response_synthesizer=DiffPOSynthesizer(...))``;
* wrap the finished engine: ``DiffPOQueryEngine(index.as_query_engine(...))``, here streaming.

The retriever is a ``SummaryIndex`` over three documents (no embeddings needed). The aligner is at
``$DIFFPO_ALIGNER_URL`` (``diffpo serve``); SmolLM2-135M-Instruct stands in for a DiffPO checkpoint.

Run: ``DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/llamaindex_rag.py``
"""

from __future__ import annotations

from llama_index.core import Document, SummaryIndex, get_response_synthesizer
from llamaindex_common import base_llm, make_aligner, show

from diffpo_integrations.llama_index import DiffPOQueryEngine, DiffPOSynthesizer

DOCUMENTS = [
    "DiffPO aligns the answer of any base model after the fact, with a small aligner model.",
    "The aligner keeps a prefix of the draft answer and continues it until the end of its turn.",
    "A TGI server can serve DiffPO exactly: greedy decoding on the prompt and the kept prefix.",
]
QUESTION = "How does DiffPO change an answer?"


def main() -> None:
    llm, aligner = base_llm(), make_aligner()
    index = SummaryIndex.from_documents([Document(text=t) for t in DOCUMENTS])

    # 1. One argument changed in an existing pipeline.
    synthesizer = DiffPOSynthesizer(get_response_synthesizer(llm=llm), aligner=aligner)
    engine = index.as_query_engine(llm=llm, response_synthesizer=synthesizer)
    response = engine.query(QUESTION)
    assert response.metadata is not None
    show("RAG with DiffPOSynthesizer", response.metadata["diffpo"]["draft"], str(response), response.metadata["diffpo"])
    print(f"sources kept: {len(response.source_nodes)}")

    # 2. A wrapped engine, streaming the aligned answer.
    streaming = DiffPOQueryEngine(index.as_query_engine(llm=llm, streaming=True), aligner=aligner)
    stream = streaming.query(QUESTION)
    print("== streamed aligned answer: ", end="")
    for piece in stream.response_gen:  # type: ignore[union-attr]
        print(piece, end="|", flush=True)
    print()
    assert stream.metadata is not None
    print(f"draft was: {stream.metadata['diffpo']['draft']}")


if __name__ == "__main__":
    main()
