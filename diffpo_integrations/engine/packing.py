"""CPU inference speed-up: linear layers with weights pre-packed for oneDNN.

On a CPU, ``nn.Linear`` hands every call to a general matrix multiply that re-lays the weight
out for the kernel each time; for the few rows of a decoding step that costs more than the
arithmetic. oneDNN (bundled with PyTorch's CPU builds) can lay each weight out once, at load
time. On the 2-core development CPU this made SmolLM2-135M's one-token step 1.7x faster
(40 ms to 24 ms) and a 16-token verification pass about as much, so greedy, speculative and
batched decoding all gain (see docs/benchmarks.md).

:func:`pack_linear_weights` swaps each float32 ``nn.Linear`` for a :class:`PackedLinear`;
``load_model(pack_weights=True)`` applies it. The packed model is for inference on the CPU
only: it has no gradients, and it cannot be moved to another device or saved. It is off by
default because oneDNN keeps state per input shape: in the embedded server's soak test (500
requests of varied lengths) memory grew by about 130 MB with packed weights, 14 to 24 MB without.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PackedLinear", "can_pack", "pack_linear_weights"]


def can_pack() -> bool:
    """Whether this PyTorch build has the oneDNN operators that :class:`PackedLinear` uses.

    Returns:
        True when a small packed multiply runs and matches ``nn.functional.linear``.
    """
    try:
        weight = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        x = torch.ones(2, 4)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(out, nn.functional.linear(x, weight)))
    except (RuntimeError, AttributeError):  # a build without oneDNN, or without these operators
        return False


class PackedLinear(nn.Module):
    """A float32 ``nn.Linear`` for CPU inference, its weight laid out once for oneDNN.

    Args:
        linear: The layer to replace; its weight is copied into the packed layout (the caller
            drops the original).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            # A plain attribute, not a parameter or buffer: the opaque oneDNN tensor must stay
            # out of state_dict() and .to(), which cannot handle it.
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` over the last dimension of ``x``."""
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linear_weights(model: Any) -> int:
    """Replace every float32 ``nn.Linear`` of a CPU model by a :class:`PackedLinear`, in place.

    The parameters left as they were (embeddings, norms) are then copied into ordinary memory:
    transformers maps safetensors files into memory, and a mapping stays resident as long as
    any tensor from it lives, which would keep the unpacked weights' pages too. A tied output
    projection gets its own packed copy (the embedding table stays for the input side).

    Args:
        model: A torch module on the CPU, in eval mode.

    Returns:
        How many layers were packed (0 when :func:`can_pack` is false, or nothing qualified).

    Example:
        >>> from diffpo_integrations.engine import greedy
        >>> from diffpo_integrations.engine.testing import tiny_random_model
        >>> model = tiny_random_model("llama")
        >>> before = greedy(model, [1, 2, 3], max_new_tokens=4, stop_token_ids=[]).tokens
        >>> pack_linear_weights(model) > 0
        True
        >>> greedy(model, [1, 2, 3], max_new_tokens=4, stop_token_ids=[]).tokens == before
        True
    """
    if not can_pack():
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.device.type == "cpu" and child.weight.dtype == torch.float32
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    if targets:
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()
            for buffer in model.buffers():
                buffer.data = buffer.data.clone()
    return len(targets)
