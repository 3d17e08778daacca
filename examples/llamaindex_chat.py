"""A multi-turn chat whose answers are aligned by DiffPO, turn by turn.

``DiffPOChatEngine`` wraps any chat engine. Its inner memory keeps the base model's drafts, which
is what DiffPO conditions on; the user sees the aligned answers. The last turn streams.
The aligner is at ``$DIFFPO_ALIGNER_URL``; SmolLM2-135M-Instruct stands in for a DiffPO checkpoint.

Run: ``DIFFPO_ALIGNER_URL=http://127.0.0.1:8080 python examples/llamaindex_chat.py``
"""

from __future__ import annotations

from llama_index.core.chat_engine import SimpleChatEngine
from llamaindex_common import base_llm, make_aligner, show

from diffpo_integrations.llama_index import DiffPOChatEngine

TURNS = ["Name a prime number.", "Why is it prime?"]


def main() -> None:
    chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=base_llm()), aligner=make_aligner())
    response = chat.chat(TURNS[0])
    assert response.metadata is not None
    show(f"turn 1: {TURNS[0]}", response.metadata["diffpo"]["draft"], response.response, response.metadata["diffpo"])

    stream = chat.stream_chat(TURNS[1])
    print(f"== turn 2 (streamed): {TURNS[1]}\naligned: ", end="")
    for piece in stream.response_gen:
        print(piece, end="|", flush=True)
    print()
    show("turn 2", stream.metadata["diffpo"]["draft"], stream.response, stream.metadata["diffpo"])
    print(f"history kept by the inner engine (drafts): {[m.content for m in chat.chat_history][1::2]}")


if __name__ == "__main__":
    main()
