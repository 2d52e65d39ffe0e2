"""The panel's settings and the last run's state, stored on the scene (``scene.head_stylizer``).

Settings are saved with the .blend so a head can be re-made with the same options; the run state
(progress, status, scores, result path) shows in the panel and is reset when a file is loaded, since no
engine process survives a file change.
"""

from __future__ import annotations

import bpy

from . import styles
from .job import GUIDANCE_MAX, GUIDANCE_MIN, HEAD_MODE_ANCHOR, PRESETS, RECIPES
from .scores import NOT_MEASURED


class HeadStylizerSettings(bpy.types.PropertyGroup):
    preset: bpy.props.EnumProperty(
        name="Style",
        items=[(key, label, f"{label} style" if key != "CUSTOM" else "Your own prompt")
               for key, label, _engine in PRESETS],
        default="ZOMBIE",
    )
    approved_style: bpy.props.EnumProperty(
        name="Approved Style", items=styles.enum_items,
        description="Production: an approved style from the studio's style library (engine style approve), used as "
                    "approved and never retrained. None: train the style from Style/Prompt")
    recipe: bpy.props.EnumProperty(
        name="Recipe",
        items=[(key, label, help_text) for key, label, _engine, help_text in RECIPES],
        default="FAST",
    )
    prompt: bpy.props.StringProperty(name="Prompt", description="Style prompt for the Custom style",
                                     default="a bronze statue head")
    method: bpy.props.EnumProperty(
        name="Method",
        items=(("ld", "LD", "Likelihood distillation (the paper's method)"),
               ("sds", "SDS", "Score distillation sampling (baseline)")),
        default="ld",
    )
    use_mirror: bpy.props.BoolProperty(name="Mirror", default=True,
                                       description="Also distil the mirrored view (left/right consistency)")
    use_grid: bpy.props.BoolProperty(name="Grid", default=True,
                                     description="Distil a 2×2 grid of views all around the head (360° consistency)")
    use_rank: bpy.props.BoolProperty(name="Rank", default=True,
                                     description="Re-weight the diffusion score by rank (keeps detail)")
    steps: bpy.props.IntProperty(name="Iterations", min=0, soft_max=10000, default=0,
                                 description="Stylization steps. 0: the engine's default for the models in use")
    head_source: bpy.props.EnumProperty(
        name="Head",
        items=(("SEED", "Generated", "A head the generator makes from a seed"),
               ("MESH", "Selected Mesh", "The selected mesh (a sculpt, scan or character head): fitted, stylized "
                                         "and imported beside it; the source is left untouched"),
               ("LATENT", "Latent File", "The head stored in a W+ latent file (e.g. from engine invert)")),
        default="SEED",
    )
    seed: bpy.props.IntProperty(name="Seed", min=0, default=0, description="Which generated head to stylize")
    field_steps: bpy.props.IntProperty(
        name="Fit Steps", min=0, soft_max=5000, default=0,
        description="Selected mesh: steps fitting the mesh's own tri-grid field (once per mesh, then cached). "
                    "0: the engine's default")
    keep_colours: bpy.props.FloatProperty(
        name="Keep Colours", min=0.0, soft_max=5.0, default=HEAD_MODE_ANCHOR[0],
        description="Selected mesh: how strongly the stylized head keeps the source's colour layout (skin, hair "
                    "and features, blurred). 0: the style may recolour freely; higher keeps more of the person, "
                    "less of the style")
    keep_shape: bpy.props.FloatProperty(
        name="Keep Shape", min=0.0, soft_max=5.0, default=HEAD_MODE_ANCHOR[1],
        description="Selected mesh: how strongly the stylized head keeps the source's silhouette and depth. "
                    "0: the style may reshape the head freely")
    latent_file: bpy.props.StringProperty(name="Latent", subtype="FILE_PATH",
                                          description="W+ latent .npz (key 'w') of the head to stylize")
    strength: bpy.props.FloatProperty(
        name="Identity ↔ Style", min=0.0, max=1.0, default=0.5, subtype="FACTOR",
        description=f"0 keeps the person, 1 pushes the style (guidance scale {GUIDANCE_MIN:g} … {GUIDANCE_MAX:g})",
    )
    mesh_resolution: bpy.props.IntProperty(name="Mesh Resolution", min=16, max=1024, soft_max=512, default=128,
                                           description="Marching-cubes grid size (N³ samples)")
    turntable: bpy.props.BoolProperty(name="Render Turntable",
                                      description="After import, render the head orbit as an image sequence")
    turntable_frames: bpy.props.IntProperty(name="Frames", min=2, max=720, default=36)

    # run state (shown by the panel, written by the Stylize Head operator)
    is_running: bpy.props.BoolProperty(name="Running")
    progress: bpy.props.FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    status: bpy.props.StringProperty(name="Status", default="Ready")
    result_path: bpy.props.StringProperty(name="Result", subtype="FILE_PATH",
                                          description="head.json of the last finished run")
    identity_score: bpy.props.FloatProperty(name="Identity", default=-1.0,
                                            description="Identity similarity of the last run (-1: not measured)")
    identity_rank: bpy.props.IntProperty(
        name="Recognised rank", default=0, min=0,
        description="Rank of the head's own original when its stylized render is matched among the fixed gallery "
                    "of other heads (1 = recognised; 0: not measured)")
    identity_candidates: bpy.props.IntProperty(name="Gallery size", default=0, min=0,
                                               description="Heads the stylized head was matched among (chance = 1/this)")
    identity_margin: bpy.props.FloatProperty(
        name="Identity margin", default=NOT_MEASURED,
        description="Cosine to its own original minus the mean cosine to the gallery's other heads "
                    "(0: keeps nothing of the person; -9: not measured)")
    style_score: bpy.props.FloatProperty(name="Style", default=-1.0,
                                         description="Style score of the last run (-1: not measured)")
    object_name: bpy.props.StringProperty(name="Object", description="Head object made by the last run")


def settings_of(context) -> HeadStylizerSettings:
    return context.scene.head_stylizer


def reset_run_state(scene) -> None:
    """A file saved while a run was going opens without that run: clear the flag so the button works."""
    s = scene.head_stylizer
    if s.is_running:
        s.is_running = False
        s.status = "Interrupted (the file was saved during a run)"


CLASSES = (HeadStylizerSettings,)


def register_scene_property() -> None:
    bpy.types.Scene.head_stylizer = bpy.props.PointerProperty(type=HeadStylizerSettings)


def unregister_scene_property() -> None:
    if hasattr(bpy.types.Scene, "head_stylizer"):
        del bpy.types.Scene.head_stylizer
