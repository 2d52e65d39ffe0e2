"""Approved styles for the panel's dropdown: what ``engine style list`` shows, read without the engine.

Pure Python (no ``bpy``, no ``engine`` import: Blender's own Python may not have torch). It lists the
``approved`` versions in the style library (``<library>/<name>/<N>/style.json``, see engine/styles/library.py)
at the same place the engine looks: ``$HEAD_STYLIZER_STYLES``, else ``<engine data dir>/styles``
(``$HEAD_STYLIZER_DATA``, else the platform's user data folder). Listing is not trusting: the engine verifies
every file's hash when the batch starts and refuses a tampered or retired style with a message naming the file,
which the panel shows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LIBRARY_ENV = "HEAD_STYLIZER_STYLES"
DATA_ENV = "HEAD_STYLIZER_DATA"
NO_STYLE = "NONE"  # the dropdown's first entry: train the style from the preset/prompt (no approved style)


def default_library() -> Path:
    """The engine's default style library (kept equal to engine.styles.library.library_root() by a test)."""
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV]).expanduser()
    if os.environ.get(DATA_ENV):
        data = Path(os.environ[DATA_ENV]).expanduser()
    elif sys.platform == "win32":
        data = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "head-stylizer"
    elif sys.platform == "darwin":
        data = Path.home() / "Library" / "Application Support" / "head-stylizer"
    else:
        data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "head-stylizer"
    return data / "styles"


def approved_styles(library: str | os.PathLike | None = None) -> list[tuple[str, str, str]]:
    """(id, label, description) of every approved (not retired) style version, sorted by name and version;
    unreadable records are left out (the engine reports them when named)."""
    root = Path(library).expanduser() if library else default_library()
    found = []
    for record_path in root.glob("*/*/style.json") if root.is_dir() else ():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("status") != "approved":
            continue
        style_id = f"{record_path.parent.parent.name}@{record_path.parent.name}"
        if record.get("id") != style_id:
            continue
        found.append((style_id, record.get("approved_at") or "", record.get("prompt") or "",
                      record.get("approved_by") or ""))
    found.sort(key=lambda s: (s[0].split("@")[0], int(s[0].split("@")[1]) if s[0].split("@")[1].isdigit() else 0))
    return [(sid, sid, f"{prompt} — approved by {who} {date[:10]}") for sid, date, prompt, who in found]


def dropdown_items(library: str | os.PathLike | None = None) -> list[tuple[str, str, str]]:
    """The EnumProperty items: 'train from the style/prompt' first, then the approved styles."""
    return [(NO_STYLE, "None (train from Style/Prompt)", "No approved style: the engine stylizes the generator itself")] \
        + approved_styles(library)


_ENUM_ITEMS: list = []  # Blender needs an enum's item strings kept alive while its menu shows them


def enum_items(self=None, context=None) -> list[tuple[str, str, str]]:
    """The ``items`` callback of an approved-style EnumProperty (the Stylize panel's and the Batch panel's)."""
    _ENUM_ITEMS[:] = dropdown_items()
    return _ENUM_ITEMS


def chosen_style_id(value: str) -> str:
    """The style id a dropdown value stands for; '' for 'None' and for a saved choice no longer in the menu
    (Blender reads such an enum as '')."""
    return "" if not value or value == NO_STYLE else value


def style_name(style_id: str) -> str:
    """'zombie' for 'zombie@2' (object names)."""
    return style_id.split("@", 1)[0]


def style_id_argv(style_id: str) -> list[str]:
    """The engine flags for a chosen dropdown entry (none for 'None')."""
    return [] if not style_id or style_id == NO_STYLE else ["--style-id", style_id]
