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
    draft = [1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 40, 41, 42, 43, 44]
    jumped = walk(draft, [1, 2, 40, 41, 42, 43])  # the answer moved to the draft's last sentence
    assert jumped.position == 24
    far_bigram = walk(draft, [1, 2, 77, 26, 27])  # a bigram 13 positions ahead: not trusted
    assert (far_bigram.position, far_bigram.confirmed) == (5, False)


def test_acceptance_estimate_follows_hits_and_misses() -> None:
    draft = list(range(100, 160))
    cursor = DraftCursor(draft, CPU)
    assert cursor.acceptance == pytest.approx(CPU.prior_acceptance)
    for token in draft[:30]:
        cursor.observe(token)
    high = cursor.acceptance
    assert high > 0.9
    for token in range(500, 520):
        cursor.observe(token)
    assert cursor.acceptance < high - 0.2


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
    assert choose_chunk(0.9, 100, CPU, confirmed=False) == 0
    assert choose_chunk(0.9, 100, GPU, confirmed=False) == choose_chunk(0.9, 100, GPU)
