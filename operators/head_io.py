"""Import Head (``head.npz``, or a run's ``head.json``: its textured ``head.glb`` when there is one) and Export
glTF (``.glb`` of the object: its texture or vertex colours)."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..bridge.mesh_import import HeadFileError, import_head, import_run_head
from .stylize import load_head_json


def _name_for(path: Path, summary: dict | None) -> str:
    if summary:
        style = (summary.get("style_preset") or summary.get("prompt") or "custom").split()[0].lower()
        source = Path(summary["latent"]).stem if summary.get("latent") else f"seed{summary.get('seed', 0)}"
        return f"Head.{bpy.path.clean_name(style)}.{source}"
    return f"Head.{bpy.path.clean_name(path.parent.name or path.stem)}"


class HEADSTYLIZER_OT_import_head(bpy.types.Operator, ImportHelper):
    """Import a stylized head (head.npz or head.json from a run folder) at the 3D cursor"""

    bl_idname = "headstylizer.import_head"
    bl_label = "Import Head"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: bpy.props.StringProperty(default="*.npz;*.json", options={"HIDDEN"})
    name: bpy.props.StringProperty(name="Name", description="Object name. Empty: from the run (Head.style.seed)")

    def execute(self, context):
        path = Path(bpy.path.abspath(self.filepath))
        try:
            summary = None
            if path.suffix.lower() == ".json":  # a run: its textured game-ready glb when it has one
                summary = load_head_json(path)
                obj, _ = import_run_head(context, path.parent, summary, self.name or _name_for(path, summary))
            else:
                obj = import_head(context, path, self.name or _name_for(path, summary))
        except HeadFileError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if summary is not None:
            obj["head_stylizer_result"] = str(path)
        self.report({"INFO"}, f"Imported {obj.name}: {len(obj.data.vertices):,} vertices, "
                              f"{len(obj.data.polygons):,} faces")
        return {"FINISHED"}


def export_glb(context, obj: bpy.types.Object, filepath: str) -> None:
    """Write ``obj`` alone to a binary glTF with its colour attribute as COLOR_0 (glTF is +Y up, like the engine)."""
    view_layer = context.view_layer
    for other in view_layer.objects.selected:
        other.select_set(False)
    obj.select_set(True)
    view_layer.objects.active = obj
    options = dict(filepath=filepath, export_format="GLB", use_selection=True, export_yup=True,
                   export_normals=True, export_materials="EXPORT")
    props = bpy.ops.export_scene.gltf.get_rna_type().properties
    if "export_vertex_color" in props:  # Blender ≥ 4.2: 'MATERIAL' | 'ACTIVE' | 'NONE'
        options["export_vertex_color"] = "ACTIVE"
    elif "export_colors" in props:  # Blender ≤ 4.1
        options["export_colors"] = True
    result = bpy.ops.export_scene.gltf(**options)
    if "FINISHED" not in result:
        raise RuntimeError(f"glTF exporter returned {result}")


class HEADSTYLIZER_OT_export_gltf(bpy.types.Operator, ExportHelper):
    """Export the active head as a binary glTF (.glb) with vertex colours"""

    bl_idname = "headstylizer.export_gltf"
    bl_label = "Export glTF"
    bl_options = {"REGISTER"}

    filename_ext = ".glb"
    filter_glob: bpy.props.StringProperty(default="*.glb", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "MESH"

    def invoke(self, context, event):
        obj = context.active_object
        if not self.filepath and obj is not None:
            folder = Path(obj["head_stylizer_result"]).parent if obj.get("head_stylizer_result") else Path.home()
            self.filepath = str(folder / f"{bpy.path.clean_name(obj.name)}.glb")
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        obj = context.active_object
        filepath = bpy.path.ensure_ext(bpy.path.abspath(self.filepath), ".glb")
        folder = Path(filepath).parent
        if not folder.is_dir():
            self.report({"ERROR"}, f"Export folder does not exist: {folder}")
            return {"CANCELLED"}
        try:
            export_glb(context, obj, filepath)
        except (RuntimeError, OSError) as exc:
            self.report({"ERROR"}, f"glTF export failed: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {obj.name} to {filepath}")
        return {"FINISHED"}


CLASSES = (HEADSTYLIZER_OT_import_head, HEADSTYLIZER_OT_export_gltf)
