"""The Blender extension inside Blender (``bpy`` module, background mode), one fresh Blender per scenario.

Stylize Head runs against a fake engine (``tests/blender/fake_engine``) that speaks the JSON-line protocol
and hands back a real head mesh from ``engine.world.head_mesh``; the end-to-end run on the embedded model
pack is in ``test_real_engine.py``.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.blender.runner import HAVE_BPY, REPO_ROOT, run_bpy

pytestmark = [pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)"),
              pytest.mark.usefixtures("single_thread")]

VALIDATOR = REPO_ROOT / "tools" / "gltf-validator"


@pytest.fixture(scope="module")
def head_npz(tmp_path_factory) -> str:
    """A real procedural head mesh (~14.5k faces, vertex colours) as the engine writes it."""
    from engine.mesh import write_npz
    from engine.world.identity import sample_identities
    from engine.world.scan import head_mesh

    identity = sample_identities(1, torch.Generator().manual_seed(0))[0]
    mesh = head_mesh(identity, resolution=64)
    path = tmp_path_factory.mktemp("mesh") / "head.npz"
    write_npz(mesh, path)
    return str(path)


def _fake(head_npz: str, out: Path, **env: str) -> str:
    """Scenario prologue: preferences pointing at the fake engine, output into ``out``."""
    extra = ", ".join(f"{k}={v!r}" for k, v in env.items())
    return f"""
use_fake_engine({head_npz!r}{', ' + extra if extra else ''})
prefs().output_dir = {str(out)!r}
scene = bpy.context.scene
settings = scene.head_stylizer
"""


def _glb_json(path: Path) -> dict:
    data = path.read_bytes()
    magic, version, _length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2
    chunk_length, chunk_type = struct.unpack_from("<I4s", data, 12)
    assert chunk_type == b"JSON"
    return json.loads(data[20:20 + chunk_length])


# ---------------------------------------------------------------------------------------------------
def _blender_ext_cli() -> list[str]:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import build_extension
    finally:
        sys.path.pop(0)
    return [sys.executable, str(build_extension.find_extension_cli())]


def test_manifest_validates_with_blenders_own_cli(tmp_path):
    done = subprocess.run(_blender_ext_cli() + ["validate", str(REPO_ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
    # the same validator rejects a broken manifest (so the check above can fail)
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (REPO_ROOT / "blender_manifest.toml").read_text().replace('type = "add-on"', 'type = "plugin"')
    (bad / "blender_manifest.toml").write_text(text)
    (bad / "__init__.py").write_text("")
    done = subprocess.run(_blender_ext_cli() + ["validate", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "type" in done.stdout + done.stderr


def test_register_unregister_and_register_again():
    r = run_bpy("""
import bpy
def state():
    return dict(
        panel=hasattr(bpy.types, "HEADSTYLIZER_PT_main"),
        operator=hasattr(bpy.types, "HEADSTYLIZER_OT_stylize_head"),
        scene_prop=hasattr(bpy.types.Scene, "head_stylizer"),
        prefs=MODULE in bpy.context.preferences.addons,
        handlers=sum(h.__name__.startswith("_on_load") for h in bpy.app.handlers.load_pre + bpy.app.handlers.load_post),
        menu=len(getattr(bpy.types.TOPBAR_MT_file_import, "_dyn_ui_initialize", lambda: [])()),
    )
states = [state()]
disable(); states.append(state())
enable(); states.append(state())
disable(); enable(); states.append(state())
result(states=states, module=extension().__name__, bl_options=sorted(bpy.types.HEADSTYLIZER_OT_import_head.bl_options))
""")
    on, off, again, third = r["states"]
    assert r["module"] == "bl_ext.hs_tests.head_stylizer"  # loaded as a real extension package
    for s in (on, again, third):
        assert s["panel"] and s["operator"] and s["scene_prop"] and s["prefs"] and s["handlers"] == 2
    assert not (off["panel"] or off["operator"] or off["scene_prop"] or off["prefs"]) and off["handlers"] == 0
    assert again["menu"] == on["menu"] == third["menu"] == off["menu"] + 1  # File › Import entry, never twice
    assert r["bl_options"] == ["REGISTER", "UNDO"]


def test_stylize_head_imports_a_coloured_head_at_the_cursor(head_npz, tmp_path):
    r = run_bpy(_fake(head_npz, tmp_path / "out") + """
