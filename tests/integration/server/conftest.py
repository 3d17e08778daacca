"""The real server over SmolLM2 (the stand-in aligner), started once per session, and the references it must match."""

from __future__ import annotations

import json
from typing import Any

import pytest
from server_reference import NEW_TOKENS, Reference

from diffpo_integrations.data import mt_bench_questions_path


@pytest.fixture(scope="session")
def base_url(live_url: str) -> str:
    return live_url


@pytest.fixture(scope="session")
def mt_question() -> dict[str, Any]:
    with mt_bench_questions_path().open() as f:
        return dict(json.loads(f.readline()))


@pytest.fixture(scope="session")
def mt_draft(mt_bench: tuple[str, str]) -> str:
    return mt_bench[1]


@pytest.fixture(scope="session")
def reference(loaded: Any, mt_question: dict[str, Any]) -> Reference:
    import torch

    tokenizer = loaded.tokenizer
    question = mt_question["turns"][0]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=loaded.eos_token_ids,
            pad_token_id=loaded.eos_token_ids[0],
        )
    tokens = [int(t) for t in out[0, len(prompt_ids) :]]
    return Reference(question, prompt, prompt_ids, tokens, tokenizer.decode(tokens, skip_special_tokens=True))
