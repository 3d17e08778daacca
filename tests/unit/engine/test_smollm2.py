"""The decoding methods on the real SmolLM2-135M-Instruct model (stand-in for a DiffPO aligner).

Drafts are MT-bench answers of Llama-3-8B-Instruct; the prompt is the templated question
plus the first 5 draft tokens. ``max_new_tokens`` is 48 because the reference Jacobi loop
recomputes the whole sequence each pass (slow on CPU).
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import mt_bench_cases

from diffpo_integrations.engine import LoadedModel, greedy, reference_jacobi, speculative

pytestmark = pytest.mark.slow

MAX_NEW = 48


def test_greedy_matches_transformers_generate(smollm2: LoadedModel) -> None:
    case = mt_bench_cases(smollm2.tokenizer, count=1)[0]
    ours = greedy(smollm2.model, case.prompt_ids, max_new_tokens=MAX_NEW, stop_token_ids=smollm2.eos_token_ids)
    with torch.inference_mode():
        output = smollm2.model.generate(
            torch.tensor([case.prompt_ids]),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            eos_token_id=smollm2.eos_token_ids,
            pad_token_id=smollm2.tokenizer.pad_token_id,
        )
    assert ours.tokens == output[0, len(case.prompt_ids) :].tolist()
    assert ours.forward_passes == len(ours.tokens)


def test_eos_tokens_include_the_chatml_end_of_turn(smollm2: LoadedModel) -> None:
    im_end = smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in smollm2.eos_token_ids
    assert smollm2.dtype == torch.float32
    assert smollm2.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("index", range(5))
def test_speculative_and_jacobi_equal_greedy_on_mt_bench_drafts(smollm2: LoadedModel, index: int) -> None:
    stop = smollm2.eos_token_ids
    case = mt_bench_cases(smollm2.tokenizer, count=5)[index]
    expected = greedy(smollm2.model, case.prompt_ids, max_new_tokens=MAX_NEW, stop_token_ids=stop)
    fast = speculative(smollm2.model, case.prompt_ids, case.draft_ids, max_new_tokens=MAX_NEW, stop_token_ids=stop)
    oracle = reference_jacobi(
        smollm2.model, case.prompt_ids, case.draft_ids, max_new_tokens=MAX_NEW, stop_token_ids=stop
    )
    assert fast.tokens == expected.tokens
    assert oracle.tokens == expected.tokens
    assert fast.forward_passes <= expected.forward_passes
    # The aligner's own answer as the draft: verified in a handful of passes.
    kept = speculative(smollm2.model, case.prompt_ids, expected.tokens, max_new_tokens=MAX_NEW, stop_token_ids=stop)
    assert kept.tokens == expected.tokens
    assert kept.forward_passes <= 3
