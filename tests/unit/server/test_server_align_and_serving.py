"""``/diffpo/align`` on the tiny model with the real engine, and a real uvicorn server in a thread on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from server_fakes import TinyLoaded

from diffpo_integrations.core.prompt import assemble_answer, build_prompt, hf_token_spans, render_texts
from diffpo_integrations.core.templates import TokenizerTemplate
from diffpo_integrations.core.types import Message
from diffpo_integrations.server import ServerConfig, create_app, serve_in_thread

QUESTION = "Name a prime number."
DRAFT = "7 is a prime number. The quick brown fox jumps over the lazy dog."


def _by_hand(tiny: TinyLoaded, keep: int, n: int, mode: Any = "official") -> dict[str, Any]:
    from diffpo_integrations.engine import greedy

    template = TokenizerTemplate(tiny.tokenizer, name="tiny-llama")
    texts = render_texts(template, [Message(role="user", content=QUESTION)], DRAFT, mode=mode)
    spans = hf_token_spans(tiny.tokenizer, texts.full)
    prompt = build_prompt(texts, spans, keep_prefix_tokens=keep, mode=mode, stop=template.end_of_turn)
    out = greedy(tiny.model, prompt.ids, max_new_tokens=n, stop_token_ids=[2])
    generated = tiny.tokenizer.decode([t for t in out.tokens if t != 2], skip_special_tokens=True)
    return {"text": assemble_answer(prompt.kept_text, generated, prompt.stop), "ids": out.tokens, "prompt": prompt}


@pytest.mark.parametrize(("method", "mode"), [("auto", "official"), ("greedy", "clean"), ("jacobi", "official")])
def test_align_matches_the_hand_built_prompt(client: TestClient, tiny: TinyLoaded, method: str, mode: str) -> None:
    body = {
        "messages": [{"role": "user", "content": QUESTION}],
        "draft": DRAFT,
        "keep_prefix_tokens": 4,
        "max_new_tokens": 6,
        "method": method,
        "prompt_mode": mode,
    }
    r = client.post("/diffpo/align", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    expected = _by_hand(tiny, 4, 6, mode)
    assert answer["text"] == expected["text"]
    assert answer["details"]["token_ids"] == expected["ids"]
    assert answer["details"]["prompt_tokens"] == expected["prompt"].prompt_tokens
    assert answer["details"]["kept_tokens"] == 4
    assert answer["details"]["method"] == method
    assert answer["generated_tokens"] == len(expected["ids"])
    with client.stream("POST", "/diffpo/align", json={**body, "stream": True}) as s:
        events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert "".join(e["text"] for e in events) == answer["text"]
    assert events[-1]["text"] == ""
    assert events[-1]["result"]["text"] == answer["text"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"draft": "  "}, "the draft is empty or whitespace: pass the base model's answer text as the draft"),
        (
            {"template": "nope"},
            "unknown template 'nope': use one of ['chatml', 'gemma', 'llama3', 'smollm2'] or leave it out",
        ),
        ({"max_new_tokens": 10**6}, "`max_new_tokens` must be <= 64. Given: 1000000"),
        (
            {"keep_prefix_tokens": -1},
            "Failed to deserialize the JSON body into the target type: keep_prefix_tokens: Input should be greater than or equal to 0",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x"}]},
            "the conversation must end with the user turn the draft answers; it ends with a 'assistant' turn",
        ),
    ],
)
def test_align_refusals(client: TestClient, extra: dict[str, Any], message: str) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "draft": DRAFT, "max_new_tokens": 4, **extra}
    r = client.post("/diffpo/align", json=body)
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    assert r.json()["error"].startswith(message)


def test_serve_in_thread_serves_and_always_stops(tiny: TinyLoaded) -> None:
    from server_fakes import greedy_reference

    app = create_app(tiny, ServerConfig(api_key=None), decode_fn=greedy_reference)
    seen: list[str] = []

    def use_then_fail() -> None:
        with serve_in_thread(app) as url:
            seen.append(url)
            assert httpx2.get(f"{url}/health").status_code == 200
            r = httpx2.post(f"{url}/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
            assert r.status_code == 200
            msg = "raised inside the block"
            raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="inside"):
        use_then_fail()
    assert seen[0].startswith("http://127.0.0.1:")
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{seen[0]}/health")
    # The same app starts again (a fresh worker, the same model).
    with serve_in_thread(app) as url:
        assert httpx2.get(f"{url}/health").status_code == 200
