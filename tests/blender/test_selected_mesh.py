"""Stylize Head with *Selected Mesh* as the head source: export, engine, and the result placed beside the source.

The fake engine runs the real engine's reader and normalisation on the exported ``.glb`` and hands the
normalised mesh back as the "stylized" head, with the real ``scan_to_world``. So if the export's axes, the
engine's glTF convention or the placement matrix disagree anywhere, the result does not land on a copy of
the source moved along +X — which is what these tests check, vertex by vertex.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.blender.runner import HAVE_BPY, run_bpy

pytestmark = [pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)"),
              pytest.mark.usefixtures("single_thread")]

DEFAULT_OBJECTS = {"Camera", "Cube", "Light"}  # Blender's startup scene
SOURCE_SCENE = """
import math
import numpy as np
import mathutils
from mathutils.kdtree import KDTree

use_fake_engine("unused.npz", FAKE_ENGINE_ARGV_LOG={argv_log!r})
prefs().output_dir = {out!r}
scene = bpy.context.scene
settings = scene.head_stylizer

bpy.ops.mesh.primitive_uv_sphere_add(segments=24, ring_count=12, radius=0.12, location=(2.0, 1.0, 0.5))
src = bpy.context.active_object
src.name = "Bust"
src.scale = (1.0, 0.8, 1.4)                      # taller than wide, like a head
src.rotation_euler = (0.0, 0.0, math.radians(30))
image = bpy.data.images.new("skin", 8, 8)
pixels = np.zeros((8, 8, 4), np.float32); pixels[..., 3] = 1.0
pixels[4:, :, 0] = 1.0; pixels[:4, :, 2] = 1.0   # Blender rows go bottom-up: red top half, blue bottom half
image.pixels.foreach_set(pixels.ravel())
image.filepath_raw = {texture!r}; image.file_format = "PNG"; image.save()
material = bpy.data.materials.new("Skin"); material.use_nodes = True
bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
node = material.node_tree.nodes.new("ShaderNodeTexImage"); node.image = image
material.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
src.data.materials.append(material)
bpy.context.view_layer.update()


def world_vertices(o):
    co = np.empty(len(o.data.vertices) * 3); o.data.vertices.foreach_get("co", co)
    m = np.array(o.matrix_world)
    return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
"""


def _scenario(tmp_path: Path, body: str) -> dict:
    prologue = SOURCE_SCENE.format(argv_log=str(tmp_path / "argv.json"), out=str(tmp_path / "out"),
                                   texture=str(tmp_path / "skin.png"))
    return run_bpy(prologue + body, timeout=300)


def test_selected_mesh_comes_back_beside_its_source_at_its_scale(tmp_path):
    r = _scenario(tmp_path, """
matrix_before = [list(row) for row in src.matrix_world]
vertices_before = len(src.data.vertices)
source_world = world_vertices(src)
settings.head_source = "MESH"; settings.steps = 2; settings.field_steps = 40; settings.keep_colours = 0.5
assert bpy.ops.headstylizer.stylize_head() == {"FINISHED"}, settings.status
obj = bpy.data.objects[settings.object_name]
lo, hi = source_world.min(0), source_world.max(0)
offset = np.array([1.25 * (hi[0] - lo[0]), 0.0, 0.0])
placed = world_vertices(obj) - offset
tree = KDTree(len(source_world))
for i, co in enumerate(source_world):
    tree.insert(co, i)
tree.balance()
gaps = [tree.find(co)[2] for co in placed]
result(name=obj.name, gap=max(gaps), placed_count=len(placed), source_count=vertices_before,
       source_after=len(src.data.vertices), matrix_before=matrix_before,
       matrix_after=[list(row) for row in src.matrix_world], status=settings.status,
       result_path=settings.result_path, argv=json.load(open(os.environ["FAKE_ENGINE_ARGV_LOG"])),
       objects=sorted(o.name for o in bpy.data.objects))
