"""Build the aligner's fixed prompt exactly as the official DiffPO inference does.

Official recipe (``gen_DiffuPO_answer.py``), in tokens:

1. ``L = len(apply_chat_template(turns, add_generation_prompt=True, tokenize=True))`` (no special
   tokens added by the tokenizer);
2. ``ids = tokenizer(apply_chat_template(turns + [draft], tokenize=False))`` **with** special tokens;
3. the fixed prompt is ``ids[:L + r]``; the answer is ``decode(generation[L:]).strip()``.

Where the tokenizer adds a BOS and the template writes one too (Gemma-2, Llama-3), ``ids`` starts
with two BOS tokens and is shifted by one, so the template's final newline is the first of the ``r``
kept tokens. ``mode="official"`` reproduces that; ``mode="clean"`` sends one BOS, the whole
generation prompt, then exactly ``r`` draft tokens.

Everything here is pure: the caller tokenizes the text (locally, or with a server's ``/tokenize``)
and passes the spans in, so the same code serves sync, async, local and remote aligners.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from diffpo_integrations.core.errors import InputError
from diffpo_integrations.core.templates import ChatTemplate
from diffpo_integrations.core.types import Message, PromptMode

__all__ = [
    "PAPER_PREFIX_RANGE",
    "AlignPrompt",
    "PromptTexts",
    "TokenSpan",
    "assemble_answer",
    "build_prompt",
    "hf_token_spans",
    "paper_prefix_tokens",
    "render_texts",
]

PAPER_PREFIX_RANGE = (0, 12)
"""The official script draws the kept prefix length uniformly from this range (inclusive)."""


class TokenSpan(NamedTuple):
    """One token of an encoded text: its id and its character span (``start == stop`` for added tokens)."""

    id: int
    start: int
    stop: int


@dataclass(frozen=True)
class PromptTexts:
    """The rendered texts one alignment needs; tokenize ``full`` and pass it to :func:`build_prompt`."""

    prompt: str
    """Conversation plus generation prompt."""
    full: str
    """Conversation plus the draft as the assistant turn."""
    draft_start: int
    """Character offset of the draft's first character in ``full``."""
    draft_end: int
    """Character offset just past the draft in ``full``."""


@dataclass(frozen=True)
class AlignPrompt:
    """The fixed prompt for one alignment."""

    text: str
    """Text to send to a server that adds the tokenizer's special tokens itself (TGI, vLLM)."""
    ids: list[int]
    """The exact token ids of the fixed prompt (the special tokens a server adds included)."""
    prompt_tokens: int
    """``L``: where the answer starts in ``ids``."""
    kept_tokens: int
    """``r``: tokens after ``L`` that are fixed (draft tokens, plus the shifted newline in official mode)."""
    kept_text: str
    """The text of ``ids[L:]``; the aligned answer starts with it."""
    kept_draft_tokens: int
    """How many of the kept tokens belong to the draft."""
    draft_ids: list[int] = field(default_factory=list)
    """The rest of the templated draft after the fixed prompt: the speed hint for a local engine."""
    stop: str = ""
    """The template's end-of-turn token."""
    split_tokens: int = 0
    """Kept tokens that hold part of a character the cut splits (its other bytes come after the cut).
    ``ids`` keeps them, as the official script does; ``text`` and ``kept_text`` stop before that
    character, since text cannot hold half of one. A server given ``text`` must generate these
    tokens again: ask it for :meth:`text_budget` tokens."""

    def text_budget(self, max_new_tokens: int | None) -> int | None:
        """Tokens to ask of a server given ``text``: ``max_new_tokens`` plus the split character's tokens.

        Example:
            >>> AlignPrompt("p", [1], 1, 0, "", 0, split_tokens=2).text_budget(10)
            12
        """
        return None if max_new_tokens is None else max_new_tokens + self.split_tokens


def render_texts(template: ChatTemplate, messages: Sequence[Message], draft: str, *, mode: PromptMode) -> PromptTexts:
    """Render the generation prompt and the prompt-plus-draft texts for ``mode``.

    Raises:
        InputError: the draft is empty, or the template does not write the draft after the prompt.
    """
    if not draft.strip():
        msg = "the draft is empty or whitespace: pass the base model's answer text as the draft"
        raise InputError(msg)
    prompt = template.render(messages, add_generation_prompt=True)
    full = template.render([*messages, Message(role="assistant", content=draft)], add_generation_prompt=False)
    if mode == "clean" and template.adds_bos and template.bos:
        # The server adds the BOS itself; the template's copy would make it two.
        prompt = prompt.removeprefix(template.bos)
        full = full.removeprefix(template.bos)
    if not full.startswith(prompt):
        msg = f"template {template.name!r} does not render the draft after its generation prompt"
        raise InputError(msg)
    core = draft.strip() if draft.strip() in full[len(prompt) :] else draft
    start = full.find(core, len(prompt))
    return PromptTexts(prompt=prompt, full=full, draft_start=start, draft_end=start + len(core))


