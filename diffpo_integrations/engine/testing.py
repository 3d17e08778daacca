"""Tiny random causal LMs for tests: built from a config, no download, no tokenizer.

Tests drive them with token ids. The default initialisation scale is larger than
transformers' (0.02), which would give near-uniform logits and greedy answers that
repeat one token; with a larger scale the argmax depends on the context, and top-2
margins stay far above float32 rounding, so exact-token assertions are meaningful.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

__all__ = ["TinyArch", "tiny_random_model"]

TinyArch = Literal["llama", "gemma2"]
"""Architectures :func:`tiny_random_model` can build."""


def tiny_random_model(
    arch: TinyArch,
    seed: int = 0,
    vocab_size: int = 96,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    init_scale: float = 0.35,
    sliding_window: int = 8,
) -> Any:
    """Build a small random ``LlamaForCausalLM`` or ``Gemma2ForCausalLM`` in eval mode.

    Args:
        arch: ``"llama"`` or ``"gemma2"`` (alternating sliding-window and global attention,
            logit soft-capping).
        seed: Seed of the weight initialisation; the global RNG state is left untouched.
        vocab_size: Vocabulary size.
        hidden_size: Model width (4 heads of ``hidden_size // 4``).
        num_layers: Decoder layers.
        init_scale: Standard deviation of the weight initialisation.
        sliding_window: Gemma-2's local attention window; small, so tests cross it.

    Returns:
        The float32 model on CPU, in eval mode.

    Raises:
        ValueError: On an unknown architecture.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // 4,
        "max_position_embeddings": 1024,
        "initializer_range": init_scale,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "tie_word_embeddings": False,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "llama":
            model: Any = LlamaForCausalLM(LlamaConfig(**common))
        elif arch == "gemma2":
            gemma: dict[str, Any] = {
                "sliding_window": sliding_window,
                "query_pre_attn_scalar": hidden_size // 4,
                # Gemma-2's soft-capping does not fit SDPA; eager is what transformers uses.
                "attn_implementation": "eager",
            }
            model = Gemma2ForCausalLM(Gemma2Config(**common, **gemma))
        else:
            msg = f"unknown tiny architecture {arch!r}; expected 'llama' or 'gemma2'"
            raise ValueError(msg)
    return model.eval()
