"""The ``official`` prompt equals the token sequence of the official DiffPO script, checked with real tokenizers.

The expected ids are computed here with the tokenizer itself, following ``gen_DiffuPO_answer.py``::

    L = len(apply_chat_template(turns, add_generation_prompt=True, tokenize=True))
    ids = tokenizer(apply_chat_template(turns + [draft], tokenize=False))   # special tokens added
    fixed = ids[:L + r]
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from diffpo_integrations.core import (
    AlignPrompt,
    ChatTemplate,
    TokenizerTemplate,
    build_prompt,
    coerce_messages,
    get_template,
    render_texts,
)
from diffpo_integrations.core.prompt import hf_token_spans
from diffpo_integrations.core.types import PromptMode
from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path

SINGLE = [{"role": "user", "content": "What is the capital of France? Answer in two sentences."}]
MULTI = [
    {"role": "user", "content": "Name three primary colours."},
    {"role": "assistant", "content": "Red, yellow and blue are the three traditional primary colours."},
    {"role": "user", "content": "Which of them is the warmest, and why?"},
]
DRAFTS = {
    "single": "The capital of France is Paris. It has been the seat of the French government for centuries.",
    "multi": "Red is usually seen as the warmest of the three, because it is linked with fire, heat and the sun.",
}
CONVERSATIONS = {"single": SINGLE, "multi": MULTI}


def official_sequence(tokenizer: Any, turns: list[dict[str, str]], draft: str, r: int) -> tuple[int, list[int]]:
    """``(L, ids)`` exactly as the official script computes them; its fixed prompt is ``ids[:L + r]``."""
    generation_prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    length = len(generation_prompt["input_ids"])
    text = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": draft}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return length, ids


def ours(
    tokenizer: Any, template: ChatTemplate, turns: list[dict[str, str]], draft: str, r: int, mode: PromptMode
) -> AlignPrompt:
    texts = render_texts(template, coerce_messages(turns), draft, mode=mode)
    return build_prompt(
        texts, hf_token_spans(tokenizer, texts.full), keep_prefix_tokens=r, mode=mode, stop=template.end_of_turn
    )


# -- (a) SmolLM2: no added BOS, no shift ------------------------------------------------------------


@pytest.mark.parametrize("r", [0, 1, 12])
@pytest.mark.parametrize("conversation", ["single", "multi"])
def test_smollm2_official_matches_script(smollm2_tokenizer: Any, conversation: str, r: int) -> None:
    tok = smollm2_tokenizer
    turns, draft = CONVERSATIONS[conversation], DRAFTS[conversation]
    length, ids = official_sequence(tok, turns, draft, r)
    prompt = ours(tok, TokenizerTemplate(tok), turns, draft, r, "official")

    assert prompt.ids == ids[: length + r]
    assert prompt.prompt_tokens == length
    assert prompt.kept_tokens == r
    # No BOS is added, so every kept token is a draft token and the prompt ends with the generation prompt.
    assert tok("x", add_special_tokens=True)["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]
    assert prompt.kept_draft_tokens == r
    assert prompt.text == tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) + prompt.kept_text
    assert prompt.kept_text == tok.decode(ids[length : length + r])
    assert draft.startswith(prompt.kept_text)
    assert prompt.stop == "<|im_end|>"


def test_smollm2_template_is_detected_without_bos(smollm2_tokenizer: Any) -> None:
    template = TokenizerTemplate(smollm2_tokenizer)
    # SmolLM2's bos_token is its turn marker <|im_start|>, written by the template as text, never added.
    assert smollm2_tokenizer.bos_token == "<|im_start|>"
    assert (template.bos, template.adds_bos, template.end_of_turn) == ("", False, "<|im_end|>")


# -- (b) a BOS-adding tokenizer whose template writes BOS too (Gemma-2, Llama-3) ----------------------


@pytest.mark.parametrize("r", [0, 1, 12])
@pytest.mark.parametrize("conversation", ["single", "multi"])
def test_bos_tokenizer_official_matches_script_with_double_bos_and_shift(
    bos_tokenizer: Any, conversation: str, r: int
) -> None:
    tok = bos_tokenizer
    bos = tok.bos_token_id
    turns, draft = CONVERSATIONS[conversation], DRAFTS[conversation]
    length, ids = official_sequence(tok, turns, draft, r)
    # The script's sequence starts with two BOS: the one the tokenizer adds and the one the template writes.
    assert ids[:2] == [bos, bos]
    assert ids[2] != bos

    template = TokenizerTemplate(tok)
    assert (template.bos, template.adds_bos, template.end_of_turn) == ("<bos>", True, "<end_of_turn>")
    prompt = ours(tok, template, turns, draft, r, "official")
    assert prompt.ids == ids[: length + r]
    assert prompt.prompt_tokens == length
    assert prompt.kept_tokens == r

    generation_prompt = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert generation_prompt.endswith("<start_of_turn>model\n")
    # L counts no added BOS, so the cut is one token early: the template's final newline is kept token 1.
    assert tok.decode([ids[length]]) == "\n"
    if r == 0:
        assert prompt.text == generation_prompt.removesuffix("\n")
        assert prompt.kept_text == ""
        assert prompt.kept_draft_tokens == 0
    else:
        assert prompt.text.startswith(generation_prompt)
        assert prompt.kept_text.startswith("\n")
        assert prompt.kept_text == tok.decode(ids[length : length + r])
        assert prompt.kept_draft_tokens == r - 1
        assert draft.startswith(prompt.kept_text[1:])


@pytest.mark.parametrize("r", [0, 1, 12])
@pytest.mark.parametrize("conversation", ["single", "multi"])
def test_builtin_gemma_template_gives_the_same_ids(bos_tokenizer: Any, conversation: str, r: int) -> None:
    turns, draft = CONVERSATIONS[conversation], DRAFTS[conversation]
    length, ids = official_sequence(bos_tokenizer, turns, draft, r)
    prompt = ours(bos_tokenizer, get_template("gemma"), turns, draft, r, "official")
    assert prompt.ids == ids[: length + r]
    assert prompt.stop == "<end_of_turn>"


@pytest.mark.parametrize("conversation", ["single", "multi"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_builtin_gemma_renders_exactly_like_the_gemma2_jinja_template(
    bos_tokenizer: Any, conversation: str, add_generation_prompt: bool
) -> None:
    turns = CONVERSATIONS[conversation]
    if not add_generation_prompt:
        # Padded content: both must trim it.
        turns = [*turns, {"role": "assistant", "content": "  " + DRAFTS[conversation] + "\n"}]
    expected = bos_tokenizer.apply_chat_template(turns, add_generation_prompt=add_generation_prompt, tokenize=False)
    rendered = get_template("gemma").render(coerce_messages(turns), add_generation_prompt=add_generation_prompt)
    assert rendered == expected


# -- clean mode: one BOS, the whole generation prompt, then exactly r draft tokens ---------------------


@pytest.mark.parametrize("r", [0, 1, 12])
@pytest.mark.parametrize("conversation", ["single", "multi"])
@pytest.mark.parametrize("which", ["smollm2", "bos"])
def test_clean_mode_has_one_bos_full_prompt_and_r_draft_tokens(
    smollm2_tokenizer: Any, bos_tokenizer: Any, which: str, conversation: str, r: int
) -> None:
    tok = smollm2_tokenizer if which == "smollm2" else bos_tokenizer
    template = TokenizerTemplate(tok)
    turns, draft = CONVERSATIONS[conversation], DRAFTS[conversation]
    generation_prompt = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([*turns, {"role": "assistant", "content": draft}], tokenize=False)
    prompt_body = generation_prompt.removeprefix(template.bos)
    full_body = full.removeprefix(template.bos)
    bos_ids = [tok.bos_token_id] if which == "bos" else []
    prompt_ids = bos_ids + tok(prompt_body, add_special_tokens=False)["input_ids"]
    in_context = tok(full_body, add_special_tokens=True)["input_ids"]
    assert in_context[: len(prompt_ids)] == prompt_ids
    draft_tokens = in_context[len(prompt_ids) : len(prompt_ids) + r]
    assert len(draft_tokens) == r

    prompt = ours(tok, template, turns, draft, r, "clean")
    assert prompt.ids == prompt_ids + draft_tokens
    assert prompt.prompt_tokens == len(prompt_ids)
    assert prompt.kept_tokens == prompt.kept_draft_tokens == r
    assert prompt.text == prompt_body + prompt.kept_text
    assert prompt.kept_text == tok.decode(draft_tokens)
    assert draft.startswith(prompt.kept_text)
    if which == "bos":
        assert prompt.ids[0] == tok.bos_token_id
        assert prompt.ids.count(tok.bos_token_id) == 1
        assert not prompt.text.startswith("<bos>")


# -- the prefix round-trips through text (what TGI / vLLM receive) -------------------------------------


def _mt_bench(question_ids: list[int]) -> list[tuple[list[dict[str, str]], str]]:
    questions = {}
    for line in mt_bench_questions_path().read_text().splitlines():
        q = json.loads(line)
        questions[q["question_id"]] = q
    cases = []
    for line in mt_bench_answers_path("llama-3-it-vanilla").read_text().splitlines():
        answer = json.loads(line)
        if answer["question_id"] in question_ids:
            turns = [{"role": "user", "content": questions[answer["question_id"]]["turns"][0]}]
            cases.append((turns, answer["choices"][0]["turns"][0]))
    assert len(cases) == len(question_ids)
    return cases


# Chosen to include drafts that open with "...!\n\n": a cut between the two newlines, which the
# tokenizer splits in context, would merge back into one "\n\n" token when the text is re-tokenized.
ROUND_TRIP_QUESTIONS = [81, 82, 95, 102, 104, 118, 132, 139, 141, 151]


@pytest.fixture(scope="module")
def mt_bench_cases() -> list[tuple[list[dict[str, str]], str]]:
    return _mt_bench(ROUND_TRIP_QUESTIONS)


@pytest.mark.parametrize("mode", ["official", "clean"])
@pytest.mark.parametrize("which", ["smollm2", "bos"])
def test_prefix_round_trips_through_text_on_mt_bench_drafts(
    smollm2_tokenizer: Any,
    bos_tokenizer: Any,
    mt_bench_cases: list[tuple[list[dict[str, str]], str]],
    which: str,
    mode: PromptMode,
) -> None:
    tok = smollm2_tokenizer if which == "smollm2" else bos_tokenizer
    template = TokenizerTemplate(tok)
    lowered = 0
    for turns, draft in mt_bench_cases:
        texts = render_texts(template, coerce_messages(turns), draft, mode=mode)
        spans = hf_token_spans(tok, texts.full)
        length, official = official_sequence(tok, turns, draft, 0)
        for r in range(13):
            prompt = build_prompt(texts, spans, keep_prefix_tokens=r, mode=mode)
            # What a server that adds special tokens itself sees for the text we send.
            assert tok(prompt.text, add_special_tokens=True)["input_ids"] == prompt.ids, (draft[:40], r)
            assert prompt.kept_tokens in (r, r - 1)
            lowered += prompt.kept_tokens < r
            assert prompt.ids == [s.id for s in spans[: prompt.prompt_tokens + prompt.kept_tokens]]
            if mode == "official":
                assert prompt.ids == official[: length + prompt.kept_tokens]
    # The drafts were chosen so that some cuts do fall inside a split whitespace run.
    assert lowered > 0


def test_cut_inside_split_newlines_keeps_one_token_less(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    turns = [{"role": "user", "content": "Write a haiku."}]
    draft = "A lovely request!\n\nHere it is: autumn moonlight, a worm digs silently."
    length, official = official_sequence(tok, turns, draft, 0)
    pieces = [tok.decode([i]) for i in official[length : length + 6]]
    assert pieces == ["A", " lovely", " request", "!", "\n", "\n"]
    # The official cut after the second newline cannot be sent as text: "!\n\n" re-tokenizes as one token.
    assert tok(tok.decode(official[: length + 6]), add_special_tokens=True)["input_ids"] != official[: length + 6]

    prompt = ours(tok, TokenizerTemplate(tok), turns, draft, 6, "official")
    assert prompt.kept_tokens == 5
    assert prompt.kept_text == "A lovely request!\n"
    assert prompt.ids == official[: length + 5]
    assert tok(prompt.text, add_special_tokens=True)["input_ids"] == prompt.ids
    # One newline is still a clean cut.
    assert ours(tok, TokenizerTemplate(tok), turns, draft, 5, "official").ids == official[: length + 5]


@pytest.mark.parametrize("which", ["smollm2", "bos"])
@pytest.mark.parametrize("mode", ["official", "clean"])
def test_draft_shorter_than_r_is_clamped_to_the_whole_draft(
    smollm2_tokenizer: Any, bos_tokenizer: Any, which: str, mode: PromptMode
) -> None:
    """Documented deviation: the official script would keep template tokens past the draft's end."""
    tok = smollm2_tokenizer if which == "smollm2" else bos_tokenizer
    template = TokenizerTemplate(tok)
    turns, draft = SINGLE, "Paris."
    draft_len = len(tok(draft, add_special_tokens=False)["input_ids"])
    assert draft_len < 12
    prompt = ours(tok, template, turns, draft, 12, mode)
    assert prompt.text.endswith("Paris.")
    assert prompt.kept_draft_tokens == draft_len
    shift = 1 if (mode == "official" and which == "bos") else 0
    assert prompt.kept_tokens == draft_len + shift
    assert prompt.kept_text.strip() == "Paris."
    assert tok(prompt.text, add_special_tokens=True)["input_ids"] == prompt.ids
    if mode == "official":
        length, official = official_sequence(tok, turns, draft, 12)
        assert prompt.ids == official[: length + draft_len + shift]
        assert len(official) > length + draft_len + shift  # the script's cut would run into <end_of_turn> / <|im_end|>
        assert prompt.ids != official[: length + 12]
