"""Exact text for every script: no U+FFFD where the kept draft prefix ends inside a character (issue #13).

The official script decodes kept and generated tokens together. Each path (the engine, ``/diffpo/align``,
plain TGI ``/generate`` through ``TGIAligner``, ``/v1/completions`` with token ids), whole and streamed,
must give that text for every cut of drafts in Chinese, with emoji, and with combining accents.
SmolLM2-135M-Instruct stands in for a real DiffPO checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from diffpo_integrations.backends import OpenAICompatAligner, TGIAligner
from diffpo_integrations.core.types import AlignRequest, Message
from diffpo_integrations.engine.aligning import EngineAligner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_TOKENS = 3
QUESTION = "Say something."
DRAFTS = {
    "cjk": "北京是中国的首都。",
    "emoji": "I love 🍕 and 🎉!",
    "combining": "Cafe\u0301 nai\u0308ve",
}
MESSAGES = [{"role": "user", "content": QUESTION}]


_ENGINES: dict[int, EngineAligner] = {}


def _engine(loaded: Any) -> EngineAligner:
    return _ENGINES.setdefault(id(loaded), EngineAligner(loaded=loaded))


def _request(draft: str, keep: int) -> AlignRequest:
    return AlignRequest(
        messages=[Message(role="user", content=QUESTION)],
        draft=draft,
        keep_prefix_tokens=keep,
        max_new_tokens=NEW_TOKENS,
    )


def _official(loaded: Any, draft: str, keep: int) -> str:
    """The official script's answer: ``decode(kept + generated).strip()`` after plain greedy decoding."""
    from diffpo_integrations.engine import greedy

    engine = _engine(loaded)
    prompt = engine.prompt(_request(draft, keep))
    stops = engine.stop_token_ids()
    out = greedy(loaded.model, prompt.ids, max_new_tokens=NEW_TOKENS, stop_token_ids=stops)
    tokens = prompt.ids[prompt.prompt_tokens :] + [t for t in out.tokens if t not in stops]
    return str(loaded.tokenizer.decode(tokens, skip_special_tokens=True)).strip()


def _official_from_text(loaded: Any, draft: str, keep: int) -> str:
    """What a text-only server can be given: the official algorithm with the cut moved to the start
    of a character it splits, and the same budget counted from the official cut."""
    from diffpo_integrations.engine import greedy

    engine = _engine(loaded)
    prompt = engine.prompt(_request(draft, keep))
    ids = loaded.tokenizer(prompt.text, add_special_tokens=True)["input_ids"]
    stops = engine.stop_token_ids()
    out = greedy(loaded.model, ids, max_new_tokens=NEW_TOKENS + prompt.split_tokens, stop_token_ids=stops)
    tokens = ids[prompt.prompt_tokens :] + [t for t in out.tokens if t not in stops]
    return str(loaded.tokenizer.decode(tokens, skip_special_tokens=True)).strip()


def _cuts(loaded: Any, draft: str) -> range:
    """Every cut inside the draft: 1 .. its length in tokens."""
    return range(1, len(loaded.tokenizer(draft, add_special_tokens=False)["input_ids"]) + 1)


def _splits_a_character(loaded: Any, draft: str, keep: int) -> bool:
    prompt = _engine(loaded).prompt(_request(draft, keep))
    return "\ufffd" in loaded.tokenizer.decode(prompt.ids[prompt.prompt_tokens :])


def _check_all(
    loaded: Any, align: Callable[[str, int], tuple[str, str]], official: Callable[[Any, str, int], str] = _official
) -> None:
    mismatches = []
    split = 0
    for name, draft in DRAFTS.items():
        for keep in _cuts(loaded, draft):
            split += _splits_a_character(loaded, draft, keep)
            expected = official(loaded, draft, keep)
            whole, streamed = align(draft, keep)
            if whole != expected or streamed != expected:
                mismatches.append((name, keep, expected, whole, streamed))
    assert split >= 6  # the drafts do cut characters in two
    assert not mismatches, mismatches[:5]


def test_the_engine_decodes_kept_and_generated_tokens_together(loaded: Any) -> None:
    engine = _engine(loaded)

    def align(draft: str, keep: int) -> tuple[str, str]:
        request = _request(draft, keep)
        return engine.align(request).text, "".join(c.text for c in engine.stream(request))

    _check_all(loaded, align)


def test_the_align_route_gives_the_official_text(base_url: str, loaded: Any) -> None:
    def align(draft: str, keep: int) -> tuple[str, str]:
        aligner = TGIAligner(base_url, keep_prefix_tokens=keep, max_new_tokens=NEW_TOKENS)
        whole = aligner.align(MESSAGES, draft).text
        return whole, "".join(c.text for c in aligner.stream(MESSAGES, draft))

    _check_all(loaded, align)


def test_the_plain_tgi_text_path_ends_its_prompt_on_a_character(base_url: str, loaded: Any) -> None:
    # A text prompt cannot hold half a character: the cut moves to the character's start and the
    # server generates the split tokens again. No U+FFFD appears at the cut.
    def align(draft: str, keep: int) -> tuple[str, str]:
        aligner = TGIAligner(
            base_url, template="smollm2", keep_prefix_tokens=keep, max_new_tokens=NEW_TOKENS, use_align_route=False
        )
        whole = aligner.align(MESSAGES, draft).text
        return whole, "".join(c.text for c in aligner.stream(MESSAGES, draft))

    _check_all(loaded, align, _official_from_text)


def test_openai_completions_with_token_ids_give_the_official_text(base_url: str, loaded: Any) -> None:
    def align(draft: str, keep: int) -> tuple[str, str]:
        aligner = OpenAICompatAligner(
            base_url, tokenizer=loaded.tokenizer, keep_prefix_tokens=keep, max_new_tokens=NEW_TOKENS
        )
        assert aligner.sends_token_ids
        whole = aligner.align(MESSAGES, draft).text
        return whole, "".join(c.text for c in aligner.stream(MESSAGES, draft))

    _check_all(loaded, align)


def test_openai_completions_with_text_end_their_prompt_on_a_character(base_url: str, loaded: Any) -> None:
    def align(draft: str, keep: int) -> tuple[str, str]:
        aligner = OpenAICompatAligner(
            base_url, template="smollm2", use_token_ids=False, keep_prefix_tokens=keep, max_new_tokens=NEW_TOKENS
        )
        assert not aligner.sends_token_ids
        whole = aligner.align(MESSAGES, draft).text
        return whole, "".join(c.text for c in aligner.stream(MESSAGES, draft))

    _check_all(loaded, align, _official_from_text)
