"""What the live server tests compare with: transformers' own greedy answer to an MT-bench question."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NEW_TOKENS", "Reference"]

NEW_TOKENS = 40


@dataclass(frozen=True)
class Reference:
    """transformers' own greedy ``generate`` on the templated MT-bench question."""

    question: str
    prompt: str
    prompt_ids: list[int]
    tokens: list[int]
    text: str
