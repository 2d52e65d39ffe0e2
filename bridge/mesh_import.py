"""Build a Blender mesh object from the engine's ``head.npz`` — in bulk, never a Python loop per vertex.

The engine writes ``vertices`` (V, 3) float32, ``faces`` (F, 3) int, optional ``vertex_colors`` (V, 3)
uint8 sRGB (or float in [0, 1]) and ``vertex_normals``. Coordinates are PanoHead's y-up world (the head
faces +z); Blender is z-up, so a vertex (x, y, z) becomes (x, −z, y): a +90° rotation about X that keeps
the mesh right-handed, puts the head upright and makes it face −y, i.e. toward Blender's Front view.
The glTF exporter applies the inverse (+Y up), so an exported ``.glb`` has the engine's coordinates again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import bpy
import numpy as np

COLOR_ATTRIBUTE = "Color"


class HeadFileError(ValueError):
    """``head.npz`` is missing, unreadable or has arrays of the wrong shape (message names the file)."""


@dataclass
class HeadArrays:
    vertices: np.ndarray  # (V, 3) float32, engine (y-up) coordinates
    faces: np.ndarray  # (F, 3) int32
    colors: np.ndarray | None  # (V, 3) float32 sRGB in [0, 1]


def read_head_npz(path: str | os.PathLike) -> HeadArrays:
    """Load and check the arrays of a ``head.npz`` (numpy only: Blender need not import the engine)."""
    name = os.fspath(path)
    try:
        with np.load(name, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise HeadFileError(f"{name}: cannot read the head mesh ({exc})") from exc
    if "vertices" not in data or "faces" not in data:
        raise HeadFileError(f"{name}: the head mesh needs 'vertices' and 'faces' arrays, found {sorted(data)}")
    vertices = np.asarray(data["vertices"], dtype=np.float32)
    faces = np.asarray(data["faces"])
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise HeadFileError(f"{name}: vertices must be (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
        raise HeadFileError(f"{name}: faces must be an integer (F, 3) array, got {faces.shape} {faces.dtype}")
    if len(faces) == 0:
        raise HeadFileError(f"{name}: the head mesh has no faces")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise HeadFileError(f"{name}: face indices must lie in [0, {len(vertices)})")
    colors = data.get("vertex_colors")
    if colors is not None:
        if colors.shape != vertices.shape:
            raise HeadFileError(f"{name}: vertex_colors must be {vertices.shape}, got {colors.shape}")
        colors = colors.astype(np.float32) / 255.0 if colors.dtype == np.uint8 else \
            np.clip(colors.astype(np.float32), 0.0, 1.0)
    return HeadArrays(vertices, faces.astype(np.int32), colors)


def yup_to_zup(vertices: np.ndarray) -> np.ndarray:
    """Engine (x, y, z), y up → Blender (x, −z, y), z up."""
    v = np.asarray(vertices, dtype=np.float32)
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding: Blender's float colour attributes hold scene-linear values."""
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def build_mesh(name: str, arrays: HeadArrays) -> bpy.types.Mesh:
    """Mesh datablock filled with ``foreach_set`` (vertices, loops, polygons, colour attribute)."""
    v = yup_to_zup(arrays.vertices)
    f = arrays.faces
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(v))
    mesh.vertices.foreach_set("co", v.ravel())
    mesh.loops.add(f.size)
    mesh.loops.foreach_set("vertex_index", f.ravel())
    mesh.polygons.add(len(f))
    mesh.polygons.foreach_set("loop_start", np.arange(0, f.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    if arrays.colors is not None:
        rgba = np.ones((len(v), 4), dtype=np.float32)
        rgba[:, :3] = srgb_to_linear(arrays.colors)
        attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        attribute.data.foreach_set("color", rgba.ravel())
        mesh.color_attributes.active_color = attribute
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    if hasattr(mesh, "shade_smooth"):
        mesh.shade_smooth()
    else:  # Blender < 4.1
        mesh.polygons.foreach_set("use_smooth", np.ones(len(f), dtype=bool))
    return mesh


def head_material(name: str, with_colors: bool) -> bpy.types.Material:
    """Principled BSDF whose base colour reads the mesh's colour attribute."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 0.6
    if with_colors:
        attribute = nodes.new("ShaderNodeVertexColor")
        attribute.layer_name = COLOR_ATTRIBUTE
        attribute.location = (bsdf.location.x - 300, bsdf.location.y)
        links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def create_head_object(context, arrays: HeadArrays, name: str) -> bpy.types.Object:
    """Mesh object with its material, linked to the active collection at the 3D cursor, selected and active."""
    mesh = build_mesh(name, arrays)
    mesh.materials.append(head_material(name, arrays.colors is not None))
    obj = bpy.data.objects.new(name, mesh)
    obj.location = context.scene.cursor.location
    collection = context.collection or context.scene.collection
    collection.objects.link(obj)
    view_layer = context.view_layer
    for other in view_layer.objects.selected:
        other.select_set(False)
    obj.select_set(True)
    view_layer.objects.active = obj
    return obj


def import_head(context, npz_path: str | os.PathLike, name: str) -> bpy.types.Object:
    return create_head_object(context, read_head_npz(npz_path), name)


def _remove_objects(objects) -> None:
    """Delete objects with their mesh, materials and images when nothing else uses them."""
    for obj in objects:
        data = obj.data if obj.type == "MESH" else None
        materials = [m for m in (data.materials if data else []) if m]
        bpy.data.objects.remove(obj, do_unlink=True)
        if data is not None and data.users == 0:
            bpy.data.meshes.remove(data)
        for material in materials:
            if material.users == 0:
                images = [n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image] \
                    if material.node_tree else []
                bpy.data.materials.remove(material)
                for image in images:
                    if image.users == 0:
                        bpy.data.images.remove(image)


def import_head_glb(context, glb_path: str | os.PathLike, name: str) -> bpy.types.Object:
    """The level-0 mesh of the engine's game-ready ``head.glb`` (UV texture in a Principled material, in the
    file's units — metres for a life-size head), through Blender's own glTF importer (y-up → z-up like
    :func:`yup_to_zup`), renamed ``name``, at the 3D cursor, selected and active. Lower levels of detail hang
    off level 0 through ``MSFT_lod`` and are not imported."""
    path = os.fspath(glb_path)
    if not os.path.isfile(path):
        raise HeadFileError(f"{path}: the head's glb is missing")
    before = set(bpy.data.objects)
    try:
        result = bpy.ops.import_scene.gltf(filepath=path)
    except RuntimeError as exc:
        raise HeadFileError(f"{path}: Blender could not import the head ({exc})") from exc
    created = [o for o in bpy.data.objects if o not in before]
    meshes = [o for o in created if o.type == "MESH"]
    # Blender's importer also makes objects of the nodes only MSFT_lod refers to: keep level 0 (its node name
    # ends in _LOD0; a glb with one mesh has no levels)
    level0 = [o for o in meshes if o.name.split(".")[0].endswith("_LOD0")] if len(meshes) > 1 else meshes
    if "FINISHED" not in result or len(level0) != 1:
        _remove_objects(created)
        raise HeadFileError(f"{path}: expected one head mesh (or one level 0) in the glb, Blender imported {len(meshes)}")
    obj = level0[0]
    for other in context.view_layer.objects.selected:  # before removing: the list would hold dead objects
        other.select_set(False)
    _remove_objects([o for o in created if o is not obj])
    obj.parent = None
    obj.name = name
    obj.data.name = name
    obj.location = context.scene.cursor.location
    obj.select_set(True)
    context.view_layer.objects.active = obj
    return obj


def resolve_in(folder: str | os.PathLike, relative: str) -> str:
    """A run summary's path: absolute as written, else relative to the run folder."""
    return relative if os.path.isabs(relative) else os.path.join(os.fspath(folder), relative)


def import_run_head(context, run_dir: str | os.PathLike, summary: dict, name: str) -> tuple[bpy.types.Object, float]:
    """Import a run's head: its textured game-ready ``head.glb`` when the run wrote one, else ``head.npz``.

    Returns (object, metres per engine unit of its mesh data): 1.0 for the npz (engine units), the glb's
    life-size factor otherwise. Relative paths in ``summary`` are relative to ``run_dir``.
    """
    glb = summary.get("glb")
    if glb:
        obj = import_head_glb(context, resolve_in(run_dir, glb), name)
        scale = float((summary.get("game_asset") or {}).get("metres_per_unit", 1.0))
    else:
        obj = import_head(context, resolve_in(run_dir, summary["mesh_npz"]), name)
        scale = 1.0
    obj["head_stylizer_metres_per_unit"] = scale
    return obj, scale
