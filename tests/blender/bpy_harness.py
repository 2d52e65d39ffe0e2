"""Helpers for scripts that run inside Blender (the ``bpy`` module in background mode).

The tests start a fresh Python per scenario (``python -c``) because ``bpy`` is one global Blender per
process: a scenario's scene, preferences and handlers must not leak into the next test or into the
torch-only tests that share the pytest process. The extension is installed the way Blender installs
extensions: a local extension repository whose folder holds ``head_stylizer`` (a link to this checkout),
enabled through ``addon_utils`` — so the manifest, the ``bl_ext.…`` package name and the preferences all
behave as in a real installation.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import bpy  # noqa: I001  (bpy first: it sets up Blender's own modules such as addon_utils)
import addon_utils

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_MODULE = "hs_tests"
EXTENSION_ID = "head_stylizer"
MODULE = f"bl_ext.{REPO_MODULE}.{EXTENSION_ID}"


def install_extension(folder: str | None = None) -> str:
    """Register a local extension repository containing this checkout and enable the extension."""
    folder = Path(folder or tempfile.mkdtemp(prefix="hs_repo_"))
    link = folder / EXTENSION_ID
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    repos = bpy.context.preferences.extensions.repos
    if REPO_MODULE not in [r.module for r in repos]:
        repos.new(name=REPO_MODULE, module=REPO_MODULE, custom_directory=str(folder), source="USER")
    enable()
    return MODULE


def enable():
    module = addon_utils.enable(MODULE, default_set=True, handle_error=_raise)
    if module is None:
        raise RuntimeError(f"could not enable {MODULE}")
    return module


def disable() -> None:
    addon_utils.disable(MODULE, default_set=True, handle_error=_raise)


def _raise(exc):
    raise exc


def prefs():
    return bpy.context.preferences.addons[MODULE].preferences


def extension():
    return sys.modules[MODULE]


def result(**fields) -> None:
    """Hand a JSON result to the test (the last line starting with RESULT)."""
    print("RESULT " + json.dumps(fields), flush=True)


def fake_engine_root() -> str:
    return str(REPO_ROOT / "tests" / "blender" / "fake_engine")


def use_fake_engine(mesh_npz: str, **env: str) -> None:
    """Point the preferences at the fake engine (same interpreter as this one)."""
    p = prefs()
    p.python_path = sys.executable
    p.engine_root = fake_engine_root()
    os.environ["FAKE_ENGINE_MESH"] = mesh_npz
    os.environ.update(env)
