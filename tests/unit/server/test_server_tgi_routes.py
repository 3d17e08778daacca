"""TGI routes over a tiny random model: exact tokens, details, log-probs, streams, tokenize, info, metrics."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_fakes import TinyLoaded, greedy_reference, reference_logprobs, sse_payloads

PROMPT = "Hello world! Name a prime number:"
FOX = "The quick brown fox"


def _reference(tiny: TinyLoaded, text: str, n: int) -> list[int]:
    ids = tiny.tokenizer(text, add_special_tokens=True)["input_ids"]
    return greedy_reference(tiny.model, ids, max_new_tokens=n, stop_token_ids=tiny.eos_token_ids).tokens


def test_generate_is_greedy_with_details_and_true_logprobs(client: TestClient, tiny: TinyLoaded) -> None:
    r = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "details": True}})
    assert r.status_code == 200
    body = r.json()
    expected = _reference(tiny, PROMPT, 8)
    details = body["details"]
    assert [t["id"] for t in details["tokens"]] == expected
    assert body["generated_text"] == tiny.tokenizer.decode(expected, skip_special_tokens=True)
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == 8
    assert details["seed"] is None
    assert details["prefill"] == []
    assert set(details) == {"finish_reason", "generated_tokens", "seed", "prefill", "tokens"}
    prompt_ids = tiny.tokenizer(PROMPT)["input_ids"]
    want = reference_logprobs(tiny.model, prompt_ids + expected, len(prompt_ids))
    assert [t["logprob"] for t in details["tokens"]] == pytest.approx(want, abs=1e-4)
    assert all(t["special"] is (t["id"] in tiny.tokenizer.all_special_ids) for t in details["tokens"])
    assert "".join(t["text"] for t in details["tokens"]) == body["generated_text"]
    for header in ("x-compute-time", "x-total-time", "x-validation-time", "x-queue-time", "x-inference-time"):
        assert float(r.headers[header]) >= 0
    assert r.headers["x-prompt-tokens"] == str(len(prompt_ids))
    assert r.headers["x-generated-tokens"] == "8"
    assert r.headers["x-compute-type"] == "cpu"
    assert int(r.headers["x-time-per-token"]) >= 0


def test_generate_without_details_has_only_text(client: TestClient, tiny: TinyLoaded) -> None:
    r = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    assert r.json() == {"generated_text": tiny.tokenizer.decode(_reference(tiny, PROMPT, 3), skip_special_tokens=True)}


def test_decoder_input_details_scores_the_prompt(client: TestClient, tiny: TinyLoaded) -> None:
    params = {"max_new_tokens": 2, "details": True, "decoder_input_details": True}
    details = client.post("/generate", json={"inputs": PROMPT, "parameters": params}).json()["details"]
    prompt_ids = tiny.tokenizer(PROMPT)["input_ids"]
    assert [t["id"] for t in details["prefill"]] == prompt_ids
    assert details["prefill"][0]["logprob"] is None
    want = reference_logprobs(tiny.model, prompt_ids, 1)
    assert [t["logprob"] for t in details["prefill"][1:]] == pytest.approx(want, abs=1e-4)


def test_return_full_text_prepends_the_inputs(client: TestClient, tiny: TinyLoaded) -> None:
    params = {"max_new_tokens": 3, "return_full_text": True}
    text = client.post("/generate", json={"inputs": PROMPT, "parameters": params}).json()["generated_text"]
    assert text == PROMPT + tiny.tokenizer.decode(_reference(tiny, PROMPT, 3), skip_special_tokens=True)


def test_stop_sequence_ends_generation_and_is_kept_in_the_text(client: TestClient, tiny: TinyLoaded) -> None:
    tokens = _reference(tiny, FOX, 12)
    pieces = client.post(
        "/generate", json={"inputs": FOX, "parameters": {"max_new_tokens": 12, "details": True}}
    ).json()["details"]["tokens"]
    texts = [t["text"] for t in pieces]
    # The first readable piece that has not appeared before: the generation must stop right at it.
    k = next(
        i
        for i, t in enumerate(texts)
        if i >= 1 and t.strip().isascii() and t.strip().isalnum() and t.strip() not in "".join(texts[:i])
    )
    stop = texts[k].strip()
    params = {"max_new_tokens": 12, "details": True, "stop": [stop]}
    body = client.post("/generate", json={"inputs": FOX, "parameters": params}).json()
    assert body["details"]["finish_reason"] == "stop_sequence"
    got = [t["id"] for t in body["details"]["tokens"]]
    assert got == tokens[: k + 1]
    assert body["generated_text"].endswith(texts[k])
    assert body["details"]["generated_tokens"] == k + 1


def test_eos_token_is_reported_and_left_out_of_the_text(tiny: TinyLoaded) -> None:
    from server_fakes import make_client

    first = _reference(tiny, PROMPT, 3)

    def stops_at_third(model: Any, input_ids: Any, draft_ids: Any = None, **kw: Any) -> Any:
        kw["stop_token_ids"] = [*kw["stop_token_ids"], first[2]]
        return greedy_reference(model, input_ids, draft_ids, **kw)

    with make_client(tiny, decode_fn=stops_at_third) as c:
        body = c.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 9, "details": True}})
    details = body.json()["details"]
    assert details["finish_reason"] == "eos_token"
    assert [t["id"] for t in details["tokens"]] == first


def test_compat_route_answers_a_one_element_list(client: TestClient) -> None:
    single = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "details": True}})
    listed = client.post("/", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "details": True}})
    assert listed.status_code == 200
    assert listed.json() == [single.json()]


@pytest.mark.parametrize("route", ["/generate_stream", "/"])
def test_stream_events_assemble_to_the_same_generation(client: TestClient, tiny: TinyLoaded, route: str) -> None:
    params = {"max_new_tokens": 6, "details": True}
    whole = client.post("/generate", json={"inputs": PROMPT, "parameters": params}).json()
    body: dict[str, Any] = {"inputs": PROMPT, "parameters": params}
    if route == "/":
        body["stream"] = True
    with client.stream("POST", route, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(r.iter_lines())
    assert [e["index"] for e in events] == list(range(1, 7))
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == whole["generated_text"]
    n_prompt = len(tiny.tokenizer(PROMPT)["input_ids"])
    assert last["details"] == {"finish_reason": "length", "generated_tokens": 6, "seed": None, "input_length": n_prompt}
    streamed, expected = [e["token"] for e in events], whole["details"]["tokens"]
    assert [(t["id"], t["text"], t["special"]) for t in streamed] == [
        (t["id"], t["text"], t["special"]) for t in expected
    ]
    # The stream scores with its own KV cache, the whole answer in one pass: equal up to float noise.
    assert [t["logprob"] for t in streamed] == pytest.approx([t["logprob"] for t in expected], abs=1e-4)


def test_stream_without_details_still_carries_text(client: TestClient) -> None:
    with client.stream("POST", "/generate_stream", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}) as r:
        events = sse_payloads(r.iter_lines())
    assert events[-1]["details"] is None
    assert "".join(e["token"]["text"] for e in events) == events[-1]["generated_text"]
    assert all(isinstance(e["token"]["logprob"], float) and math.isfinite(e["token"]["logprob"]) for e in events)


def test_tokenize_spans_round_trip(client: TestClient, tiny: TinyLoaded) -> None:
    text = "Hello world! caf\u00e9 <|im_end|> \u4f60\u597d"
    tokens = client.post("/tokenize", json={"inputs": text}).json()
    assert [t["id"] for t in tokens] == tiny.tokenizer(text)["input_ids"]
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in tokens)
    assert "".join(t["text"] for t in tokens) == text
    assert tiny.tokenizer.decode([t["id"] for t in tokens]) == text


def test_info_reports_tgi_fields_and_the_diffpo_block(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["model_id"] == "tiny-llama"
    assert info["model_dtype"] == "float32"
    assert info["model_device_type"] == "cpu"
    assert info["router"] == "text-generation-router"
    assert (info["max_input_tokens"], info["max_total_tokens"], info["max_stop_sequences"]) == (100, 128, 4)
    assert info["max_concurrent_requests"] == 8
    assert info["diffpo"]["align_route"] == "/diffpo/align"
    assert info["diffpo"]["template"] == "tiny-llama"
    assert info["diffpo"]["methods"] == ["auto", "greedy", "speculative", "jacobi"]


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
    client.post("/generate", json={"inputs": ""})
    text = client.get("/metrics").text
    assert 'diffpo_requests_total{route="/generate",status="200"}' in text
    assert 'diffpo_requests_total{route="/generate",status="422"}' in text
    assert "tgi_queue_size 0" in text
    assert "diffpo_generated_tokens_total" in text
    assert "diffpo_forward_passes_total" in text
    assert 'diffpo_request_duration_seconds_count{route="/generate"}' in text
    assert "diffpo_inference_duration_seconds_sum" in text