import numpy as np
scene.cursor.location = (1.0, 2.0, 3.0)
settings.preset = "ZOMBIE"; settings.seed = 7; settings.steps = 3
settings.turntable = True; settings.turntable_frames = 2
assert bpy.ops.headstylizer.stylize_head() == {"FINISHED"}
obj = bpy.data.objects[settings.object_name]
me = obj.data
attr = me.color_attributes.get("Color")
col = np.empty(len(me.vertices) * 4, np.float32); attr.data.foreach_get("color", col)
mat = obj.active_material
bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
link = bsdf.inputs["Base Color"].links[0]
from bl_ext.hs_tests.head_stylizer.panels import previews
result(name=obj.name, faces=len(me.polygons), vertices=len(me.vertices), domain=attr.domain,
       color_std=float(col.reshape(-1, 4)[:, :3].std()), alpha=float(col.reshape(-1, 4)[:, 3].min()),
       link_from=link.from_node.type, layer=link.from_node.layer_name, location=list(obj.location),
       dims=list(obj.dimensions), identity=settings.identity_score, status=settings.status,
       identity_rank=settings.identity_rank, identity_candidates=settings.identity_candidates,
       identity_margin=settings.identity_margin,
       progress=settings.progress, running=settings.is_running, views=previews.loaded_views(),
       result_path=settings.result_path, argv=json.load(open(os.environ["FAKE_ENGINE_ARGV_LOG"])))
""", env={"FAKE_ENGINE_ARGV_LOG": str(tmp_path / "argv.json")})
    assert r["name"] == "Head.zombie.seed7"
    assert r["faces"] > 1000 and r["vertices"] > 500
    assert r["domain"] == "POINT" and r["color_std"] > 0.01 and r["alpha"] == 1.0
    assert r["link_from"] == "VERTEX_COLOR" and r["layer"] == "Color"
    assert r["location"] == pytest.approx([1.0, 2.0, 3.0])
    width, depth, height = r["dims"]
    assert height > depth and height > width  # y-up head stands upright in z-up Blender
    assert r["identity"] == pytest.approx(0.875)
    assert (r["identity_rank"], r["identity_candidates"]) == (2, 9) and r["identity_margin"] == pytest.approx(-0.0125)
    assert r["status"].startswith("Done: Head.zombie.seed7") and r["progress"] == 1.0 and not r["running"]
    assert r["status"].endswith("turntable: 2 frames")
    run_dir = Path(r["result_path"]).parent
    assert sorted(p.name for p in (run_dir / "turntable").iterdir()) == ["frame_001.png", "frame_002.png"]
    assert r["views"] == ["front", "yaw+45"]
    assert Path(r["result_path"]).name == "head.json" and Path(r["result_path"]).parent.parent == tmp_path / "out"
    argv = r["argv"]
    assert argv[:3] == ["head", "--json", "--out"] and argv[argv.index("--style-preset") + 1] == "zombie"
    assert argv[argv.index("--seed") + 1] == "7" and argv[argv.index("--steps") + 1] == "3"


def test_import_head_from_run_summary_matches_npz_and_converts_y_up(head_npz, tmp_path):
    import numpy as np

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(head_npz, run / "head.npz")
    (run / "head.json").write_text(json.dumps({"mesh_npz": "head.npz", "seed": 4, "prompt": "gold"}))
    r = run_bpy(f"""
import numpy as np
assert bpy.ops.headstylizer.import_head(filepath={str(run / 'head.json')!r}) == {{"FINISHED"}}
obj = bpy.context.active_object
co = np.empty(len(obj.data.vertices) * 3, np.float32); obj.data.vertices.foreach_get("co", co)
idx = np.empty(len(obj.data.loops), np.int32); obj.data.loops.foreach_get("vertex_index", idx)
np.save({str(tmp_path / 'co.npy')!r}, co.reshape(-1, 3)); np.save({str(tmp_path / 'idx.npy')!r}, idx)
col = np.empty(len(obj.data.vertices) * 4, np.float32); obj.data.color_attributes["Color"].data.foreach_get("color", col)
np.save({str(tmp_path / 'col.npy')!r}, col.reshape(-1, 4))
try:
    bpy.ops.headstylizer.import_head(filepath={str(tmp_path / 'missing.npz')!r})
    error = None
