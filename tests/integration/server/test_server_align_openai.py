"""``/diffpo/align`` against the prompt built by hand, and the OpenAI routes through real OpenAI clients."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from server_reference import NEW_TOKENS, Reference

from diffpo_integrations.core.prompt import assemble_answer, build_prompt, hf_token_spans, render_texts
from diffpo_integrations.core.templates import TokenizerTemplate
from diffpo_integrations.core.types import Message

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALIGN_TOKENS = 24


def _by_hand(loaded: Any, question: str, draft: str, keep: int) -> dict[str, Any]:
    """The official prompt with core.prompt, then plain greedy decoding with the engine."""
    from diffpo_integrations.engine import greedy

    tokenizer = loaded.tokenizer
    template = TokenizerTemplate(tokenizer, name=str(loaded.model_id))
    messages = [Message(role="user", content=question)]
    texts = render_texts(template, messages, draft, mode="official")
    prompt = build_prompt(
        texts,
        hf_token_spans(tokenizer, texts.full),
        keep_prefix_tokens=keep,
        mode="official",
        stop=template.end_of_turn,
    )
    stops = set(loaded.eos_token_ids) | {tokenizer.convert_tokens_to_ids(template.end_of_turn)}
    out = greedy(loaded.model, prompt.ids, max_new_tokens=ALIGN_TOKENS, stop_token_ids=stops)
    generated = tokenizer.decode([t for t in out.tokens if t not in stops], skip_special_tokens=True)
    return {
        "text": assemble_answer(prompt.kept_text, generated, prompt.stop),
        "token_ids": out.tokens,
        "prompt_tokens": prompt.prompt_tokens,
        "kept_tokens": prompt.kept_tokens,
        "kept_draft_tokens": prompt.kept_draft_tokens,
    }


@pytest.fixture(scope="module")
def aligned(base_url: str, loaded: Any, reference: Reference, mt_draft: str) -> dict[str, Any]:
    body = {
        "messages": [{"role": "user", "content": reference.question}],
        "draft": mt_draft,
        "keep_prefix_tokens": 6,
        "max_new_tokens": ALIGN_TOKENS,
    }
    r = httpx2.post(f"{base_url}/diffpo/align", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return {"body": body, "answer": r.json(), "expected": _by_hand(loaded, reference.question, mt_draft, 6)}


def test_align_equals_the_prompt_built_by_hand_plus_greedy(aligned: dict[str, Any]) -> None:
    answer, expected = aligned["answer"], aligned["expected"]
    assert answer["text"] == expected["text"]
    assert answer["details"]["token_ids"] == expected["token_ids"]
    assert answer["details"]["prompt_tokens"] == expected["prompt_tokens"]
    assert answer["details"]["kept_tokens"] == expected["kept_tokens"] == 6
    assert answer["kept_prefix_tokens"] == expected["kept_draft_tokens"]
    assert answer["text"].startswith(answer["kept_prefix"])
    assert answer["generated_tokens"] == len(expected["token_ids"])
    assert answer["finish_reason"] in ("eos_token", "length")
    assert set(answer["details"]) >= {"forward_passes", "accepted_draft_tokens", "method", "elapsed_s"}


def test_align_stream_pieces_join_to_the_answer(base_url: str, aligned: dict[str, Any]) -> None:
    events: list[dict[str, Any]] = []
    with httpx2.stream("POST", f"{base_url}/diffpo/align", json={**aligned["body"], "stream": True}, timeout=300) as r:
        assert r.status_code == 200
        events.extend(json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:"))
    assert len(events) > 2
    final = events[-1]
    assert final["text"] == ""
    assert "".join(e["text"] for e in events) == aligned["answer"]["text"]
    assert {k: v for k, v in final["result"].items() if k != "details"} == {
        k: v for k, v in aligned["answer"].items() if k != "details"
    }
    assert final["result"]["details"]["token_ids"] == aligned["answer"]["details"]["token_ids"]


def test_align_rejects_bad_input_with_422(base_url: str) -> None:
    empty = httpx2.post(
        f"{base_url}/diffpo/align", json={"messages": [{"role": "user", "content": "Hi"}], "draft": " "}
    )
    assert empty.status_code == 422
    assert empty.json() == {
        "error": "the draft is empty or whitespace: pass the base model's answer text as the draft",
        "error_type": "validation",
    }
    role = httpx2.post(
        f"{base_url}/diffpo/align", json={"messages": [{"role": "robot", "content": "Hi"}], "draft": "x"}
    )
    assert role.status_code == 422
    assert role.json()["error"] == "message 0 has role 'robot'; use 'system', 'user' or 'assistant'"


def test_chat_openai_invoke_and_stream_match_generate(base_url: str, reference: Reference) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{base_url}/v1", api_key="x", model="smollm2", temperature=0, max_tokens=NEW_TOKENS)
    message = llm.invoke([HumanMessage(reference.question)])
    assert message.content == reference.text
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == len(reference.prompt_ids)
    assert message.usage_metadata["output_tokens"] == len(reference.tokens)
    assert message.response_metadata["finish_reason"] == ("stop" if reference.tokens[-1] == 2 else "length")
    chunks = list(llm.stream([HumanMessage(reference.question)]))
    assert "".join(str(c.content) for c in chunks) == reference.text


def test_chat_refuses_tools(base_url: str) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    }
    r = httpx2.post(f"{base_url}/v1/chat/completions", json=body)
    assert r.status_code == 422
    assert r.json() == {
        "error": {
            "message": "tool calls are not supported by the embedded server: send the request without `tools`",
            "type": "invalid_request_error",
            "param": "tools",
            "code": "validation",
        }
    }


def test_completions_with_text_and_with_token_ids(base_url: str, loaded: Any, reference: Reference) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="x")
    expected = loaded.tokenizer.decode(reference.tokens[:10], skip_special_tokens=True)
    by_text = client.completions.create(model="smollm2", prompt=reference.prompt, max_tokens=10, temperature=0)
    by_ids = client.completions.create(model="smollm2", prompt=reference.prompt_ids, max_tokens=10)
    assert by_text.choices[0].text == expected
    assert by_ids.choices[0].text == expected
    assert by_text.usage is not None
    assert by_text.usage.prompt_tokens == len(reference.prompt_ids)
    assert by_text.usage.completion_tokens == 10
    assert by_ids.choices[0].finish_reason == "length"
    stream = client.completions.create(
        model="smollm2", prompt=reference.prompt_ids, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
