"""The panel's identity lines: the re-identification control first, the raw cosine last."""

from __future__ import annotations

from bridge.scores import NOT_MEASURED, identity_lines, ordinal


def test_recognised_head_shows_rank_margin_and_raw_cosine():
    assert identity_lines(1, 9, 0.0912, 0.871) == [
        "Identity: recognised among 9 heads (chance 1/9)",
        "Margin over other heads: +0.091",
        "Raw cosine: 0.871",
    ]


def test_a_head_not_recognised_says_its_rank_and_a_negative_margin():
    lines = identity_lines(3, 9, -0.02, 0.80)
    assert lines[0] == "Identity: ranked 3rd among 9 heads (chance 1/9)" and lines[1] == "Margin over other heads: -0.020"


def test_missing_scores_are_not_invented():
    assert identity_lines(0, 0, NOT_MEASURED, -1.0) == ["Identity: not measured"]
    assert identity_lines(0, 0, NOT_MEASURED, 0.5) == ["Raw cosine: 0.500"]  # an old head.json without the control


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
