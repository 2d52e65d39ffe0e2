"""The "Head Stylizer" tab of the 3D Viewport's sidebar (N panel).

Top to bottom: the setup checklist (engine, device, models — each with the button that fixes it), style and head, the Stylize Head button with progress/status/Cancel, the distillation
options (collapsed), and the last run's result (before/after thumbnails, identity score, export and
turntable buttons). A Batch sub-panel appears when the batch operators are installed.
"""

from __future__ import annotations

import bpy

from ..bridge import styles
from ..bridge.scores import identity_lines
from . import previews


def _settings(context):
    return context.scene.head_stylizer


def draw_progress(layout, settings) -> None:
    """Blender's progress bar (4.0+: ``layout.progress``); older versions show the factor as a slider."""
    text = f"{settings.progress * 100:.0f}%"
    if hasattr(layout, "progress"):
        layout.progress(factor=settings.progress, type="BAR", text=text)
    else:
        row = layout.row()
        row.enabled = False
        row.prop(settings, "progress", text="Progress", slider=True)


def draw_setup_checklist(layout, context) -> None:
    """Engine ✓/✗ [Install], Device, Models (embedded / real): what a new artist needs before Stylize Head."""
    from ..bridge import engine_install
    from ..bridge.preferences import engine_status, get_preferences, managed_env_dir

    prefs = get_preferences(context)
    ready, text = engine_status(prefs)
    box = layout.box()
    col = box.column(align=True)
    row = col.row()
    row.label(text=f"Engine: {text}", icon="CHECKMARK" if ready else "ERROR")
    running = engine_install.running_install()
    if running is not None:
        if hasattr(col, "progress"):
            col.progress(factor=running.state.fraction, type="BAR", text=f"{running.state.fraction * 100:.0f}%")
        row.operator("headstylizer.cancel_install", text="", icon="CANCEL")
    elif not ready:
        row.operator("headstylizer.install_engine", text="Install")
    check = engine_install.read_marker(managed_env_dir(prefs)).get("check", {}) if ready and not prefs.python_path else {}
    device = {"auto": "Auto", "cuda": "CUDA", "cpu": "CPU"}[prefs.device]
    found = engine_install.describe(check).split(", ", 1)[1] if check else "not checked"
    col.label(text=f"Device: {device} ({found})", icon="MEMORY")
    real = prefs.diffusion_dir or prefs.generator_path
    row = col.row()
    row.label(text="Models: " + ("your models" if real else "embedded pack (tiny, for trying)"),
              icon="CHECKMARK" if real else "INFO")
    if not real and ready:  # the download runs in the engine's environment
        row.operator("headstylizer.download_model", text="Download").key = "all"


class _SidebarPanel:
    """Where every Head Stylizer panel lives: 3D Viewport › Sidebar › Head Stylizer."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Head Stylizer"


class HEADSTYLIZER_PT_main(_SidebarPanel, bpy.types.Panel):
    bl_idname = "HEADSTYLIZER_PT_main"
    bl_label = "Head Stylizer"

    def draw(self, context):
        s = _settings(context)
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        draw_setup_checklist(layout, context)

        approved = styles.chosen_style_id(s.approved_style)
        layout.prop(s, "approved_style")
        col = layout.column(align=True)
        col.enabled = not approved  # an approved style brings its own prompt and recipe
        col.prop(s, "preset")
        if s.preset == "CUSTOM":
            col.prop(s, "prompt", text="Prompt")
        row = layout.row()
        row.enabled = not approved
        row.prop(s, "recipe", expand=True)

        col = layout.column(align=True)
        col.prop(s, "head_source")
        if s.head_source == "LATENT":
            col.prop(s, "latent_file")
        elif s.head_source == "MESH":
            obj = context.active_object
            if obj is not None and obj.type == "MESH":
                col.label(text=f"{obj.name} ({len(obj.data.polygons):,} faces)", icon="MESH_DATA")
            else:
                col.label(text="Select a mesh object", icon="ERROR")
        else:
            col.prop(s, "seed")
        row = layout.row()
        row.enabled = not approved
        row.prop(s, "strength", slider=True)

        row = layout.row()
        row.scale_y = 1.5
        row.enabled = not s.is_running
        row.operator("headstylizer.stylize_head", icon="SHADERFX")

        box = layout.box()
        if s.is_running:
            draw_progress(box, s)
            box.label(text=s.status)
            box.operator("headstylizer.cancel", icon="CANCEL")
        else:
            box.label(text=s.status, icon="INFO")


class HEADSTYLIZER_PT_options(_SidebarPanel, bpy.types.Panel):
    bl_label = "Options"
    bl_parent_id = "HEADSTYLIZER_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = _settings(context)
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        training = layout.column()
        training.enabled = not styles.chosen_style_id(s.approved_style)  # an approved style is never retrained
        training.prop(s, "method", expand=True)
        row = training.row(heading="Use", align=True)
        row.prop(s, "use_mirror", toggle=True)
        row.prop(s, "use_grid", toggle=True)
        row.prop(s, "use_rank", toggle=True)
        training.prop(s, "steps")
        if s.head_source == "MESH":
            training.prop(s, "keep_colours", slider=True)
            training.prop(s, "keep_shape", slider=True)
            layout.prop(s, "field_steps")
        layout.prop(s, "mesh_resolution")
        layout.prop(s, "turntable")
        if s.turntable:
            layout.prop(s, "turntable_frames")


class HEADSTYLIZER_PT_result(_SidebarPanel, bpy.types.Panel):
    bl_label = "Result"
    bl_parent_id = "HEADSTYLIZER_PT_main"

    def draw(self, context):
        s = _settings(context)
        layout = self.layout
        views = previews.loaded_views()
        if views:
            view = "front" if "front" in views else views[0]
            grid = layout.grid_flow(columns=2, even_columns=True, align=True)
            for when in ("before", "after"):
                cell = grid.column(align=True)
                cell.label(text=f"{when.capitalize()} ({view})")
                cell.template_icon(icon_value=previews.icon_id(when, view), scale=5.0)
        col = layout.column(align=True)
        for line in identity_lines(s.identity_rank, s.identity_candidates, s.identity_margin, s.identity_score):
            col.label(text=line)
        if s.style_score >= 0:
            col.label(text=f"Style: {s.style_score:.3f}")
        if s.object_name:
            col.label(text=f"Object: {s.object_name}", icon="OBJECT_DATA")
        col = layout.column(align=True)
        col.operator("headstylizer.import_head", icon="IMPORT")
        col.operator("headstylizer.export_gltf", icon="EXPORT")
        col.operator("headstylizer.render_turntable", icon="RENDER_ANIMATION")


def _batch_draw_function():
    """``operators.batch.draw_batch_panel(layout, context)`` when the batch module is installed."""
    try:
        from ..operators import batch
    except ImportError:
        return None
    return getattr(batch, "draw_batch_panel", None)


class HEADSTYLIZER_PT_batch(_SidebarPanel, bpy.types.Panel):
    bl_label = "Batch"
    bl_parent_id = "HEADSTYLIZER_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        draw = _batch_draw_function()
        if draw is not None:
            draw(self.layout, context)


def panel_classes() -> tuple:
    """The main panels, plus Batch only when there is something to draw in it."""
    classes = (HEADSTYLIZER_PT_main, HEADSTYLIZER_PT_options, HEADSTYLIZER_PT_result)
    return classes + ((HEADSTYLIZER_PT_batch,) if _batch_draw_function() is not None else ())
