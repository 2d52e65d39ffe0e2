"""A small self-contained HTML page for the demo: the pictures, the numbers, how they were made.

Images are linked by relative path, so the page works from the output folder (open it in a browser, or
attach the whole folder to a ticket). All text is HTML-escaped; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable

from ..io.atomic import write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { border: 1px solid #ccc; padding: .25rem .6rem; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { image-rendering: auto; border: 1px solid #ddd; max-width: 100%; }
.muted { color: #777; font-size: .9rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return _e(value)


def flatten(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """("a.b.c", leaf) pairs of nested dicts; lists of numbers stay one leaf."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, data


def _table(rows: Iterable[tuple[str, Any]], headers: tuple[str, str] = ("quantity", "value")) -> str:
    body = "".join(
        f"<tr><td>{_e(k)}</td><td class='num'>{_number(v) if not isinstance(v, list) else _e(json.dumps(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table><tr><th>{_e(headers[0])}</th><th>{_e(headers[1])}</th></tr>{body}</table>"


# The headline numbers of a demo run: identity always next to its control (chance, margin, the cosine of two
# different originals), so a raw cosine is never read alone.
_HEADLINE = (
    ("reid_top1", "re-identification top-1: each stylized head matched among the originals",
     lambda s: f"chance {_number(s.get('reid_chance'))} ({_e(s.get('reid_candidates'))} candidates)"),
    ("reid_top1_per_view", "re-identification top-1 per view (same view of every original)", lambda s: "same chance"),
    ("reid_top1_reverse", "reverse: each original matched among the stylized heads", lambda s: "low = collapse onto one face"),
    ("identity_margin_mean", "margin: own-original cosine − mean cosine to the other originals", lambda s: "0 = no better than anyone"),
    ("identity_similarity_mean", "identity cosine before → after (raw, no control)",
     lambda s: f"different originals: {_number(s.get('original_cross_similarity'))}"),
    ("consistency_after_mean", "multi-view consistency after (leave-one-out)",
     lambda s: f"before: {_number(s.get('consistency_before_mean'))}"),
    ("diversity_ratio", "identity diversity after ÷ before", lambda s: "1 = as distinct as before"),
    ("style_score_after_mean", "style score after", lambda s: f"before: {_number(s.get('style_score_before_mean'))}"),
)


def headline_table(scores: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td class='num'>{_number(scores.get(key))}</td><td class='muted'>{control(scores)}</td></tr>"
        for key, label, control in _HEADLINE if key in scores
    )
    return f"<table><tr><th>measure</th><th>value</th><th>control</th></tr>{rows}</table>"


def demo_report_html(metrics: dict[str, Any]) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Head Stylizer demo: {_e(metrics.get('style'))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Head Stylizer demo — {_e(metrics.get('prompt'))}</h1>",
        f"<p class='muted'>Method {_e(str(metrics.get('method')).upper())}, {_e(metrics.get('steps'))} steps at learning rate "
        f"{_e(metrics.get('lr'))}, embedded pack {_e(metrics.get('pack', {}).get('name'))} "
        f"v{_e(metrics.get('pack', {}).get('version'))}. Top row of each sheet: before; bottom row: after. "
        f"Views: {_e(', '.join(metrics.get('view_names', [])))}.</p>",
    ]
    scores = metrics.get("scores") or {}
    parts.append("<h2>Metrics</h2>")
    if scores:
        parts.append(headline_table(scores))
        parts.append("<h3>All measures</h3>" + _table(flatten(scores)))
    else:
        parts.append("<p class='muted'>Evaluation was skipped.</p>")
    if metrics.get("turntable"):
        parts.append(f"<h2>Turntable (before | after)</h2><img src='{_e(metrics['turntable'])}' alt='turntable'>")
    parts.append("<h2>Heads</h2>")
    for head in metrics.get("heads", []):
        parts.append(f"<h3>Seed {_e(head['seed'])}</h3><img src='{_e(head['compare'])}' alt='seed {_e(head['seed'])}'>")
    meshes = metrics.get("meshes") or {}
    if meshes:
        parts.append("<h2>Meshes</h2><table><tr><th>mesh</th><th>vertices</th><th>faces</th><th>files</th></tr>")
        for side, mesh in meshes.items():
            links = " ".join(f"<a href='{_e(mesh[k])}'>{k.upper()}</a>" for k in ("ply", "obj") if k in mesh)
            parts.append(f"<tr><td>{_e(side)}</td><td class='num'>{_e(mesh.get('vertices'))}</td>"
                         f"<td class='num'>{_e(mesh.get('faces'))}</td><td>{links}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Timings (seconds)</h2>" + _table(flatten(metrics.get("timings_s", {})), ("stage", "seconds")))
    parts.append("<h2>Machine</h2>" + _table(flatten(metrics.get("machine", {}))))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_demo_report(path: str | Path, metrics: dict[str, Any]) -> Path:
    return write_text(path, demo_report_html(metrics))
