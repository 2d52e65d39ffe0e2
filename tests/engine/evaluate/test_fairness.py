"""Fairness scores: tercile split by rank, per-group means and the largest gap (hand values)."""

from __future__ import annotations

import math

import pytest

from engine.errors import InputError
from engine.evaluate.fairness import group_scores, report_scores_per_subject, tercile_groups


def test_terciles_split_by_rank_not_by_value():
    values = [0.9, 0.1, 0.5, 0.2, 0.95, 0.3, 0.0]  # 7 values: 2 low, 3 middle, 2 high
    assert tercile_groups(values) == ["high", "low", "middle", "middle", "high", "middle", "low"]
    # skewed values still give equal-size outer groups
    skewed = [0.01, 0.02, 0.03, 0.04, 0.05, 0.99]
    assert tercile_groups(skewed) == ["low", "low", "middle", "middle", "high", "high"]
    # ties break by position, deterministically
    assert tercile_groups([0.5, 0.5, 0.5]) == ["low", "middle", "high"]
    with pytest.raises(InputError, match="at least 3"):
        tercile_groups([0.1, 0.2])
    with pytest.raises(InputError, match="finite"):
        tercile_groups([0.1, float("nan"), 0.3])


def test_group_means_gap_and_worst_group_hand_values():
    groups = ["a", "b", "a", "c", "b", "c"]
    scores = {"identity_similarity": [0.9, 0.5, 0.7, 0.6, 0.3, None], "style_score": [1.0, 1.0, 0.0, 0.5, 1.0, 0.5]}
    out = group_scores(scores, groups)
    assert out["groups"]["a"] == {"subjects": 2, "identity_similarity": pytest.approx(0.8), "style_score": 0.5}
    assert out["groups"]["b"]["identity_similarity"] == pytest.approx(0.4)
    assert out["groups"]["c"]["identity_similarity"] == pytest.approx(0.6)  # the None is left out
    assert out["largest_gap"]["identity_similarity"] == pytest.approx(0.4)
    assert out["worst_group"]["identity_similarity"] == "b"
    assert out["largest_gap"]["style_score"] == pytest.approx(0.5)
    assert out["worst_group"]["style_score"] == "a"
    with pytest.raises(InputError, match="3 values for 6 subjects"):
        group_scores({"x": [1.0, 2.0, 3.0]}, groups)
    with pytest.raises(InputError, match="at least 2 groups"):
        group_scores({"x": [1.0, 2.0]}, ["a", "a"])


def test_group_gap_is_none_when_only_one_group_has_values():
    out = group_scores({"x": [1.0, math.nan, None]}, ["a", "b", "b"])
    assert out["groups"]["b"]["x"] is None and out["largest_gap"]["x"] is None


def test_per_subject_scores_from_a_report():
    report = {"identity_similarity": [0.8, 0.6, 0.7], "identity_margin": [0.2, -0.1, 0.0], "reid_ranks": [1, 3, 1],
              "style_score_after": [0.9, 0.1, 0.5]}
    scores = report_scores_per_subject(report)
    assert scores["reid_hit"] == [1.0, 0.0, 1.0]  # ranks are 1-based: rank 1 is a hit
    assert scores["identity_margin"] == [0.2, -0.1, 0.0] and scores["style_score"] == [0.9, 0.1, 0.5]
    assert set(report_scores_per_subject({"identity_similarity": [0.5], "reid_ranks": None})) == {"identity_similarity"}
