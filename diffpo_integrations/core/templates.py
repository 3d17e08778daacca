"""Chat templates of the DiffPO aligners, written out by hand, plus any tokenizer's own template.

Built-in names:

- ``"gemma"``: Gemma-2 (DiffPO-2B and DiffPO-9B). Gemma-2 has no system role, so a system
  message is merged into the first user turn. End of turn: ``<end_of_turn>``.
- ``"llama3"``: Llama-3-Instruct (DiffPO-8B). End of turn: ``<|eot_id|>``.
- ``"chatml"``: ChatML. End of turn: ``<|im_end|>``.
- ``"smollm2"``: ChatML with SmolLM2's default system message (the embedded server's model).

Anything else must be a tokenizer folder, a ``.gguf`` file, or a hub id (``org/name``), and that
tokenizer's own ``chat_template`` is used (needs ``transformers``: ``pip install
diffpo-integrations[local]``). Any other name fails at once, listing the built-ins; a hub id is
read from the local cache first and the hub is asked only once, briefly, so an offline machine
gets an answer in seconds, not after a minute of retries.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.core.types import Message

__all__ = [
    "BUILTIN_TEMPLATES",
    "BuiltinTemplate",
    "ChatTemplate",
    "TokenizerTemplate",
    "check_template_name",
    "get_template",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``org/name``: what the Hugging Face Hub accepts as a repository id."""
_HUB_PROBE_TIMEOUT_S = 5.0


@runtime_checkable
class ChatTemplate(Protocol):
    """What the prompt builder needs from a chat template."""

    @property
    def name(self) -> str:
        """How the template is named in metadata."""
        ...

    @property
    def bos(self) -> str:
        """The BOS string the template writes at the start, or ``""``."""
        ...

    @property
    def adds_bos(self) -> bool:
        """Whether the aligner's tokenizer adds a BOS token of its own when it encodes text."""
        ...

    @property
    def end_of_turn(self) -> str:
        """The end-of-turn token the aligner stops at."""
        ...

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        """The template's text for ``messages``."""
        ...


@dataclass(frozen=True)
class BuiltinTemplate:
    """A hand-written template; see the module docstring for the names."""

    name: str
    bos: str
    adds_bos: bool
    end_of_turn: str
    turn_open: str
    """Format of a turn's opening; ``{role}`` is replaced."""
    turn_close: str
    trim: bool
    """Whether the template trims message content (Gemma-2 and Llama-3 do, ChatML does not)."""
    roles: tuple[tuple[str, str], ...] = ()
    """Renamed roles, such as Gemma's ``assistant`` -> ``model``."""
    merge_system: bool = False
    default_system: str | None = None

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        turns: list[tuple[str, str]] = [(m.role, m.content) for m in messages]
        if self.default_system is not None and (not turns or turns[0][0] != "system"):
            turns.insert(0, ("system", self.default_system))
        if self.merge_system and turns and turns[0][0] == "system":
            system = turns.pop(0)[1]
            if turns and turns[0][0] == "user":
                turns[0] = ("user", f"{system}\n\n{turns[0][1]}")
            else:
                turns.insert(0, ("user", system))
        renames = dict(self.roles)
        parts = [self.bos]
        for role, content in turns:
            text = content.strip() if self.trim else content
            parts.append(self.turn_open.format(role=renames.get(role, role)) + text + self.turn_close)
        if add_generation_prompt:
            parts.append(self.turn_open.format(role=renames.get("assistant", "assistant")))
        return "".join(parts)


_CHATML = {
    "bos": "",
    "adds_bos": False,
    "end_of_turn": "<|im_end|>",
    "turn_open": "<|im_start|>{role}\n",
    "turn_close": "<|im_end|>\n",
    "trim": False,
}

BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "gemma": BuiltinTemplate(
        name="gemma",
        bos="<bos>",
        adds_bos=True,
        end_of_turn="<end_of_turn>",
        turn_open="<start_of_turn>{role}\n",
        turn_close="<end_of_turn>\n",
        trim=True,
        roles=(("assistant", "model"),),
        merge_system=True,
    ),
    "llama3": BuiltinTemplate(
        name="llama3",
        bos="<|begin_of_text|>",
        adds_bos=True,
        end_of_turn="<|eot_id|>",
        turn_open="<|start_header_id|>{role}<|end_header_id|>\n\n",
        turn_close="<|eot_id|>",
        trim=True,
    ),
    "chatml": BuiltinTemplate(name="chatml", **_CHATML),  # type: ignore[arg-type]
    "smollm2": BuiltinTemplate(
        name="smollm2",
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        **_CHATML,  # type: ignore[arg-type]
    ),
}


