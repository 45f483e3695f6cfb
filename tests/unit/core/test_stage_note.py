"""The stage line's note: what a ran stage paid for, dropped, or left to be skipped (issue 20: SGPO's
pairs held 84 identical pairs of 100 and nothing on screen said so)."""

from __future__ import annotations

from sgpo.core.job import stage_note


def test_a_pairs_line_says_how_many_pairs_preference_training_skips():
    summary = {"pairs": 100, "chosen_equals_rejected": 84, "empty_dropped": 0}
    assert stage_note(summary) == " (84 of 100 pairs have chosen = rejected: DPO / ORPO skip them)"


def test_notes_add_up_and_an_ordinary_line_has_none():
    summary = {
        "from_journal": 3,
        "sent": 5,
        "empty_dropped": 1,
        "pairs": 9,
        "chosen_equals_rejected": 2,
    }
    assert stage_note(summary) == (
        " (3 answers from the journal, 5 sent) (1 empty answer dropped)"
        " (2 of 9 pairs have chosen = rejected: DPO / ORPO skip them)"
    )
    assert stage_note({"pairs": 9, "chosen_equals_rejected": 0, "empty_dropped": 0}) == ""
    assert stage_note(None) == ""
