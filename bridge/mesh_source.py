"""Head mode from Blender: the selected mesh goes to the engine as a ``.glb``, its stylized self comes back beside it.

Out. :func:`export_source_glb` writes the object alone with Blender's own glTF exporter: modifiers applied,
its world transform baked into the node (so the head arrives at the scale and place the artist sees), its
material's base-colour image embedded and its active colour attribute as ``COLOR_0`` — what the engine's
glTF reader takes (:mod:`engine.heads.gltf`). The source object and the selection are left as they were.

Back. The engine normalises the scan into the generator's frame with a similarity ``S`` (``scan_to_world``
in ``head.json``; glTF is y-up, so ``S`` maps glTF coordinates ``(x, z, −y)`` of a Blender point to the
generator's world) and returns the stylized head in that frame. Imported like every head (engine ``g`` →
Blender ``(x, −z, y)``), the object gets the world matrix :func:`placement_matrix` — ``A·S⁻¹·A⁻¹`` with
``A`` the y-up → z-up change — which lands it exactly where the source is, at its scale and orientation,
then moved along +X by :func:`beside_offset` so the two stand side by side. The source is never modified.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
GAP = 0.25  # free space between the source and its stylized self, as a fraction of the source's width


class MeshSourceError(ValueError):
    """The selected object cannot be sent to head mode (message says why and what to do)."""


def check_source_object(obj) -> None:
    """Raise :class:`MeshSourceError` unless ``obj`` is a mesh object with faces."""
    if obj is None:
        raise MeshSourceError("Select the mesh to stylize (no active object)")
    if obj.type != "MESH":
        raise MeshSourceError(f"Select a mesh to stylize: the active object {obj.name!r} is a {obj.type.lower()}")
    if len(obj.data.polygons) == 0:
        raise MeshSourceError(f"{obj.name!r} has no faces; head mode needs a surface mesh")


def scan_to_world_of(summary: dict[str, Any]) -> np.ndarray:
    """The (4, 4) normalisation the engine applied to the exported mesh (``head.json``'s mesh record)."""
    try:
        matrix = np.asarray(summary["mesh"]["normalization"]["scan_to_world"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise MeshSourceError(f"the run summary has no mesh normalisation ({exc!r}); cannot place the head") from None
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise MeshSourceError(f"the run summary's scan_to_world is not an invertible 4×4 matrix: {matrix.tolist()}")
    return matrix


def placement_matrix(scan_to_world: np.ndarray, offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """World matrix of the imported stylized head that puts it where its source is (plus ``offset``)."""
    matrix = Y_UP_TO_Z_UP @ np.linalg.inv(scan_to_world) @ Y_UP_TO_Z_UP.T
    matrix[:3, 3] += np.asarray(offset, dtype=np.float64)
    return matrix


def world_bounds(obj) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of the object's vertices in world space (tight, unlike the rotated local bounding box)."""
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float64)
    obj.data.vertices.foreach_get("co", co)
    world = np.asarray(obj.matrix_world, dtype=np.float64)
    moved = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    if len(moved) == 0:
        return world[:3, 3].copy(), world[:3, 3].copy()
    return moved.min(axis=0), moved.max(axis=0)


def beside_offset(source_min: np.ndarray, source_max: np.ndarray) -> tuple[float, float, float]:
    """Move along +X by the source's width and a gap, so the stylized head stands next to it."""
    width = float(source_max[0] - source_min[0])
    return ((1.0 + GAP) * width if width > 0 else 1.0, 0.0, 0.0)


def export_source_glb(context, obj, filepath: str | os.PathLike) -> str:
    """Write ``obj`` alone to a binary glTF (world transform and modifiers applied, textures embedded)."""
    import bpy

    check_source_object(obj)
    view_layer = context.view_layer
    selected = [o for o in view_layer.objects.selected]
    active = view_layer.objects.active
    try:
        for other in selected:
            other.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        options = dict(filepath=os.fspath(filepath), export_format="GLB", use_selection=True, export_yup=True,
                       export_apply=True, export_normals=True, export_materials="EXPORT", export_texcoords=True,
                       export_animations=False, export_extras=False, export_cameras=False, export_lights=False)
        props = bpy.ops.export_scene.gltf.get_rna_type().properties
        options = {k: v for k, v in options.items() if k in props}
        if "export_vertex_color" in props:  # Blender ≥ 4.2
            options["export_vertex_color"] = "ACTIVE"
        elif "export_colors" in props:
            options["export_colors"] = True
        if "export_image_format" in props:
            options["export_image_format"] = "AUTO"  # PNG/JPEG as the source image is, embedded in the .glb
        result = bpy.ops.export_scene.gltf(**options)
    finally:
        obj.select_set(False)
        for other in selected:
            if other.name in view_layer.objects:
                other.select_set(True)
        view_layer.objects.active = active
    if "FINISHED" not in result or not os.path.isfile(filepath):
        raise MeshSourceError(f"Blender's glTF exporter could not write {filepath} ({result})")
    return os.fspath(filepath)