def build_prompt(
    texts: PromptTexts,
    spans: Sequence[TokenSpan],
    *,
    keep_prefix_tokens: int,
    mode: PromptMode,
    stop: str = "",
) -> AlignPrompt:
    """Cut the fixed prompt out of the tokenized ``texts.full``.

    Args:
        texts: from :func:`render_texts`.
        spans: ``texts.full`` encoded *with* the tokenizer's special tokens, with character offsets
            (a server's ``/tokenize`` answer, or a fast tokenizer's ``return_offsets_mapping``).
        keep_prefix_tokens: ``r``; clamped to the draft's length in tokens, and lowered where the cut
            would end inside a whitespace run that re-tokenizing the text would merge.
        mode: ``"official"`` or ``"clean"`` (see the module docstring).
        stop: the template's end-of-turn token, carried along for the caller.

    Returns:
        The fixed prompt as text and ids, with ``L``, ``r`` and the kept text.

    Raises:
        InputError: ``keep_prefix_tokens`` is negative.
    """
    if keep_prefix_tokens < 0:
        msg = f"keep_prefix_tokens must be >= 0, got {keep_prefix_tokens}"
        raise InputError(msg)
    added = 0
    while added < len(spans) and spans[added].start == spans[added].stop == 0:
        added += 1
    covered = sum(1 for s in spans if s.stop <= len(texts.prompt))
    # apply_chat_template(tokenize=True) adds no special tokens, so the official L is short by the
    # tokens the tokenizer adds: that is the one-token shift of the official script.
    prompt_tokens = covered - added if mode == "official" else covered
    draft_limit = sum(1 for s in spans if s.stop <= texts.draft_end)
    kept = max(0, min(keep_prefix_tokens, draft_limit - prompt_tokens))
    # Servers take the text and tokenize it again. A cut that ends inside a run of whitespace the
    # tokenizer split in context (``"!\n\n"`` as ``"\n", "\n"``) merges back into one token, so the
    # server would see other ids: keep one token less until the cut is outside such a split.
    while kept and _ends_split_whitespace(texts.full, spans[prompt_tokens + kept - 1]):
        kept -= 1
    end = prompt_tokens + kept
    fixed = spans[:end]
    cut = fixed[-1].stop if fixed else 0
    kept_start = spans[prompt_tokens].start if kept else cut
    text_cut, split = cut, 0
    if kept and end < len(spans) and spans[end].start < cut:
        # The next token holds more bytes of the last kept character (a CJK character or an emoji
        # over several byte-level tokens share one character span): the text ends before it.
        text_cut = max(kept_start, spans[end].start)
        split = sum(1 for s in fixed[prompt_tokens:] if s.stop > text_cut)
    return AlignPrompt(
        text=texts.full[:text_cut],
        ids=[s.id for s in fixed],
        prompt_tokens=prompt_tokens,
        kept_tokens=kept,
        kept_text=texts.full[kept_start:text_cut],
        kept_draft_tokens=sum(1 for s in fixed[prompt_tokens:] if s.start >= texts.draft_start),
        draft_ids=[s.id for s in spans[end:]],
        stop=stop,
        split_tokens=split,
    )


def _ends_split_whitespace(full: str, last: TokenSpan) -> bool:
    """Whether ``last`` is whitespace that continues a whitespace run of the token before it."""
    text = full[last.start : last.stop]
    return bool(text) and text.isspace() and last.start > 0 and full[last.start - 1].isspace()


def paper_prefix_tokens(messages: Sequence[Message], draft: str, seed: int) -> int:
    """The ``paper`` draw of ``r`` from 0..12: uniform, seeded, and stable for a given request.

    The official script draws without a seed; hashing the request with the seed keeps the draw
    reproducible and independent of call order (concurrent calls give the same answers).

    Example:
        >>> paper_prefix_tokens([Message(role="user", content="Hi")], "Hello", seed=0) in range(13)
        True
    """
    payload = json.dumps([[m.role, m.content] for m in messages] + [draft, seed]).encode()
    digest = hashlib.sha256(payload).hexdigest()
    return random.Random(digest).randint(*PAPER_PREFIX_RANGE)


def assemble_answer(kept_text: str, generated_text: str, stop: str = "") -> str:
    """The aligned answer: kept draft prefix plus the continuation, stripped like the official script."""
    if stop and generated_text.endswith(stop):
        generated_text = generated_text[: -len(stop)]
    return (kept_text + generated_text).strip()


def hf_token_spans(tokenizer: object, text: str) -> list[TokenSpan]:
    """Encode ``text`` with a Hugging Face *fast* tokenizer, special tokens added, as :class:`TokenSpan` s.

    Added special tokens (a BOS) get the empty span ``(0, 0)``, as a server's ``/tokenize`` reports them.
    """
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)  # type: ignore[operator]
    spans: list[TokenSpan] = []
    special = set(getattr(tokenizer, "all_special_ids", []))
    for i, (tid, (start, stop)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
        # Fast tokenizers report (0, 0) for added tokens; a BOS written in the text keeps its span.
        if tid in special and start == stop == 0 and i > 0 and spans and spans[-1].stop > 0:
            start = stop = spans[-1].stop
        spans.append(TokenSpan(int(tid), int(start), int(stop)))
    return spans
