"""The loaded model as the routes need it: tokenizing, token texts, log-probabilities and decoding.

Everything that touches torch runs on the model worker thread (see :mod:`.worker`); the
tokenizer-only helpers are safe to call from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from diffpo_integrations.core.prompt import TokenSpan, hf_token_spans
from diffpo_integrations.core.templates import ChatTemplate, TokenizerTemplate, get_template

__all__ = ["DecodeOutcome", "IncrementalScorer", "ModelRuntime", "TokenTexts", "finite_logprob"]

_CONTEXT_TOKENS = 5
"""Prompt tokens kept as context when decoding token texts (TGI's ``prefix_offset``)."""
_SCORE_CHUNK = 512
"""Positions projected on the vocabulary at once when scoring, to bound memory."""


@dataclass
class DecodeOutcome:
    """What the engine reported for one decode (``forward_passes`` etc. as the engine counts them)."""

    tokens: list[int]
    finish_reason: str
    forward_passes: int
    accepted_draft_tokens: int
    prefill_tokens: int
    elapsed_s: float


class TokenTexts:
    """Text of each new token, decoded with context as TGI does, so the pieces join to the full text.

    A token that ends inside a multi-byte character yields ``""`` until the character is complete;
    the final token flushes whatever is left, so the pieces always join to the decoded text.

    When the context itself ends inside a character (a prompt of token ids cut mid-character), that
    character belongs to the generated text: its first piece starts with the whole character, so
    ``decode(context)`` without its incomplete tail, plus the pieces, is exactly
    ``decode(context + generated)``.
    """

    def __init__(self, tokenizer: Any, context_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        context = str(tokenizer.decode(self._ids, skip_special_tokens=False)) if self._ids else ""
        self._lead = len(context) - len(context.rstrip("\ufffd"))
        """Characters of the context's incomplete tail, re-sent with the first piece."""

    def step(self, token_id: int, *, final: bool = False) -> str:
        """Add ``token_id`` and return the text it completes (``final``: all that is left, even a broken character)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix : self._read], skip_special_tokens=False)
        new_text = decode(self._ids[self._prefix :], skip_special_tokens=False)
        start = len(prefix_text) - self._lead
        if len(new_text) > start and (final or not new_text.endswith("\ufffd")):
            self._prefix, self._read, self._lead = self._read, len(self._ids), 0
            return str(new_text[start:])
        return ""


class ModelRuntime:
    """A :class:`~diffpo_integrations.engine.LoadedModel` plus what the server derives from it.

    Args:
        loaded: the engine's loaded model (``model``, ``tokenizer``, ``model_id``, ``eos_token_ids``,
            ``device``, ``dtype``).
        decode_fn: the engine's ``decode``; injectable for tests.
    """

    def __init__(self, loaded: Any, decode_fn: Callable[..., Any] | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_id: str = str(loaded.model_id)
        self.eos_token_ids: list[int] = [int(t) for t in loaded.eos_token_ids]
        self._decode_fn = decode_fn
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        for tid, added in (getattr(self.tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(added, "special", False):
                special.add(int(tid))
        self.special_ids = frozenset(int(t) for t in special)
        self._templates: dict[str, ChatTemplate] = {}
        vocab = self.tokenizer.get_vocab() if hasattr(self.tokenizer, "get_vocab") else {}
        self.max_token_chars: int = max((len(str(t)) for t in vocab), default=0) or 64
        """The longest token string of the vocabulary. A token covers at most this many characters
        (a byte-level token at most this many bytes), so a text of ``n`` characters has at least
        ``n / max_token_chars`` tokens: long inputs are refused before tokenizing them."""

    # -- facts ----------------------------------------------------------------------------------

    @property
    def max_positions(self) -> int | None:
        """The model's context length, when its config says."""
        config = getattr(self.model, "config", None)
        value = getattr(config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None

    @property
    def dtype_name(self) -> str:
        """``"float32"`` etc."""
        return str(getattr(self.loaded, "dtype", None) or getattr(self.model, "dtype", "unknown")).removeprefix(
            "torch."
        )

    @property
    def device_type(self) -> str:
        """``"cpu"``, ``"cuda"``..."""
        device = getattr(self.loaded, "device", None) or getattr(self.model, "device", "cpu")
        return str(getattr(device, "type", device)).split(":")[0]

    def template(self, name: str | None) -> ChatTemplate:
        """A builtin template by name, or the tokenizer's own chat template when ``name`` is ``None``."""
        key = name or ""
        if key not in self._templates:
            if name is None:
                self._templates[key] = TokenizerTemplate(self.tokenizer, name=self.model_id)
            else:
                self._templates[key] = get_template(name)
        return self._templates[key]

    # -- tokenizer ------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        return [int(t) for t in self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]]

    def spans(self, text: str) -> list[TokenSpan]:
        """``text`` encoded with special tokens added, with character spans (added tokens: ``(0, 0)``)."""
        return hf_token_spans(self.tokenizer, text)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_texts(self, context_ids: Sequence[int]) -> TokenTexts:
        """A :class:`TokenTexts` for tokens generated after ``context_ids``."""
        return TokenTexts(self.tokenizer, context_ids)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The tokenizer's chat template applied with the generation prompt."""
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def is_special(self, token_id: int) -> bool:
        """Whether the tokenizer treats ``token_id`` as special (skipped in generated text)."""
        return token_id in self.special_ids

    # -- model (worker thread only) -------------------------------------------------------------

    def generate(
        self,
        input_ids: list[int],
        draft_ids: list[int] | None,
        *,
        method: str,
        max_new_tokens: int,
        on_token: Callable[[int], None],
        sampling: Any = None,
        **options: Any,
    ) -> DecodeOutcome:
        """Decoding through the engine (greedy by ``method``, or :func:`sample` with ``sampling``).

        ``on_token`` may raise to stop early. ``decode_fn`` (tests) replaces the greedy methods only.
        """
        if sampling is not None:
            from diffpo_integrations.engine.sampling import sample

            result: Any = sample(
                self.model,
                input_ids,
                params=sampling,
                max_new_tokens=max_new_tokens,
                stop_token_ids=self.eos_token_ids,
                on_token=on_token,
                on_logprob=options.get("on_logprob"),
            )
            return _outcome(result, input_ids)
        if self._decode_fn is None:
            from diffpo_integrations.engine import decode as engine_decode

            self._decode_fn = engine_decode
        decode: Callable[..., Any] = self._decode_fn
        result = decode(
            self.model,
            input_ids,
            draft_ids,
            method=method,
            max_new_tokens=max_new_tokens,
            stop_token_ids=self.eos_token_ids,
            on_token=on_token,
            **options,
        )
        return _outcome(result, input_ids)

    def logprobs(self, ids: Sequence[int], start: int) -> list[float | None]:
        """``log p(ids[i] | ids[:i])`` for every ``i >= start`` (``None`` for position 0), in one pass."""
        return self.scores(ids, start)[0]

    def scores(
        self, ids: Sequence[int], start: int, top_n: int = 0
    ) -> tuple[list[float | None], list[list[tuple[int, float]]]]:
        """:meth:`logprobs`, and the ``top_n`` likeliest ``(id, logprob)`` at each of those positions, in one pass."""
        import torch

        from diffpo_integrations.engine._core import model_lock

        with torch.inference_mode(), model_lock(self.model):
            tensor = torch.tensor([list(ids)], dtype=torch.long, device=self._device())
            hidden = self._hidden_states(tensor)
            out: list[float | None] = [None] if start == 0 else []
            tops: list[list[tuple[int, float]]] = [[]] if start == 0 else []
            first = max(start, 1)
            for lo in range(first, len(ids), _SCORE_CHUNK):
                hi = min(lo + _SCORE_CHUNK, len(ids))
                logits = self._project(hidden[0, lo - 1 : hi - 1])
                targets = tensor[0, lo:hi].unsqueeze(-1)
                logp = torch.log_softmax(logits.float(), dim=-1)
                values = logp.gather(-1, targets).squeeze(-1)
                out.extend(finite_logprob(v) for v in values.tolist())
                tops.extend(_top(row, top_n) for row in logp)
            return out, tops

    def incremental_scorer(self, prompt_ids: Sequence[int]) -> IncrementalScorer:
        """A scorer that gives each generated token's log-probability as it arrives."""
        return IncrementalScorer(self, prompt_ids)

    def _device(self) -> Any:
        return getattr(self.model, "device", None) or "cpu"

    def _hidden_states(self, tensor: Any) -> Any:
        base = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model
        return base(input_ids=tensor).last_hidden_state

    def _project(self, hidden: Any) -> Any:
        import torch

        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(getattr(self.model, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


class IncrementalScorer:
    """Log-probabilities of streamed tokens with a KV cache of its own (one extra step per token).

    The engine reports token ids only; a stream cannot wait for the end to score them, so this
    keeps a second, cheap incremental pass next to the engine's.
    """

    def __init__(self, runtime: ModelRuntime, prompt_ids: Sequence[int]) -> None:
        from transformers import DynamicCache

        from diffpo_integrations.engine._core import cache_keyword, takes_logits_to_keep

        self._runtime = runtime
        self._kwargs: dict[str, Any] = {cache_keyword(runtime.model): DynamicCache(), "use_cache": True}
        if takes_logits_to_keep(runtime.model):
            # Only the last position is needed, not prompt x vocabulary.
            self._kwargs["logits_to_keep"] = 1
        self._logits: Any = None
        self._pending: list[int] = list(prompt_ids)

    def score(self, token_id: int) -> float:
        """``log p(token_id | everything before)``; call once per generated token, in order."""
        import torch

        from diffpo_integrations.engine._core import model_lock

        with torch.inference_mode(), model_lock(self._runtime.model):
            if self._pending:
                tensor = torch.tensor([self._pending], dtype=torch.long, device=self._runtime._device())
                self._logits = self._runtime.model(input_ids=tensor, **self._kwargs).logits[0, -1]
                self._pending = []
            value = torch.log_softmax(self._logits.float(), dim=-1)[token_id].item()
        self._pending = [token_id]
        return finite_logprob(value)

    def top(self, n: int) -> list[tuple[int, float]]:
        """The ``n`` likeliest ``(id, logprob)`` at the step :meth:`score` just scored."""
        import torch

        return _top(torch.log_softmax(self._logits.float(), dim=-1), n)


def _outcome(result: Any, input_ids: Sequence[int]) -> DecodeOutcome:
    return DecodeOutcome(
        tokens=[int(t) for t in result.tokens],
        finish_reason=str(result.finish_reason),
        forward_passes=int(getattr(result, "forward_passes", 0)),
        accepted_draft_tokens=int(getattr(result, "accepted_draft_tokens", 0)),
        prefill_tokens=int(getattr(result, "prefill_tokens", len(input_ids))),
        elapsed_s=float(getattr(result, "elapsed_s", 0.0)),
    )


def _top(logprobs: Any, n: int) -> list[tuple[int, float]]:
    """The ``n`` likeliest ``(id, logprob)`` of one row of log-probabilities, most likely first."""
    if n <= 0:
        return []
    values, ids = logprobs.topk(n)
    return [(int(i), finite_logprob(float(v))) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]


def finite_logprob(value: float) -> float:
    """``value``, or the smallest float for ``-inf`` (JSON has no infinities)."""
    # JSON has no -inf; the smallest float keeps the field a number and the order right.
    return value if math.isfinite(value) else -3.4028234663852886e38
