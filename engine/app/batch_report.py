"""The batch's management page: ``report.html``, one row per item, for a supervisor who is not an engineer.

Why a page: ``report.csv``/``report.json`` serve scripts; a supervisor checks what was made, from whom and under
whose consent, and wants to sort by identity score or see only the failures. Each row has the source's *name*
(never its path or the file), small before/after thumbnails, status, identity similarity, the consent record,
the style (an approved style id, or the prompt marked "not approved"), the chain's commercial-use flag,
seconds, the error, and a link to the glb.

* **Self-contained.** Thumbnails are JPEG data URIs (:func:`item_thumbnails`, 96 px, a few kB each, stored in
  each item's sidecar when the item is made, so a resumed batch's page still has them); CSS and JS are inline;
  a Content-Security-Policy allows nothing else (no network, no server: open the file, or mail it).
* **Sort and filter in the browser.** Click a column header to sort (again: reverse); a search box matches
  any text of a row; a status menu and a "commercial use restricted" box narrow the rows. The view is kept
  in the address's ``#`` (``#sort=identity&dir=desc&status=failed&q=alice&restricted=1``), so a link opens
  the same view — and a test can check sorting and filtering in a real browser (``tests/engine/app``).
* All text is HTML-escaped; a thumbnail that is not a base64 JPEG/PNG data URI is dropped.

Written at the end of every batch (and of a cancelled one) by :func:`write_batch_report_html`, atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ..io.atomic import write_text

THUMBNAIL_SIZE = 96
_DATA_URI = re.compile(r"^data:image/(jpeg|png);base64,[A-Za-z0-9+/]+={0,2}$")


def thumbnail_uri(image: torch.Tensor, size: int = THUMBNAIL_SIZE) -> str:
    """A (3, H, W) image in [-1, 1] as a ``size``-pixel JPEG data URI (quality 80: ~2–4 kB)."""
    from PIL import Image

    from ..io.images import to_uint8

    picture = Image.fromarray(to_uint8(image)).convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def item_thumbnails(before: torch.Tensor | None, after: torch.Tensor | None) -> dict[str, str | None]:
    """The sidecar's ``thumbnails``: the first scored view of the source and of the stylized head (the same
    camera), or None where the item has no such view (a portrait without dlib, a views folder of 2 views)."""
    return {"before": None if before is None or len(before) == 0 else thumbnail_uri(before[0]),
            "after": None if after is None or len(after) == 0 else thumbnail_uri(after[0])}


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def report_rows(out_dir: Path, items: Iterable[Any]) -> list[dict[str, Any]]:
    """One dict per :class:`engine.app.batch.ItemResult`, with what the page shows (sidecar facts for made items)."""
    rows = []
    for index, item in enumerate(items, start=1):
        sidecar = _read_sidecar(out_dir / (Path(item.output).stem + ".json")) if item.output else {}
        prov = sidecar.get("provenance") if isinstance(sidecar.get("provenance"), dict) else {}
        thumbs = sidecar.get("thumbnails") if isinstance(sidecar.get("thumbnails"), dict) else {}
        row = item.row()
        consent = prov.get("consent_record") if isinstance(prov.get("consent_record"), dict) else None
        commercial = prov.get("commercial_use") if isinstance(prov.get("commercial_use"), dict) else {}
        rows.append({
            "index": index,
            "source": Path(item.input).name,
            "before": thumbs.get("before"),
            "after": thumbs.get("after"),
            "status": item.status,
            "identity": row["identity_similarity"],
            "consent": (consent.get("id") or consent.get("source")) if consent else ("yes" if prov.get("consent") else ""),
            "consent_source": consent.get("source", "") if consent else "",
            "style": prov.get("style_id") or "",
            "prompt": prov.get("prompt", ""),
            "commercial": commercial.get("status", ""),
            "restricted_by": ", ".join(commercial.get("restricted_by", [])),
            "seconds": row["seconds"],
            "error": item.error,
            "output": item.output if item.status in ("done", "skipped") else "",
        })
    return rows


_CSS = """
:root { --line: #d8dbe0; --muted: #667; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1d1f24; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
.meta { color: var(--muted); margin: 0 0 1rem; }
.chips span { display: inline-block; padding: .15rem .6rem; border-radius: 1rem; margin-right: .4rem; font-weight: 600; }
.controls { display: flex; gap: 1rem; align-items: center; margin: 1rem 0 .6rem; flex-wrap: wrap; }
.controls input[type=search] { padding: .35rem .5rem; width: 18rem; border: 1px solid var(--line); border-radius: 4px; }
.controls select { padding: .3rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .5rem; text-align: left; vertical-align: middle; }
th { background: #f4f5f7; position: sticky; top: 0; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \\25B2"; font-size: .7em; }
th[aria-sort=descending]::after { content: " \\25BC"; font-size: .7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td img { width: 64px; height: 64px; object-fit: cover; border: 1px solid var(--line); border-radius: 3px; display: block; }
td.noimg { color: var(--muted); font-size: .8rem; }
td.error { color: #a11; max-width: 16rem; }
td[data-col=source], td[data-col=output] { max-width: 14rem; overflow-wrap: anywhere; }
td[data-col=style] { max-width: 9rem; }
.status { font-weight: 600; padding: .1rem .5rem; border-radius: .8rem; }
.st-done { background: #dff3e3; color: #14632b; } .st-skipped { background: #e6eefc; color: #1d4a9c; }
.st-failed { background: #fbe1e1; color: #9b1c1c; } .st-cancelled { background: #eee; color: #555; }
.restricted { color: #9b1c1c; font-weight: 600; } .allowed { color: #14632b; } .unknown { color: #8a6d00; }
.muted { color: var(--muted); font-size: .85rem; }
"""

# Sorting, filtering and the #-state. Sort keys come from data-v (numbers where the column is numeric).
_JS = """
(function () {
  var table = document.getElementById('items'), body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var q = document.getElementById('q'), status = document.getElementById('status');
  var restricted = document.getElementById('restricted'), shown = document.getElementById('shown');
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var state = {sort: 'index', dir: 'asc'};
  function key(row, col) {
    var cell = row.querySelector('[data-col="' + col + '"]');
    var v = cell ? cell.getAttribute('data-v') : '';
    if (cell && cell.hasAttribute('data-num')) { return v === '' ? null : parseFloat(v); }
    return (v || '').toLowerCase();
  }
  function apply() {
    var col = state.sort, sign = state.dir === 'desc' ? -1 : 1;
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (x === y) { return key(a, 'index') - key(b, 'index'); }
      if (x === null) { return 1; } if (y === null) { return -1; }   // empty cells last, either way
      return (x < y ? -1 : 1) * sign;
    });
    var text = q.value.trim().toLowerCase(), want = status.value, only = restricted.checked, n = 0;
    rows.forEach(function (row) {
      var ok = (!want || row.getAttribute('data-status') === want) &&
               (!only || row.getAttribute('data-commercial') === 'restricted') &&
               (!text || row.textContent.toLowerCase().indexOf(text) >= 0);
      row.hidden = !ok; if (ok) { n += 1; }
      body.appendChild(row);
    });
    heads.forEach(function (th) {
      var c = th.getAttribute('data-col');
      if (c === col) { th.setAttribute('aria-sort', state.dir === 'desc' ? 'descending' : 'ascending'); }
      else { th.removeAttribute('aria-sort'); }
    });
    shown.textContent = n + ' of ' + rows.length + ' items shown';
    var h = 'sort=' + encodeURIComponent(col) + '&dir=' + state.dir;
    if (want) { h += '&status=' + encodeURIComponent(want); }
    if (text) { h += '&q=' + encodeURIComponent(q.value.trim()); }
    if (only) { h += '&restricted=1'; }
    if (window.history && history.replaceState) { try { history.replaceState(null, '', '#' + h); } catch (e) {} }
  }
  heads.forEach(function (th) {
    th.addEventListener('click', function () {
      var c = th.getAttribute('data-col');
      state.dir = (state.sort === c && state.dir === 'asc') ? 'desc' : 'asc';
      state.sort = c; apply();
    });
  });
  [q, status, restricted].forEach(function (el) { el.addEventListener('input', apply); el.addEventListener('change', apply); });
  location.hash.replace(/^#/, '').split('&').forEach(function (part) {
    var kv = part.split('='), k = kv[0], v = decodeURIComponent(kv.slice(1).join('=') || '');
    if (k === 'sort' && table.querySelector('th[data-col="' + v + '"]')) { state.sort = v; }
    if (k === 'dir') { state.dir = v === 'desc' ? 'desc' : 'asc'; }
    if (k === 'status') { status.value = v; }
    if (k === 'q') { q.value = v; }
    if (k === 'restricted') { restricted.checked = v === '1'; }
  });
  apply();
  document.body.setAttribute('data-ready', '1');
})();
"""

# (column key, header, numeric)
_COLUMNS = (("index", "#", True), ("source", "Source", False), ("before", "Before", False), ("after", "After", False),
            ("status", "Status", False), ("identity", "Identity", True), ("consent", "Consent record", False),
            ("style", "Style", False), ("commercial", "Commercial use", False), ("seconds", "Seconds", True),
            ("error", "Error", False), ("output", "Output", False))


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _thumb(uri: Any, alt: str) -> str:
    if isinstance(uri, str) and _DATA_URI.match(uri):
        return f"<img src='{_e(uri)}' alt='{_e(alt)}' width='64' height='64'>"
    return ""


def _cell(col: str, value: Any, display: str, numeric: bool = False, cls: str = "") -> str:
    num = " data-num" if numeric else ""
    klass = f" class='{cls}'" if cls else ""
    return f"<td data-col='{col}' data-v='{_e(value)}'{num}{klass}>{display}</td>"


def _row(r: dict[str, Any]) -> str:
    ident = r["identity"]
    ident_ok = isinstance(ident, (int, float)) and math.isfinite(ident)
    before, after = _thumb(r["before"], f"{r['source']} before"), _thumb(r["after"], f"{r['source']} after")
    style = (f"{_e(r['style'])}" if r["style"] else
             (f"<span class='muted'>not approved: {_e(r['prompt'])}</span>" if r["prompt"] else ""))
    consent_title = f" title='{_e(r['consent_source'])}'" if r["consent_source"] else ""
    commercial = r["commercial"]
    commercial_text = _e(commercial) + (f" <span class='muted'>({_e(r['restricted_by'])})</span>" if r["restricted_by"] else "")
    output = f"<a href='{_e(r['output'])}'>{_e(r['output'])}</a>" if r["output"] else ""
    cells = [
        _cell("index", r["index"], str(r["index"]), True, "num"),
        _cell("source", r["source"], _e(r["source"])),
        _cell("before", "1" if before else "", before or "—", cls="" if before else "noimg"),
        _cell("after", "1" if after else "", after or "—", cls="" if after else "noimg"),
        _cell("status", r["status"], f"<span class='status st-{_e(r['status'])}'>{_e(r['status'])}</span>"),
        _cell("identity", f"{ident:.6f}" if ident_ok else "", f"{ident:.3f}" if ident_ok else "—", True, "num"),
        f"<td data-col='consent' data-v='{_e(r['consent'])}'{consent_title}>{_e(r['consent']) or '—'}</td>",
        _cell("style", r["style"] or r["prompt"], style or "—"),
        _cell("commercial", commercial, commercial_text or "—", cls=_e(commercial)),
        _cell("seconds", r["seconds"], f"{float(r['seconds']):.1f}", True, "num"),
        _cell("error", r["error"], _e(r["error"]), cls="error"),
        _cell("output", r["output"], output),
    ]
    return (f"<tr data-status='{_e(r['status'])}' data-commercial='{_e(commercial)}'>" + "".join(cells) + "</tr>")


def batch_report_html(rows: list[dict[str, Any]], title: str, counts: dict[str, int], cancelled: bool = False) -> str:
    """The page (see the module docstring) for ``rows`` from :func:`report_rows`."""
    chips = "".join(f"<span class='st-{_e(s)}'>{_e(n)} {_e(s)}</span>" for s, n in counts.items() if n)
    styles = sorted({r["style"] for r in rows if r["style"]})
    restricted = sum(1 for r in rows if r["commercial"] == "restricted")
    consent_sources = sorted({r["consent_source"] for r in rows if r["consent_source"]})
    head = "".join(f"<th data-col='{c}' scope='col'>{_e(label)}</th>" for c, label, _num in _COLUMNS)
    options = "".join(f"<option value='{s}'>{s}</option>" for s in ("done", "skipped", "failed", "cancelled"))
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return "".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Batch report — {_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Batch report — {_e(title)}</h1>",
        f"<p class='meta'>{len(rows)} items · written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}"
        + (" · <strong>cancelled</strong>" if cancelled else "")
        + (f" · style {_e(', '.join(styles))}" if styles else " · no approved style")
        + (f" · consent: {_e(', '.join(consent_sources))}" if consent_sources else "")
        + (f" · <span class='restricted'>{restricted} restricted for commercial use</span>" if restricted else "")
        + "</p>",
        f"<div class='chips'>{chips}</div>",
        "<div class='controls'><input type='search' id='q' placeholder='Filter: name, consent id, error…' "
        "aria-label='Filter rows'>",
        f"<label>Status <select id='status'><option value=''>all</option>{options}</select></label>",
        "<label><input type='checkbox' id='restricted'> commercial use restricted</label>",
        "<span id='shown' class='muted'></span></div>",
        f"<table id='items'><thead><tr>{head}</tr></thead><tbody>",
        "".join(_row(r) for r in rows),
        "</tbody></table>",
        "<p class='muted'>Sources are listed by name only; thumbnails are renders from a held-out camera. "
        "Click a column to sort; the address keeps the view.</p>",
        f"<script>{_JS}</script></body></html>\n",
    ])


def write_batch_report_html(report: Any) -> Path:
    """Write ``report.html`` for a :class:`engine.app.batch.BatchReport` into its output folder."""
    out_dir = Path(report.out_dir)
    rows = report_rows(out_dir, report.items)
    return write_text(out_dir / "report.html", batch_report_html(rows, out_dir.name, report.counts(), report.cancelled))
