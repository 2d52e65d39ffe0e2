"""Fairness of a stylization: do its scores hold equally for every group of people?

A stylization can keep identity well on average and still fail one group: a zombie prior that paints every
face green-grey may erase deep skin tones' identity cues more than light ones', or reach its style only on
some. :func:`group_scores` splits per-subject scores (identity similarity, re-identification hits, margin,
style score — the per-subject lists of :class:`engine.evaluate.metrics.EvaluationReport`) by a group label
per subject and reports each group's mean and the **largest gap** between groups, per score.

:func:`tercile_groups` makes three equal-size groups from one continuous attribute (the procedural world's
``skin_tone`` in the quality bench): ranks, not fixed thresholds, so every group has N/3 subjects whatever
the sample's distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError

TERCILE_NAMES = ("low", "middle", "high")


def tercile_groups(values: Sequence[float], names: Sequence[str] = TERCILE_NAMES) -> list[str]:
    """One of three labels per value by rank: the lowest third, the middle third, the highest third.

    With N not divisible by 3 the middle group takes the remainder; ties are broken by position, so the
    split is deterministic.
    """
    if len(names) != 3:
        raise InputError(f"tercile_groups needs 3 names, got {len(names)}")
    n = len(values)
    if n < 3:
        raise InputError(f"tercile_groups needs at least 3 values, got {n}")
    if any(not math.isfinite(float(v)) for v in values):
        raise InputError("tercile_groups: values must be finite")
    order = sorted(range(n), key=lambda i: (float(values[i]), i))
    third = n // 3
    labels = [names[1]] * n
    for i in order[:third]:
        labels[i] = names[0]
    for i in order[n - third :]:
        labels[i] = names[2]
    return labels


def group_scores(per_subject: Mapping[str, Sequence[float | None]], groups: Sequence[str]) -> dict[str, Any]:
    """Per-group means and the largest between-group gap of each per-subject score.

    ``per_subject`` maps a score's name to one value per subject (``None``/NaN values are left out of that
    score's means); ``groups`` is each subject's group label. Returns::

        {"groups": {label: {"subjects": n, score: mean, ...}, ...},
         "largest_gap": {score: max group mean − min group mean, ...},
         "worst_group": {score: label of the lowest mean, ...}}
    """
    labels = list(dict.fromkeys(groups))
    if len(labels) < 2:
        raise InputError(f"group_scores needs at least 2 groups, got {labels}")
    out: dict[str, Any] = {"groups": {g: {"subjects": sum(1 for x in groups if x == g)} for g in labels},
                           "largest_gap": {}, "worst_group": {}}
    for name, values in per_subject.items():
        if len(values) != len(groups):
            raise InputError(f"group_scores: score {name!r} has {len(values)} values for {len(groups)} subjects")
        means = {}
        for g in labels:
            kept = [float(v) for v, label in zip(values, groups) if label == g and v is not None and math.isfinite(float(v))]
            means[g] = sum(kept) / len(kept) if kept else None
            out["groups"][g][name] = means[g]
        present = {g: m for g, m in means.items() if m is not None}
        if len(present) >= 2:
            out["largest_gap"][name] = max(present.values()) - min(present.values())
            out["worst_group"][name] = min(present, key=present.get)
        else:
            out["largest_gap"][name] = None
            out["worst_group"][name] = None
    return out


def report_scores_per_subject(report: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """The per-subject scores of an :class:`EvaluationReport` dict that fairness is measured on:
    ``identity_similarity``, ``identity_margin``, ``reid_hit`` (1 when the stylized head's own original is
    its best match: ``reid_ranks`` are 1-based) and ``style_score`` (after, mean over views), where present."""
    out: dict[str, list[float | None]] = {"identity_similarity": list(report["identity_similarity"])}
    if report.get("identity_margin") is not None:
        out["identity_margin"] = list(report["identity_margin"])
    if report.get("reid_ranks") is not None:
        out["reid_hit"] = [1.0 if rank == 1 else 0.0 for rank in report["reid_ranks"]]
    if report.get("style_score_after") is not None:
        out["style_score"] = list(report["style_score_after"])
    return out
