"""Consent records per batch item: which subject's consent covers which source file.

Why: ``--i-have-consent`` is one tick for a whole folder. A studio converting thousands of scans keeps a
consent register (who agreed, when, to what), and a supervisor must be able to go from any output back to the
consent record that allowed it. ``engine batch --consent-csv FILE`` takes that register as a CSV:

* a header row with (at least) the columns ``source`` — the input's file name as it is in the input folder
  (``alice.ply``; for a Blender views folder, the scan name Blender recorded or the folder's name) — and
  ``consent_id`` (the register's id for that subject's consent); other columns are ignored;
* every item must have a row: an item without one is **not processed** (a ``failed`` row saying so), so a scan
  that slipped into the folder without consent never becomes an output;
* a malformed file (no such column, an empty id, the same source twice) is refused before anything is loaded,
  with the file, line and what is wrong.

The record stored in each output's provenance is ``{"id": <consent_id>, "source": "<csv name> (sha256 …)"}``;
with only the global flag it is ``{"id": null, "source": "--i-have-consent"}`` (the operator confirmed it for the
whole batch). The CSV is the studio's file, read through the untrusted-input size limit; never executed.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.untrusted import read_bytes, read_json

GLOBAL_FLAG = "--i-have-consent"
REQUIRED_COLUMNS = ("source", "consent_id")
_MAX_CSV_BYTES = 64 << 20


class ConsentMissing(InputError):
    """An item has no row in the consent CSV (the item is not processed)."""


@dataclass(frozen=True)
class ConsentRecords:
    """Consent ids by source name, read from a CSV (:func:`read_consent_csv`), or the global confirmation."""

    ids: dict[str, str] = field(default_factory=dict)
    csv_name: str | None = None  # None: the global flag, no register
    csv_sha256: str | None = None

    @property
    def source(self) -> str:
        return GLOBAL_FLAG if self.csv_name is None else f"{self.csv_name} (sha256 {self.csv_sha256[:12]})"

    def record_for(self, item: Path) -> dict[str, Any]:
        """The provenance record of ``item``; raises :class:`ConsentMissing` when the CSV has no row for it."""
        if self.csv_name is None:
            return {"id": None, "source": self.source}
        for name in item_source_names(item):
            if name in self.ids:
                return {"id": self.ids[name], "source": self.source}
        raise ConsentMissing(f"no consent record for {item.name} in {self.csv_name} (column 'source' must name "
                             f"{' or '.join(repr(n) for n in item_source_names(item))}); the item was not processed")


def item_source_names(item: Path) -> list[str]:
    """Names a consent row may use for ``item``: its file name; for a Blender views folder, the scan name
    Blender recorded in ``cameras.json`` first, then the folder's name."""
    names = [item.name]
    manifest = item / "cameras.json"
    if item.is_dir() and manifest.is_file():
        try:
            data = read_json(manifest, "views manifest", root=item)
        except InputError:
            data = None
        recorded = data.get("source") if isinstance(data, dict) else None
        if isinstance(recorded, str) and recorded and recorded not in names:
            names.insert(0, Path(recorded).name)
    return names


def read_consent_csv(path: str | Path) -> ConsentRecords:
    """Read and check a consent CSV (see the module docstring); every error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: consent CSV not found")
    data = read_bytes(path, "consent CSV", max_bytes=_MAX_CSV_BYTES, limit_name="consent CSV")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: consent CSV is not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: consent CSV has no column {', '.join(repr(c) for c in missing)} in its header "
                         f"(found: {', '.join(repr(h) for h in header) or 'nothing'}); need {', '.join(REQUIRED_COLUMNS)}")
    reader.fieldnames = header
    ids: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            source = (row.get("source") or "").strip()
            consent_id = (row.get("consent_id") or "").strip()
            if not source and not consent_id:
                continue  # a blank line
            if not source:
                raise InputError(f"{path}: line {line}: empty 'source' (consent id {consent_id!r})")
            if not consent_id:
                raise InputError(f"{path}: line {line}: empty 'consent_id' for {source!r}")
            if source in ids:
                raise InputError(f"{path}: line {line}: {source!r} is listed twice (first on line {lines[source]})")
            ids[source], lines[source] = consent_id, line
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not ids:
        raise InputError(f"{path}: consent CSV has no rows")
    return ConsentRecords(ids, path.name, hashlib.sha256(data).hexdigest())


def still_covers(old: Any, new: dict[str, Any]) -> bool:
    """Whether a finished item's recorded consent still stands for this run: yes with only the global flag
    (it adds nothing an id would not), else when the recorded id is this run's id. When not, the item is
    redone so that its provenance names the consent that covers it now. Only the id counts: adding rows for
    other people to the register (which changes its hash) redoes nothing."""
    if new.get("id") is None:
        return True
    return isinstance(old, dict) and old.get("id") == new["id"]
