"""Built-in chat templates, and the prompt strings built from them, against strings written out by hand."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from diffpo_integrations.core import (
    BUILTIN_TEMPLATES,
    ChatTemplate,
    ConfigurationError,
    Message,
    TokenizerTemplate,
    TokenSpan,
    build_prompt,
    coerce_messages,
    get_template,
    render_texts,
)
from diffpo_integrations.core.types import PromptMode

SINGLE = [("user", "What is the capital of France?")]
SINGLE_SYSTEM = [("system", "You are terse."), ("user", "What is the capital of France?")]
MULTI = [("user", "Hi!"), ("assistant", "Hello! How can I help?"), ("user", "What is the capital of France?")]
MULTI_SYSTEM = [("system", "You are terse."), *MULTI]
CONVERSATIONS = {"single": SINGLE, "single_system": SINGLE_SYSTEM, "multi": MULTI, "multi_system": MULTI_SYSTEM}
DRAFT = "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food."

PROMPTS: dict[tuple[str, str], str] = {
    # -- gemma: <bos> written by the template, assistant -> model, system merged into the first user turn
    ("gemma", "single"): (
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    ),
    ("gemma", "single_system"): (
        "<bos><start_of_turn>user\nYou are terse.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    ("gemma", "multi"): (
        "<bos><start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    ),
    ("gemma", "multi_system"): (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\n"
        "Hello! How can I help?<end_of_turn>\n<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    # -- llama3
    ("llama3", "single"): (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    ("llama3", "single_system"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    ("llama3", "multi"): (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    ("llama3", "multi_system"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    # -- chatml
    ("chatml", "single"): "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    ("chatml", "single_system"): (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    ("chatml", "multi"): (
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
    ("chatml", "multi_system"): (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
    # -- smollm2: ChatML with SmolLM2's default system message when none is given
    ("smollm2", "single"): (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
    ("smollm2", "single_system"): (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    ("smollm2", "multi"): (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
    ("smollm2", "multi_system"): (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
}

FULL_CLOSE = {
    "gemma": "<end_of_turn>\n",
    "llama3": "<|eot_id|>",
    "chatml": "<|im_end|>\n",
    "smollm2": "<|im_end|>\n",
}


def test_the_builtin_names() -> None:
    assert sorted(BUILTIN_TEMPLATES) == ["chatml", "gemma", "llama3", "smollm2"]
    assert {name: (t.bos, t.adds_bos, t.end_of_turn) for name, t in BUILTIN_TEMPLATES.items()} == {
        "gemma": ("<bos>", True, "<end_of_turn>"),
        "llama3": ("<|begin_of_text|>", True, "<|eot_id|>"),
        "chatml": ("", False, "<|im_end|>"),
        "smollm2": ("", False, "<|im_end|>"),
    }


@pytest.mark.parametrize(("name", "conversation"), sorted(PROMPTS))
def test_generation_prompt(name: str, conversation: str) -> None:
    template = get_template(name)
    assert isinstance(template, ChatTemplate)
    rendered = template.render(coerce_messages(CONVERSATIONS[conversation]), add_generation_prompt=True)
    assert rendered == PROMPTS[name, conversation]


def test_full_renders_written_out() -> None:
    messages = coerce_messages([*SINGLE, ("assistant", DRAFT)])
    assert get_template("gemma").render(messages, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.<end_of_turn>\n"
    )
    assert get_template("llama3").render(messages, add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.<|eot_id|>"
    )
    assert get_template("chatml").render(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.<|im_end|>\n"
    )
    assert get_template("smollm2").render(messages, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.<|im_end|>\n"
    )


@pytest.mark.parametrize(("name", "conversation"), sorted(PROMPTS))
def test_full_render_is_prompt_draft_close(name: str, conversation: str) -> None:
    messages = coerce_messages([*CONVERSATIONS[conversation], ("assistant", DRAFT)])
    full = get_template(name).render(messages, add_generation_prompt=False)
    assert full == PROMPTS[name, conversation] + DRAFT + FULL_CLOSE[name]


def test_trimming() -> None:
    messages = coerce_messages([("user", "  Hi!\n")])
    assert get_template("gemma").render(messages, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi!<end_of_turn>\n"
    )
    assert get_template("llama3").render(messages, add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    )
    assert get_template("chatml").render(messages, add_generation_prompt=False) == (
        "<|im_start|>user\n  Hi!\n<|im_end|>\n"
    )


def test_gemma_system_without_user_turn_becomes_a_user_turn() -> None:
    messages = coerce_messages([("system", "Be kind."), ("assistant", "Hello.")])
    assert get_template("gemma").render(messages, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nBe kind.<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


# -- prompt strings for prefix lengths, with a word-level tokenizer ----------------------------------

_WORDS = re.compile(r"<\|?[a-z_]+\|?>|\n+| ?[^\s<]+|\s+")


def word_spans(template: ChatTemplate, text: str) -> list[TokenSpan]:
    """Special tokens, newline runs and words (with their leading space); an added BOS first if the tokenizer adds one."""
    spans = [TokenSpan(1, 0, 0)] if template.adds_bos else []
    spans += [TokenSpan(100 + i, m.start(), m.end()) for i, m in enumerate(_WORDS.finditer(text))]
    assert "".join(text[s.start : s.stop] for s in spans) == text
    return spans


def prompt_for(name: str, conversation: list[tuple[str, str]], r: int, mode: PromptMode) -> tuple[str, str]:
    template = get_template(name)
    texts = render_texts(template, coerce_messages(conversation), DRAFT, mode=mode)
    prompt = build_prompt(
        texts, word_spans(template, texts.full), keep_prefix_tokens=r, mode=mode, stop=template.end_of_turn
    )
    assert prompt.stop == template.end_of_turn
    return prompt.text, prompt.kept_text


GEMMA_SINGLE = "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
LLAMA3_SINGLE = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

PREFIX_CASES = [
    # gemma, official: the added BOS shifts the cut one token back, so the final "\n" is kept token 1.
    (
        "gemma",
        "official",
        0,
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model",
        "",
    ),
    (
        "gemma",
        "official",
        1,
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
        "\n",
    ),
    (
        "gemma",
        "official",
        12,
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        "Paris is the capital of France. It is known for the",
        "\nParis is the capital of France. It is known for the",
    ),
    (
        "gemma",
        "official",
        100,
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
        "\nParis is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
    ),
    # gemma, clean: no <bos> in the text (the server adds it), r draft tokens after the whole prompt.
    (
        "gemma",
        "clean",
        0,
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
        "",
    ),
    (
        "gemma",
        "clean",
        1,
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis",
        "Paris",
    ),
    (
        "gemma",
        "clean",
        12,
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        "Paris is the capital of France. It is known for the Eiffel",
        "Paris is the capital of France. It is known for the Eiffel",
    ),
    (
        "gemma",
        "clean",
        100,
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
    ),
    # llama3, official: the shifted token is the generation prompt's final "\n\n".
    (
        "llama3",
        "official",
        0,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>",
        "",
    ),
    (
        "llama3",
        "official",
        1,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "\n\n",
    ),
    (
        "llama3",
        "official",
        12,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis is the capital of France. It is known for the",
        "\n\nParis is the capital of France. It is known for the",
    ),
    (
        "llama3",
        "official",
        100,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
        "\n\nParis is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
    ),
    (
        "llama3",
        "clean",
        1,
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis",
        "Paris",
    ),
    # chatml and smollm2: no BOS, so official and clean agree.
    (
        "chatml",
        "official",
        0,
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "",
    ),
    (
        "chatml",
        "official",
        1,
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis",
        "Paris",
    ),
    (
        "chatml",
        "clean",
        12,
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel",
        "Paris is the capital of France. It is known for the Eiffel",
    ),
    (
        "chatml",
        "official",
        12,
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel",
        "Paris is the capital of France. It is known for the Eiffel",
    ),
    (
        "chatml",
        "official",
        100,
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
    ),
    (
        "smollm2",
        "official",
        0,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "",
    ),
    (
        "smollm2",
        "official",
        1,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis",
        "Paris",
    ),
    (
        "smollm2",
        "official",
        12,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel",
        "Paris is the capital of France. It is known for the Eiffel",
    ),
    (
        "smollm2",
        "clean",
        100,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
        "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and fine food.",
    ),
]


@pytest.mark.parametrize(("name", "mode", "r", "text", "kept"), PREFIX_CASES)
def test_prompt_text_single_turn(name: str, mode: PromptMode, r: int, text: str, kept: str) -> None:
    assert prompt_for(name, SINGLE, r, mode) == (text, kept)


MULTI_SYSTEM_CASES = [
    (
        "gemma",
        "official",
        "<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\n"
        "Hello! How can I help?<end_of_turn>\n<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis is the capital of France. It is known for the",
    ),
    (
        "gemma",
        "clean",
        "<start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\n"
        "Hello! How can I help?<end_of_turn>\n<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis is the capital of France. It is known for the Eiffel",
    ),
    (
        "llama3",
        "official",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis is the capital of France. It is known for the",
    ),
    (
        "chatml",
        "official",
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel",
    ),
    (
        "smollm2",
        "official",
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "Paris is the capital of France. It is known for the Eiffel",
    ),
]


@pytest.mark.parametrize(("name", "mode", "text"), MULTI_SYSTEM_CASES)
def test_prompt_text_multi_turn_with_system_r12(name: str, mode: PromptMode, text: str) -> None:
    assert prompt_for(name, MULTI_SYSTEM, 12, mode)[0] == text


def test_render_texts_draft_offsets() -> None:
    texts = render_texts(get_template("chatml"), coerce_messages(SINGLE), "  " + DRAFT + "\n", mode="official")
    assert texts.prompt == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert texts.full == texts.prompt + "  " + DRAFT + "\n<|im_end|>\n"
    assert texts.full[texts.draft_start : texts.draft_end] == DRAFT
    clean = render_texts(get_template("gemma"), coerce_messages(SINGLE), DRAFT, mode="clean")
    assert clean.prompt == GEMMA_SINGLE.removeprefix("<bos>")
    assert clean.full == GEMMA_SINGLE.removeprefix("<bos>") + DRAFT + "<end_of_turn>\n"


# -- SmolLM2's own tokenizer template ------------------------------------------------------------------


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_matches_the_tokenizers_own_template(
    smollm2_tokenizer: Any, conversation: str, add_generation_prompt: bool
) -> None:
    turns = [{"role": role, "content": content} for role, content in CONVERSATIONS[conversation]]
    if not add_generation_prompt:
        turns.append({"role": "assistant", "content": DRAFT})
    expected = smollm2_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
    messages = [Message(**t) for t in turns]
    assert get_template("smollm2").render(messages, add_generation_prompt=add_generation_prompt) == expected
    assert (
        TokenizerTemplate(smollm2_tokenizer).render(messages, add_generation_prompt=add_generation_prompt) == expected
    )


# -- get_template ---------------------------------------------------------------------------------------


def test_get_template_passes_template_objects_through() -> None:
    gemma = BUILTIN_TEMPLATES["gemma"]
    assert get_template(gemma) is gemma
    assert get_template("llama3") is BUILTIN_TEMPLATES["llama3"]


def test_unknown_name_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ConfigurationError) as info:
        get_template("mistralai/Mistral-7B-Instruct-v0.3")
    assert str(info.value) == (
        "template 'mistralai/Mistral-7B-Instruct-v0.3' is not one of ['chatml', 'gemma', 'llama3', 'smollm2']; loading a tokenizer's own "
        "template needs transformers: pip install 'diffpo-integrations[local]'"
    )
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize("leaf", ["empty-folder", "missing.gguf"])
def test_bad_tokenizer_path(tmp_path: Path, leaf: str) -> None:
    path = tmp_path / leaf
    if leaf == "empty-folder":
        path.mkdir()
    with pytest.raises(ConfigurationError) as info:
        get_template(path)
    message = str(info.value)
    assert message.startswith(f"could not load a tokenizer from {str(path)!r} (")
    assert message.endswith("); use one of ['chatml', 'gemma', 'llama3', 'smollm2'] or a tokenizer folder")
    assert info.value.__cause__ is not None


def test_tokenizer_without_chat_template() -> None:
    class NoTemplate:
        chat_template = None

    with pytest.raises(ConfigurationError) as info:
        TokenizerTemplate(NoTemplate(), name="plain")
    assert str(info.value) == (
        "the tokenizer 'plain' has no chat_template; pass template='gemma', 'llama3' or 'chatml'"
    )
