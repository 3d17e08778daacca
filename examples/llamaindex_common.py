"""Shared pieces of the LlamaIndex examples: the aligner, a base model, and printing.

The aligner is a ``TGIAligner`` at ``$DIFFPO_ALIGNER_URL`` (default ``http://127.0.0.1:8080``): start
one with ``diffpo serve``. On these machines the server runs SmolLM2-135M-Instruct, which stands in
for a DiffPO checkpoint, so the "aligned" answers show the mechanics, not DiffPO's quality.

The base model (the one whose drafts get aligned) is, by default, a small deterministic local LLM
so that the examples run anywhere. Set ``$DIFFPO_BASE_URL`` to an OpenAI-compatible server (the
embedded server serves ``/v1/chat/completions`` too) to draft with a real model instead.
"""

from __future__ import annotations

import os
from typing import Any

import httpx2
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

from diffpo_integrations.backends import TGIAligner, default_aligner_url

__all__ = ["CannedLLM", "OpenAICompatibleLLM", "base_llm", "make_aligner", "max_new_tokens", "show"]

NOTE = "(SmolLM2-135M-Instruct stands in for a DiffPO checkpoint on this machine.)"


def max_new_tokens() -> int:
    """``$DIFFPO_MAX_NEW_TOKENS`` (default 48): short answers keep a CPU demo quick."""
    return int(os.environ.get("DIFFPO_MAX_NEW_TOKENS", "48"))


def make_aligner() -> TGIAligner:
    """The aligner at ``$DIFFPO_ALIGNER_URL``."""
    template = os.environ.get("DIFFPO_ALIGNER_TEMPLATE")  # needed for a plain TGI, e.g. "gemma"
    return TGIAligner(default_aligner_url(), template=template, max_new_tokens=max_new_tokens(), timeout=600)


def base_llm() -> CustomLLM:
    """The drafting model: ``$DIFFPO_BASE_URL``'s OpenAI-compatible route, or :class:`CannedLLM`."""
    url = os.environ.get("DIFFPO_BASE_URL")
    return OpenAICompatibleLLM(base_url=url, max_tokens=max_new_tokens()) if url else CannedLLM()


def show(title: str, draft: str, aligned: str, diffpo: dict[str, Any] | None = None) -> None:
    """Print a draft beside its aligned answer."""
    print(f"== {title}")
    print(f"draft:   {draft}")
    print(f"aligned: {aligned}")
    if diffpo is not None:
        print(f"kept prefix: {diffpo.get('kept_prefix')!r}  aligned: {diffpo.get('aligned')}")
    print(NOTE)


_NOT_FACTS = ("Context", "Given the context", "Query:", "Question:", "Answer:", "user:", "assistant:", "system:")


class CannedLLM(CustomLLM):
    """A deterministic base model: it answers from the first context line of its prompt."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="canned-draft-model", num_output=64)

    @staticmethod
    def answer(prompt: str) -> str:
        lines = [line.strip() for line in prompt.splitlines() if line.strip() and not line.startswith("---")]
        facts = [line for line in lines if not line.startswith(_NOT_FACTS) and not line.endswith(("?", ":"))]
        if facts:
            return f"I think the answer is this: {facts[0]} Hope that helps."
        asked = [line.removeprefix("user:").strip() for line in lines if line.startswith("user:")]
        return f"You asked: {asked[-1] if asked else prompt.strip()} Let me think. The answer is seven."

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.answer(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        words = self.answer(prompt).split(" ")

        def gen() -> CompletionResponseGen:
            text = ""
            for i, word in enumerate(words):
                delta = word if i == 0 else " " + word
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()


class OpenAICompatibleLLM(CustomLLM):
    """A greedy chat model behind an OpenAI-compatible ``/v1/chat/completions`` route, over httpx2."""

    base_url: str
    max_tokens: int = 48

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="openai-compatible", num_output=self.max_tokens, is_chat_model=True)

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        body = {
            "messages": [{"role": m.role.value, "content": m.content or ""} for m in messages],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        answer = httpx2.post(f"{self.base_url.rstrip('/')}/v1/chat/completions", json=body, timeout=300)
        answer.raise_for_status()
        text = answer.json()["choices"][0]["message"]["content"]
        return ChatResponse(message=ChatMessage(role="assistant", content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Any, **kwargs: Any) -> ChatResponseGen:
        response = self.chat(messages)

        def gen() -> ChatResponseGen:
            yield ChatResponse(message=response.message, delta=response.message.content)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.chat([ChatMessage(role="user", content=prompt)]).message.content or "")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self.complete(prompt).text

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()
