"""Data minimisation: ``--purge-intermediates`` deletes what a finished item no longer needs that depicts the person.

Why: a batch keeps pictures of real people on disk that nobody needs once the head is made — Blender's
rendered views of each scan and, in mesh mode, each scan's own fitted field and its stylization run (weights
that reproduce the person's head, with their preview renders). Privacy law asks to keep no more than needed.
After an item is ``done`` (or found done by an earlier run, ``skipped``), :func:`purge_item` removes:

* a Blender **views folder** (``--views``): every view image ``cameras.json`` lists. ``cameras.json`` itself stays
  (cameras and the source's SHA-256, no picture), marked ``"purged"``, so a rerun still finds the item finished
  and skips it; redoing it with other settings needs Blender to render the views again (said in the error);
* in **mesh mode**: the item's fitted field folder (``<cache>/fields/<key>/``) and its stylization run
  (``<cache>/stylized/<key>/``), found from the paths the sidecar recorded and only when they sit in folders
  of exactly that shape (a wrong path never deletes anything else).

Never deleted: the input files the user gave (``--in``), the shared stylized generator of generator mode, the
outputs (glb, sidecar — whose small thumbnails the management page shows).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from ..io.atomic import write_json
from ..io.untrusted import read_json

PURGED_KEY = "purged"


def purge_views_folder(folder: Path) -> list[str]:
    """Delete the view images of a Blender views folder (only files it lists, inside it); returns their names."""
    manifest = folder / "cameras.json"
    data = read_json(manifest, "views manifest", root=folder)
    if not isinstance(data, dict) or not isinstance(data.get("views"), list):
        raise InputError(f"{manifest}: views manifest has no 'views' list; nothing purged")
    removed = []
    root = folder.resolve()
    for view in data["views"]:
        name = view.get("file") if isinstance(view, dict) else None
        if not isinstance(name, str):
            continue
        target = (folder / name)
        if target.is_symlink() or root not in target.resolve().parents:
            continue  # only files inside the folder, never through a link
        if target.is_file():
            target.unlink()
            removed.append(name)
    if removed or PURGED_KEY not in data:
        previous = data.get(PURGED_KEY) if isinstance(data.get(PURGED_KEY), dict) else {}
        data[PURGED_KEY] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "files": sorted(set(previous.get("files", [])) | set(removed)),
                            "why": "--purge-intermediates: the item is done; its renders were deleted"}
        write_json(manifest, data)
    return removed


def _cache_run(path: str | None, marker: str, depth: int) -> Path | None:
    """The folder ``depth`` levels above file ``path`` when the folder holding it is named ``marker``
    (``…/marker/<key>/…``), else None."""
    if not path:
        return None
    p = Path(path)
    if len(p.parents) < depth:
        return None
    run = p.parents[depth - 1]
    return run if run.parent.name == marker and run.is_dir() and not run.is_symlink() else None


def purge_item(path: Path, kind: str, inversion: Mapping[str, Any] | None) -> list[str]:
    """Purge what item ``path`` (of ``kind``) left (see the module docstring); returns what was removed."""
    removed: list[str] = []
    if kind == "views" and path.is_dir():
        removed += [str(path / name) for name in purge_views_folder(path)]
    info = inversion or {}
    if info.get("mode") == "mesh":
        # <cache>/fields/<key>/head.safetensors and <cache>/stylized/<key>/checkpoints/step_N/generator.safetensors
        for run in (_cache_run(info.get("field"), "fields", 1), _cache_run(info.get("stylized_generator"), "stylized", 3)):
            if run is not None:
                shutil.rmtree(run)
                removed.append(str(run))
    return removed


def purge_finished_item(path: Path, kind: str, sidecar: Path) -> list[str]:
    """:func:`purge_item` with the inversion record the item's sidecar holds (a done or skipped item)."""
    try:
        inversion = json.loads(sidecar.read_text(encoding="utf-8")).get("inversion")
    except (OSError, ValueError, AttributeError):
        inversion = None
    return purge_item(path, kind, inversion if isinstance(inversion, dict) else None)
