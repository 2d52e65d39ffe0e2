"""Blender side of the batch: import a scan, normalise it, render calibrated views for the engine's inversion.

Formats: ``.obj``, ``.ply``, ``.glb``/``.gltf`` and ``.fbx`` through Blender's own importers (FBX has no open
reader, so this is the only way FBX scans enter the batch). Scans are untrusted: :func:`check_scan` applies
the engine's rules (engine/io/untrusted.py) to the scan and every file it names before an importer runs.

Coordinates. Blender is z-up and its importers already turn y-up files into z-up, so an imported head
faces −y (Blender's front view). The generator's world is y-up, facing +z (engine/heads/scans.py documents the
normalisation convention). ``world = (x, z, −y)`` maps Blender to the generator and ``blender = (x, −z, y)``
back. The normalisation — up-extent units heuristic, centring on the procedural world's mean bust centre —
is the engine's (:func:`engine.heads.scans.normalization_matrix` for a z-up mesh), re-implemented here in numpy
because Blender's Python has no torch; tests/blender/test_batch.py checks both give the same matrix.

Cameras. Each view is the generator's camera for (yaw, pitch) — PanoHead's orbit of radius 2.7 around the
world origin, looking at the origin (where normalised heads sit), 18.837° FOV with PanoHead's rounded
intrinsics — computed in numpy exactly as :func:`engine.generator.camera.cameras_at` does, written to
``cameras.json`` as 25-vectors, and turned into a Blender camera: ``matrix_world = B · cam2world · F`` with
B the world→Blender axis change and F = diag(1, −1, −1, 1) (OpenCV cameras look down +z with y down, Blender
cameras down −z with y up); ``lens / sensor_width`` = the normalised focal length; no shift (principal point
at the centre). Renders are RGBA PNGs over a transparent film, so alpha is the coverage mask.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

# Kept equal to engine.heads.scans (checked by tests/blender/test_batch.py).
REFERENCE_CENTRE = (0.0, -0.105, -0.012)
REFERENCE_HEIGHT = 0.73
UNIT_TO_WORLD = {"mm": 0.0016, "cm": 0.016, "m": 1.6, "world": 1.0}
BLENDER_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # (x, y, z) → (x, z, −y)
WORLD_TO_BLENDER = BLENDER_TO_WORLD.T
OPENCV_TO_BLENDER_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])
DEFAULT_YAWS_DEG = (0.0, 45.0, -45.0, 90.0, -90.0, 180.0)
DEFAULT_PITCHES_DEG = (0.0, -10.0, -10.0, 0.0, 0.0, 0.0)
SCAN_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".fbx")


# --------------------------------------------------------------------------------------------------
# Pure numpy: normalisation and cameras (testable without Blender)
# --------------------------------------------------------------------------------------------------
def normalization_matrix(vertices_blender: np.ndarray, units: str = "auto", yaw_degrees: float = 0.0) -> np.ndarray:
    """(4, 4) Blender-space → generator-world similarity for a head imported into Blender (z-up, facing −y)."""
    c, s = math.cos(math.radians(-yaw_degrees)), math.sin(math.radians(-yaw_degrees))
    yaw = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    rotation = yaw @ BLENDER_TO_WORLD
    turned = np.asarray(vertices_blender, dtype=np.float64) @ rotation.T
    lo, hi = turned.min(axis=0), turned.max(axis=0)
    height = float(hi[1] - lo[1])
    if height <= 0:
        raise ValueError("scan is flat along its up axis")
    if units == "auto":
        units = "mm" if height >= 100.0 else "cm" if height >= 5.0 else "fit"
    scale = REFERENCE_HEIGHT / height if units == "fit" else UNIT_TO_WORLD[units]
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * scale
    matrix[:3, 3] = np.asarray(REFERENCE_CENTRE) - scale * (lo + hi) / 2.0
    return matrix


def intrinsics(fov_degrees: float) -> np.ndarray:
    """Normalised intrinsics with PanoHead's rounded π and √2 (see engine/generator/camera.py)."""
    focal = 1.0 / (math.tan(fov_degrees * 3.14159 / 360.0) * 1.414)
    return np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])


