"""Turn LlamaIndex messages, queries and retrieved nodes into the aligner's conversation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from diffpo_integrations.core.types import Message, Role

__all__ = [
    "DEFAULT_CONTEXT_TEMPLATE",
    "conversation_from_chat",
    "has_tool_calls",
    "query_conversation",
    "query_text",
    "text_of",
]

DEFAULT_CONTEXT_TEMPLATE = (
    "Context information is below.\n---------------------\n{context_str}\n---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\nQuery: {query_str}"
)
"""The user turn the aligner sees with ``include_context=True``: LlamaIndex's default QA prompt, less
its trailing ``Answer:`` (the aligner's chat template already opens the assistant turn). The context
goes in the user turn because Gemma-2 (DiffPO-2B/9B) has no system role."""

_ROLES: dict[MessageRole, Role] = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


def text_of(message: ChatMessage) -> str:
    """The text of a message: its text blocks, joined as ``ChatMessage.content`` joins them."""
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def has_tool_calls(message: ChatMessage) -> bool:
    """Whether a message asks for tools: ``ToolCallBlock``s, or OpenAI-style ``tool_calls``/``function_call``."""
    if any(isinstance(b, ToolCallBlock) for b in message.blocks):
        return True
    extra = message.additional_kwargs
    return bool(extra.get("tool_calls") or extra.get("function_call"))


def conversation_from_chat(
    messages: Sequence[ChatMessage], original: Callable[[str], str] | None = None
) -> list[Message]:
    """The aligner's view of a chat: system, user and assistant text turns.

    Tool results and assistant turns that only call tools are left out: DiffPO aligns answers to
    users, and its templates have no tool role. ``original`` maps an earlier (aligned) assistant
    answer back to the base model's draft, since DiffPO conditions on the base model's own answers.
    """
    out: list[Message] = []
    for message in messages:
        role = _ROLES.get(message.role)
        if role is None or (role == "assistant" and has_tool_calls(message)):
            continue
        # Stripped like the drafts: LlamaIndex stores streamed answers stripped and others not.
        content = text_of(message).strip()
        if role == "assistant" and original is not None:
            content = original(content)
        out.append(Message(role=role, content=content))
    return out


def query_text(query: str | QueryBundle) -> str:
    """The user's question of a query string or bundle."""
    return query.query_str if isinstance(query, QueryBundle) else str(query)


def query_conversation(
    query: str | QueryBundle,
    nodes: Sequence[NodeWithScore] = (),
    *,
    include_context: bool = False,
    context_template: str = DEFAULT_CONTEXT_TEMPLATE,
) -> list[Message]:
    """The one-turn conversation of a query: the question, or the question with the retrieved context."""
    question = query_text(query)
    if include_context and nodes:
        context = "\n\n".join(n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes)
        question = context_template.format(context_str=context, query_str=question)
    return [Message(role="user", content=question)]
