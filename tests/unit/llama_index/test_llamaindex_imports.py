"""The public API of ``diffpo_integrations.llama_index`` is what ``__all__`` says, and nothing needs a socket."""

from __future__ import annotations

import importlib

import pytest

import diffpo_integrations.llama_index as public

EXPECTED = {
    "DEFAULT_CONTEXT_TEMPLATE",
    "AlignedAnswerDeltaEvent",
    "AlignedAnswerEvent",
    "DiffPOAlignEndEvent",
    "DiffPOAlignStartEvent",
    "DiffPOAlignStep",
    "DiffPOChatEngine",
    "DiffPOFailOpenWarning",
    "DiffPOFunctionCallingLLM",
    "AlignScope",
    "AlignedDraftEvent",
    "DiffPOAlignAndContinue",
    "DiffPOLLM",
    "DiffPOQueryEngine",
    "DiffPOResponsePostprocessor",
    "DiffPOStreamingChatResponse",
    "DiffPOSynthesizer",
    "DraftAnswerEvent",
}
MODULES = [
    "_align",
    "_convert",
    "chat_engine",
    "events",
    "llm",
    "postprocessor",
    "query_engine",
    "synthesizer",
    "workflow",
]


def test_all_matches_the_public_names() -> None:
    assert set(public.__all__) == EXPECTED
    for name in public.__all__:
        assert getattr(public, name) is not None


def test_every_module_declares_all() -> None:
    for name in MODULES:
        module = importlib.import_module(f"diffpo_integrations.llama_index.{name}")
        assert module.__all__, name
        for exported in module.__all__:
            assert hasattr(module, exported), f"{name}.{exported}"


def test_default_aligner_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", "http://aligner.internal:9000/")
    post = public.DiffPOResponsePostprocessor()
    assert getattr(post.aligner, "base_url", None) == "http://aligner.internal:9000"
