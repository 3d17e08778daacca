"""Fixtures of the LlamaIndex unit tests: a fake aligner, a deterministic base LLM, a tiny index."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llama_index.core import Document, Settings, SummaryIndex
from llamaindex_fakes import DraftLLM, FakeAligner

DOCS = [
    "DiffPO aligns the answer of any base model after the fact.",
    "The aligner keeps a prefix of the draft and continues it greedily.",
    "SmolLM2-135M-Instruct stands in for a DiffPO checkpoint in the tests.",
]


@pytest.fixture
def aligner() -> FakeAligner:
    return FakeAligner()


@pytest.fixture
def llm() -> DraftLLM:
    return DraftLLM()


@pytest.fixture(autouse=True)
def _settings_llm() -> Iterator[None]:
    # Without this, code paths that read Settings.llm would try to build an OpenAI client.
    previous = Settings._llm
    Settings.llm = DraftLLM()
    yield
    Settings._llm = previous


@pytest.fixture
def index() -> SummaryIndex:
    return SummaryIndex.from_documents([Document(text=t, metadata={"n": i}) for i, t in enumerate(DOCS)])
