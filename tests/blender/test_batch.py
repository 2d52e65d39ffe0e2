"""Blender batch: the numpy normalisation/cameras of bridge/scan_render.py equal the engine's; inside
Blender (bpy module, background), scans are imported, normalised and rendered from the generator's
cameras (silhouettes match the procedural world's own renders), and the Batch operator runs the engine
out of process (a fake engine here), refusing to start without consent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge import scan_render
from engine.generator.camera import CameraConfig, cameras_at
from engine.heads.scans import ScanNormalization, normalization_matrix
from tests.blender.runner import HAVE_BPY, REPO_ROOT, run_bpy

pytestmark = pytest.mark.usefixtures("single_thread")
FAKE_ENGINE = REPO_ROOT / "tests" / "blender" / "batch_fake_engine"


def test_blender_normalisation_equals_the_engines():
    rng = np.random.default_rng(0)
    blender_vertices = rng.normal(size=(200, 3)) * [120.0, 90.0, 230.0] + [5.0, -3.0, 200.0]  # z-up, mm
    for units, yaw in (("auto", 0.0), ("cm", 25.0), ("fit", -40.0)):
        ours = scan_render.normalization_matrix(blender_vertices, units, yaw)
        engine, _, _ = normalization_matrix(blender_vertices, ScanNormalization(up_axis="z", units=units, yaw_degrees=yaw))
        np.testing.assert_allclose(ours, engine, atol=1e-12)


def test_view_plan_cameras_equal_the_generators():
    plan = scan_render.view_plan()
    yaw = torch.tensor([math.radians(v) for v in scan_render.DEFAULT_YAWS_DEG])
    pitch = torch.tensor([math.radians(v) for v in scan_render.DEFAULT_PITCHES_DEG])
    reference = cameras_at(yaw, pitch, CameraConfig(pivot=(0.0, 0.0, 0.0))).c.double()
    np.testing.assert_allclose(np.array([v["camera"] for v in plan]), reference.numpy(), atol=1e-6)
    from engine.generator.loading import load_generator
    from engine.heads.invert import scan_cameras

    _, names = scan_cameras(load_generator("tiny").generator)
    assert [v["name"] for v in plan] == list(names)


def test_blender_camera_looks_at_the_head_upright():
    c2w = scan_render.cam2world(0.0, 0.0, 2.7)
    m = scan_render.blender_camera_matrix(c2w)
    # front camera: on Blender's −y axis (the face looks at −y), looking along +y, camera up = Blender +z
    np.testing.assert_allclose(m[:3, 3], [0.0, -2.7, 0.0], atol=1e-9)
    np.testing.assert_allclose(-m[:3, 2], [0.0, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(m[:3, 1], [0.0, 0.0, 1.0], atol=1e-9)


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory) -> Path:
    from engine.world import ScanExport, export_scan, sample_identities

    folder = tmp_path_factory.mktemp("scans")
    ids = sample_identities(2, torch.Generator().manual_seed(4))
    export_scan(ids[0:1], folder / "alice", ScanExport(resolution=40, formats=(".ply",)))
    export_scan(ids[1:2], folder / "bob", ScanExport(resolution=40, formats=(".ply",)))
    (folder / "broken.fbx").write_bytes(b"this is not an FBX file")
    torch.save(ids, folder / "ids.pt")
    return folder


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
def test_blender_views_match_the_world_through_the_same_cameras(scan_folder, tmp_path):
    r = run_bpy(f"""
from pathlib import Path
from bl_ext.hs_tests.head_stylizer.bridge import scan_render
path = scan_render.prepare_scan_views(Path({str(scan_folder / 'alice.ply')!r}), Path({str(tmp_path / 'views')!r}), resolution=64, samples=4)
result(manifest=str(path), objects=len(bpy.data.objects), scenes=len(bpy.data.scenes))
""")
    data = json.loads(Path(r["manifest"]).read_text())
    assert len(data["views"]) == 6 and data["source"] == "alice.ply" and len(data["source_sha256"]) == 64
    assert r["objects"] == 0 or r["objects"] < 4  # the imported scan, camera and light are removed again
    from engine.heads.scans import read_image
    from engine.world import render_heads

    ids = torch.load(scan_folder / "ids.pt")
    cams = torch.tensor([v["camera"] for v in data["views"]], dtype=torch.float32)
    world = render_heads(ids[0:1].expand(6, -1), cams, 64)
    for i, view in enumerate(data["views"]):
        _, mask = read_image(tmp_path / "views" / view["file"], 64)
        a, b = mask[0, 0] > 0.5, world["mask"][i, 0] > 0.5
        assert float((a & b).sum() / (a | b).sum()) > 0.85, view["name"]


def _batch_prologue(scan_folder: Path, tmp_path: Path) -> str:
    """Scenario start: the fake batch engine, its argv log, the scans folder and the output folder."""
    return f"""