def cam2world(yaw: float, pitch: float, radius: float, pivot: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """OpenCV cam2world (4, 4) for PanoHead yaw/pitch (radians), as engine.generator.camera.look_at_cam2world."""
    polar = min(max(math.pi / 2 + pitch, 1e-5), math.pi - 1e-5)
    cos_polar = 1.0 - 2.0 * polar / math.pi
    sin_polar = math.sqrt(max(1.0 - cos_polar * cos_polar, 0.0))
    origin = np.array([radius * sin_polar * math.sin(yaw), radius * cos_polar, radius * sin_polar * math.cos(yaw)])
    forward = np.asarray(pivot, dtype=np.float64) - origin
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    down /= np.linalg.norm(down)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, forward, origin
    return m


def camera_vector(yaw: float, pitch: float, radius: float = 2.7, fov_degrees: float = 18.837) -> list[float]:
    return [float(v) for v in np.concatenate((cam2world(yaw, pitch, radius).reshape(-1), intrinsics(fov_degrees).reshape(-1)))]


def blender_camera_matrix(c2w_opencv: np.ndarray) -> np.ndarray:
    """Blender camera ``matrix_world`` for an OpenCV cam2world given in generator-world coordinates."""
    axes = np.eye(4)
    axes[:3, :3] = WORLD_TO_BLENDER
    return axes @ c2w_opencv @ OPENCV_TO_BLENDER_CAMERA


def view_plan(yaws_deg: Sequence[float] = DEFAULT_YAWS_DEG, pitches_deg: Sequence[float] = DEFAULT_PITCHES_DEG,
              radius: float = 2.7, fov_degrees: float = 18.837) -> list[dict]:
    """Name, file and 25-vector camera of every view (the engine's scan_cameras naming)."""
    plan = []
    for yaw, pitch in zip(yaws_deg, pitches_deg):
        name = f"yaw{yaw:+.0f}_pitch{pitch:+.0f}"
        plan.append({"name": name, "file": f"{name}.png", "camera": camera_vector(math.radians(yaw), math.radians(pitch), radius, fov_degrees)})
    return plan


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_views_manifest(folder: Path, source: Path, plan: list[dict], matrix: np.ndarray, fov_degrees: float, radius: float) -> Path:
    data = {
        "source": source.name,
        "source_sha256": sha256_file(source),
        "views": plan,
        "blender_to_world": matrix.tolist(),
        "camera": {"radius": radius, "fov_degrees": fov_degrees, "pivot": [0.0, 0.0, 0.0]},
    }
    path = folder / "cameras.json"
    tmp = folder / ".cameras.json.tmp"
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)  # written last and atomically: a complete views folder has a cameras.json
    return path


def write_failure(folder: Path, source: Path, error: str) -> Path:
    """Record that ``source`` could not be imported/rendered, so the engine's report lists it as failed."""
    folder.mkdir(parents=True, exist_ok=True)
    for png in folder.glob("*.png"):
        png.unlink()
    path = folder / "failed.json"
    path.write_text(json.dumps({"source": source.name, "error": error}), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Blender: import, normalise, render
# --------------------------------------------------------------------------------------------------
def _untrusted():
    """The engine's untrusted-input rules (standard library only, so Blender's Python can run them)."""
    try:
        from ..engine.io import scan_references  # inside Blender: the extension ships the engine package
    except ImportError:  # the repository root on sys.path (tests, tools): bridge is a top-level package
        from engine.io import scan_references
    return scan_references


def check_scan(path: Path) -> list[Path]:
    """Refuse a scan before Blender imports it (the engine's rules, engine/io/untrusted.py): it must be a
    regular file inside its folder (a symbolic link may not lead out), within the size limit, and every file
    it names — glTF buffers and images, OBJ material libraries and their textures, a PLY's TextureFile — must
    lie inside the scan's folder; absolute paths, ``..`` (also percent-encoded), links out, FIFOs and devices
    are refused without being opened. Raises the engine's InputError naming the scan and the reference."""
    return _untrusted().check_scan_references(Path(path))


def import_scan(path: Path):
    """Import ``path`` with Blender's importer; returns the imported mesh objects joined into one."""
    import bpy

    suffix = path.suffix.lower()
    before = set(bpy.data.objects)
    if suffix == ".obj":
        bpy.ops.wm.obj_import(filepath=str(path))
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path))
    elif suffix in (".glb", ".gltf"):
        bpy.ops.import_scene.gltf(filepath=str(path))
    elif suffix == ".fbx":
        bpy.ops.import_scene.fbx(filepath=str(path))
    else:
        raise ValueError(f"{path.name}: unsupported scan type {suffix!r} (use {', '.join(SCAN_SUFFIXES)})")
    meshes = [o for o in set(bpy.data.objects) - before if o.type == "MESH"]
    for other in set(bpy.data.objects) - before - set(meshes):
        bpy.data.objects.remove(other, do_unlink=True)
    if not meshes:
        raise ValueError(f"{path.name}: the file holds no mesh")
    if len(meshes) > 1:
        with bpy.context.temp_override(active_object=meshes[0], selected_editable_objects=meshes, object=meshes[0]):
            bpy.ops.object.join()
    return meshes[0]


def world_vertices(obj) -> np.ndarray:
    count = len(obj.data.vertices)
    co = np.empty(count * 3, dtype=np.float64)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    m = np.array(obj.matrix_world)
    return co @ m[:3, :3].T + m[:3, 3]


