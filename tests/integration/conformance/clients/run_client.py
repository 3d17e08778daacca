"""Run one real client's operations against a server; print one JSON object: operation -> text or error.

Usage: ``python run_client.py CLIENT BASE_URL MAX_NEW_TOKENS``. Runs in the client's own
environment, so it imports nothing from this project. Every client is used with its own defaults;
only the token budget is set, to keep the runs short.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

CLIENT, URL, N = sys.argv[1], sys.argv[2].rstrip("/"), int(sys.argv[3])
PROMPT = "The capital of France is"
QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": QUESTION}]
HUGE = 10**6
"""A token budget over the server's limit: the error operations must show the server's reason."""

Ops = dict[str, Callable[[], Any]]


def huggingface_hub() -> Ops:
    from huggingface_hub import InferenceClient

    c = InferenceClient(base_url=URL, timeout=300)
    return {
        "generate": lambda: c.text_generation(PROMPT, max_new_tokens=N),
        "stream": lambda: "".join(c.text_generation(PROMPT, max_new_tokens=N, stream=True)),
        "chat": lambda: c.chat_completion(MESSAGES, max_tokens=N).choices[0].message.content,
        "chat_stream": lambda: "".join(
            ch.choices[0].delta.content or "" for ch in c.chat_completion(MESSAGES, max_tokens=N, stream=True)
        ),
        "error": lambda: c.text_generation(PROMPT, max_new_tokens=HUGE),
        "chat_error": lambda: c.chat_completion(MESSAGES, max_tokens=HUGE),
    }


def openai() -> Ops:
    from openai import OpenAI

    c = OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0)
    return {
        "generate": lambda: c.completions.create(model="m", prompt=PROMPT, max_tokens=N).choices[0].text,
        "stream": lambda: "".join(
            ch.choices[0].text for ch in c.completions.create(model="m", prompt=PROMPT, max_tokens=N, stream=True)
        ),
        "chat": lambda: (
            c.chat.completions.create(model="m", messages=MESSAGES, max_tokens=N).choices[0].message.content
        ),
        "chat_stream": lambda: "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(model="m", messages=MESSAGES, max_tokens=N, stream=True)
            if ch.choices
        ),
        "error": lambda: c.completions.create(model="m", prompt=PROMPT, max_tokens=HUGE),
        "chat_error": lambda: c.chat.completions.create(model="m", messages=MESSAGES, max_tokens=HUGE),
    }


def langchain_openai() -> Ops:
    from langchain_openai import ChatOpenAI, OpenAI

    def llm(max_tokens: int) -> Any:
        return OpenAI(base_url=URL + "/v1", api_key="unused", model="m", max_tokens=max_tokens, max_retries=0)

    def chat(max_tokens: int) -> Any:
        return ChatOpenAI(base_url=URL + "/v1", api_key="unused", model="m", max_tokens=max_tokens, max_retries=0)

    return {
        "generate": lambda: llm(N).invoke(PROMPT),
        "stream": lambda: "".join(llm(N).stream(PROMPT)),
        "chat": lambda: chat(N).invoke(QUESTION).content,
        "chat_stream": lambda: "".join(str(ch.content) for ch in chat(N).stream(QUESTION)),
        "error": lambda: llm(HUGE).invoke(PROMPT),
        "chat_error": lambda: chat(HUGE).invoke(QUESTION),
    }


def text_generation() -> Ops:
    from text_generation import Client
    from text_generation.types import Message

    c = Client(URL, timeout=300)
    messages = [Message(role="user", content=QUESTION)]
    return {
        "generate": lambda: c.generate(PROMPT, max_new_tokens=N).generated_text,
        "stream": lambda: "".join(
            r.token.text for r in c.generate_stream(PROMPT, max_new_tokens=N) if not r.token.special
        ),
        "chat": lambda: c.chat(messages=messages, max_tokens=N).choices[0].message.content,
        "chat_stream": lambda: "".join(
            ch.choices[0].delta.content or "" for ch in c.chat(messages=messages, max_tokens=N, stream=True)
        ),
        "error": lambda: c.generate(PROMPT, max_new_tokens=HUGE),
        "chat_error": lambda: c.chat(messages=messages, max_tokens=HUGE),
    }


def llama_index_tgi() -> Ops:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.text_generation_inference import TextGenerationInference

    llm = TextGenerationInference(model_url=URL, max_tokens=N, timeout=300)
    huge = TextGenerationInference(model_url=URL, max_tokens=HUGE, timeout=300)
    messages = [ChatMessage(role="user", content=QUESTION)]
    return {
        "generate": lambda: llm.complete(PROMPT).text,
        "stream": lambda: "".join(r.delta or "" for r in llm.stream_complete(PROMPT)),
        "chat": lambda: llm.chat(messages).message.content,
        "chat_stream": lambda: "".join(r.delta or "" for r in llm.stream_chat(messages)),
        "error": lambda: huge.complete(PROMPT),
        "chat_error": lambda: huge.chat(messages),
    }


def llama_index_openai_like() -> Ops:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    def make(max_tokens: int, chat: bool) -> Any:
        return OpenAILike(
            api_base=URL + "/v1", api_key="unused", model="m", max_tokens=max_tokens, is_chat_model=chat, max_retries=0
        )

    messages = [ChatMessage(role="user", content=QUESTION)]
    return {
        "generate": lambda: make(N, False).complete(PROMPT).text,
        "stream": lambda: "".join(r.delta or "" for r in make(N, False).stream_complete(PROMPT)),
        "chat": lambda: make(N, True).chat(messages).message.content,
        "chat_stream": lambda: "".join(r.delta or "" for r in make(N, True).stream_chat(messages)),
        "error": lambda: make(HUGE, False).complete(PROMPT),
        "chat_error": lambda: make(HUGE, True).chat(messages),
    }


def langchain_huggingface() -> Ops:
    from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint

    llm = HuggingFaceEndpoint(endpoint_url=URL, max_new_tokens=N, timeout=300)
    huge = HuggingFaceEndpoint(endpoint_url=URL, max_new_tokens=HUGE, timeout=300)
    return {
        "generate": lambda: llm.invoke(PROMPT),
        "stream": lambda: "".join(llm.stream(PROMPT)),
        "chat": lambda: ChatHuggingFace(llm=llm).invoke(QUESTION).content,
        "chat_stream": lambda: "".join(str(ch.content) for ch in ChatHuggingFace(llm=llm).stream(QUESTION)),
        "error": lambda: huge.invoke(PROMPT),
        "chat_error": lambda: ChatHuggingFace(llm=huge).invoke(QUESTION),
    }


CLIENTS = {
    "huggingface_hub": huggingface_hub,
    "openai": openai,
    "langchain-openai": langchain_openai,
    "text-generation": text_generation,
    "llama-index-tgi": llama_index_tgi,
    "llama-index-openai-like": llama_index_openai_like,
    "langchain-huggingface": langchain_huggingface,
}


def main() -> None:
    out: dict[str, dict[str, str]] = {}
    for name, op in CLIENTS[CLIENT]().items():
        try:
            out[name] = {"text": str(op())}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            # The openai SDK (and the clients built on it) parse OpenAI's error object into fields.
            if hasattr(exc, "code") and hasattr(exc, "param"):
                out[name]["fields"] = f"code={exc.code} param={exc.param}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
