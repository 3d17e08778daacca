"""A tiny model and tokenizer built offline in a second, and a reference greedy decoder, for the server unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-Instruct's chat template (ChatML with a default system turn)."""

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
    "Write a short poem about the sea. Name a prime number: 7 is a prime.",
    "system user assistant\n\n  tabs\tand unicode: caf\u00e9 \u00fc\u00df \u4f60\u597d \U0001f600",
] * 4


@dataclass
class TinyLoaded:
    """Mirrors the engine's ``LoadedModel``."""

    model: Any
    tokenizer: Any
    model_id: str
    eos_token_ids: list[int]
    device: Any
    dtype: Any


@dataclass
class FakeResult:
    """Mirrors the engine's ``DecodeResult``."""

    tokens: list[int]
    finish_reason: str
    forward_passes: int
    accepted_draft_tokens: int
    prefill_tokens: int
    elapsed_s: float


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with ChatML's special tokens at SmolLM2's ids (0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    return tokenizer


def tiny_loaded() -> TinyLoaded:
    """A random two-layer Llama over :func:`tiny_tokenizer` (deterministic weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    return TinyLoaded(model, tokenizer, "tiny-llama", [2], torch.device("cpu"), torch.float32)


def greedy_reference(
    model: Any,
    input_ids: Sequence[int],
    draft_ids: Sequence[int] | None = None,
    *,
    method: str = "auto",
    max_new_tokens: int,
    stop_token_ids: Collection[int],
    on_token: Callable[[int], None] | None = None,
    **options: Any,
) -> FakeResult:
    """Greedy decoding with a full recompute per token: slow, obviously right, the engine's contract."""
    import torch

    start = time.perf_counter()
    ids = list(input_ids)
    tokens: list[int] = []
    finish = "length"
    with torch.inference_mode():
        while len(tokens) < max_new_tokens:
            logits = model(input_ids=torch.tensor([ids + tokens])).logits
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if token in stop_token_ids:
                finish = "eos_token"
                break
    return FakeResult(tokens, finish, len(tokens), 0, len(ids), time.perf_counter() - start)


class Gate:
    """A decode function that blocks on an event before each token: makes a request as slow as a test needs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, model: Any, input_ids: Sequence[int], draft_ids: Any = None, **kwargs: Any) -> FakeResult:
        self.entered.set()
        user_on_token = kwargs.pop("on_token", None)

        def on_token(token: int) -> None:
            if not self.release.wait(timeout=30):
                msg = "the test never released the gate"
                raise TimeoutError(msg)
            if user_on_token is not None:
                user_on_token(token)

        return greedy_reference(model, input_ids, draft_ids, on_token=on_token, **kwargs)


def make_client(tiny: TinyLoaded, decode_fn: Any = greedy_reference, **config: Any) -> Any:
    """A ``TestClient`` over a fresh app with other settings; use it as a context manager."""
    from fastapi.testclient import TestClient

    from diffpo_integrations.server import ServerConfig, create_app

    config.setdefault("api_key", None)
    return TestClient(create_app(tiny, ServerConfig(**config), decode_fn=decode_fn))


def reference_logprobs(model: Any, ids: Sequence[int], start: int) -> list[float]:
    """``log p(ids[i] | ids[:i])`` for ``i >= start`` from one plain forward pass."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(ids)])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [float(logprobs[i - 1, ids[i]]) for i in range(max(start, 1), len(ids))]


def sse_payloads(lines: Any) -> list[Any]:
    """The JSON payloads of ``data:`` lines (``[DONE]`` kept as the string)."""
    import json

    out: list[Any] = []
    for line in lines:
        if line.startswith("data:"):
            data = line[len("data:") :].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
