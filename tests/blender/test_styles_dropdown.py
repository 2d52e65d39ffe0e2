"""The Blender panel's approved-style dropdown (bridge/styles.py, pure Python): it lists exactly the approved,
not retired, styles of the library the engine uses, and turns a choice into the engine's --style-id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge import styles


def _record(library: Path, name: str, version: int, status: str = "approved") -> None:
    folder = library / name / str(version)
    folder.mkdir(parents=True)
    (folder / "style.json").write_text(json.dumps({"id": f"{name}@{version}", "status": status, "prompt": f"a {name} head",
                                                   "approved_by": "A. Lead", "approved_at": "2026-01-02T03:04:05Z"}))


def test_dropdown_lists_approved_styles_only(tmp_path):
    library = tmp_path / "styles"
    _record(library, "zombie", 1, "retired")
    _record(library, "zombie", 2)
    _record(library, "zombie", 10)
    _record(library, "statue", 1)
    (library / "broken" / "1").mkdir(parents=True)
    (library / "broken" / "1" / "style.json").write_text("{not json")
    items = styles.dropdown_items(library)
    assert [i[0] for i in items] == [styles.NO_STYLE, "statue@1", "zombie@2", "zombie@10"]
    assert items[2][2] == "a zombie head — approved by A. Lead 2026-01-02"
    assert styles.style_id_argv("zombie@2") == ["--style-id", "zombie@2"] and styles.style_id_argv(styles.NO_STYLE) == []
    assert styles.dropdown_items(tmp_path / "absent") == items[:1]


@pytest.mark.parametrize("env", [{}, {"HEAD_STYLIZER_DATA": "data"}, {"HEAD_STYLIZER_STYLES": "lib"},
                                 {"XDG_DATA_HOME": "xdg"}])
def test_the_panel_looks_where_the_engine_looks(monkeypatch, tmp_path, env):
    pytest.importorskip("torch")
    from engine.styles.library import library_root

    for key in ("HEAD_STYLIZER_DATA", "HEAD_STYLIZER_STYLES", "XDG_DATA_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(tmp_path / value))
    assert styles.default_library() == library_root()


@pytest.mark.skipif("not __import__('tests.blender.runner', fromlist=['HAVE_BPY']).HAVE_BPY",
                    reason="bpy module not installed (requirements-dev.txt)")
@pytest.mark.usefixtures("single_thread")
def test_in_blender_the_stylize_panel_runs_an_approved_style_and_names_the_head_after_it(tmp_path):
    """The Stylize panel's Approved Style menu lists the library's approved styles; choosing one sends
    ``--style-id`` (and none of the training flags) to the engine, and the imported head is named after it."""
    import numpy as np

    from tests.blender.runner import run_bpy

    library = tmp_path / "styles"
    _record(library, "zombie", 1)
    _record(library, "zombie", 2, "retired")
    mesh = tmp_path / "head.npz"
    np.savez(mesh, vertices=np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), faces=np.array([[0, 1, 2]], np.int32))
    r = run_bpy(f"""
import json, os
use_fake_engine({str(mesh)!r})
prefs().output_dir = {str(tmp_path / 'out')!r}
settings = bpy.context.scene.head_stylizer
default = settings.approved_style
try:  # a dynamic menu's items are only known through its values: a retired style is not one of them
    settings.approved_style = "zombie@2"
    retired_accepted = True
except TypeError:
    retired_accepted = False
settings.approved_style = "zombie@1"; settings.preset = "STATUE"
bpy.ops.headstylizer.stylize_head()
result(retired_accepted=retired_accepted, default=default, argv=json.load(open(os.environ["FAKE_ENGINE_ARGV_LOG"])),
       names=sorted(o.name for o in bpy.data.objects), status=settings.status)
""", env={"FAKE_ENGINE_ARGV_LOG": str(tmp_path / "argv.json"), "HEAD_STYLIZER_STYLES": str(library)})
    assert not r["retired_accepted"] and r["default"] == styles.NO_STYLE
    argv = r["argv"]
    assert argv[argv.index("--style-id") + 1] == "zombie@1"
    assert not {"--style-preset", "--prompt", "--method", "--guidance-scale"} & set(argv)
    assert any(name.startswith("Head.zombie.") for name in r["names"]), r
