"""Turntable: render a camera orbit around a head as ``turntable/frame_###.png``.

Rendering happens in a throw-away scene that links the head object, so the artist's scene keeps its
camera, render engine and frame range. Cycles on the CPU at a few samples works headless (no GPU or
display needed) and reads the mesh's colour attribute through the head material.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import bpy
from mathutils import Vector


@dataclass
class TurntableSettings:
    frames: int = 36
    resolution: int = 256
    samples: int = 8
    elevation_degrees: float = 10.0
    distance_factor: float = 2.6  # camera distance in bounding-sphere radii (50 mm lens frames the head)
    engine: str = "CYCLES"


def bounding_sphere(obj: bpy.types.Object) -> tuple[Vector, float]:
    """World-space centre and radius of the object's bounding box (8 corners; no per-vertex work)."""
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    centre = sum(corners, Vector()) / 8.0
    return centre, max((c - centre).length for c in corners) or 1.0


def _setup_scene(obj: bpy.types.Object, settings: TurntableSettings):
    scene = bpy.data.scenes.new("HeadStylizer Turntable")
    scene.collection.objects.link(obj)
    centre, radius = bounding_sphere(obj)

    pivot = bpy.data.objects.new("HeadStylizer Pivot", None)
    pivot.location = centre
    scene.collection.objects.link(pivot)

    camera = bpy.data.objects.new("HeadStylizer Camera", bpy.data.cameras.new("HeadStylizer Camera"))
    elevation = math.radians(settings.elevation_degrees)
    distance = settings.distance_factor * radius
    camera.parent = pivot
    camera.location = (0.0, -distance * math.cos(elevation), distance * math.sin(elevation))  # in front (−y)
    track = camera.constraints.new("TRACK_TO")
    track.target, track.track_axis, track.up_axis = pivot, "TRACK_NEGATIVE_Z", "UP_Y"
    scene.collection.objects.link(camera)
    scene.camera = camera

    light = bpy.data.objects.new("HeadStylizer Key", bpy.data.lights.new("HeadStylizer Key", "SUN"))
    light.data.energy = 3.0
    light.rotation_euler = (math.radians(50), 0.0, math.radians(-30))
    scene.collection.objects.link(light)

    world = bpy.data.worlds.new("HeadStylizer World")
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background")
    if background is not None:
        background.inputs["Color"].default_value = (0.35, 0.35, 0.38, 1.0)
        background.inputs["Strength"].default_value = 1.0
    scene.world = world

    render = scene.render
    render.engine = settings.engine
    render.resolution_x = render.resolution_y = settings.resolution
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    if settings.engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = settings.samples
        scene.cycles.use_denoising = False
    return scene, pivot, (camera, light, pivot), world


def render_turntable(context, obj: bpy.types.Object, folder: str | os.PathLike,
                     settings: TurntableSettings | None = None) -> list[Path]:
    """Render ``settings.frames`` views around ``obj`` into ``folder/frame_###.png``; returns the files."""
    settings = settings or TurntableSettings()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scene, pivot, helpers, world = _setup_scene(obj, settings)
    files = []
    try:
        for i in range(settings.frames):  # one still per frame: no animation data to leave behind
            pivot.rotation_euler = (0.0, 0.0, 2.0 * math.pi * i / settings.frames)
            path = folder / f"frame_{i + 1:03d}.png"
            scene.render.filepath = str(path)
            bpy.ops.render.render(write_still=True, scene=scene.name)
            files.append(path)
    finally:
        for helper in helpers:
            data = helper.data
            bpy.data.objects.remove(helper)
            if data is not None:
                (bpy.data.cameras if isinstance(data, bpy.types.Camera) else bpy.data.lights).remove(data)
        bpy.data.scenes.remove(scene)
        bpy.data.worlds.remove(world)
    return files


class HEADSTYLIZER_OT_render_turntable(bpy.types.Operator):
    """Render the active head from all around as an image sequence (turntable/frame_###.png)"""

    bl_idname = "headstylizer.render_turntable"
    bl_label = "Render Turntable"
    bl_options = {"REGISTER"}

    directory: bpy.props.StringProperty(name="Folder", subtype="DIR_PATH",
                                        description="Where the turntable folder goes. Empty: the head's run folder")
    frames: bpy.props.IntProperty(name="Frames", min=2, max=720, default=36)
    resolution: bpy.props.IntProperty(name="Resolution", min=16, max=4096, default=256)
    samples: bpy.props.IntProperty(name="Samples", min=1, max=4096, default=8)

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "MESH"

    def execute(self, context):
        from ..bridge.preferences import get_preferences, output_root

        obj = context.active_object
        if self.directory:
            base = Path(bpy.path.abspath(self.directory))
        elif obj.get("head_stylizer_result"):
            base = Path(obj["head_stylizer_result"]).parent
        else:
            base = output_root(get_preferences(context)) / bpy.path.clean_name(obj.name)
        try:
            files = render_turntable(context, obj, base / "turntable",
                                     TurntableSettings(self.frames, self.resolution, self.samples))
        except (OSError, RuntimeError) as exc:
            self.report({"ERROR"}, f"Turntable failed: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Rendered {len(files)} frames to {base / 'turntable'}")
        return {"FINISHED"}


CLASSES = (HEADSTYLIZER_OT_render_turntable,)