except RuntimeError as exc:
    error = str(exc)
result(name=obj.name, error=error)
""")
    with np.load(head_npz) as src:
        v, f, c = src["vertices"], src["faces"], src["vertex_colors"]
    co = np.load(tmp_path / "co.npy")
    np.testing.assert_allclose(co, np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1), atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "idx.npy"), f.ravel())
    srgb = c.astype(np.float64) / 255.0  # 8-bit sRGB in the file → scene-linear floats in Blender
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(np.load(tmp_path / "col.npy")[:, :3], linear, atol=1e-5)
    assert r["name"] == "Head.gold.seed4"
    assert "missing.npz" in r["error"] and "cannot read the head mesh" in r["error"]


def test_exported_glb_reimports_with_same_vertices_and_passes_khronos_validator(head_npz, tmp_path):
    glb = tmp_path / "head.glb"
    r = run_bpy(f"""
assert bpy.ops.headstylizer.import_head(filepath={head_npz!r}) == {{"FINISHED"}}
obj = bpy.context.active_object
count = len(obj.data.vertices)
bpy.ops.mesh.primitive_cube_add()  # another selected object must not end up in the file
bpy.context.view_layer.objects.active = obj
assert bpy.ops.headstylizer.export_gltf(filepath={str(glb)!r}) == {{"FINISHED"}}
before = set(bpy.data.objects)
bpy.ops.import_scene.gltf(filepath={str(glb)!r})
new = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
result(count=count, reimported=[len(o.data.vertices) for o in new],
       colors=[list(o.data.color_attributes.keys()) for o in new])
""")
    assert r["reimported"] == [r["count"]]
    assert r["colors"][0]  # the colour attribute came back
    gltf = _glb_json(glb)
    assert len(gltf["meshes"]) == 1
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    assert "COLOR_0" in attributes and gltf["accessors"][attributes["POSITION"]]["count"] == r["count"]

    if shutil.which("node") is None or not (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("glTF validator not installed (scripts/setup.sh runs npm ci in tools/gltf-validator)")
    done = subprocess.run(["node", str(VALIDATOR / "validate.js"), str(glb)], capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    assert done.returncode == 0
    # the validator does find errors in a damaged file (the check above can fail)
    broken = tmp_path / "broken.glb"
    data = bytearray(glb.read_bytes())
    data[8:12] = struct.pack("<I", len(data) + 4)  # wrong total length in the header
    broken.write_bytes(bytes(data))
    done = subprocess.run(["node", str(VALIDATOR / "validate.js"), str(broken)], capture_output=True, text=True)
    assert done.returncode == 1 and json.loads(done.stdout)["issues"]["numErrors"] > 0


def test_bad_preferences_and_engine_errors_are_operator_errors(head_npz, tmp_path):
    r = run_bpy(_fake(head_npz, tmp_path / "out") + f"""
import os
def press():
    try:
        bpy.ops.headstylizer.stylize_head()
    except RuntimeError as exc:  # how Blender surfaces report({'ERROR'}) to Python callers
        return str(exc)
    return None
p = prefs()
errors = dict()
p.python_path = "/nonexistent/bin/python3"
errors["python"] = press()
p.python_path = sys.executable
p.diffusion_dir = "/nonexistent/stable-diffusion"
errors["diffusion"] = press()
status_after_bad_path = settings.status
p.diffusion_dir = ""
p.generator_path = os.path.dirname(sys.executable)
errors["generator"] = press()
p.generator_path = ""
os.environ["FAKE_ENGINE_FAIL"] = "diffusion folder lacks unet/config.json"
errors["engine"] = press()
del os.environ["FAKE_ENGINE_FAIL"]
errors["ok"] = press()

