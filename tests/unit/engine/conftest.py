"""Fixtures for the engine tests: one-thread runs for tiny models, the real SmolLM2 model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from diffpo_integrations.engine import LoadedModel, load_model, smollm2_gguf_path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run tiny models on one thread: their matrices are too small to gain from more, and
    OpenMP's thread hand-offs dominate (and stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct through :func:`load_model` (the first run converts the GGUF, ~25 s)."""
    return load_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer alone, read from the packaged GGUF file (fast: no weights)."""
    from transformers import AutoTokenizer

    path = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
