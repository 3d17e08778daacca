"""Packed linear weights for CPU inference: same predictions, same decoding, what gets packed."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from diffpo_integrations.engine import LoadedModel, greedy, load_model, pack_linear_weights, speculative
from diffpo_integrations.engine.packing import PackedLinear, can_pack
from diffpo_integrations.engine.testing import tiny_random_model


def _linears(model: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in model.modules())


def test_this_pytorch_build_can_pack() -> None:
    # The pinned CPU build ships oneDNN; without it pack_weights=True would leave every layer plain.
    assert can_pack()


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.usefixtures("one_thread")
def test_packed_model_predicts_what_the_plain_one_does(arch: str) -> None:
    plain = tiny_random_model(arch, seed=3)  # type: ignore[arg-type]
    packed = copy.deepcopy(plain)
    linears = _linears(plain)
    assert pack_linear_weights(packed) == linears > 0
    assert _linears(packed) == 0
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == linears
    ids = torch.tensor([[5, 17, 3, 44, 9, 60, 2, 31, 8, 12, 70, 4]])
    with torch.inference_mode():
        expected = plain(input_ids=ids).logits
        got = packed(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The embedding table and norms stay ordinary parameters on the CPU.
    assert next(packed.parameters()).device.type == "cpu"


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.usefixtures("one_thread")
def test_every_method_agrees_on_a_packed_model(arch: str) -> None:
    model = tiny_random_model(arch, seed=5)  # type: ignore[arg-type]
    pack_linear_weights(model)
    rng = random.Random(11)
    for _ in range(6):
        prompt = [rng.randrange(1, 96) for _ in range(rng.randint(1, 12))]
        want = greedy(model, prompt, max_new_tokens=24, stop_token_ids=[]).tokens
        draft = [t if rng.random() > 0.15 else rng.randrange(1, 96) for t in want]
        got = speculative(model, prompt, draft, max_new_tokens=24, stop_token_ids=[])
        assert got.tokens == want


def test_only_float32_cpu_linears_are_packed() -> None:
    model = tiny_random_model("llama", seed=1).to(torch.bfloat16)
    assert pack_linear_weights(model) == 0
    assert _linears(model) > 0


def test_load_model_packs_when_asked(smollm2: LoadedModel) -> None:
    plain = smollm2
    assert plain.packed_layers == 0
    assert type(plain.model.lm_head) is nn.Linear
    packed = load_model(pack_weights=True)
    # SmolLM2-135M: 30 layers x (4 attention + 3 MLP projections) + the output projection.
    assert packed.packed_layers == 30 * 7 + 1
    assert isinstance(packed.model.lm_head, PackedLinear)
    prompt = plain.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a prime number."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    with torch.inference_mode():
        expected = plain.model(input_ids=torch.tensor([prompt])).logits[0, -1]
        got = packed.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    assert int(got.argmax()) == int(expected.argmax())
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
