"""The speculation policy alone: draft re-synchronisation and chunk choice (no model)."""

from __future__ import annotations

import pytest

from diffpo_integrations.engine.speculation import DraftCursor, SpeculationConfig, choose_chunk

CPU = SpeculationConfig()
GPU = SpeculationConfig.for_device("cuda")


def walk(draft: list[int], generated: list[int]) -> DraftCursor:
    cursor = DraftCursor(draft, CPU)
    for token in generated:
        cursor.observe(token)
    return cursor


def test_matching_tokens_advance_the_cursor() -> None:
    cursor = walk([10, 11, 12, 13], [10, 11])
    assert cursor.position == 2
    assert cursor.confirmed
    assert cursor.candidates(5) == [12, 13]
    assert cursor.candidates(0) == []


def test_substitution_is_guessed_then_confirmed() -> None:
    draft = [10, 11, 99, 13, 14, 15]
    cursor = walk(draft, [10, 11, 12])  # the aligner wrote 12 where the draft has 99
    assert cursor.position == 3
    assert not cursor.confirmed  # no evidence yet: a guess
    cursor.observe(13)
    assert (cursor.position, cursor.confirmed) == (4, True)


def test_insertion_in_the_draft_is_skipped() -> None:
    draft = [10, 11, 50, 12, 13, 14]  # 50 was inserted
    cursor = walk(draft, [10, 11, 12])
    assert (cursor.position, cursor.confirmed) == (4, True)
    assert cursor.candidates(2) == [13, 14]


def test_deletion_from_the_draft_is_found_one_token_late() -> None:
    draft = [10, 11, 13, 14, 15]  # 12 was deleted
    cursor = walk(draft, [10, 11, 12])
    assert cursor.position == 3  # guessed a substitution
    cursor.observe(13)  # the token after the deletion sits one back
    assert (cursor.position, cursor.confirmed) == (3, True)
    assert cursor.candidates(2) == [14, 15]


def test_long_ngram_found_anywhere_bigram_only_nearby() -> None:
    draft = list(range(100, 140))
    longest = CPU.max_ngram
    # The answer moved on to a later sentence of the draft: the longest n-gram is trusted anywhere.
    jumped = walk(draft, [100, 101, *draft[25 : 25 + longest]])
    assert (jumped.position, jumped.confirmed) == (25 + longest, True)
    # A bigram 13 positions ahead is more likely a common phrase recurring: not trusted.
    far_bigram = walk(draft, [100, 101, 7, 116, 117])
    assert (far_bigram.position, far_bigram.confirmed) == (5, False)
    near_bigram = walk(draft, [100, 101, 7, 104, 105])
    assert (near_bigram.position, near_bigram.confirmed) == (6, True)


def test_a_used_up_draft_is_rejoined_where_the_answer_repeats_it() -> None:
    phrase = [10, 11, 12, 13, 14, 15]
    assert len(phrase) == CPU.max_ngram
    draft = [*phrase, 20, 21, 22, *phrase]  # the draft repeats a phrase at its very end
    # The answer reached the end of the draft (say, after a jump to the second copy) and goes
    # on with what followed the first copy: the cursor resumes there, on trial.
    cursor = walk(draft, [*draft, 20])
    assert (cursor.position, cursor.confirmed) == (7, False)
    assert cursor.candidates(2) == [21, 22]
    cursor.observe(21)
    assert (cursor.position, cursor.confirmed) == (8, True)
    # Text the draft never had leaves a used-up cursor where it is.
    lost = walk(draft, [*draft, 99])
    assert (lost.position, lost.candidates(3)) == (len(draft), [])


def test_acceptance_and_guess_estimates_follow_hits_and_misses() -> None:
    draft = list(range(100, 160))
    cursor = DraftCursor(draft, CPU)
    assert cursor.acceptance == pytest.approx(CPU.prior_acceptance)
    assert cursor.guess_accuracy == pytest.approx(CPU.guess_accuracy)
    for token in draft[:30]:
        cursor.observe(token)
    high = cursor.acceptance
    assert high > 0.9
    # Foreign text: one miss counts against the draft, the misses after guesses against guessing.
    for token in range(500, 520):
        cursor.observe(token)
    assert high - 0.1 < cursor.acceptance < high
    assert cursor.guess_accuracy < 0.1
    # Back on the draft with confirmed positions: misses there count against the draft.
    for i in range(10):
        cursor.observe(draft[cursor.position] if i % 2 else 999)
    assert cursor.acceptance < 0.8


def test_chunk_choice_follows_the_cost_model() -> None:
    assert choose_chunk(0.0, 50, CPU) == 0
    assert choose_chunk(0.3, 50, CPU) == 0  # a foreign draft: greedy steps
    assert choose_chunk(1.0, 50, CPU) == 50  # a kept draft: verify all of it
    assert choose_chunk(0.9, 0, CPU) == 0
    mid = choose_chunk(0.9, 200, CPU)
    assert 8 <= mid <= 40
    assert choose_chunk(0.95, 200, CPU) > mid
    # Where verification is about as cheap as a step, even a weak draft is worth verifying.
    assert choose_chunk(0.3, 50, GPU) > 0


def test_a_guessed_position_is_probed_on_cpu_and_verified_on_gpu() -> None:
    assert choose_chunk(0.9, 100, CPU, guess_accuracy=0.5) == 0
    assert choose_chunk(0.9, 100, GPU, guess_accuracy=0.5) == choose_chunk(0.9, 100, GPU)
    assert choose_chunk(0.9, 100, GPU, guess_accuracy=0.01) == 0