""")
    assert r["name"] == "Head.zombie.Bust"
    assert r["gap"] < 1e-4  # every vertex of the result sits on a source vertex, moved along +X
    assert r["placed_count"] >= r["source_count"] // 2
    assert r["source_after"] == r["source_count"]
    np.testing.assert_allclose(r["matrix_after"], r["matrix_before"], atol=0)  # the source is untouched
    assert set(r["objects"]) - DEFAULT_OBJECTS == {"Bust", "Head.zombie.Bust"}
    argv = r["argv"]
    mesh_file = Path(argv[argv.index("--mesh") + 1])
    assert mesh_file.suffix == ".glb" and mesh_file.parent == Path(r["result_path"]).parent
    assert argv[argv.index("--field-steps") + 1] == "40" and "--seed" not in argv and "--latent" not in argv
    assert argv[argv.index("--anchor-image") + 1] == "0.5" and "--anchor-geometry" not in argv  # Keep Colours only
    record = json.loads(Path(r["result_path"]).read_text())["mesh"]
    assert record["normalization"]["textured"] is True  # the base-colour image went along
    assert record["normalization"]["up_axis_used"] == "y"


def test_selected_mesh_texture_reaches_the_engine_the_right_way_up(tmp_path):
    """The exported head's top half is red, its bottom half blue — read back by the engine's own reader."""
    r = _scenario(tmp_path, """
from bl_ext.hs_tests.head_stylizer.bridge.mesh_source import export_source_glb
path = export_source_glb(bpy.context, src, {glb!r})
result(path=path, selected=[o.name for o in bpy.context.view_layer.objects.selected],
       active=bpy.context.view_layer.objects.active.name)
""".format(glb=str(tmp_path / "bust.glb")))
    from engine.heads.mesh_field import MeshQuery
    from engine.heads.scans import load_scan

    scan = load_scan(r["path"])
    assert scan.mesh.texture is not None
    query = MeshQuery(scan.mesh)
    rng = np.random.default_rng(0)
    points, _, colours = query.sample_surface(4000, rng)
    centre_y = (scan.mesh.vertices[:, 1].max() + scan.mesh.vertices[:, 1].min()) / 2
    top, bottom = colours[points[:, 1] > centre_y + 0.05], colours[points[:, 1] < centre_y - 0.05]
    assert top[:, 0].mean() > 0.9 and top[:, 2].mean() < 0.1  # red above
    assert bottom[:, 2].mean() > 0.9 and bottom[:, 0].mean() < 0.1  # blue below
    assert r["active"] == "Bust" and r["selected"] == ["Bust"]  # selection restored


def test_selected_mesh_needs_a_mesh_with_faces(tmp_path):
    r = _scenario(tmp_path, """
bpy.ops.object.empty_add(location=(0, 0, 0))
settings.head_source = "MESH"
try:
    outcome = bpy.ops.headstylizer.stylize_head()
except RuntimeError as exc:  # bpy turns an operator's ERROR report into RuntimeError
    outcome = str(exc)
result(outcome=str(outcome), status=settings.status, objects=sorted(o.name for o in bpy.data.objects))
""")
    assert "Select a mesh to stylize" in r["outcome"] and "empty" in r["outcome"]
    assert r["status"].startswith("Not started")
    assert set(r["objects"]) - DEFAULT_OBJECTS == {"Bust", "Empty"}  # nothing was made


IMPORTED_SCENE = """
import math
import numpy as np

use_fake_engine("unused.npz")
prefs().output_dir = {out!r}
settings = bpy.context.scene.head_stylizer
assert bpy.ops.wm.obj_import(filepath={obj!r}) == {{"FINISHED"}}   # Blender's own OBJ importer
src = bpy.context.view_layer.objects.active
src.name = "Bust"
src.location = (1.5, -0.5, 0.3)
src.rotation_euler = (0.0, 0.0, math.radians(20))
for other in bpy.context.view_layer.objects.selected:
    other.select_set(False)
src.select_set(True)
bpy.context.view_layer.update()