class TokenizerTemplate:
    """The chat template of a Hugging Face tokenizer (a folder, hub id or ``.gguf`` file).

    Args:
        tokenizer: a loaded ``transformers`` tokenizer.
        name: how to refer to it in metadata.
        end_of_turn: override the end-of-turn token (found from the template otherwise).
    """

    def __init__(self, tokenizer: Any, name: str = "tokenizer", end_of_turn: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            msg = f"the tokenizer {name!r} has no chat_template; pass template='gemma', 'llama3' or 'chatml'"
            raise ConfigurationError(msg)
        self.tokenizer = tokenizer
        self.name = name
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        bos = tokenizer.bos_token or ""
        ids = tokenizer("x", add_special_tokens=True)["input_ids"]
        self.adds_bos = bool(bos) and tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
        # Only a BOS the tokenizer also adds matters (clean mode strips it); SmolLM2's bos_token is
        # its turn marker, which the template writes as ordinary text.
        self.bos = bos if self.adds_bos and probe.startswith(bos) else ""
        self.end_of_turn = end_of_turn or _find_end_of_turn(probe, tokenizer)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
        return str(text)


def _find_end_of_turn(probe: str, tokenizer: Any) -> str:
    for candidate in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "</s>"):
        if candidate in probe:
            return candidate
    return str(tokenizer.eos_token)


def get_template(template: str | os.PathLike[str] | ChatTemplate) -> ChatTemplate:
    """Resolve a template name, tokenizer location, or template object.

    Raises:
        ConfigurationError: the name is unknown and no tokenizer could be loaded from it.

    Example:
        >>> get_template("gemma").end_of_turn
        '<end_of_turn>'
    """
    if isinstance(template, ChatTemplate):
        return template
    key = os.fspath(template)
    if key in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[key]
    check_template_name(key)
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        msg = (
            f"template {key!r} is not one of {sorted(BUILTIN_TEMPLATES)}; loading a tokenizer's own "
            "template needs transformers: pip install 'diffpo-integrations[local]'"
        )
        raise ConfigurationError(msg) from exc
    try:
        if key.endswith(".gguf"):
            tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(key) or ".", gguf_file=os.path.basename(key))
        elif os.path.exists(key):
            tokenizer = AutoTokenizer.from_pretrained(key)
        else:
            tokenizer = _hub_tokenizer(key)
    except ConfigurationError:
        raise
    except Exception as exc:
        msg = f"could not load a tokenizer from {key!r} ({exc}); use one of {sorted(BUILTIN_TEMPLATES)} or a tokenizer folder"
        raise ConfigurationError(msg) from exc
    return TokenizerTemplate(tokenizer, name=key)


def check_template_name(name: str) -> None:
    """Fail fast on a name that is neither a built-in, an existing path, nor a hub id (``org/name``).

    Raises:
        ConfigurationError: listing the built-in names (and the closest one).

    Example:
        >>> check_template_name("gemma2")
        Traceback (most recent call last):
        ...
        diffpo_integrations.core.errors.ConfigurationError: unknown template 'gemma2' (did you mean 'gemma'?): use one of ['chatml', 'gemma', 'llama3', 'smollm2'], a tokenizer folder, a .gguf file, or a hub id like 'google/gemma-2-9b-it'
    """
    if name in BUILTIN_TEMPLATES or os.path.exists(name) or name.endswith(".gguf") or _HUB_ID.match(name):
        return
    close = difflib.get_close_matches(name, list(BUILTIN_TEMPLATES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    msg = (
        f"unknown template {name!r}{hint}: use one of {sorted(BUILTIN_TEMPLATES)}, a tokenizer folder, "
        "a .gguf file, or a hub id like 'google/gemma-2-9b-it'"
    )
    raise ConfigurationError(msg)


def _hub_tokenizer(repo_id: str) -> Any:
    """A hub tokenizer from the local cache, else downloaded once the hub answered a short probe."""
    from transformers import AutoTokenizer

    with contextlib.suppress(Exception):  # not cached: ask the hub below
        return AutoTokenizer.from_pretrained(repo_id, local_files_only=True)
    from huggingface_hub import HfApi

    try:
        # One short request instead of the download's retries, which take about a minute offline.
        HfApi().model_info(repo_id, timeout=_HUB_PROBE_TIMEOUT_S)
    except Exception as exc:
        msg = (
            f"template {repo_id!r} is not in the local Hugging Face cache and the hub did not answer for it "
            f"({type(exc).__name__}: {str(exc)[:200]}); use one of {sorted(BUILTIN_TEMPLATES)} or a tokenizer folder"
        )
        raise ConfigurationError(msg) from exc
    return AutoTokenizer.from_pretrained(repo_id)
