"""Evaluation: does a stylized head keep its identity, and does it show the style?

``metrics`` holds the measures (identity similarity with its controls — re-identification top-1 against chance
and the margin over mismatched heads —, diversity, leave-one-out multi-view consistency, style score), the
pluggable backend registry and :func:`~engine.evaluate.metrics.evaluate_renders`; ``recognition`` holds the
embedded pack's identity encoder and style classifier (the default ``"embedded"`` backends) and their training
data.
"""