def world_vertices(o):
    co = np.empty(len(o.data.vertices) * 3); o.data.vertices.foreach_get("co", co)
    m = np.array(o.matrix_world)
    return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]


def state(name):
    o = bpy.data.objects.get(name)
    if o is None:
        return None
    return {{"vertices": len(o.data.vertices), "matrix": [list(r) for r in o.matrix_world],
            "world": world_vertices(o).round(6).tolist(), "mesh": o.data.name}}
"""


def test_selected_mesh_result_is_one_undo_step_and_undo_leaves_the_source_intact(tmp_path):
    """An imported mesh, selected; Stylize Head on it adds the head beside it; one Ctrl+Z removes the head (and its
    mesh data) and leaves the source exactly as it was; redo brings the head back where it was.

    What it takes in background mode (Blender 4.4): undo starts off there — ``ed.undo`` refuses to run ("Undo
    disabled at startup in background-mode") until ``ed.undo_push`` initialises the undo system, which stands
    here for the steps an artist's session already has; and ``bpy.ops`` calls record no undo unless asked, so
    the operator is called as a button press calls it: ``("INVOKE_DEFAULT", True)`` — invoke (which in
    background mode runs the blocking execute) with undo on. The step itself is Blender's, from
    ``bl_options = {"REGISTER", "UNDO"}``: pushed when the operator returns FINISHED. In the UI that is the
    modal handler returning FINISHED right after the import (the window manager pushes it then, and the glTF
    import inside makes no step of its own), which background mode cannot run: that path is not tested here."""
    from tests.engine.heads.shapes import uv_sphere
    from tests.hostile.corpus import obj_text

    sphere = uv_sphere(radius=0.1)
    vertices = sphere.vertices * np.array([0.8, 1.3, 0.9], np.float32)  # a head-shaped ellipsoid, y-up as OBJ is
    (tmp_path / "bust.obj").write_text(obj_text(vertices, sphere.faces))
    prologue = IMPORTED_SCENE.format(out=str(tmp_path / "out"), obj=str(tmp_path / "bust.obj"))
    r = run_bpy(prologue + """
bpy.ops.ed.undo_push(message="Imported bust")
before = state("Bust")
settings.head_source = "MESH"; settings.steps = 2; settings.field_steps = 40
assert bpy.ops.headstylizer.stylize_head("INVOKE_DEFAULT", True) == {"FINISHED"}, settings.status
head_name = settings.object_name
after_run = {"source": state("Bust"), "head": state(head_name), "object_name": head_name}
bpy.ops.ed.undo()
after_undo = {"source": state("Bust"), "head": state(head_name), "object_name": settings.object_name,
              "meshes": sorted(m.name for m in bpy.data.meshes),
              "objects": sorted(o.name for o in bpy.data.objects)}
bpy.ops.ed.redo()
after_redo = {"source": state("Bust"), "head": state(head_name)}
result(before=before, after_run=after_run, after_undo=after_undo,
       after_redo=after_redo)
""", timeout=300)
    before, run, undone, redone = r["before"], r["after_run"], r["after_undo"], r["after_redo"]
    assert before["vertices"] == len(sphere.vertices)  # the imported mesh, whole
    # the run: a new object beside the source; the source untouched
    head = run["head"]
    assert run["object_name"] == "Head.zombie.Bust" and head is not None
    assert run["source"] == before
    source_world, head_world = np.array(before["world"]), np.array(head["world"])
    assert head_world[:, 0].min() > source_world[:, 0].max()  # beside it, along +X …
    np.testing.assert_allclose(head_world[:, 1:].mean(0), source_world[:, 1:].mean(0), atol=0.02)  # … at its height
    # one undo: the head and its mesh are gone, the source is exactly as it was, the panel forgets the head
    assert undone["head"] is None and head["mesh"] not in undone["meshes"], undone
    assert set(undone["objects"]) - DEFAULT_OBJECTS == {"Bust"}
    assert undone["source"] == before and undone["object_name"] == ""
    # redo: the head is back where the run put it
    assert redone["head"] == head and redone["source"] == before