# empty interpreter = Blender's own, used only if torch imports there (checked in a subprocess)
from bl_ext.hs_tests.head_stylizer.bridge import engine_process, preferences
p.python_path = ""
default_python = preferences.resolve_python(p)
no_torch = os.path.join({str(tmp_path)!r}, "python-without-torch")
with open(no_torch, "w") as fh:
    fh.write("#!/bin/sh\\necho \\"ModuleNotFoundError: No module named 'torch'\\" >&2\\nexit 1\\n")
os.chmod(no_torch, 0o755)
engine_process.blender_python = lambda: no_torch
errors["no_torch"] = press()
result(errors=errors, status=status_after_bad_path, objects=[o.name for o in bpy.data.objects],
       default_python=default_python, sys_executable=sys.executable)
""")
    e = r["errors"]
    assert "Engine Python interpreter not found" in e["python"] and "/nonexistent/bin/python3" in e["python"]
    assert "Diffusion model folder does not exist: /nonexistent/stable-diffusion" in e["diffusion"]
    assert "Generator checkpoint must be a file" in e["generator"]
    assert "Engine failed: diffusion folder lacks unet/config.json" in e["engine"]
    for message in e.values():
        assert message is None or "Traceback" not in message
    assert e["ok"] is None  # with good preferences the same press works
    assert r["default_python"] == [r["sys_executable"], None]  # this interpreter has torch
    assert "the engine is not installed (Blender's Python has no torch" in e["no_torch"] and "No module named 'torch'" in e["no_torch"]
    assert r["status"].startswith("Not started: Diffusion model folder does not exist")
    assert [n for n in r["objects"] if n.startswith("Head.")] == ["Head.zombie.seed0"]


def test_cancel_stops_the_engine_and_loading_a_file_kills_a_running_one(head_npz, tmp_path):
    r = run_bpy(_fake(head_npz, tmp_path / "out", FAKE_ENGINE_STEP_SECONDS="0.05") + f"""
import time
from bl_ext.hs_tests.head_stylizer.operators import stylize
from bl_ext.hs_tests.head_stylizer.bridge import engine_process
from bl_ext.hs_tests.head_stylizer.bridge.preferences import build_request

def gone(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not os.path.exists(f"/proc/{{pid}}")

settings.steps = 10000
request, problems = build_request(bpy.context, settings)
assert not problems, problems
session = stylize.StylizeSession(scene.name, request)
session.start()
running_flag = settings.is_running
while settings.progress == 0.0 and not session.pump():
    time.sleep(0.02)
assert bpy.ops.headstylizer.cancel() == {{"FINISHED"}}
while not session.pump():
    time.sleep(0.02)
ok = session.finish(bpy.context)
first = dict(ok=ok, status=settings.status, pid_gone=gone(session.process.pid), running=settings.is_running,
             returncode=session.process.returncode, heads=[o.name for o in bpy.data.objects if o.name.startswith("Head")])

# a second run is still going when another file is opened: load_pre must kill it
bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'scene.blend')!r})
request, _ = build_request(bpy.context, settings)
second = stylize.StylizeSession(scene.name, request)
second.start()
time.sleep(0.3)
pid = second.process.pid
alive_before = not gone(pid)
bpy.ops.wm.open_mainfile(filepath={str(tmp_path / 'scene.blend')!r})
result(first=first, alive_before=alive_before, killed=gone(pid), live=len(engine_process.live_processes()),
       active=stylize.active_session() is None, running_after_load=bpy.context.scene.head_stylizer.is_running)
""")
    first = r["first"]
    assert first["ok"] is False and first["status"] == "Cancelled" and first["returncode"] == 0
    assert first["pid_gone"] and not first["running"] and first["heads"] == []
    assert r["alive_before"] and r["killed"] and r["live"] == 0 and r["active"]
    assert r["running_after_load"] is False  # the saved "running" flag is cleared on load


@pytest.mark.slow
def test_turntable_renders_an_orbit_of_the_head(head_npz, tmp_path):
    r = run_bpy(f"""
