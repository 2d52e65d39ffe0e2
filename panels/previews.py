"""Before/after thumbnails of the last run, loaded from its PNGs with ``bpy.utils.previews``.

A preview collection owns the icons; it is created on register, refilled after every run and freed on
unregister (Blender warns about leaked collections otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path

_COLLECTION = None
VIEWS = ("front", "yaw+45", "yaw-45", "yaw+90", "yaw-90", "back")


def register() -> None:
    global _COLLECTION
    import bpy.utils.previews

    if _COLLECTION is None:
        _COLLECTION = bpy.utils.previews.new()


def unregister() -> None:
    global _COLLECTION
    import bpy.utils.previews

    if _COLLECTION is not None:
        bpy.utils.previews.remove(_COLLECTION)
        _COLLECTION = None


def load_run_previews(result_path: str | os.PathLike, summary: dict) -> dict[str, int]:
    """Load the run's before/after view images; returns {"before.front": icon_id, …}."""
    if _COLLECTION is None:
        return {}
    _COLLECTION.clear()
    folder = Path(result_path).parent
    icons = {}
    for when in ("before", "after"):
        views = summary.get(when) or {}
        for view, relative in views.items():
            path = Path(relative) if Path(relative).is_absolute() else folder / relative
            if path.is_file():
                icons[f"{when}.{view}"] = _COLLECTION.load(f"{when}.{view}", str(path), "IMAGE").icon_id
    return icons


def icon_id(when: str, view: str) -> int | None:
    """Icon of one loaded view, or None (nothing loaded yet, or the run had no such view)."""
    if _COLLECTION is None:
        return None
    preview = _COLLECTION.get(f"{when}.{view}")
    return preview.icon_id if preview is not None else None


def loaded_views() -> list[str]:
    """View names that have both a before and an after image, in the engine's order."""
    if _COLLECTION is None:
        return []
    names = {key.split(".", 1)[1] for key in _COLLECTION.keys()}
    ordered = [v for v in VIEWS if v in names] + sorted(names - set(VIEWS))
    return [v for v in ordered if f"before.{v}" in _COLLECTION and f"after.{v}" in _COLLECTION]
