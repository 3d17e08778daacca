"""The real ``huggingface_hub`` TGI client against the embedded server over loopback, on SmolLM2."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import ValidationError
from server_reference import NEW_TOKENS, Reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_text_generation_is_token_identical_to_transformers_generate(base_url: str, reference: Reference) -> None:
    out = InferenceClient(base_url=base_url).text_generation(
        reference.prompt, max_new_tokens=NEW_TOKENS, details=True, do_sample=False
    )
    assert [t.id for t in out.details.tokens] == reference.tokens
    assert out.generated_text == reference.text
    assert out.details.generated_tokens == len(reference.tokens)
    assert out.details.finish_reason == ("eos_token" if reference.tokens[-1] == 2 else "length")
    assert out.details.prefill == []
    assert out.details.seed is None
    assert all(t.logprob <= 0.0 for t in out.details.tokens)
    assert [t.special for t in out.details.tokens] == [t == 2 for t in reference.tokens]


def test_raw_generate_route_gives_the_same_tokens(base_url: str, reference: Reference) -> None:
    body = {"inputs": reference.prompt, "parameters": {"max_new_tokens": NEW_TOKENS, "details": True}}
    r = httpx2.post(f"{base_url}/generate", json=body, timeout=120)
    assert r.status_code == 200
    assert [t["id"] for t in r.json()["details"]["tokens"]] == reference.tokens
    assert r.json()["generated_text"] == reference.text
    assert int(r.headers["x-prompt-tokens"]) == len(reference.prompt_ids)
    assert int(r.headers["x-generated-tokens"]) == len(reference.tokens)


def test_streamed_generation_assembles_to_the_same_tokens_and_text(base_url: str, reference: Reference) -> None:
    # Keep the client referenced while streaming: it owns the open response.
    client = InferenceClient(base_url=base_url)
    events = list(
        client.text_generation(reference.prompt, max_new_tokens=NEW_TOKENS, details=True, do_sample=False, stream=True)
    )
    assert [e.token.id for e in events] == reference.tokens
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == reference.text
    assert "".join(e.token.text for e in events if not e.token.special) == reference.text
    assert events[-1].details.generated_tokens == len(reference.tokens)
    assert events[-1].details.finish_reason in ("eos_token", "length")


def test_streamed_text_without_details(base_url: str, reference: Reference) -> None:
    client = InferenceClient(base_url=base_url)
    pieces = list(client.text_generation(reference.prompt, max_new_tokens=8, stream=True))
    assert all(isinstance(p, str) for p in pieces)
    from diffpo_integrations.server.testing import get_default_engine

    assert "".join(pieces) == get_default_engine().tokenizer.decode(reference.tokens[:8], skip_special_tokens=True)


async def test_async_client_and_concurrent_requests(base_url: str, reference: Reference) -> None:
    client = AsyncInferenceClient(base_url=base_url)
    outs = await asyncio.gather(
        *(client.text_generation(reference.prompt, max_new_tokens=5, details=True) for _ in range(3))
    )
    assert all([t.id for t in out.details.tokens] == reference.tokens[:5] for out in outs)
    pieces = [p async for p in await client.text_generation(reference.prompt, max_new_tokens=5, stream=True)]
    assert len(pieces) == 5


VALIDATION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("negative max_new_tokens", {"max_new_tokens": -3}, "`max_new_tokens` must be strictly positive"),
    ("huge max_new_tokens", {"max_new_tokens": 10**9}, "`max_new_tokens` must be <= 4095. Given: 1000000000"),
    (
        "too many stops",
        {"max_new_tokens": 2, "stop": ["a", "b", "c", "d", "e"]},
        "`stop` supports up to 4 stop sequences. Given: 5",
    ),
    ("zero temperature", {"max_new_tokens": 2, "temperature": 0.0}, "`temperature` must be strictly positive"),
    ("top_p of one", {"max_new_tokens": 2, "top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
]


def test_sampling_is_seeded_and_reported_through_the_hub_client(base_url: str, reference: Reference) -> None:
    client = InferenceClient(base_url=base_url)

    def draw(seed: int) -> Any:
        return client.text_generation(
            reference.prompt, max_new_tokens=12, do_sample=True, temperature=1.2, top_k=40, seed=seed, details=True
        )

    first = draw(7)
    assert first.details.seed == 7
    assert draw(7).generated_text == first.generated_text
    streamed = client.text_generation(
        reference.prompt, max_new_tokens=12, do_sample=True, temperature=1.2, top_k=40, seed=7, stream=True
    )
    assert "".join(streamed) == first.generated_text


@pytest.mark.parametrize(("params", "message"), [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES])
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_parameters_raise_the_hub_validation_error(
    base_url: str, params: dict[str, Any], message: str, stream: bool
) -> None:
    client = InferenceClient(base_url=base_url)
    # A stream is refused before it starts, so the call itself raises in both modes.
    with pytest.raises(ValidationError) as info:
        client.text_generation("Hello", stream=stream, **params)
    assert str(info.value) == message
    raw = httpx2.post(f"{base_url}/generate", json={"inputs": "Hello", "parameters": params})
    assert raw.status_code == 422
    assert raw.json() == {"error": message, "error_type": "validation"}


def test_empty_long_and_malformed_inputs_are_validation_errors(base_url: str) -> None:
    client = InferenceClient(base_url=base_url)
    with pytest.raises(ValidationError, match=r"^`inputs` cannot be empty$"):
        client.text_generation("", max_new_tokens=2)
    too_long = "word " * 5000
    with pytest.raises(ValidationError, match=r"^`inputs` must have less than 4095 tokens\. Given: 5001$"):
        client.text_generation(too_long, max_new_tokens=2)
    with pytest.raises(
        ValidationError,
        match=r"^`inputs` tokens \+ `max_new_tokens` must be <= 4096\. Given: 4001 `inputs` tokens and 200 `max_new_tokens`$",
    ):
        client.text_generation("word " * 4000, max_new_tokens=200)
    bad = httpx2.post(f"{base_url}/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422
    assert bad.json()["error_type"] == "validation"
    assert bad.json()["error"].startswith("Failed to parse the request body as JSON: ")
    # ...and the server keeps serving.
    assert client.text_generation("Hello", max_new_tokens=2)


def test_tokenize_round_trips_the_prompt(base_url: str, reference: Reference) -> None:
    tokens = httpx2.post(f"{base_url}/tokenize", json={"inputs": reference.prompt}).json()
    assert [t["id"] for t in tokens] == reference.prompt_ids
    assert "".join(t["text"] for t in tokens) == reference.prompt
    assert all(reference.prompt[t["start"] : t["stop"]] == t["text"] for t in tokens)


def test_info_and_metrics(base_url: str) -> None:
    info = httpx2.get(f"{base_url}/info").json()
    assert info["model_id"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info["model_dtype"] == "float32"
    assert info["model_device_type"] == "cpu"
    assert (info["max_input_tokens"], info["max_total_tokens"], info["max_stop_sequences"]) == (4095, 4096, 4)
    assert info["router"] == "text-generation-router"
    assert info["diffpo"]["align_route"] == "/diffpo/align"
    assert info["diffpo"]["end_of_turn"] == "<|im_end|>"
    assert httpx2.get(f"{base_url}/health").status_code == 200
    InferenceClient(base_url=base_url).text_generation("Hello", max_new_tokens=2)
    metrics = httpx2.get(f"{base_url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'diffpo_requests_total{route="/",status="200"}' in metrics.text
    assert "tgi_queue_size 0" in metrics.text
    generated = next(line for line in metrics.text.splitlines() if line.startswith("diffpo_generated_tokens_total "))
    assert int(generated.split()[1]) >= 2