def normalize_object(obj, units: str = "auto", yaw_degrees: float = 0.0) -> np.ndarray:
    """Move ``obj`` so that, read in generator coordinates, it is normalised; returns the Blender→world matrix."""
    from mathutils import Matrix

    matrix = normalization_matrix(world_vertices(obj), units, yaw_degrees)
    to_blender = np.eye(4)
    to_blender[:3, :3] = WORLD_TO_BLENDER
    obj.matrix_world = Matrix((to_blender @ matrix @ np.array(obj.matrix_world)).tolist())
    return matrix


def _vertex_colour_material(obj):
    """An emission-free Principled material whose base colour is the scan's colour attribute (if any)."""
    import bpy

    material = bpy.data.materials.new("ScanColours")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = nodes.get("Principled BSDF")
    attributes = obj.data.color_attributes
    if attributes and bsdf is not None:
        node = nodes.new("ShaderNodeVertexColor")
        node.layer_name = attributes[0].name
        material.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.7
    obj.data.materials.clear()
    obj.data.materials.append(material)
    return material


def setup_render_scene(resolution: int, samples: int = 8):
    """A fresh scene: Cycles on the CPU (works headless), transparent film, soft studio light."""
    import bpy

    scene = bpy.data.scenes.new("HeadStylizerScanViews")
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("HeadStylizerWorld")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    light_data = bpy.data.lights.new("Key", "SUN")
    light_data.energy = 2.5
    light = bpy.data.objects.new("Key", light_data)
    scene.collection.objects.link(light)
    camera = bpy.data.objects.new("ScanCamera", bpy.data.cameras.new("ScanCamera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    return scene, camera, light


def render_views(obj, folder: Path, plan: list[dict], resolution: int = 128, samples: int = 8) -> list[Path]:
    """Render ``obj`` from every camera of ``plan`` into ``folder`` (RGBA PNGs)."""
    import bpy
    from mathutils import Matrix

    scene, camera, light = setup_render_scene(resolution, samples)
    scene.collection.objects.link(obj)
    _vertex_colour_material(obj)
    camera.data.sensor_fit = "HORIZONTAL"
    camera.data.sensor_width = 36.0
    written = []
    try:
        for view in plan:  # a handful of views
            c = np.asarray(view["camera"], dtype=np.float64)
            c2w = c[:16].reshape(4, 4)
            focal = c[16]
            camera.data.lens = focal * camera.data.sensor_width
            camera.matrix_world = Matrix(blender_camera_matrix(c2w).tolist())
            light.matrix_world = camera.matrix_world  # the key light travels with the camera, as in the world renders
            scene.render.filepath = str(folder / view["file"])
            bpy.ops.render.render(write_still=True, scene=scene.name)
            written.append(folder / view["file"])
    finally:
        scene.collection.objects.unlink(obj)
        for thing in (camera, light):
            bpy.data.objects.remove(thing, do_unlink=True)
        bpy.data.scenes.remove(scene)
    return written


def prepare_scan_views(source: Path, folder: Path, resolution: int = 128, samples: int = 8, units: str = "auto",
                       yaw_degrees: float = 0.0, radius: float = 2.7, fov_degrees: float = 18.837) -> Path:
    """Import, normalise and render one scan into ``folder`` (views + cameras.json); the object is removed."""
    import bpy

    check_scan(source)  # before any importer: Blender's follow every file a scan names
    folder.mkdir(parents=True, exist_ok=True)
    obj = import_scan(source)
    try:
        for collection in list(obj.users_collection):
            collection.objects.unlink(obj)
        matrix = normalize_object(obj, units, yaw_degrees)
        plan = view_plan(radius=radius, fov_degrees=fov_degrees)
        render_views(obj, folder, plan, resolution, samples)
    finally:
        mesh = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        if mesh.users == 0:
            bpy.data.meshes.remove(mesh)
    return write_views_manifest(folder, source, plan, matrix, fov_degrees, radius)


def prepare_scan_glb(source: Path, target: Path) -> Path:
    """The batch's mesh mode: import one scan with Blender's importer (so FBX works too) and write it as a
    ``.glb`` (textures embedded, y-up) that the engine's head mode reads; the imported object is removed.
    The engine normalises it (units, centre) as it does any glTF scan."""
    import bpy

    from .mesh_source import export_source_glb

    check_scan(source)  # before any importer: Blender's follow every file a scan names
    target.parent.mkdir(parents=True, exist_ok=True)
    obj = import_scan(source)
    try:
        partial = target.with_name(target.stem + ".partial.glb")
        export_source_glb(bpy.context, obj, partial)
        partial.replace(target)  # atomic: a half-written glb never looks finished
    finally:
        mesh = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        if mesh.users == 0:
            bpy.data.meshes.remove(mesh)
    return target
