"""Telling an answer that ran out of budget inside a loop from one that was merely long."""

from __future__ import annotations

import pytest

from diffpo_integrations.core.repetition import finish_label, most_repeated, repeats
from diffpo_integrations.core.types import AlignResult

LOOP = "**Island Vibes and Culture** " + "**Lava and Lava** " * 14
PROSE = (
    "Subject: Seeking Feedback on the Quarterly Financial Report. Dear Ms. Lee, I hope this message finds you "
    "well. I am writing to ask for your feedback on the report I prepared, in particular on the data analysis, "
    "the presentation style and the clarity of the conclusions I drew."
)


def test_most_repeated_counts_the_commonest_run_of_words() -> None:
    assert most_repeated("a b c a b c a b c", n=3) == ("a b c", 3)
    assert most_repeated("one two", n=3) == ("", 0)


def test_a_loop_repeats_and_prose_does_not() -> None:
    phrase, count = most_repeated(LOOP)
    assert (phrase, count) == ("**Lava and Lava** **Lava and Lava** **Lava and", 12)
    assert repeats(LOOP)
    assert not repeats(PROSE)


def test_a_phrase_said_twice_is_not_a_loop() -> None:
    twice = "I would like to thank you for your time. " * 2
    assert most_repeated(twice)[1] == 2
    assert not repeats(twice)
    assert repeats(twice * 2)


@pytest.mark.parametrize(
    ("text", "finish", "label"),
    [
        (LOOP, "length", "length (repeating)"),
        (PROSE, "length", "length"),
        (LOOP, "eos_token", "eos_token"),
        (PROSE, "eos_token", "eos_token"),
    ],
)
def test_finish_label_marks_only_a_budget_spent_in_a_loop(text: str, finish: str, label: str) -> None:
    result = AlignResult(text=text, draft="d", finish_reason=finish)  # type: ignore[arg-type]
    assert finish_label(result) == label


def test_n_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^n must be at least 1, got 0$"):
        most_repeated("a b", n=0)