import numpy as np
bpy.ops.headstylizer.import_head(filepath={head_npz!r})
obj = bpy.context.active_object
scenes = len(bpy.data.scenes)
assert bpy.ops.headstylizer.render_turntable(directory={str(tmp_path)!r}, frames=3, resolution=48, samples=2) == {{"FINISHED"}}
stats = []
for i in (1, 2, 3):
    img = bpy.data.images.load(os.path.join({str(tmp_path)!r}, "turntable", f"frame_{{i:03d}}.png"))
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32); img.pixels.foreach_get(px)
    px = px.reshape(img.size[1], img.size[0], 4)[..., :3]
    stats.append(dict(size=list(img.size), centre=px[18:30, 18:30].mean(axis=(0, 1)).tolist(), corner=px[:4, :4].mean(axis=(0, 1)).tolist()))
result(stats=stats, scenes_after=len(bpy.data.scenes), scenes_before=scenes, camera=bpy.context.scene.camera is None)
""")
    assert sorted(p.name for p in (tmp_path / "turntable").iterdir()) == [f"frame_00{i}.png" for i in (1, 2, 3)]
    for s in r["stats"]:
        assert s["size"] == [48, 48]
        assert max(abs(a - b) for a, b in zip(s["centre"], s["corner"])) > 0.02  # the head is in the frame
    assert r["scenes_after"] == r["scenes_before"]  # the render scene was removed again


def test_build_script_makes_an_installable_zip(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build_extension.py"), "--output-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    (zip_path,) = tmp_path.glob("head_stylizer-*.zip")
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "repo" / "head_stylizer")
    assert {"blender_manifest.toml", "__init__.py", "operators/stylize.py", "panels/main.py", "bridge/preferences.py",
            "engine/__main__.py", "engine/app/pipeline.py", "requirements.txt", "bridge/engine_install.py"} <= names
    assert not any(n.startswith(("tests/", "bench/", "tools/", ".venv/")) or n.endswith(".pyc") for n in names)
    assert "requirements-dev.txt" not in names  # Install Engine installs the engine's pins, not the test tools
    r = run_bpy(f"""
install_extension({str(tmp_path / 'repo')!r})
result(path=extension().__file__, registered=hasattr(bpy.types, "HEADSTYLIZER_PT_main"),
       engine_root=__import__(MODULE + ".bridge.preferences", fromlist=["x"]).EXTENSION_ROOT.as_posix())
""", install=False)
    assert r["registered"] and r["path"].startswith(str(tmp_path / "repo"))
    assert r["engine_root"] == (tmp_path / "repo" / "head_stylizer").as_posix()


def test_panels_draw_in_every_state_with_existing_properties(head_npz, tmp_path):
    """Background Blender never draws panels, so draw() runs against a recording layout that checks every
    ``prop(data, name)`` names a real RNA property and every operator button a registered operator."""
    r = run_bpy(_fake(head_npz, tmp_path / "out") + """
class Layout:
    calls = []
    def __getattr__(self, name):
        def method(*args, **kwargs):
            if name == "prop":
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, f"{type(data).__name__} has no property {prop!r}"
            if name == "operator":
                category, op = args[0].split(".")
                assert hasattr(bpy.types, f"{category.upper()}_OT_{op}"), args[0]
            if name == "template_icon":
                assert isinstance(kwargs["icon_value"], int)
            Layout.calls.append(name)
            return Layout()
        return method
    def __setattr__(self, name, value):
        pass

class Panel:
    layout = Layout()

panels = [getattr(bpy.types, n) for n in ("HEADSTYLIZER_PT_main", "HEADSTYLIZER_PT_options", "HEADSTYLIZER_PT_result",
                                          "HEADSTYLIZER_PT_batch") if hasattr(bpy.types, n)]
states = [dict(), dict(preset="CUSTOM", head_source="LATENT", turntable=True), dict(head_source="MESH"),
          dict(is_running=True, progress=0.4)]
for state in states:
    for key, value in state.items():
        setattr(settings, key, value)
    for panel in panels:
        panel.draw(Panel(), bpy.context)
