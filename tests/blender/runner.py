"""Run a Blender scenario in a fresh Python with the ``bpy`` module (background mode) and read its result.

Used by ``tests/blender/test_*.py``. The scenario code runs after :mod:`bpy_harness` is imported and the
extension is installed; it reports with ``result(**fields)``. A scenario that raises fails the test with
Blender's stderr attached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
HAVE_BPY = importlib.util.find_spec("bpy") is not None

_PREAMBLE = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from bpy_harness import *
install_extension()
"""


def run_bpy(code: str, env: dict[str, str] | None = None, timeout: float = 180.0,
            install: bool = True) -> dict:
    """Execute ``code`` inside Blender; returns the dict passed to ``result(...)``."""
    preamble = _PREAMBLE if install else _PREAMBLE.replace("install_extension()\n", "")
    script = preamble + textwrap.dedent(code)
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO_ROOT), env=full_env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(
            f"Blender scenario failed (exit {done.returncode})\n--- stdout ---\n{done.stdout[-4000:]}"
            f"\n--- stderr ---\n{done.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len("RESULT "):])
