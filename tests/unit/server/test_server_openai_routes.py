"""OpenAI-shaped routes over the tiny model: greedy chat and completions, streams, usage, stop sequences, refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_fakes import TinyLoaded, greedy_reference, sse_payloads

MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]


def _chat_reference(tiny: TinyLoaded, n: int) -> tuple[list[int], list[int]]:
    prompt = tiny.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids, greedy_reference(tiny.model, ids, max_new_tokens=n, stop_token_ids=tiny.eos_token_ids).tokens


def test_chat_completion_is_greedy_on_the_chat_template(client: TestClient, tiny: TinyLoaded) -> None:
    ids, tokens = _chat_reference(tiny, 6)
    body = {"model": "any", "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == "tiny-llama"
    assert isinstance(out["created"], int)
    choice = out["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": tiny.tokenizer.decode(tokens, skip_special_tokens=True),
    }
    assert choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}


def test_chat_stream_joins_to_the_same_text_with_usage_last(client: TestClient) -> None:
    body: dict[str, Any] = {"model": "any", "messages": MESSAGES, "max_completion_tokens": 6}
    whole = client.post("/v1/chat/completions", json=body).json()
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=stream_body) as r:
        events = sse_payloads(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "tool_calls": None}
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]


def test_chat_stop_sequence_is_cut_from_the_text(tiny: TinyLoaded) -> None:
    from server_fakes import make_client

    # A model whose every token is "ab": the stop "bab" spans tokens and must never show.
    ab = tiny.tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert len(ab) == 1

    def repeat_ab(model: Any, input_ids: Any, draft_ids: Any = None, **kw: Any) -> Any:
        from server_fakes import FakeResult

        tokens: list[int] = []
        for _ in range(kw["max_new_tokens"]):
            tokens.append(ab[0])
            kw["on_token"](ab[0])
        return FakeResult(tokens, "length", len(tokens), 0, len(input_ids), 0.0)

    with make_client(tiny, decode_fn=repeat_ab) as c:
        body: dict[str, Any] = {"messages": MESSAGES, "max_tokens": 10, "stop": "bab"}
        out = c.post("/v1/chat/completions", json=body).json()
        assert out["choices"][0]["message"]["content"] == "a"
        assert out["choices"][0]["finish_reason"] == "stop"
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            chunks = sse_payloads(r.iter_lines())[:-1]
        assert "".join((ch["choices"][0]["delta"].get("content") or "") for ch in chunks) == "a"
        completion = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 10, "stop": ["bab"]}).json()
        assert completion["choices"][0]["text"] == "a"
        assert completion["choices"][0]["stop_reason"] == "bab"


def _openai_error(message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "validation"}}


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "tool calls are not supported by the embedded server: send the request without `tools`",
            "tools",
        ),
        ({"n": 2}, "`n` != 1 is not supported by the embedded server", "n"),
        (
            {"response_format": {"type": "json_object"}},
            "`response_format` is not supported by the embedded server",
            "response_format",
        ),
        ({"logit_bias": {"5": 10}}, "`logit_bias` is not supported by the embedded server", "logit_bias"),
        ({"top_logprobs": 2}, "`top_logprobs` needs `logprobs: true`", "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 6}, "`top_logprobs` must be >= 0 and <= 5", "top_logprobs"),
        ({"temperature": 3}, "`temperature` must be >= 0 and <= 2", "temperature"),
        ({"top_p": 0}, "`top_p` must be > 0 and <= 1", "top_p"),
        ({"frequency_penalty": -3}, "`frequency_penalty` must be >= -2 and <= 2", "frequency_penalty"),
        (
            {"messages": [{"role": "robot", "content": "Hi"}]},
            "message 0 has role 'robot'; use 'system', 'developer', 'user' or 'assistant' (the embedded server has no tools)",
            "messages.0.role",
        ),
        (
            {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]},
            "message 0 has role 'tool'; use 'system', 'developer', 'user' or 'assistant' (the embedded server has no tools)",
            "messages.0.role",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, _image("x.png")]}]},
            "message 0 has a content part of type 'image_url'; the model reads text only: send text parts",
            "messages.0.content.1.type",
        ),
        ({"max_tokens": 0}, "`max_new_tokens` must be strictly positive", "max_tokens"),
        ({"max_completion_tokens": 0}, "`max_new_tokens` must be strictly positive", "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5", "stop"),
        (
            {"messages": []},
            "Failed to deserialize the JSON body into the target type: messages: List should have at least 1 item after validation, not 0",
            "messages",
        ),
        (
            {"messages": [{"role": "user", "content": "\ud83d"}]},
            "Failed to deserialize the JSON body into the target type: messages.0.content: Value error, text "
            "is not valid UTF-8 text: lone surrogate '\\ud83d' at character 0; no tokenizer can encode it: send valid UTF-8 text",
            "messages.0.content",
        ),
    ],
)
def test_chat_refusals_are_openai_shaped_and_name_the_parameter(
    client: TestClient, extra: dict[str, Any], message: str, param: str | None
) -> None:
    body = json.dumps({"messages": MESSAGES, **extra})
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json() == _openai_error(message, param)


def test_completion_from_text_and_from_ids(client: TestClient, tiny: TinyLoaded) -> None:
    prompt = "The quick brown fox"
    ids = tiny.tokenizer(prompt)["input_ids"]
    tokens = greedy_reference(tiny.model, ids, max_new_tokens=5, stop_token_ids=tiny.eos_token_ids).tokens
    expected = tiny.tokenizer.decode(tokens, skip_special_tokens=True)
    by_text = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 5}).json()
    by_ids = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 5}).json()
    assert by_text["object"] == "text_completion"
    assert by_text["choices"][0]["text"] == by_ids["choices"][0]["text"] == expected
    assert by_text["choices"][0]["finish_reason"] == "length"
    assert by_text["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 5, "total_tokens": len(ids) + 5}
    for prompts in ([prompt, prompt], [ids, ids]):
        batch = client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 5}).json()
        assert [c["text"] for c in batch["choices"]] == [expected, expected]
        assert [c["index"] for c in batch["choices"]] == [0, 1]
    echo = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 5, "echo": True}).json()
    assert echo["choices"][0]["text"] == prompt + expected
    with client.stream("POST", "/v1/completions", json={"prompt": ids, "max_tokens": 5, "stream": True}) as r:
        events = sse_payloads(r.iter_lines())
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_completion_return_token_ids_answers_the_generated_ids_as_vllm(client: TestClient, tiny: TinyLoaded) -> None:
    # vLLM's extension, which OpenAICompatAligner asks for when its prompt ends inside a character.
    ids = tiny.tokenizer("The quick brown fox")["input_ids"]
    tokens = greedy_reference(tiny.model, ids, max_new_tokens=5, stop_token_ids=tiny.eos_token_ids).tokens
    body: dict[str, Any] = {"prompt": ids, "max_tokens": 5, "return_token_ids": True}
    whole = client.post("/v1/completions", json=body).json()
    assert whole["choices"][0]["token_ids"] == tokens
    assert whole["choices"][0]["prompt_token_ids"] == ids
    plain = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 5}).json()
    assert "token_ids" not in plain["choices"][0]
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        events = sse_payloads(r.iter_lines())
    pieces = [e["choices"][0] for e in events[:-1] if e["choices"]]
    assert [i for p in pieces for i in p["token_ids"]] == tokens
    assert "".join(p["text"] for p in pieces) == tiny.tokenizer.decode(tokens, skip_special_tokens=True)


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"prompt": ""}, "`prompt` cannot be empty", "prompt"),
        ({"prompt": [5, 10**6]}, "`prompt` has token ids outside the vocabulary (0..399): [1000000]", None),
        (
            {"prompt": "Hi", "suffix": "x"},
            "Suffix is not supported and can be achieved by preprocessing the prompt.",
            "suffix",
        ),
        ({"prompt": ["a"] * 5}, "Number of prompts exceeds the maximum allowed batch size of 4", None),
        ({"prompt": ["a", "b"], "stream": True}, "streaming takes one prompt at a time", None),
        ({"prompt": "Hi", "max_tokens": 10**6}, "`max_new_tokens` must be <= 64. Given: 1000000", "max_tokens"),
        ({"prompt": "Hi", "best_of": 2}, "`best_of` != 1 is not supported by the embedded server", "best_of"),
        ({"prompt": "Hi", "logprobs": 6}, "`logprobs` must be >= 0 and <= 5", "logprobs"),
        (
            {"prompt": ["Hi", "\udc00"]},
            "Failed to deserialize the JSON body into the target type: prompt: Value error, text is not valid UTF-8 text: "
            "lone surrogate '\\udc00' at character 0; no tokenizer can encode it: send valid UTF-8 text",
            "prompt",
        ),
    ],
)
def test_completion_refusals(client: TestClient, body: dict[str, Any], message: str, param: str | None) -> None:
    r = client.post("/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json() == _openai_error(message, param)


def test_models_lists_the_served_model(client: TestClient) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-llama"


def test_a_failure_mid_stream_is_an_openai_error_event(tiny: TinyLoaded) -> None:
    from server_fakes import make_client

    def fails_after_one(model: Any, input_ids: Any, draft_ids: Any = None, **kw: Any) -> Any:
        kw["on_token"](5)
        raise RuntimeError("boom")

    with make_client(tiny, decode_fn=fails_after_one) as c:
        body = {"messages": MESSAGES, "max_tokens": 4, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            events = sse_payloads(r.iter_lines())
        with c.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "stream": True}) as r:
            completion_events = sse_payloads(r.iter_lines())
    error = {
        "error": {
            "message": "Request failed during generation: RuntimeError: boom",
            "type": "server_error",
            "param": None,
            "code": "generation",
        }
    }
    assert events[-1] == error
    assert completion_events[-1] == error


def test_tgi_s_own_clients_get_their_chat_stream_without_done(client: TestClient) -> None:
    # text-generation and LlamaIndex's TextGenerationInference send model "tgi" and json-parse every event.
    for model, last in [("tgi", dict), ("gpt-4o", str)]:
        body = {"model": model, "messages": MESSAGES, "max_tokens": 3, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            events = sse_payloads(r.iter_lines())
        assert isinstance(events[-1], last), events[-1]
        assert all(isinstance(e, dict) for e in events[:-1])
