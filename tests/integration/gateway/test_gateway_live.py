"""Real OpenAI clients against ``diffpo gateway`` in front of the real embedded server.

Each answer must equal ``TGIAligner(server).align(conversation, draft)``, where the draft is what
the upstream answers to the same request when called directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from diffpo_integrations.backends import TGIAligner

MAX_TOKENS = 16  # the upstream draft and the aligner budget

pytestmark = pytest.mark.integration

QUESTIONS = [
    "Name a prime number.",
    "What is the capital of France?",
    "Give one tip for better sleep.",
    "What colour is the sky?",
    "Say hello in Spanish.",
    "What is two plus two?",
    "Name a planet.",
    "What do bees make?",
]
SYSTEM = "Answer in one sentence."


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _draft(live_url: str, question: str) -> str:
    direct = openai.OpenAI(base_url=live_url + "/v1", api_key="unused", max_retries=0)
    answer = direct.chat.completions.create(model="smollm2", messages=_messages(question), max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    return str(answer.choices[0].message.content)


def _expected(live_url: str, question: str) -> tuple[str, str]:
    draft = _draft(live_url, question)
    return draft, TGIAligner(live_url).align(_messages(question), draft, max_new_tokens=MAX_TOKENS).text


@pytest.fixture(scope="module")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)


def test_openai_sdk_answer_is_the_aligned_upstream_draft(client: openai.OpenAI, live_url: str) -> None:
    draft, want = _expected(live_url, QUESTIONS[0])
    answer = client.chat.completions.create(model="smollm2", messages=_messages(QUESTIONS[0]), max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == want
    extra: dict[str, Any] = answer.model_extra or {}
    assert (extra["diffpo"]["draft"], extra["diffpo"]["aligned"]) == (draft, True)
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0


def test_streamed_answer_equals_the_whole_one(client: openai.OpenAI, live_url: str) -> None:
    _, want = _expected(live_url, QUESTIONS[1])
    stream = client.chat.completions.create(
        model="smollm2",
        messages=_messages(QUESTIONS[1]),
        max_tokens=MAX_TOKENS,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert (chunks[-1].model_extra or {})["diffpo"]["aligned"] is True


def test_concurrent_async_clients_each_get_their_own_answer(gateway_url: str, live_url: str) -> None:
    wants = [_expected(live_url, q)[1] for q in QUESTIONS]

    async def run() -> list[str | None]:
        async with openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0) as aclient:
            answers = await asyncio.gather(
                *(
                    aclient.chat.completions.create(model="smollm2", messages=_messages(q), max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
                    for q in QUESTIONS
                )
            )
        return [a.choices[0].message.content for a in answers]

    assert asyncio.run(run()) == wants


def test_chat_openai_through_the_gateway(gateway_url: str, live_url: str) -> None:
    from langchain_openai import ChatOpenAI

    _, want = _expected(live_url, QUESTIONS[2])
    llm = ChatOpenAI(
        base_url=gateway_url + "/v1", api_key="unused", model="smollm2", max_tokens=MAX_TOKENS, max_retries=0
    )  # type: ignore[arg-type]
    message = llm.invoke([("system", SYSTEM), ("human", QUESTIONS[2])])
    assert message.content == want


def test_llamaindex_openailike_through_the_gateway(gateway_url: str, live_url: str) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    _, want = _expected(live_url, QUESTIONS[3])
    # temperature=0: OpenAILike's default (0.1) samples the upstream draft, which the reference does not.
    llm = OpenAILike(
        api_base=gateway_url + "/v1",
        api_key="unused",
        model="smollm2",
        is_chat_model=True,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    answer = llm.chat([ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=QUESTIONS[3])])
    assert answer.message.content == want


def test_opt_out_returns_the_upstream_draft(client: openai.OpenAI, live_url: str) -> None:
    draft = _draft(live_url, QUESTIONS[4])
    answer = client.chat.completions.create(
        model="smollm2",
        messages=_messages(QUESTIONS[4]),  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        extra_body={"diffpo": {"align": False}},
    )
    assert answer.choices[0].message.content == draft
    assert (answer.model_extra or {})["diffpo"] == {"aligned": False, "passthrough": "opt_out"}


def test_dead_aligner_fail_open_answers_the_draft_flagged(
    start_gateway: Callable[..., AbstractContextManager[str]], live_url: str, dead_url: str
) -> None:
    draft = _draft(live_url, QUESTIONS[5])
    with start_gateway(aligner_urls=[dead_url], fail_policy="open", aligner_timeout=10) as url:
        gw = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        answer = gw.chat.completions.create(model="smollm2", messages=_messages(QUESTIONS[5]), max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    meta = (answer.model_extra or {})["diffpo"]
    assert answer.choices[0].message.content == draft
    assert meta["aligned"] is False
    # The gateway's own start-up health check may already have taken the dead member out of its pool.
    assert meta["error"].startswith("AlignerConnectionError: ")
    assert dead_url in meta["error"]


def test_dead_aligner_fail_closed_is_a_502_the_sdk_shows(
    start_gateway: Callable[..., AbstractContextManager[str]], dead_url: str
) -> None:
    with start_gateway(aligner_urls=[dead_url], fail_policy="closed", aligner_timeout=10) as url:
        gw = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            gw.chat.completions.create(model="smollm2", messages=_messages(QUESTIONS[5]), max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert f"the aligner pool({dead_url}) failed: AlignerConnectionError: " in info.value.message


def test_dead_upstream_is_a_502_naming_it(
    start_gateway: Callable[..., AbstractContextManager[str]], dead_url: str
) -> None:
    with start_gateway(upstream=dead_url) as url:
        gw = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            gw.chat.completions.create(model="smollm2", messages=_messages(QUESTIONS[6]), max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert f"could not reach the upstream {dead_url}/v1" in info.value.message


TOOL_CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


@pytest.fixture(scope="module")
def tool_upstream() -> Iterator[str]:
    """A scripted upstream whose every answer is a tool call (as an API model deciding to use a tool)."""
    from diffpo_integrations.server.serve import serve_in_thread

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, Any]:
        message = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
        return {
            "id": "chatcmpl-tool",
            "object": "chat.completion",
            "created": 1,
            "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        }

    with serve_in_thread(app) as url:
        yield url


def test_tool_calls_pass_through_to_the_client(
    start_gateway: Callable[..., AbstractContextManager[str]], tool_upstream: str
) -> None:
    with start_gateway(upstream=tool_upstream) as url:
        gw = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        answer = gw.chat.completions.create(
            model="scripted",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        )
    calls = answer.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_7", "get_weather", '{"city": "Paris"}')
    ]
    assert answer.choices[0].finish_reason == "tool_calls"
