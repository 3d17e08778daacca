"""Word-level differences between a draft and its aligned answer, and the figures drawn from them."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Segment", "WordDiff", "word_diff"]

_WORD = re.compile(r"\S+\s*|\s+")

SegmentKind = Literal["same", "del", "ins"]


@dataclass(frozen=True)
class Segment:
    """A run of words: ``same`` (in both), ``del`` (only in the draft) or ``ins`` (only in the answer)."""

    kind: SegmentKind
    text: str


@dataclass(frozen=True)
class WordDiff:
    """The draft and the aligned answer as segments, plus word counts."""

    draft: list[Segment]
    """The draft: ``same`` and ``del`` segments."""
    aligned: list[Segment]
    """The aligned answer: ``same`` and ``ins`` segments."""
    draft_words: int
    aligned_words: int
    kept_words: int
    """Draft words that survive in the aligned answer (matched in order)."""

    @property
    def kept_share(self) -> float:
        """Share of the draft's words kept in the aligned answer (1.0 for an empty draft)."""
        return self.kept_words / self.draft_words if self.draft_words else 1.0

    @property
    def length_change(self) -> float:
        """Relative change of length in words: ``aligned / draft - 1``."""
        return self.aligned_words / self.draft_words - 1.0 if self.draft_words else 0.0


def _words(text: str) -> list[str]:
    # Each token keeps its trailing whitespace so the text renders exactly; matching ignores it.
    return _WORD.findall(text)


def _append(out: list[Segment], kind: SegmentKind, text: str) -> None:
    if not text:
        return
    if out and out[-1].kind == kind:
        out[-1] = Segment(kind, out[-1].text + text)
    else:
        out.append(Segment(kind, text))


def word_diff(draft: str, aligned: str) -> WordDiff:
    """Diff two texts word by word with :mod:`difflib` (whitespace changes are not differences).

    Example:
        >>> d = word_diff("the cat sat", "the big cat sat down")
        >>> [(s.kind, s.text) for s in d.aligned]
        [('same', 'the '), ('ins', 'big '), ('same', 'cat sat '), ('ins', 'down')]
        >>> d.kept_share
        1.0
    """
    a, b = _words(draft), _words(aligned)
    a_key = [w.strip() for w in a]
    b_key = [w.strip() for w in b]
    # autojunk would treat frequent words in long answers as noise and report spurious edits.
    matcher = difflib.SequenceMatcher(None, a_key, b_key, autojunk=False)
    left: list[Segment] = []
    right: list[Segment] = []
    kept = 0
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            kept += sum(1 for w in a_key[i1:i2] if w)
            _append(left, "same", "".join(a[i1:i2]))
            _append(right, "same", "".join(b[j1:j2]))
        else:
            _append(left, "del", "".join(a[i1:i2]))
            _append(right, "ins", "".join(b[j1:j2]))
    return WordDiff(
        draft=left,
        aligned=right,
        draft_words=sum(1 for w in a_key if w),
        aligned_words=sum(1 for w in b_key if w),
        kept_words=kept,
    )
