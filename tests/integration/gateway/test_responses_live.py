"""Responses API clients against ``diffpo gateway`` in front of the real embedded server.

Each text answer must equal ``TGIAligner(server).align(conversation, draft)``, where the draft is
the upstream's answer to the same conversation called directly. Structured output and tool calls
go to a scripted upstream (the embedded server has neither) and must reach the client unaligned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import openai
import pytest
from conftest import scripted_chat_upstream
from pydantic import BaseModel

from diffpo_integrations.backends import TGIAligner

pytestmark = pytest.mark.integration

MAX_TOKENS = 16  # the upstream draft and the aligner budget
SYSTEM = "Answer in one sentence."


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _expected(live_url: str, question: str) -> tuple[str, str]:
    direct = openai.OpenAI(base_url=live_url + "/v1", api_key="unused", max_retries=0)
    answer = direct.chat.completions.create(model="smollm2", messages=_messages(question), max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    draft = str(answer.choices[0].message.content)
    return draft, TGIAligner(live_url).align(_messages(question), draft, max_new_tokens=MAX_TOKENS).text


@pytest.fixture(scope="module")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)


def test_responses_create_is_the_aligned_draft(client: openai.OpenAI, live_url: str) -> None:
    draft, want = _expected(live_url, "Name a prime number.")
    answer = client.responses.create(
        model="smollm2", instructions=SYSTEM, input="Name a prime number.", max_output_tokens=MAX_TOKENS
    )
    assert answer.output_text == want
    extra: dict[str, Any] = answer.model_extra or {}
    assert (extra["diffpo"]["draft"], extra["diffpo"]["aligned"]) == (draft, True)
    assert answer.usage is not None
    assert answer.usage.output_tokens > 0


def test_responses_stream_deltas_add_up_to_the_aligned_draft(client: openai.OpenAI, live_url: str) -> None:
    _, want = _expected(live_url, "What is the capital of France?")
    with client.responses.stream(
        model="smollm2", instructions=SYSTEM, input="What is the capital of France?", max_output_tokens=MAX_TOKENS
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == want == final.output_text


def test_langchain_chat_openai_with_the_responses_api(gateway_url: str, live_url: str) -> None:
    from langchain_openai import ChatOpenAI

    _, want = _expected(live_url, "Give one tip for better sleep.")
    llm = ChatOpenAI(
        base_url=gateway_url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        model="smollm2",
        max_tokens=MAX_TOKENS,  # type: ignore[call-arg]
        max_retries=0,
        use_responses_api=True,
    )
    message = llm.invoke([("system", SYSTEM), ("human", "Give one tip for better sleep.")])
    assert message.text == want
    streamed = "".join(
        chunk.text for chunk in llm.stream([("system", SYSTEM), ("human", "Give one tip for better sleep.")])
    )
    assert streamed == want


def test_llamaindex_openai_responses(gateway_url: str, live_url: str) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai import OpenAIResponses

    _, want = _expected(live_url, "What colour is the sky?")
    # temperature=0: OpenAIResponses' default (0.1) samples the upstream draft, which the reference does not.
    llm = OpenAIResponses(
        api_base=gateway_url + "/v1", api_key="unused", model="gpt-4o-mini", max_output_tokens=MAX_TOKENS, temperature=0
    )
    messages = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content="What colour is the sky?")]
    assert llm.chat(messages).message.content == want


class Weather(BaseModel):
    city: str
    celsius: int


WEATHER_JSON = '{"city": "Paris", "celsius": 21}'
TOOL_CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def _json_or_tool_call(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if body.get("tools"):
        return {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}, "tool_calls"
    return {"role": "assistant", "content": WEATHER_JSON}, "stop"


@pytest.fixture(scope="module")
def scripted_url() -> Iterator[str]:
    """An upstream that answers JSON when asked for structured output and a tool call when offered tools."""
    with scripted_chat_upstream(_json_or_tool_call) as (url, _):
        yield url


@pytest.fixture(scope="module")
def scripted_client(start_gateway: Callable[..., AbstractContextManager[str]], scripted_url: str) -> Iterator[Any]:
    with start_gateway(upstream=scripted_url) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_responses_parse_gets_the_json_unaligned(scripted_client: openai.OpenAI) -> None:
    answer = scripted_client.responses.parse(model="scripted", input="Weather in Paris?", text_format=Weather)
    assert answer.output_parsed == Weather(city="Paris", celsius=21)
    assert (answer.model_extra or {})["diffpo"] == {"aligned": False, "passthrough": "response_format"}


def test_chat_completions_parse_gets_the_json_unaligned(scripted_client: openai.OpenAI) -> None:
    answer = scripted_client.chat.completions.parse(
        model="scripted", messages=[{"role": "user", "content": "Weather in Paris?"}], response_format=Weather
    )
    assert answer.choices[0].message.parsed == Weather(city="Paris", celsius=21)
    assert json.loads(answer.choices[0].message.content or "") == {"city": "Paris", "celsius": 21}


def test_responses_function_call_reaches_the_client(scripted_client: openai.OpenAI) -> None:
    answer = scripted_client.responses.create(
        model="scripted",
        input="Weather in Paris?",
        tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}],
    )
    [call] = answer.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_7", "get_weather", '{"city": "Paris"}')
