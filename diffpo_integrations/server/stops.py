"""Cutting streamed text at stop sequences in time linear in the text and the stops.

A client may send long stop sequences (the body limit allows megabytes): each one is matched with
a Knuth-Morris-Pratt automaton, so every generated character costs a constant amortized time per
stop, and the text held back (what may still become a stop) is exactly the longest partial match.
Building the automata is linear in the stops' length; the routes build them off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopTrimmer"]


def _failure(stop: str) -> list[int]:
    """KMP's failure table: for each prefix, the length of its longest proper border."""
    table = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = table[k - 1]
        if stop[i] == stop[k]:
            k += 1
        table[i] = k
    return table


class StopTrimmer:
    """Cuts generated text at the stop sequence that starts first, holding back what may be the start of one.

    The streamed pieces join to exactly what cutting the whole text at its earliest stop gives.

    Example:
        >>> t = StopTrimmer(["END"])
        >>> [t.feed(p) for p in ["Hi E", "N", "D more"]] + [t.flush()]
        ['Hi ', '', '', '']
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._tables = [_failure(s) for s in self.stops]
        self._states = [0] * len(self.stops)
        self._held = ""
        """Text not emitted yet; it starts at absolute position ``self._held_at``."""
        self._held_at = 0
        self._pos = 0
        """Characters seen so far."""
        self._cut: int | None = None
        """Absolute start of the earliest stop found so far."""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add generated text; return what is safe to emit."""
        if self.stopped or not piece:
            return ""
        self._held += piece
        for ch in piece:
            self._pos += 1
            for i, stop in enumerate(self.stops):
                k = self._states[i]
                while k and stop[k] != ch:
                    k = self._tables[i][k - 1]
                if stop[k] == ch:
                    k += 1
                if k == len(stop):
                    start = self._pos - k
                    if self._cut is None or start < self._cut:
                        self._cut = start
                    k = self._tables[i][k - 1]
                self._states[i] = k
            if self._cut is not None and not self._earlier_match_possible():
                return self._finish()
        # Everything before the earliest live partial match (or the stop found) is final.
        keep_from = min(self._live_starts(), default=self._pos)
        if self._cut is not None:
            keep_from = min(keep_from, self._cut)
        out = self._held[: keep_from - self._held_at]
        self._held = self._held[len(out) :]
        self._held_at += len(out)
        return out

    def flush(self) -> str:
        """What is left once generation ended: the held-back text, or the text up to the stop found."""
        if self.stopped:
            return ""
        if self._cut is not None:
            return self._finish()
        out, self._held = self._held, ""
        self.stopped = True
        return out

    def _live_starts(self) -> list[int]:
        return [self._pos - k for k in self._states if k]

    def _earlier_match_possible(self) -> bool:
        assert self._cut is not None
        return any(start < self._cut for start in self._live_starts())

    def _finish(self) -> str:
        assert self._cut is not None
        self.stopped = True
        out = self._held[: max(0, self._cut - self._held_at)]
        self._held = ""
        return out
