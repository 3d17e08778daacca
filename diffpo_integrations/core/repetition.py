"""Telling an answer that ran out of budget inside a repetition loop from one that was merely long.

A small aligner (or the SmolLM2 stand-in) decoding greedily can fall into a loop and repeat one
phrase until ``max_new_tokens`` runs out. The answer is still exact (greedy decoding of prompt +
kept prefix), but a reader should be told why it looks wrong: ``finish: length (repeating)``.

Words (whitespace-separated) are the unit, so the check reads any :class:`AlignResult` the same
way, whichever backend produced it and whatever tokenizer the aligner has. It is a display hint,
computed on demand in one pass over the text, and never changes the answer.
"""

from __future__ import annotations

from collections import Counter

from diffpo_integrations.core.types import AlignResult

__all__ = ["LOOP_NGRAM", "LOOP_REPEATS", "finish_label", "most_repeated", "repeats"]

LOOP_NGRAM = 8
"""Words in the run that is counted."""
LOOP_REPEATS = 2
"""A run of :data:`LOOP_NGRAM` words said more often than this is a loop (twice is a quotation or a refrain)."""


def most_repeated(text: str, n: int = LOOP_NGRAM) -> tuple[str, int]:
    """The run of ``n`` words that occurs most often in ``text``, and how often ("", 0 when shorter).

    Example:
        >>> most_repeated("a b c a b c a b c", n=3)
        ('a b c', 3)
    """
    if n < 1:
        msg = f"n must be at least 1, got {n}"
        raise ValueError(msg)
    words = text.split()
    runs = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not runs:
        return "", 0
    # most_common keeps first-seen order among equal counts, so the answer is deterministic.
    run, count = runs.most_common(1)[0]
    return " ".join(run), count


def repeats(text: str, n: int = LOOP_NGRAM, limit: int = LOOP_REPEATS) -> bool:
    """Whether some run of ``n`` words occurs more than ``limit`` times in ``text``.

    Example:
        >>> repeats("Lava and Lava. " * 6), repeats("Aloha from Honolulu, where the sun sets late.")
        (True, False)
    """
    return most_repeated(text, n)[1] > limit


def finish_label(result: AlignResult) -> str:
    """``result.finish_reason``, with ``" (repeating)"`` added when the budget ran out inside a loop.

    Example:
        >>> finish_label(AlignResult(text="Lava and Lava. " * 6, draft="", finish_reason="length"))
        'length (repeating)'
    """
    if result.finish_reason == "length" and repeats(result.text):
        return "length (repeating)"
    return result.finish_reason
