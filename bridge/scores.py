"""How the panel words a run's identity scores (pure Python: no bpy, unit-tested outside Blender).

A raw cosine alone misleads: the pack's encoder gives two *different* heads 0.7–0.85. So the panel leads
with the control — was the stylized head recognised among the fixed gallery of other heads, and by how much
(margin) — and shows the raw cosine last, labelled as such.
"""

from __future__ import annotations

NOT_MEASURED = -9.0  # the margin's "not measured" value (margins may be negative)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def identity_lines(rank: int, candidates: int, margin: float, cosine: float) -> list[str]:
    """Panel lines for the identity scores of one run; "not measured" where the engine did not score it."""
    if rank <= 0 and cosine < 0:
        return ["Identity: not measured"]
    lines = []
    if rank > 0 and candidates > 0:
        verdict = "recognised" if rank == 1 else f"ranked {ordinal(rank)}"
        lines.append(f"Identity: {verdict} among {candidates} heads (chance 1/{candidates})")
    if margin > NOT_MEASURED:
        lines.append(f"Margin over other heads: {margin:+.3f}")
    if cosine >= 0:
        lines.append(f"Raw cosine: {cosine:.3f}")
    return lines