import os
p = prefs()
p.python_path = sys.executable
p.engine_root = {str(FAKE_ENGINE)!r}
os.environ["FAKE_BATCH_ARGV_LOG"] = {str(tmp_path / 'argv.json')!r}
s = bpy.context.scene.head_stylizer_batch
s.input_dir = {str(scan_folder)!r}
s.output_dir = {str(tmp_path / 'out')!r}
"""


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
def test_batch_operator_needs_consent_then_renders_and_runs_the_engine(scan_folder, tmp_path):
    r = run_bpy(_batch_prologue(scan_folder, tmp_path) + f"""
s.view_resolution = 48
s.consent = False
try:
    refused = str(bpy.ops.headstylizer.batch())
except RuntimeError as exc:
    refused = str(exc)
started_without_consent = os.path.exists({str(tmp_path / 'out')!r})
s.consent = True
try:
    outcome = str(bpy.ops.headstylizer.batch())
except RuntimeError as exc:
    outcome = "error: " + str(exc)
result(refused=refused, started=started_without_consent, outcome=outcome, status=s.status, progress=s.progress)
""", timeout=300)
    assert "consent" in r["refused"] and not r["started"]
    assert r["outcome"] == "{'FINISHED'}", r
    assert r["progress"] == pytest.approx(1.0) and r["status"].startswith("done: 2 heads")
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "views").iterdir()) == ["alice", "bob", "broken"]
    failure = json.loads((out / "views" / "broken" / "failed.json").read_text())  # the engine reports it
    assert failure["source"] == "broken.fbx" and failure["error"]
    assert not (out / "views" / "broken" / "cameras.json").exists()
    assert all(len(list((out / "views" / n).glob("*.png"))) == 6 for n in ("alice", "bob"))
    assert sorted(p.name for p in out.glob("*.glb")) == ["alice.glb", "bob.glb"]
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[0] == "batch" and "--i-have-consent" in argv and argv[argv.index("--views") + 1] == str(out / "views")
    assert not list(out.rglob("*.ply"))  # sources are never copied into the outputs


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
def test_batch_operator_mesh_mode_hands_each_scan_to_head_mode_as_a_glb(scan_folder, tmp_path):
    r = run_bpy(_batch_prologue(scan_folder, tmp_path) + """
s.mode = "mesh"
s.consent = True
outcome = str(bpy.ops.headstylizer.batch())
result(outcome=outcome, status=s.status, objects=sorted(o.name for o in bpy.data.objects))
""", timeout=300)
    assert r["outcome"] == "{'FINISHED'}" and r["status"].startswith("done: 2 heads"), r
    assert set(r["objects"]) <= {"Camera", "Cube", "Light"}  # imported scans are removed again
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["alice.glb", "bob.glb"]  # broken.fbx failed
    assert not (out / "views").exists()
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("--mode") + 1] == "mesh" and argv[argv.index("--in") + 1] == str(out / "meshes")
    # what the engine reads is the scan itself: normalised the engine's way, the same head in the same place
    from engine.heads.scans import load_scan

    for name in ("alice", "bob"):
        source = next(p for p in scan_folder.iterdir() if p.stem == name and p.suffix != ".json")
        ours, theirs = load_scan(out / "meshes" / f"{name}.glb").mesh.vertices, load_scan(source).mesh.vertices
        np.testing.assert_allclose(ours.min(0), theirs.min(0), atol=2e-3)
        np.testing.assert_allclose(ours.max(0), theirs.max(0), atol=2e-3)


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
def test_batch_classes_register_and_unregister_with_the_extension():
    r = run_bpy("""
import bpy
state = lambda: [hasattr(bpy.types.Scene, 'head_stylizer_batch'), hasattr(bpy.types, 'HEADSTYLIZER_OT_batch'),
                 hasattr(bpy.types, 'HEADSTYLIZER_PT_batch')]
on = state(); disable(); off = state(); enable(); again = state()
result(on=on, off=off, again=again)
""")
    assert r["on"] == r["again"] == [True, True, True] and r["off"] == [False, False, False]


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
def test_batch_panel_ray_option_becomes_the_engines_ray_flags(scan_folder, tmp_path):
    """*Run on Ray* in the Batch panel → ``engine batch --ray [ADDRESS] --ray-cpus-per-item … --ray-gpus-per-item …``
    (off: no Ray flag at all); the progress bar counts finished items, which arrive in any order on Ray."""
    r = run_bpy(_batch_prologue(scan_folder, tmp_path) + f"""
