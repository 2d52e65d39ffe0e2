"""The Blender import path against the hostile corpus: inside Blender (the ``bpy`` module, background mode),
``bridge.scan_render.prepare_scan_views`` — what the Batch operator runs per scan — refuses every scan whose
hostile part is the file itself or a file it names (traversal URIs, ``mtllib``/texture escapes, links out,
FIFOs, devices, sockets, oversized files, unreadable glTF JSON) with the engine's InputError before any
importer runs: nothing is imported, no views are rendered, and the failure record it leaves makes the engine's
batch report a failed row with the reason. The traversal targets are FIFOs with no writer, so an importer that
opened one (Blender's C++ OBJ importer follows ``mtllib``) would block and the scenario would time out.

Content-level cases (truncated PLY, NaN coordinates, …) are Blender's own importers' business and are not run
here: those importers are not ours to harden, and Blender reports them as import errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.blender.runner import HAVE_BPY, run_bpy
from tests.hostile.corpus import REFS, TETRA_F, TETRA_V
from tests.hostile.harness import check_message

pytestmark = pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
SCAN_SUFFIXES = (".obj", ".ply", ".glb", ".gltf")


def test_blender_batch_refuses_hostile_scans_before_importing(corpus, tmp_path):
    root, cases = corpus
    chosen = [c for c in cases if REFS in c.readers and c.path.suffix in SCAN_SUFFIXES and c.path.parent == root / "in"]
    assert len(chosen) >= 20
    views = tmp_path / "views"
    r = run_bpy(f"""
from pathlib import Path
from bl_ext.hs_tests.head_stylizer.bridge import scan_render
before_objects, before_meshes = len(bpy.data.objects), len(bpy.data.meshes)
messages = {{}}
for src in {[str(c.path) for c in chosen]!r}:
    src = Path(src)
    folder = Path({str(views)!r}) / src.stem
    try:
        scan_render.prepare_scan_views(src, folder, resolution=16, samples=1)
        messages[src.name] = "IMPORTED"
    except Exception as exc:
        messages[src.name] = type(exc).__name__ + ": " + str(exc)
        scan_render.write_failure(folder, src, str(exc))  # what the Batch operator does
result(messages=messages, objects=len(bpy.data.objects) - before_objects, meshes=len(bpy.data.meshes) - before_meshes,
       pngs=len(list(Path({str(views)!r}).rglob("*.png"))))
""", timeout=240)
    assert r["objects"] == 0 and r["meshes"] == 0 and r["pngs"] == 0, r
    problems = []
    for case in chosen:
        message = r["messages"][case.path.name]
        try:
            assert message.startswith("InputError: "), message
            check_message(case, message)
        except AssertionError as exc:
            problems.append(f"{case.name}: {exc}")
    assert problems == []

    # The engine's batch over those views folders: one failed row per scan, with Blender's reason.
    from engine.app.batch import BatchModels, Inverted, collect_inputs, run_batch
    from engine.mesh import Mesh

    models = BatchModels(invert=lambda path, kind: Inverted(torch.zeros(1, 1, 1)),
                         build_head=lambda ws, *cameras: Mesh(TETRA_V.copy(), TETRA_F.copy()), similarity=None,
                         model_sha256={}, prompt="p", method="ld", settings={})
    report = run_batch(collect_inputs(views_dir=views), tmp_path / "out", models, consent=True, on_event=lambda *a, **k: None)
    rows = {Path(i.input).name: i for i in report.items}
    assert set(rows) == {c.path.stem for c in chosen}
    for case in chosen:
        row = rows[case.path.stem]
        assert row.status == "failed" and "Blender could not import" in row.error and case.path.name in row.error, row
    assert not list((tmp_path / "out").glob("*.glb"))
    json.loads((tmp_path / "out" / "report.json").read_text())