before = Layout.calls.count("template_icon")
settings.preset, settings.head_source, settings.turntable = "ZOMBIE", "SEED", False
bpy.ops.headstylizer.stylize_head()
settings.is_running = False
for panel in panels:
    panel.draw(Panel(), bpy.context)
real_prefs = prefs()
type(real_prefs).draw(type("P", (), {"layout": Layout(), "__getattr__": lambda s, n: getattr(real_prefs, n)})(),
                      bpy.context)
result(icons_before=before, icons_after=Layout.calls.count("template_icon") - before,
       progress_bars=Layout.calls.count("progress"))
""")
    assert r["icons_before"] == 0 and r["icons_after"] == 2  # before + after thumbnails once a run finished
    assert r["progress_bars"] >= 1


def test_run_with_a_game_ready_glb_imports_textured_life_size_and_exports_the_texture(tmp_path):
    """A run that wrote head.glb: Import Head brings level 0 in with its baked texture in a material, at life
    size; Export glTF writes that texture back out (validator: 0 errors, 0 warnings)."""
    import numpy as np

    from engine.heads.game_asset import GameAssetConfig, build_game_asset, game_glb_bytes
    from engine.io.atomic import write_bytes
    from engine.mesh import MeshConfig, extract_mesh

    def density(p):
        return 10.0 + (0.3 - p.norm(dim=-1)) * 400.0

    def colour(p):
        return torch.stack([0.5 + 0.4 * torch.sin(p[:, 1] * 200), 0.5 + 0.0 * p[:, 0], 0.5 - 0.4 * torch.sin(p[:, 1] * 200)], -1)

    config = MeshConfig.for_box_warp(1.0, resolution=40, iso_level=10.0)
    mesh = extract_mesh(density, colour, config)
    asset = build_game_asset(mesh, colour, config, GameAssetConfig(texture_size=512))
    run = tmp_path / "run"
    write_bytes(run / "head.glb", game_glb_bytes(asset, GameAssetConfig(texture_size=512)))
    (run / "head.json").write_text(json.dumps({"mesh_npz": "missing.npz", "glb": "head.glb", "seed": 2,
                                               "style_preset": "statue", "game_asset": asset.metadata}))
    out = tmp_path / "export.glb"
    r = run_bpy(f"""
assert bpy.ops.headstylizer.import_head(filepath={str(run / 'head.json')!r}) == {{"FINISHED"}}
obj = bpy.context.active_object
images = [n.image for n in obj.active_material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image]
assert bpy.ops.headstylizer.export_gltf(filepath={str(out)!r}) == {{"FINISHED"}}
result(name=obj.name, faces=len(obj.data.polygons), uv=list(obj.data.uv_layers.keys()),
       image=[list(i.size) for i in images], dims=list(obj.dimensions), scale=obj["head_stylizer_metres_per_unit"],
       location=list(obj.location), cursor=list(bpy.context.scene.cursor.location))
""")
    assert r["name"] == "Head.statue.seed2" and r["faces"] == asset.levels[0].mesh.num_faces
    assert r["uv"] and r["image"] == [[512, 512]] and r["scale"] == pytest.approx(0.625)
    engine_extent = np.ptp(mesh.vertices, axis=0)  # y-up engine units; Blender: (x, z, y) in metres
    np.testing.assert_allclose(r["dims"], engine_extent[[0, 2, 1]] * 0.625, rtol=1e-3)
    assert r["location"] == pytest.approx(r["cursor"])
    gltf = _glb_json(out)
    primitive = gltf["meshes"][0]["primitives"][0]
    assert "TEXCOORD_0" in primitive["attributes"] and len(gltf["images"]) == 1
    assert "baseColorTexture" in gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]
    if shutil.which("node") is None or not (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("glTF validator not installed (scripts/setup.sh runs npm ci in tools/gltf-validator)")
    report = json.loads(subprocess.run(["node", str(VALIDATOR / "validate.js"), str(out)], capture_output=True,
                                       text=True).stdout)
    assert (report["issues"]["numErrors"], report["issues"]["numWarnings"]) == (0, 0), report["issues"]["messages"][:5]