from bl_ext.hs_tests.head_stylizer.operators import batch as op
s.consent = True
off = op._plan_from(bpy.context, s)[0].engine_argv()
s.use_ray = True
local = op._plan_from(bpy.context, s)[0].engine_argv()
s.ray_address = " 10.0.0.5:6379 "
s.ray_cpus_per_item = 4
s.ray_gpus_per_item = 0.5
plan = op._plan_from(bpy.context, s)[0]
cluster = plan.engine_argv()
session = op.BatchSession(plan)
for index in (2, 0):
    session.apply_event({{"event": "item", "index": index, "total": 3, "input": "x", "status": "done"}})
layout = type("Layout", (), {{"__getattr__": lambda self, name: lambda *a, **k: self}})()
drawn = []
layout.prop = lambda owner, name, **k: drawn.append(name)
op.draw_batch_panel(layout, bpy.context)
result(off=off, local=local, cluster=cluster, done=session.items_done, progress=session.progress, drawn=drawn)
""")
    assert not [a for a in r["off"] if a.startswith("--ray")]
    tail = r["local"][r["local"].index("--ray"):]
    assert tail[:5] == ["--ray", "--ray-cpus-per-item", "1", "--ray-gpus-per-item", "0"]
    tail = r["cluster"][r["cluster"].index("--ray"):]
    assert tail[:6] == ["--ray", "10.0.0.5:6379", "--ray-cpus-per-item", "4", "--ray-gpus-per-item", "0.5"]
    assert r["done"] == 2 and r["progress"] == pytest.approx(0.3 + 0.7 * 2 / 3)
    assert {"use_ray", "ray_address", "ray_cpus_per_item", "ray_gpus_per_item"} <= set(r["drawn"])
    # the engine's own parser takes exactly these flags
    from engine.app.commands.batch import farm_config_from_args
    from engine.app.farm import FarmConfig
    import argparse
    from engine.app.commands.batch import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([a for a in r["cluster"][r["cluster"].index("batch") + 1:] if a != "--json"])
    assert farm_config_from_args(args) == FarmConfig(address="10.0.0.5:6379", cpus_per_item=4.0, gpus_per_item=0.5)


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
def test_batch_panel_recipe_and_keep_settings_reach_the_engines_batch_parser(scan_folder, tmp_path):
    """The Batch panel's Recipe and, in Each Mesh mode, Keep Colours / Keep Shape → ``engine batch --preset …
    --anchor-image … --anchor-geometry …`` as the engine's own parser reads them; defaults send nothing, the keep
    settings are drawn only in Each Mesh mode, and an approved style's recipe is its own. The preferences' LPIPS
    and depth-model folders (the Paper recipe's extra models) reach the batch as ``--lpips`` / ``--depth-model``."""
    lpips, depth = tmp_path / "lpips-alex", tmp_path / "depth-anything"
    lpips.mkdir(), depth.mkdir()
    r = run_bpy(_batch_prologue(scan_folder, tmp_path) + """
from bl_ext.hs_tests.head_stylizer.operators import batch as op
s.consent = True
default = op._plan_from(bpy.context, s)[0].engine_argv()
layout = type("Layout", (), {{"__getattr__": lambda self, name: lambda *a, **k: self}})()
drawn = []
layout.prop = lambda owner, name, **k: drawn.append(name)
op.draw_batch_panel(layout, bpy.context)
generator_drawn = list(drawn)
s.mode = "mesh"
s.recipe = "PAPER"
s.keep_colours = 0.0
s.keep_shape = 2.5
p.lpips_dir = {lpips!r}
p.depth_model_dir = {depth!r}
changed = op._plan_from(bpy.context, s)[0].engine_argv()
drawn.clear()
op.draw_batch_panel(layout, bpy.context)
result(default=default, changed=changed, generator_drawn=generator_drawn, mesh_drawn=drawn)
""".format(lpips=str(lpips), depth=str(depth)))
    for flag in ("--preset", "--anchor-image", "--anchor-geometry", "--lpips", "--depth-model"):
        assert flag not in r["default"]
    assert "recipe" in r["generator_drawn"] and "keep_colours" not in r["generator_drawn"]
    assert {"recipe", "keep_colours", "keep_shape"} <= set(r["mesh_drawn"])
    import argparse

    from engine.app.commands.batch import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([a for a in r["changed"][r["changed"].index("batch") + 1:] if a != "--json"])
    settings = settings_from_args(args)
    assert (settings.recipe, settings.mode, settings.anchor_image, settings.anchor_geometry) == ("paper", "mesh", 0.0, 2.5)
    assert (settings.lpips, settings.depth_model) == (str(lpips), str(depth))
