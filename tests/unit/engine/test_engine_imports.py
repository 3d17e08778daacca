"""The engine's public names: every module's ``__all__`` resolves, the package re-exports them."""

from __future__ import annotations

import importlib

import pytest

import diffpo_integrations.engine as engine

MODULES = ("_core", "aligning", "batching", "decoding", "loading", "packing", "sampling", "speculation", "testing")


@pytest.mark.parametrize("name", MODULES)
def test_module_all_resolves(name: str) -> None:
    module = importlib.import_module(f"diffpo_integrations.engine.{name}")
    assert module.__all__, name
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr}"


def test_package_exports() -> None:
    assert sorted(engine.__all__) == [
        "BatchScheduler",
        "DecodeFinishReason",
        "DecodeMethod",
        "DecodeResult",
        "LoadedModel",
        "SamplingParams",
        "SpeculationConfig",
        "TokenCallback",
        "decode",
        "eos_token_ids",
        "greedy",
        "load_model",
        "pack_linear_weights",
        "reference_jacobi",
        "sample",
        "smollm2_gguf_path",
        "speculative",
        "supports_batching",
        "tiny_random_model",
        "use_scheduler",
    ]
    for attr in engine.__all__:
        assert hasattr(engine, attr), attr
    # One definition of each, in core: the engine re-exports it rather than defining its own.
    from diffpo_integrations import core

    assert engine.DecodeMethod is core.DecodeMethod
    assert engine.DecodeFinishReason is core.DecodeFinishReason
    assert not hasattr(engine, "FinishReason")  # core.FinishReason (an alignment's) is the only FinishReason
