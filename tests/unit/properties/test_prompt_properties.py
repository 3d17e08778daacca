"""Property tests of the prompt builder: for any conversation, draft and ``r``, the fixed prompt is well formed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffpo_integrations.backends.testing import mock_tokenize
from diffpo_integrations.core import InputError
from diffpo_integrations.core.prompt import TokenSpan, assemble_answer, build_prompt, render_texts
from diffpo_integrations.core.templates import BUILTIN_TEMPLATES
from diffpo_integrations.core.types import Message

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text a user may paste, control characters and emoji included; lone surrogates are refused
# earlier (AlignRequest), so they are left out here.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=0, max_size=60)
WORDS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60).filter(lambda s: s.strip() != "")


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    earlier = draw(st.lists(st.tuples(TEXT, TEXT), max_size=2))
    messages = [Message(role="system", content=draw(TEXT))] if draw(st.booleans()) else []
    for question, answer in earlier:
        messages += [Message(role="user", content=question), Message(role="assistant", content=answer)]
    return [*messages, Message(role="user", content=draw(TEXT))]


@SETTINGS
@given(
    messages=conversations(),
    draft=WORDS,
    r=st.integers(0, 40),
    template=st.sampled_from(sorted(BUILTIN_TEMPLATES)),
    mode=st.sampled_from(["official", "clean"]),
    adds_bos=st.booleans(),
)
def test_fixed_prompt_invariants(
    messages: list[Message], draft: str, r: int, template: str, mode: str, adds_bos: bool
) -> None:
    texts = render_texts(BUILTIN_TEMPLATES[template], messages, draft, mode=mode)  # type: ignore[arg-type]
    assert texts.full.startswith(texts.prompt)
    assert len(texts.prompt) <= texts.draft_start <= texts.draft_end <= len(texts.full)
    spans = mock_tokenize(texts.full)
    if adds_bos:  # a tokenizer that adds a BOS reports it with an empty span, as /tokenize does
        spans = [TokenSpan(1, 0, 0), *spans]
    prompt = build_prompt(texts, spans, keep_prefix_tokens=r, mode=mode, stop="<|im_end|>")  # type: ignore[arg-type]

    assert texts.full.startswith(prompt.text)
    assert 0 <= prompt.kept_tokens <= r
    assert prompt.kept_draft_tokens <= prompt.kept_tokens
    assert len(prompt.ids) == prompt.prompt_tokens + prompt.kept_tokens
    assert prompt.text.endswith(prompt.kept_text)
    region = texts.full[texts.draft_start : texts.draft_end].strip()
    if mode == "clean" or not adds_bos:
        assert region.startswith(prompt.kept_text.strip())
    else:
        # The official one-token shift: the generation prompt's last token is the first kept one,
        # so the kept text reaches at most one token into the template before the draft.
        if prompt.kept_tokens:
            assert len(prompt.text) - len(prompt.kept_text) < len(texts.prompt)
        assert prompt.kept_draft_tokens < max(prompt.kept_tokens, 1)
    # The answer always starts with the kept draft text, whatever is generated after it.
    assert assemble_answer(prompt.kept_text, " more<|im_end|>", prompt.stop).startswith(prompt.kept_text.strip())


@SETTINGS
@given(
    messages=conversations(),
    blank=st.text(st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003"), max_size=10),
    template=st.sampled_from(sorted(BUILTIN_TEMPLATES)),
)
def test_blank_drafts_are_refused_with_a_clear_error(messages: list[Message], blank: str, template: str) -> None:
    with pytest.raises(InputError, match="draft is empty"):
        render_texts(BUILTIN_TEMPLATES[template], messages, blank, mode="official")


@SETTINGS
@given(messages=conversations(), draft=WORDS, r=st.integers(0, 12))
def test_more_kept_tokens_never_shorten_the_prompt(messages: list[Message], draft: str, r: int) -> None:
    texts = render_texts(BUILTIN_TEMPLATES["chatml"], messages, draft, mode="clean")
    spans = mock_tokenize(texts.full)
    shorter = build_prompt(texts, spans, keep_prefix_tokens=r, mode="clean")
    longer = build_prompt(texts, spans, keep_prefix_tokens=r + 1, mode="clean")
    assert longer.text.startswith(shorter.text)
    assert longer.prompt_tokens == shorter.prompt_tokens
