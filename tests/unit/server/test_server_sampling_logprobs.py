"""Sampling and log-probs over the wire: seeded and reproducible, TGI's and OpenAI's shapes, /diffpo/align greedy."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_fakes import TinyLoaded, greedy_reference, sse_payloads

PROMPT = "Hello world! Name a prime number:"
MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]


def _ids(tiny: TinyLoaded, text: str = PROMPT) -> list[int]:
    return list(tiny.tokenizer(text)["input_ids"])


def _sampled(tiny: TinyLoaded, ids: list[int], n: int, **params: Any) -> list[int]:
    from diffpo_integrations.engine import SamplingParams, sample

    return sample(
        tiny.model, ids, params=SamplingParams(**params), max_new_tokens=n, stop_token_ids=tiny.eos_token_ids
    ).tokens


def _generate(client: TestClient, **params: Any) -> dict[str, Any]:
    r = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12, **params}})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_tgi_sampling_is_the_engine_s_seeded_draw(client: TestClient, tiny: TinyLoaded) -> None:
    out = _generate(client, do_sample=True, temperature=1.5, top_k=50, seed=5, details=True)
    expected = _sampled(tiny, _ids(tiny), 12, temperature=1.5, top_k=50, seed=5)
    assert [t["id"] for t in out["details"]["tokens"]] == expected
    assert out["details"]["seed"] == 5
    assert _generate(client, do_sample=True, temperature=1.5, top_k=50, seed=5, details=True) == out
    other = _generate(client, do_sample=True, temperature=1.5, top_k=50, seed=6, details=True)
    assert [t["id"] for t in other["details"]["tokens"]] != expected
    greedy = greedy_reference(tiny.model, _ids(tiny), max_new_tokens=12, stop_token_ids=tiny.eos_token_ids).tokens
    assert expected != greedy


def test_huggingface_endpoint_defaults_sample_with_a_reported_seed(client: TestClient) -> None:
    # langchain-huggingface's HuggingFaceEndpoint sends these with do_sample=false: TGI samples (warpers set).
    params = {"temperature": 0.8, "top_p": 0.95, "typical_p": 0.95, "do_sample": False, "details": True}
    details = _generate(client, **params)["details"]
    assert isinstance(details["seed"], int)


def test_penalties_without_warpers_stay_greedy_but_penalised(client: TestClient, tiny: TinyLoaded) -> None:
    out = _generate(client, repetition_penalty=1.3, details=True)
    assert out["details"]["seed"] is None
    expected = _sampled(tiny, _ids(tiny), 12, do_sample=False, repetition_penalty=1.3)
    assert [t["id"] for t in out["details"]["tokens"]] == expected


def test_best_of_keeps_the_likeliest_draw_and_lists_the_other(client: TestClient) -> None:
    out = _generate(client, do_sample=True, temperature=1.5, best_of=2, details=True)
    details = out["details"]
    [other] = details["best_of_sequences"]
    assert set(other) == {"generated_text", "finish_reason", "generated_tokens", "seed", "prefill", "tokens"}
    total = sum(t["logprob"] for t in details["tokens"])
    assert total >= sum(t["logprob"] for t in other["tokens"])
    assert other["seed"] != details["seed"]
    assert out["generated_text"] == "".join(t["text"] for t in details["tokens"] if not t["special"])


def test_top_n_tokens_lists_the_likeliest_first(client: TestClient) -> None:
    details = _generate(client, top_n_tokens=3, details=True)["details"]
    assert len(details["top_tokens"]) == len(details["tokens"]) == 12
    for token, tops in zip(details["tokens"], details["top_tokens"], strict=True):
        assert len(tops) == 3
        assert set(tops[0]) == {"id", "text", "logprob", "special"}
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        # Greedy: the chosen token is the likeliest one.
        assert tops[0]["id"] == token["id"]
        assert tops[0]["logprob"] == pytest.approx(token["logprob"], abs=1e-4)


def test_stream_events_carry_top_tokens_and_the_seed(client: TestClient) -> None:
    params = {"max_new_tokens": 6, "top_n_tokens": 2, "details": True, "do_sample": True, "seed": 9}
    with client.stream("POST", "/generate_stream", json={"inputs": PROMPT, "parameters": params}) as r:
        events = sse_payloads(r.iter_lines())
    assert all(len(e["top_tokens"]) == 2 for e in events)
    assert events[-1]["details"]["seed"] == 9
    whole = _generate(client, max_new_tokens=6, do_sample=True, seed=9)
    assert events[-1]["generated_text"] == whole["generated_text"]


def test_openai_chat_samples_with_a_seed_and_is_greedy_without(client: TestClient) -> None:
    def chat(**extra: Any) -> str:
        body = {"messages": MESSAGES, "max_tokens": 10, **extra}
        return str(client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"])

    greedy = chat()
    assert chat(temperature=0) == greedy
    sampled = chat(temperature=1.8, seed=3)
    assert sampled == chat(temperature=1.8, seed=3)
    assert sampled != greedy


def test_openai_chat_logprobs_cover_the_answer(client: TestClient) -> None:
    body = {"messages": MESSAGES, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        # Greedy: the chosen token is the likeliest (its text may differ: the random model splits characters).
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-4)
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        chunks = sse_payloads(r.iter_lines())[:-1]
    streamed = [
        e
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]


def test_openai_completion_logprobs_have_offsets(client: TestClient) -> None:
    body = {"prompt": PROMPT, "max_tokens": 6, "logprobs": 2, "echo": True}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"] == PROMPT + "".join(logprobs["tokens"])
    assert logprobs["text_offset"][0] == len(PROMPT)
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert all(isinstance(lp, float) for lp in logprobs["token_logprobs"])


def test_chat_stream_deltas_all_carry_the_role(client: TestClient) -> None:
    body = {"messages": MESSAGES, "max_tokens": 6, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        chunks = sse_payloads(r.iter_lines())[:-1]
    assert len(chunks) > 2
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks)
    assert chunks[-1]["choices"][0]["delta"] == {"role": "assistant", "content": None, "tool_calls": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_align_stays_greedy_whatever_is_sent(client: TestClient) -> None:
    body = {
        "messages": [{"role": "user", "content": "Name a prime number."}],
        "draft": "7 is prime.",
        "max_new_tokens": 8,
    }
    plain = client.post("/diffpo/align", json=body).json()
    sampled = client.post(
        "/diffpo/align", json={**body, "temperature": 1.9, "do_sample": True, "seed": 4, "top_k": 5}
    ).json()
    assert sampled["text"] == plain["text"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/tokenize", {"inputs": "a\\ud800b"}),
        ("/diffpo/align", {"messages": [{"role": "user", "content": "Hi"}], "draft": "\\ud800"}),
        ("/v1/completions", {"prompt": "\\ud800"}),
    ],
)
def test_lone_surrogates_are_a_422_on_every_route(client: TestClient, route: str, body: dict[str, Any]) -> None:
    import json

    raw = json.dumps(body).replace("\\\\ud800", "\\ud800")
    r = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    payload = r.json()
    message = payload["error"]["message"] if route.startswith("/v1/") else payload["error"]
    assert "lone surrogate '\\ud800'" in message
